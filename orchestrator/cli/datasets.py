"""`rodin datasets`: register shape collections as immutable, versioned point-cloud sets."""


import hashlib
import re
import unicodedata
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from orchestrator.cli.context import mesh_limits, registry, settings, store
from orchestrator.cli.output import NUMBER, TEXT, WORD, Json, age, console, emit_json, err, listing
from orchestrator.errors import RodinError, UserInputError

if TYPE_CHECKING:
    from atlas_core.data import PointCloudSet

app = typer.Typer(help="Register and inspect datasets (versioned collections of shapes).",
                  no_args_is_help=True)
Points = Annotated[int, typer.Option("--points-per-shape", min=100,
                                     help="Surface points sampled once per shape; training draws subsets.")]
Seed = Annotated[int, typer.Option("--seed", help="Seed for the shape parameters, or for surface sampling.")]


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=err, transient=True)


def _register(name: str, data: "PointCloudSet", source: str,
              skipped: list[dict[str, str]]) -> dict[str, object]:
    from orchestrator.datasets import register_dataset

    return register_dataset(settings(), store(), name, data, source, skipped)


#: The registry's column width for dataset names.
MAX_NAME_CHARS = 128
#: Characters a terminal would act on rather than show (control characters, ANSI escapes,
#: newlines, bidirectional overrides), or that UTF-8 cannot store (lone surrogates).
_UNSHOWABLE = {"Cc", "Cf", "Cs", "Zl", "Zp"}


class NoUsableFiles(UserInputError):
    """Nothing under the path has a usable surface: the `--json` error object carries every
    file with its reason, as the table on stderr does."""

    def __init__(self, message: str, skipped: list[dict[str, str]]):
        super().__init__(message)
        self.json_fields = {"skipped": skipped}


def _check_name(name: str) -> None:
    if not name or "@" in name or "/" in name or name.strip() != name:
        raise UserInputError(f"dataset name {name!r} must be non-empty, without '@', '/' or spaces")
    if any(unicodedata.category(c) in _UNSHOWABLE for c in name):
        raise UserInputError(f"dataset name {name!r} contains control or invisible characters; "
                             "use printable letters, digits and punctuation")
    if len(name) > MAX_NAME_CHARS:
        raise UserInputError(f"dataset name {name[:20]!r}... is {len(name)} characters long; "
                             f"use at most {MAX_NAME_CHARS}")


@app.command("make")
def make(
    kind: Annotated[str, typer.Argument(help="What to generate: `swords`.", show_default=False)],
    count: Annotated[int, typer.Option("--count", "-n", min=1, help="How many shapes.")] = 200,
    seed: Seed = 0,
    name: Annotated[str | None, typer.Option(
        "--name", help="Dataset name (default: KIND).", show_default=False)] = None,
    points: Points = 5000,
    as_json: Json = False,
) -> None:
    """Generate procedural shapes and register them as a new version of NAME."""
    from atlas_core.families import family_names, family_source, generate_family

    if kind not in family_names():
        raise UserInputError(f"cannot generate {kind!r}: the procedural families are "
                             f"{', '.join(family_names())}")
    name = name or kind
    _check_name(name)
    with _progress() as bar:
        task = bar.add_task(f"Generating {count} {kind}", total=count)
        data = generate_family(kind, count, seed, points, on_shape=lambda: bar.advance(task))
    summary = _register(name, data, family_source(kind, count, seed), [])
    if as_json:
        emit_json({"dataset": summary})
    else:
        err.print(f"Registered [bold]{escape(str(summary['ref']))}[/]: {count} {kind}, "
                  f"{points} points each (dataset id {summary['id']}).")


def _mesh_files(root: Path) -> list[Path]:
    from atlas_core.mesh_io import is_mesh_file

    if root.is_file():
        return [root]
    return sorted(p for p in root.rglob("*") if p.is_file() and is_mesh_file(p))


def _shown(file: Path, root: Path) -> str:
    """How a file found under `root` is named to the user (the skip table, the stored and
    `--json` records): relative to the folder given, or its name when `root` is that file."""
    if file == root:
        return file.name
    try:
        return file.relative_to(root).as_posix()
    except ValueError:
        return str(file)


@app.command("add")
def add(
    name: Annotated[str, typer.Argument(help="Dataset name; each add makes a new version.", show_default=False)],
    path: Annotated[Path, typer.Argument(help="A mesh file or a folder searched recursively.", show_default=False)],
    points: Points = 5000,
    seed: Seed = 0,
    as_json: Json = False,
) -> None:
    """Register every mesh under PATH (OBJ, STL, PLY, OFF, GLB/GLTF) as a new version of NAME.

    Files without a usable surface are skipped with the reason. If none is usable, nothing is
    registered and the exit code is 2.
    """
    _check_name(name)
    if not path.exists():
        raise UserInputError(f"{path} does not exist: give a mesh file or a folder of meshes")
    from atlas_core.data import PointCloudSet
    from atlas_core.mesh_io import MeshError, ingest_file

    files = _mesh_files(path)
    if not files:
        raise UserInputError(f"no mesh files under {path} (looked for .obj .stl .ply .off .glb .gltf)")
    shapes, skipped = [], []
    limits = mesh_limits()
    with _progress() as bar:
        task = bar.add_task(f"Ingesting {len(files)} files", total=len(files))
        for i, file in enumerate(files):
            try:
                shapes.append(ingest_file(file, n_points=points, seed=seed + i, limits=limits))
            except MeshError as exc:
                skipped.append({"file": _shown(file, path), "reason": str(exc)})
            bar.advance(task)
    _dedupe_names(shapes, files)
    if skipped and not as_json:
        table = Table(title=f"{len(skipped)} file(s) skipped", title_justify="left", show_lines=False)
        table.add_column("skipped file", overflow="fold")  # a long name wraps, never cut short
        table.add_column("reason")
        for row in skipped:
            table.add_row(escape(row["file"]), escape(row["reason"]))
        err.print(table)
    if not shapes:
        raise NoUsableFiles(f"none of the {len(files)} files under {path} has a usable surface; "
                            "nothing registered", skipped)
    source = str(path.resolve())
    summary = _register(name, PointCloudSet.from_shapes(shapes), source, skipped)
    if as_json:
        emit_json({"dataset": summary, "skipped": skipped})
    else:
        err.print(f"Registered [bold]{escape(str(summary['ref']))}[/]: {len(shapes)} shapes from {escape(str(path))} "
                  f"({len(skipped)} skipped; dataset id {summary['id']}).")


def _dedupe_names(shapes: list, files: list[Path]) -> None:
    """Same stems in different folders get a short path hash so names stay unique."""
    seen: dict[str, int] = {}
    for shape in shapes:
        seen[shape.name] = seen.get(shape.name, 0) + 1
    for shape in shapes:
        if seen[shape.name] > 1:
            shape.name = f"{shape.name}-{hashlib.sha256(shape.source_sha256.encode()).hexdigest()[:6]}"


@app.command("list")
def list_(as_json: Json = False) -> None:
    """All dataset versions, newest first."""
    from sqlalchemy import select

    from orchestrator.registry.models import Dataset
    from orchestrator.registry.queries import dataset_summary

    with registry() as s:
        rows = [dataset_summary(d) for d in
                s.scalars(select(Dataset).order_by(Dataset.name, Dataset.version.desc()))]
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
    from orchestrator.registry.queries import dataset_summary, resolve_dataset

    with registry() as s:
        dataset = resolve_dataset(s, ref)
        summary = dataset_summary(dataset)
        blob = (dataset.artifact_uri, dataset.artifact_sha256)
    written = _write_plots(summary, *blob, plots) if plots is not None else None
    if as_json:
        emit_json({**summary, "plots": written} if written is not None else summary)
        return
    for key in ("ref", "id", "shapes", "points_per_shape", "source", "content_sha256",
                "artifact_uri", "created_at"):
        console.print(f"[bold]{key:17}[/] {escape(str(summary[key]))}", highlight=False, soft_wrap=True)
    for row in summary["skipped"]:
        console.print(f"  skipped {escape(str(row['file']))}: {escape(str(row['reason']))}", highlight=False)
    for what, written_path in (written or {}).items():
        err.print(f"Wrote {what} plot {escape(written_path)}", highlight=False, soft_wrap=True)


def _plot_stem(name: str, version: int) -> str:
    """`<name>-v<version>` as a file name: characters a file system may refuse become '_'."""
    safe = re.sub(r"[^\w.+-]+", "_", name).strip(".") or "dataset"
    return f"{safe}-v{version}"


def _write_plots(summary: dict[str, Any], uri: str, sha256: str, folder: Path) -> dict[str, str]:
    """The dataset's thumbnail sheet and size histogram as PNGs in `folder`: {"shapes", "sizes"}
    -> path. numpy and matplotlib only (no torch): the cached point clouds, sha256 checked."""
    from atlas_core.data import PointCloudSet
    from atlas_core.render import render_shape_sheet, render_size_histogram
    from orchestrator.artifacts import ArtifactError

    if folder.exists() and not folder.is_dir():
        raise UserInputError(f"--plots {folder} is a file: give a folder (it is created if missing)")
    ref = str(summary["ref"])
    try:
        data = PointCloudSet.from_bytes(store().get_bytes(uri, sha256))
    except ArtifactError as exc:
        raise RodinError(f"cannot draw dataset {ref}: {exc}") from None
    pictures = {
        "shapes": render_shape_sheet(data.points, data.names, ref, normals=data.normals),
        "sizes": render_size_histogram(data.scales, ref),
    }
    folder.mkdir(parents=True, exist_ok=True)
    stem = _plot_stem(str(summary["name"]), int(summary["version"]))
    written = {}
    for what, png in pictures.items():
        target = folder / f"{stem}-{what}.png"
        target.write_bytes(png)
        written[what] = str(target)
    return written
