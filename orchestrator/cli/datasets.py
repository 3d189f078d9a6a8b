"""`rodin datasets`: register shape collections as immutable, versioned point-cloud sets."""


from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from orchestrator.cli.context import mesh_limits, settings, store
from orchestrator.cli.output import NUMBER, TEXT, WORD, Json, age, console, emit_json, err, listing
from orchestrator.errors import UserInputError

if TYPE_CHECKING:
    from rich.progress import Task

app = typer.Typer(help="Register and inspect datasets (versioned collections of shapes).",
                  no_args_is_help=True)
Points = Annotated[int, typer.Option("--points-per-shape", min=100,
                                     help="Surface points sampled once per shape; training draws subsets.")]
Seed = Annotated[int, typer.Option("--seed", help="Seed for the shape parameters, or for surface sampling.")]


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=err, transient=True)


@app.command("make")
def make(
    kind: Annotated[str, typer.Argument(
        help="What to generate: a procedural family (`rodin datasets families`).", show_default=False)],
    count: Annotated[int, typer.Option("--count", "-n", min=1, help="How many shapes.")] = 200,
    seed: Seed = 0,
    name: Annotated[str | None, typer.Option(
        "--name", help="Dataset name (default: KIND).", show_default=False)] = None,
    points: Points = 5000,
    as_json: Json = False,
) -> None:
    """Generate procedural shapes and register them as a new version of NAME."""
    from orchestrator import datasets

    name = name or kind
    datasets.check_name(name)
    with _progress() as bar:
        task = bar.add_task(f"Generating {count} {kind}", total=count)
        data, source = datasets.generate(kind, count, seed, points, on_shape=lambda: bar.advance(task))
    summary = datasets.register_dataset(settings(), store(), name, data, source, [])
    if as_json:
        emit_json({"dataset": summary})
    else:
        err.print(f"Registered [bold]{escape(str(summary['ref']))}[/]: {count} {kind}, "
                  f"{points} points each (dataset id {summary['id']}).")


@app.command("families")
def families(as_json: Json = False) -> None:
    """The procedural families `make` generates: what each makes, and the parameters that vary."""
    from atlas_core.families import describe_families

    rows = describe_families()
    if as_json:
        emit_json({"families": rows})
        return
    table = listing(("family", WORD), ("description", TEXT), ("parameters", TEXT))
    for row in rows:
        table.add_row(escape(row["name"]), escape(row["description"]), escape(", ".join(row["parameters"])))
    console.print(table)


class _Rate(ProgressColumn):
    """Shapes read per second, once there is a rate to show."""

    def render(self, task: "Task") -> Text:
        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{speed:.1f} shapes/s", style="progress.data.speed")


@app.command("add")
def add(
    name: Annotated[str, typer.Argument(help="Dataset name; each add makes a new version.", show_default=False)],
    path: Annotated[str, typer.Argument(
        metavar="PATH", help="A mesh file or a folder searched recursively; with --on-workers a folder "
        "every worker mounts or a URL (s3://bucket/prefix).", show_default=False)],
    points: Points = 5000,
    seed: Seed = 0,
    jobs: Annotated[int | None, typer.Option(
        "--jobs", "-j", min=1, help="Reader processes (default: the machine's cores).",
        show_default=False)] = None,
    on_workers: Annotated[bool, typer.Option(
        "--on-workers", help="Let the queue's workers read the files, in parts (one job each); the "
        "version is registered once every part has succeeded, or not at all.")] = False,
    part_size: Annotated[int, typer.Option(
        "--part-size", min=1, help="Files per part with --on-workers.")] = 100,
    wait: Annotated[bool, typer.Option(
        "--wait", help="With --on-workers: follow the jobs until the version is registered.")] = False,
    as_json: Json = False,
) -> None:
    """Register every mesh under PATH (OBJ, STL, PLY, OFF, GLB/GLTF) as a new version of NAME.

    Files without a usable surface are skipped with the reason. If none is usable, nothing is
    registered and the exit code is 2. Each file is read in a process of its own, bounded in
    time and memory (RODIN_INGEST_FILE_TIMEOUT_S, RODIN_INGEST_MEMORY_BYTES); shapes already
    read (an interrupted add, the same files again) come from the cache under RODIN_HOME.
    """
    from orchestrator import datasets
    from orchestrator.ingest import Reading

    datasets.check_name(name)
    if on_workers:
        _add_on_workers(name, path, points, seed, part_size, wait, as_json)
        return
    folder = Path(path)
    reading = Reading.from_settings(settings(), jobs)
    with _bar() as bar:
        task = bar.add_task("Ingesting", total=None)
        found = datasets.ingest(folder, points, seed, mesh_limits(),
                                on_start=lambda n: bar.update(task, total=n, description=f"Ingesting {n} files"),
                                on_file=lambda: bar.advance(task), reading=reading)
    with found:
        skipped = found.skipped
        if skipped and not as_json:
            table = Table(title=f"{len(skipped)} file(s) skipped", title_justify="left", show_lines=False)
            table.add_column("skipped file", overflow="fold")  # a long name wraps, never cut short
            table.add_column("reason")
            for row in skipped:
                table.add_row(escape(row["file"]), escape(row["reason"]))
            err.print(table)
        if found.shapes is None:
            raise datasets.NoUsableFiles(f"none of the {found.files} files under {folder} has a usable "
                                         "surface; nothing registered", skipped)
        count = len(found.shapes)
        with _bar() as bar:
            task = bar.add_task(f"Writing {count} shapes as shards", total=count)
            summary = datasets.register_dataset(settings(), store(), name, found.shapes, str(folder.resolve()),
                                                skipped, on_shard=lambda done, _: bar.update(task, completed=done))
    if as_json:
        emit_json({"dataset": summary, "skipped": skipped, "cached": found.cached})
    else:
        reused = f", {found.cached} read before and taken from the cache" if found.cached else ""
        err.print(f"Registered [bold]{escape(str(summary['ref']))}[/]: {count} shapes from {escape(str(folder))} "
                  f"({len(skipped)} skipped{reused}; dataset id {summary['id']}).")


def _bar() -> Progress:
    """A transient bar with the count, the rate and the time left."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), _Rate(),
                    TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=err, transient=True)


def _add_on_workers(name: str, root: str, points: int, seed: int, part_size: int, wait: bool,
                    as_json: bool) -> None:
    """Queue the parts and their assembly (`orchestrator.worker_ingest`); with --wait follow
    the assembly to the registered version."""
    from orchestrator import worker_ingest
    from orchestrator.cli.follow import follow
    from workers.supervisor import ensure_local_worker

    if "://" not in root:
        root = str(Path(root).resolve())  # the workers' view of a mounted folder is absolute
    files = worker_ingest.list_files(root)
    started = ensure_local_worker(settings())
    if started is not None and not as_json:
        err.print(f"No worker was running: started one in the background (pid {started.pid}, "
                  f"log {escape(str(started.log))}); stop it with `rodin down`.")
    queued = worker_ingest.queue(settings(), name, root, files, points=points, seed=seed, part_size=part_size)
    if not as_json:
        err.print(f"Queued {len(queued.parts)} part job(s) for {queued.files} files "
                  f"({', '.join(map(str, queued.parts))}) and job [bold]{queued.assemble}[/], which "
                  f"registers {escape(name)} once every part has succeeded.")
    ids = {"part_job_ids": queued.parts, "files": queued.files}
    follow(queued.assemble, wait=wait, as_json=as_json, queued=ids,
           extra=lambda job: {**ids, "dataset": (job.result or {}).get("dataset"),
                              "skipped": (job.result or {}).get("skipped", [])})


@app.command("list")
def list_(as_json: Json = False) -> None:
    """All dataset versions, newest first."""
    from orchestrator.datasets import list_datasets

    rows = list_datasets(settings())
    if as_json:
        emit_json({"datasets": rows})
        return
    table = listing(("id", NUMBER), ("dataset", TEXT), ("shapes", NUMBER), ("points", NUMBER),
                    ("skipped", NUMBER), ("source", TEXT), ("age", WORD))
    for r in rows:
        table.add_row(str(r["id"]), escape(r["ref"]), str(r["shapes"]), str(r["points_per_shape"]),
                      str(len(r["skipped"])), escape(r["source"]), age(r["created_at"]))
    console.print(table if rows else "No datasets yet: `rodin datasets make swords`.")


@app.command("show")
def show(ref: Annotated[str, typer.Argument(help="NAME or NAME@VERSION.", show_default=False)],
         plots: Annotated[Path | None, typer.Option(
             "--plots", help="Write two PNGs into DIR: thumbnails of the shapes (the first "
             "100) and a histogram of their sizes before normalisation.", show_default=False)] = None,
         as_json: Json = False) -> None:
    """One dataset version: its shapes, source, hash and skipped files."""
    from orchestrator import datasets

    if plots is None:
        summary, written = datasets.get(settings(), ref, store()), None
    else:
        if plots.exists() and not plots.is_dir():
            raise UserInputError(f"--plots {plots} is a file: give a folder (it is created if missing)")
        summary, pngs = datasets.pictures(settings(), store(), ref)
        written = _write(pngs, plots, datasets.plot_stem(str(summary["name"]), int(summary["version"])))
    if as_json:
        emit_json({**summary, "plots": written} if written is not None else summary)
        return
    for key in ("ref", "id", "shapes", "points_per_shape", "source", "content_sha256",
                "artifact_uri", "created_at"):
        console.print(f"[bold]{key:17}[/] {escape(str(summary[key]))}", highlight=False, soft_wrap=True)
    stored = (f"{summary['shards']} shard(s), {_mib(summary['stored_bytes'])}"
              if summary["storage"] == "shards" else f"one blob, {_mib(summary['stored_bytes'])}")
    console.print(f"[bold]{'stored':17}[/] {stored}", highlight=False, soft_wrap=True)
    for row in summary["skipped"]:
        console.print(f"  skipped {escape(str(row['file']))}: {escape(str(row['reason']))}", highlight=False)
    for what, written_path in (written or {}).items():
        err.print(f"Wrote {what} plot {escape(written_path)}", highlight=False, soft_wrap=True)


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB ({n} bytes)"


def _write(pngs: dict[str, bytes], folder: Path, stem: str) -> dict[str, str]:
    """Each picture as `<stem>-<what>.png` in `folder`: what -> path."""
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for what, png in pngs.items():
        target = folder / f"{stem}-{what}.png"
        target.write_bytes(png)
        written[what] = str(target)
    return written
