"""A model's story on one self-contained HTML page (`rodin report`).

`collect` reads what the registry recorded about a model (its lineage, config, metrics, the
training jobs behind it, the evaluation and reconstruction jobs run with it) and the pictures
those jobs stored; `render` turns that into one HTML file that works offline: pictures are
embedded as `data:` URIs, the style sheet is inline, there is no script, and a
Content-Security-Policy forbids the page to load anything else.

Every string taken from the registry (dataset names and sources, errors, shape names, aliases)
may hold markup written by anyone who can reach the registry, so each one is escaped.
"""

from __future__ import annotations

import base64
import html
import io
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from orchestrator import __version__
from orchestrator.aliases import aliases_of
from orchestrator.artifacts import ArtifactError, ArtifactStore
from orchestrator.registry.db import as_utc, session_scope
from orchestrator.registry.models import Job, JobKind, JobStatus, ModelCheckpoint
from orchestrator.registry.queries import ancestors, dataset_summary, get_model, model_summary
from orchestrator.settings import Settings, redact

#: Reconstructions shown (newest jobs first): enough to judge a model, few enough that the
#: page stays a few megabytes.
MAX_RECONSTRUCTIONS = 24
#: Evaluations shown, newest first.
MAX_EVALUATIONS = 3
#: A job with more checkpoints than this lists them folded (`<details>`), the final one and
#: this model still in sight.
FOLD_CHECKPOINTS = 12
#: A lineage longer than twice this (1,000 checkpoints over dozens of jobs) keeps its first and
#: last FOLD_KEEP checkpoints and says how many it left out between (`rodin models show` keeps
#: fewer: a page folds a job's checkpoints under `<details>`, a terminal cannot).
FOLD_KEEP = 50
#: Training jobs of the lineage shown with their loss curves: the model's own and the nearest
#: before it (a lineage of 1,000 checkpoints may cross dozens of jobs); the rest are counted.
MAX_TRAINING_JOBS = 6
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@dataclass
class Picture:
    """A stored PNG to embed, or why it cannot be (`png` None and `note` the reason)."""

    caption: str
    png: bytes | None
    note: str = ""


@dataclass
class Evaluation:
    job_id: int
    result: dict[str, Any]
    plot: Picture | None


@dataclass
class Story:
    """Everything the page shows, read from the registry and the artifact store."""

    model: dict[str, Any]  # orchestrator.registry.queries.model_summary
    aliases: list[str]
    tree: dict[str, Any]  # the lineage as nested objects (orchestrator.cli.models.lineage_tree)
    dataset: dict[str, Any]  # dataset_summary of the model's dataset version
    jobs: list[dict[str, Any]]  # the training jobs of the lineage, oldest first
    loss_curves: list[Picture]
    evaluations: list[Evaluation]
    reconstructions: list[Picture]
    more_reconstructions: int = 0  # stored but not shown (beyond MAX_RECONSTRUCTIONS)
    earlier_jobs: int = 0  # training jobs of the lineage before those shown (beyond MAX_TRAINING_JOBS)
    notes: list[str] = field(default_factory=list)  # what could not be shown, and why
    generated_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))


# ------------------------------------------------------------------------------ reading


def reconstruction_jobs(session: Session, model_id: int) -> list[Job]:
    """Succeeded reconstruction jobs of the model that stored pictures, newest first."""
    jobs = session.scalars(select(Job).where(
        Job.kind == JobKind.reconstruct.value, Job.input_model_id == model_id,
        Job.status == JobStatus.succeeded.value).order_by(Job.id.desc()))
    return [j for j in jobs if any(o.get("kind") == "render" for o in j.outputs or [])]


def has_reconstructions(settings: Settings, model_id: int) -> bool:
    """Whether the model has a succeeded reconstruction job with pictures."""
    with session_scope(settings) as s:
        return bool(reconstruction_jobs(s, model_id))


def story_of(settings: Settings, store: ArtifactStore, model_id: int) -> Story:
    """The model's story, read in one transaction (its lineage as `rodin models show` has it)."""
    from orchestrator.lineage import model_lineage

    with session_scope(settings) as s:
        model = get_model(s, model_id)
        return collect(s, store, model, model_lineage(s, model, keep=FOLD_KEEP)[1])


def collect(session: Session, store: ArtifactStore, model: ModelCheckpoint,
            tree: dict[str, Any]) -> Story:
    """The model's story. `tree` is its lineage as nested objects (dataset -> jobs ->
    checkpoints -> the jobs that continued from them)."""
    notes: list[str] = []
    jobs = _lineage_jobs(session, model)
    earlier, jobs = max(0, len(jobs) - MAX_TRAINING_JOBS), jobs[-MAX_TRAINING_JOBS:]
    story = Story(model=model_summary(session, model), aliases=aliases_of(session, model.id),
                  tree=tree, dataset=dataset_summary(model.dataset),
                  jobs=[_job_row(j) for j in jobs],
                  loss_curves=[_loss_curves(session, store, j, notes) for j in jobs],
                  evaluations=_evaluations(session, store, model.id, notes), reconstructions=[],
                  notes=notes, earlier_jobs=earlier)
    story.reconstructions, story.more_reconstructions = _reconstructions(session, store, model.id, notes)
    return story


def _lineage_jobs(session: Session, model: ModelCheckpoint) -> list[Job]:
    """The training jobs whose checkpoints lead to the model (a pre-training, then its
    fine-tunes), oldest first: the ancestors in one query (`ancestors`), the jobs in one more."""
    order: list[int] = []
    for job_id in [model.job_id, *(a.job_id for a in ancestors(session, model))]:
        if job_id not in order:
            order.append(job_id)
    found = {j.id: j for j in session.scalars(select(Job).where(Job.id.in_(order)))}
    return [found[i] for i in reversed(order) if i in found]


def _job_row(job: Job) -> dict[str, Any]:
    return {"id": job.id, "kind": job.kind, "status": job.status,
            "dataset": job.dataset.ref if job.dataset else None, "input_model_id": job.input_model_id,
            "worker": job.worker, "device": job.device, "attempts": job.attempts, "lost": job.lost,
            "error": redact(job.error) if job.error else None, "result": job.result or {},
            "created_at": _iso(job.created_at), "started_at": _iso(job.started_at),
            "finished_at": _iso(job.finished_at)}


def _read_png(store: ArtifactStore, output: dict[str, Any], caption: str, notes: list[str]) -> Picture:
    """A job output's PNG, checked against its sha256; a missing or tampered one is noted."""
    try:
        data = store.get_bytes(str(output.get("uri")), str(output.get("sha256")))
    except (ArtifactError, ValueError, OSError) as exc:
        notes.append(f"{caption}: {exc}")
        return Picture(caption, None, str(exc))
    if not data.startswith(PNG_MAGIC):
        notes.append(f"{caption}: the stored artifact is not a PNG")
        return Picture(caption, None, "the stored artifact is not a PNG")
    return Picture(caption, data)


def _loss_curves(session: Session, store: ArtifactStore, job: Job, notes: list[str]) -> Picture:
    """The curves the training job stored (every epoch); for a job that stored none (it failed,
    or is still running), a plot of its registered checkpoints' metrics."""
    stored = [o for o in job.outputs or [] if o.get("name") == "loss_curves.png"]
    if stored:
        return _read_png(store, stored[-1], f"job {job.id}: loss curves (every epoch)", notes)
    rows = session.execute(select(ModelCheckpoint.epoch, ModelCheckpoint.metrics)
                           .where(ModelCheckpoint.job_id == job.id)
                           .order_by(ModelCheckpoint.epoch)).all()
    history = [(epoch, m.get("train_loss"), m.get("val_chamfer")) for epoch, m in rows if m]
    caption = f"job {job.id}: loss at its {len(history)} registered checkpoints (the job stored no curves)"
    return Picture(caption, plot_checkpoint_losses(history, f"job {job.id}") if history else None,
                   "" if history else "no checkpoint recorded a loss")


def plot_checkpoint_losses(history: list[tuple[int, float | None, float | None]], title: str) -> bytes:
    """Train loss and validation Chamfer per checkpoint (epoch, train, val), log scale.

    Drawn here rather than with atlas_core.render.render_loss_curves, which would load torch
    (through atlas_core.meshing) into a command that needs none."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(6, 4), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    for column, label in ((1, "train Chamfer"), (2, "validation Chamfer")):
        points = [(h[0], h[column]) for h in history if _finite(h[column]) and h[column] > 0]  # type: ignore[operator]
        if points:
            ax.plot(*zip(*points), marker="o", ms=3, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("Chamfer (squared, unit ball)")
    ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend()
    ax.set_title(title)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _evaluations(session: Session, store: ArtifactStore, model_id: int, notes: list[str]) -> list[Evaluation]:
    jobs = session.scalars(select(Job).where(
        Job.kind == JobKind.evaluate.value, Job.input_model_id == model_id,
        Job.status == JobStatus.succeeded.value).order_by(Job.id.desc()).limit(MAX_EVALUATIONS))
    found = []
    for job in jobs:
        plots = [o for o in job.outputs or [] if o.get("kind") == "plot"]
        plot = _read_png(store, plots[0], f"job {job.id}: per-shape Chamfer against retrieval",
                         notes) if plots else None
        found.append(Evaluation(job.id, job.result or {}, plot))
    return found


def _reconstructions(session: Session, store: ArtifactStore, model_id: int,
                     notes: list[str]) -> tuple[list[Picture], int]:
    """The pictures of the model's reconstruction jobs (input beside the reconstruction, patches
    coloured), newest job first; and how many more were stored than are shown."""
    chosen: list[tuple[int, dict[str, Any], dict[str, Any]]] = []
    total = 0
    for job in reconstruction_jobs(session, model_id):
        scores = {o.get("input"): o for o in job.outputs if o.get("kind") == "mesh"}
        for out in job.outputs:
            if out.get("kind") != "render":
                continue
            total += 1
            if len(chosen) < MAX_RECONSTRUCTIONS:
                chosen.append((job.id, out, scores.get(out.get("input"), {})))
    pictures = [_read_png(store, out, _caption(job_id, out, mesh), notes) for job_id, out, mesh in chosen]
    return pictures, total - len(pictures)


def _caption(job_id: int, render: dict[str, Any], mesh: dict[str, Any]) -> str:
    name = str(render.get("input") or render.get("name") or "?")
    before, after = mesh.get("chamfer_before"), mesh.get("chamfer_after")
    if _finite(before) and _finite(after) and before != after:
        score = f"Chamfer {before:.5f} \u2192 {after:.5f} refined"
    elif _finite(after):
        score = f"Chamfer {after:.5f}"
    else:
        score = "no score recorded"
    warnings = "; ".join(str(w) for w in mesh.get("warnings") or [])
    return f"{name}: {score} (job {job_id})" + (f". Warning: {warnings}" if warnings else "")


# ------------------------------------------------------------------------------ writing


def write(story: Story, folder: Path) -> Path:
    """Write the page as `folder/model-ID.html` (replacing an older one); returns its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"model-{story.model['id']}.html"
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(render(story), encoding="utf-8")
    tmp.replace(path)  # a reader never sees half a page
    return path


def esc(value: object) -> str:
    """Text for HTML content and quoted attributes."""
    return html.escape(str(value), quote=True)


def number(value: object) -> str:
    """A metric as the page prints it: 6 significant digits, '-' for a missing or non-finite one."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.6g}" if math.isfinite(value) else "-"
    return "-" if value is None else str(value)


def title_of(story: Story) -> str:
    m = story.model
    names = f" ({', '.join(story.aliases)})" if story.aliases else ""
    return f"rodin report: model {m['id']}{names} on {m['dataset']}"


STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:1100px;
  padding:1.5rem 2rem 3rem;color:#1d2330;line-height:1.45}
h1{font-size:1.6rem;margin:.2rem 0}h2{font-size:1.2rem;margin:2rem 0 .6rem;border-bottom:1px solid #d8dde6;
  padding-bottom:.2rem}.sub{color:#5a6473}code,.mono{font-family:ui-monospace,Menlo,Consolas,monospace;
  font-size:.9em}table{border-collapse:collapse;margin:.4rem 0}th,td{padding:.25rem .7rem;
  border-bottom:1px solid #e6e9ef;text-align:left;vertical-align:top}td.num{text-align:right;
  font-variant-numeric:tabular-nums}ul.tree,ul.tree ul{list-style:none;padding-left:1.2rem;margin:.2rem 0}
ul.tree{padding-left:0}ul.tree li{margin:.25rem 0}.ck{display:inline-block;margin:.1rem .15rem;
  padding:.05rem .4rem;border:1px solid #d8dde6;border-radius:.3rem;font-size:.85em;background:#f7f8fa}
.ck.final{border-color:#2f9e44;background:#ebfbee}.ck.this{border-color:#1c7ed6;background:#e7f5ff;
  font-weight:600}.tag{font-size:.75em;padding:.05rem .35rem;border-radius:.3rem;background:#e7f5ff;
  color:#1864ab;margin-left:.3rem}.ok{color:#2b8a3e}.bad{color:#c92a2a}.warn{color:#b35c00}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(480px,1fr));gap:1rem}
figure{margin:0;border:1px solid #e6e9ef;border-radius:.4rem;padding:.5rem;background:#fff}
figure img{max-width:100%;height:auto;display:block;margin:0 auto}figcaption{font-size:.85em;
  color:#3d4653;margin-top:.3rem}.missing{color:#c92a2a;font-size:.9em}details summary{cursor:pointer}
.cols{display:flex;flex-wrap:wrap;gap:2rem;align-items:flex-start}footer{margin-top:3rem;
  color:#5a6473;font-size:.85em}
"""

#: The page may load nothing: no script at all, no network; only its inline style and the
#: pictures it carries (a markup slip in an escaped string still could not run anything).
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def render(story: Story) -> str:
    """The whole page."""
    sections = [_header(story), _lineage(story), _config(story), _training(story), _metrics(story),
                _evaluation(story), _reconstruction_section(story), _notes(story)]
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<meta http-equiv=\"Content-Security-Policy\" content=\"{CSP}\">"
        "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
        f"<title>{esc(title_of(story))}</title><style>{STYLE}</style></head><body>\n"
        + "\n".join(s for s in sections if s)
        + f"\n<footer>Written by rodin {esc(__version__)} at {esc(story.generated_at)} from the "
        "registry's records; every picture is a stored artifact checked against its sha256."
        "</footer>\n</body></html>\n"
    )


def _img(picture: Picture) -> str:
    if picture.png is None:
        return f"<p class=\"missing\">{esc(picture.caption)}: not shown ({esc(picture.note)})</p>"
    data = base64.b64encode(picture.png).decode("ascii")
    return (f"<figure><img src=\"data:image/png;base64,{data}\" alt=\"{esc(picture.caption)}\">"
            f"<figcaption>{esc(picture.caption)}</figcaption></figure>")


def _header(story: Story) -> str:
    m = story.model
    tags = "".join(f"<span class=\"tag\">{esc(a)}</span>" for a in story.aliases)
    final = " <span class=\"tag\">final</span>" if m["final"] else ""
    facts = [("job", m["job_id"]), ("dataset", m["dataset"]), ("epoch", m["epoch"]),
             ("parent", m["parent_id"] or "-"), ("sha256", m["sha256"]), ("size", f"{m['size_bytes']:,} bytes"),
             ("code", m["code_version"]), ("torch", m["torch_version"]), ("registered", m["created_at"])]
    rows = "".join(f"<tr><th>{esc(k)}</th><td class=\"mono\">{esc(v)}</td></tr>" for k, v in facts)
    return (f"<h1>Model {esc(m['id'])}{tags}{final}</h1>"
            f"<p class=\"sub\">checkpoint of training job {esc(m['job_id'])} on {esc(m['dataset'])}, "
            f"epoch {esc(m['epoch'])}</p><table id=\"model\">{rows}</table>")


def _lineage(story: Story) -> str:
    tree, this = story.tree, story.model["id"]
    ds = story.dataset
    about = f" ({esc(ds['shapes'])} shapes from {esc(ds['source'])})" if ds["ref"] == tree["dataset"] else ""
    return ("<h2>Lineage</h2><p class=\"sub\">dataset version \u2192 training jobs \u2192 their checkpoints; "
            "a job that continued from a checkpoint (a fine-tune, a resumed run) hangs under it.</p>"
            f"<ul class=\"tree\" id=\"lineage\"><li>dataset <b>{esc(tree['dataset'])}</b>{about}"
            f"{_tree_jobs(tree['jobs'], this)}</li></ul>")


def _tree_jobs(jobs: list[dict[str, Any]], this: int) -> str:
    if not jobs:
        return ""
    items = []
    for job in jobs:
        checkpoints = job["checkpoints"]
        chips = " ".join(_chip(c, this) for c in checkpoints)
        if len(checkpoints) > FOLD_CHECKPOINTS:
            shown = " ".join(_chip(c, this) for c in checkpoints if c["final"] or c["model_id"] == this)
            chips = (f"{shown}<details><summary>{len(checkpoints)} checkpoints, epochs "
                     f"{esc(checkpoints[0]['epoch'])}\u2013{esc(checkpoints[-1]['epoch'])}</summary>{chips}</details>")
        later = "".join(
            f"<li>{_fold(c['folded']) + ', then' if c.get('folded') else 'from model ' + esc(c['model_id'])}:"
            f"{_tree_jobs(c['continued_by'], this)}</li>"
            for c in checkpoints if c.get("continued_by"))
        later += "".join(f"<li>{_fold(c['folded'])}</li>" for c in checkpoints
                         if c.get("folded") and not c.get("continued_by"))
        later += "".join(f"<li>{esc(c['continued_by_more'])} more jobs continued from model {esc(c['model_id'])}</li>"
                         for c in checkpoints if c.get("continued_by_more"))
        items.append(f"<li>job <b>{esc(job['job_id'])}</b> on {esc(job['dataset'])}: {chips}"
                     + (f"<ul>{later}</ul>" if later else "") + "</li>")
    return f"<ul>{''.join(items)}</ul>"


def _fold(folded: dict[str, Any]) -> str:
    """What a folded lineage left out after a checkpoint (`orchestrator.lineage.lineage_tree`)."""
    jobs = f" in {esc(folded['jobs'])} more jobs" if folded.get("jobs") else ""
    return f"\u2026 {esc(folded['checkpoints'])} more checkpoints{jobs} \u2026"


def _chip(c: dict[str, Any], this: int) -> str:
    classes = "ck" + (" final" if c["final"] else "") + (" this" if c["model_id"] == this else "")
    val = f" \u00b7 val {c['val_chamfer']:.5f}" if _finite(c.get("val_chamfer")) else ""
    marks = (" final" if c["final"] else "") + (" \u2190 this model" if c["model_id"] == this else "")
    return f"<span class=\"{classes}\">model {esc(c['model_id'])} \u00b7 epoch {esc(c['epoch'])}{val}{marks}</span>"


def _config(story: Story) -> str:
    from atlas_core.config import flatten

    rows = "".join(f"<tr><th class=\"mono\">{esc(k)}</th><td class=\"mono\">{esc(_plain(v))}</td></tr>"
                   for k, v in flatten(story.model["config"] or {}).items())
    return f"<h2>Config</h2><table id=\"config\">{rows}</table>"


def _plain(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(number(v) for v in value) or "-"
    return number(value)


def _training(story: Story) -> str:
    parts = ["<h2>Training</h2>"]
    if story.earlier_jobs:
        parts.append(f"<p class=\"sub\">The {len(story.jobs)} training jobs nearest the model; "
                     f"{esc(story.earlier_jobs)} earlier jobs of its lineage are not shown here.</p>")
    for job, curves in zip(story.jobs, story.loss_curves):
        facts = [("status", job["status"]), ("dataset", job["dataset"] or "-"),
                 ("started from model", job["input_model_id"] or "-"),
                 ("worker", f"{job['worker'] or '-'} ({job['device'] or '-'})"),
                 ("attempts", f"{job['attempts']} ({job['lost']} lost)"),
                 ("started", job["started_at"] or "-"), ("finished", job["finished_at"] or "-")]
        result = job["result"]
        if "final_epoch" in result:
            facts.append(("chosen epoch", f"{result['final_epoch']} of {result.get('last_epoch', '?')}"
                          + (" (stopped early)" if result.get("stopped_early") else "")))
        if job["error"]:
            facts.append(("error", job["error"]))
        rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in facts)
        parts.append(f"<h3>job {esc(job['id'])}</h3><div class=\"cols\"><table class=\"job\">{rows}</table>"
                     f"<div>{_img(curves)}</div></div>")
    return "".join(parts)


def _metrics(story: Story) -> str:
    metrics = story.model["metrics"] or {}
    rows = "".join(
        f"<tr><th class=\"mono\">{esc(k)}</th><td class=\"num\" data-metric=\"{esc(k)}\">{esc(_plain(v))}</td></tr>"
        for k, v in metrics.items() if k not in ("warnings", "ood") and not isinstance(v, dict))
    if isinstance(metrics.get("ood"), dict):
        rows += "<tr><th class=\"mono\">ood</th><td>statistics recorded (out-of-distribution warnings on)</td></tr>"
    warnings = "".join(f"<li class=\"warn\">{esc(w)}</li>" for w in metrics.get("warnings") or [])
    return (f"<h2>Metrics</h2><p class=\"sub\">as registered with the checkpoint</p>"
            f"<table id=\"metrics\"><tr><th>metric</th><th>value</th></tr>{rows}</table>"
            + (f"<ul>{warnings}</ul>" if warnings else ""))


def _evaluation(story: Story) -> str:
    if not story.evaluations:
        return ("<h2>Evaluation against retrieval</h2><p id=\"evaluation\">Not evaluated yet: "
                f"<code>rodin evaluate --model {esc(story.model['id'])} --wait</code>, then write this "
                "report again.</p>")
    parts = ["<h2>Evaluation against retrieval</h2>"]
    for ev in story.evaluations:
        r = ev.result
        rows = [("Chamfer \u00d71e3 (lower is better)", r.get("chamfer"), r.get("retrieval_chamfer")),
                (f"Chamfer \u00d71e3 at {number(r.get('fscore_points'))} points", r.get("chamfer_dense"),
                 r.get("retrieval_chamfer_dense")),
                (f"F-score @ {number(r.get('fscore_threshold'))}", r.get("fscore"), r.get("retrieval_fscore")),
                ("normal consistency", r.get("normal_consistency"), r.get("retrieval_normal_consistency")),
                ("coverage", r.get("coverage"), r.get("retrieval_coverage"))]
        body = "".join(f"<tr><th>{esc(name)}</th><td class=\"num\">{esc(number(model))}</td>"
                       f"<td class=\"num\">{esc(number(retrieval) if retrieval is not None else '')}</td></tr>"
                       for name, model, retrieval in rows)
        wins = f"better on {number(r.get('shapes_beating_retrieval'))} of {number(r.get('shapes'))} shapes"
        verdict = (f"<p class=\"ok\">The model beats retrieval (the nearest of its {esc(number(r.get('retrieval_library')))} "
                   f"training shapes), {esc(wins)}.</p>" if r.get("beats_retrieval") else
                   f"<p class=\"bad\">The model does NOT beat retrieval (copying the nearest of its "
                   f"{esc(number(r.get('retrieval_library')))} training shapes), {esc(wins)}.</p>")
        warnings = "".join(f"<li class=\"warn\">{esc(w)}</li>" for w in r.get("warnings") or [])
        parts.append(
            f"<h3>job {esc(ev.job_id)} on {esc(r.get('dataset', '?'))}</h3><div class=\"cols\"><div>"
            f"<table class=\"evaluation\"><tr><th>metric</th><th>model</th><th>retrieval</th></tr>{body}</table>"
            f"{verdict}" + (f"<ul>{warnings}</ul>" if warnings else "") + "</div>"
            + (f"<div>{_img(ev.plot)}</div>" if ev.plot else "") + "</div>")
    return "".join(parts)


def _reconstruction_section(story: Story) -> str:
    head = "<h2>Reconstructions</h2>"
    if not story.reconstructions:
        return (f"{head}<p id=\"reconstructions\">None yet: <code>rodin reconstruct --model "
                f"{esc(story.model['id'])} --wait</code> (or write this report without "
                "<code>--no-reconstruct</code>).</p>")
    more = (f" {story.more_reconstructions} more are stored and not shown (the newest jobs' come first)."
            if story.more_reconstructions else "")
    return (f"{head}<p class=\"sub\">each input (left) beside the model's reconstruction (right), one colour per "
            f"patch.{more}</p><div class=\"grid\" id=\"reconstructions\">"
            + "".join(_img(p) for p in story.reconstructions) + "</div>")


def _notes(story: Story) -> str:
    if not story.notes:
        return ""
    items = "".join(f"<li>{esc(n)}</li>" for n in story.notes)
    return f"<h2>Not shown</h2><ul class=\"missing\">{items}</ul>"


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _iso(moment: datetime | None) -> str | None:
    moment = as_utc(moment)
    return moment.isoformat(timespec="seconds") if moment else None
