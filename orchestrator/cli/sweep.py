"""`rodin submit sweep`: one training job per combination of settings.

The command takes every setting flag of `rodin submit train`, generated from the same
declaration (atlas_core.config, through `orchestrator.cli.submitting.with_settings`), so a new
hyper-parameter is a grid flag with nothing added here. A flag with a comma list
(`--patches 1,5,25`) is a grid axis; a single value is a fixed setting; on/off flags are fixed
settings. `orchestrator.training.plan_sweep` builds and validates each combination's
TrainConfig as `submit train` does before anything is written; `submit_sweep` then registers
the sweep and its jobs in one transaction.
"""


from contextlib import nullcontext
from typing import Annotated, Any

import typer
from rich.live import Live
from rich.markup import escape

from orchestrator.cli.context import settings
from orchestrator.cli.output import Json, console, emit_json, err
from orchestrator.cli.submitting import ensure_worker, flag_settings, given_settings, print_notes, with_settings
from orchestrator.errors import UserInputError
from orchestrator.job_states import JobStatus

app = typer.Typer()


@app.command("sweep")
@with_settings(grid=True)
def sweep(
    dataset: Annotated[str, typer.Option("--dataset", "-d", help="NAME or NAME@VERSION.")],
    from_model: Annotated[str | None, typer.Option(
        "--from-model", metavar="ID|ALIAS", show_default=False,
        help="Fine-tune every combination from this registered model (id or alias); "
             "its architecture is kept, so it cannot be swept.")] = None,
    # Hidden: refused with the way round it, rather than as an unknown option.
    pretrain: Annotated[str | None, typer.Option("--pretrain", hidden=True)] = None,
    reference: Annotated[bool, typer.Option(
        "--reference", help="Start every combination from the paper's configuration.")] = False,
    wait: Annotated[bool, typer.Option(
        "--wait", help="Follow every job until all end, then rank them; non-zero exit if any fails.")] = False,
    as_json: Json = False,
    **given: Any,
) -> None:
    """Queue one training job per combination of settings; prints the sweep id.

    Every setting flag of `rodin submit train` is accepted. Give a comma list to sweep a setting (`--patches 1,5,25 --template square,sphere`): each combination is one job, and every combination is checked before anything is queued. Several workers run a sweep's jobs in parallel, as they run any queued jobs (`rodin worker` on more machines or GPUs). Rank them with `rodin status --sweep ID`.
    """
    from orchestrator.training import plan_sweep, submit_sweep

    if pretrain is not None:
        raise UserInputError("a sweep does not pre-train: fine-tune from a base with --from-model ID "
                             "(`rodin submit train --pretrain FAMILY --json` prints its base_model_id)")
    plan = plan_sweep(settings(), dataset, _lists(given_settings(given)), reference=reference,
                      from_model=from_model)
    ensure_worker(quiet=as_json)
    submitted = submit_sweep(settings(), plan)
    sweep_id, job_ids, warnings = submitted.sweep_id, submitted.job_ids, submitted.warnings
    if not as_json:
        print_notes(warnings)
        err.print(f"Queued sweep [bold]{sweep_id}[/]: {len(job_ids)} training job"
                  f"{'s' if len(job_ids) != 1 else ''} ({_span(job_ids)}) on {escape(submitted.dataset_ref)}"
                  + (f", fine-tuning model {submitted.input_model_id}" if submitted.input_model_id else "")
                  + f"; rank them with `rodin status --sweep {sweep_id}`.")
    if not wait:
        if as_json:
            emit_json({"sweep_id": sweep_id, "job_ids": job_ids, "warnings": warnings})
        else:
            console.print(sweep_id)
        return
    _follow(sweep_id, quiet=as_json, warnings=warnings)


def _lists(given: dict[str, Any]) -> dict[str, list[Any]]:
    """The settings given, each as its list of values (an on/off flag: one value); a value
    that does not parse names its flag."""
    from orchestrator.sweeps import split_values

    settings_by_name = {s.name: s for s in flag_settings()}
    lists = {}
    for name, value in given.items():
        setting = settings_by_name[name]
        lists[name] = [value] if isinstance(value, bool) else split_values(value, setting.kind, str(setting.flag))
    return lists


def _span(ids: list[int]) -> str:
    """'jobs 12-15' for consecutive ids, else the list."""
    if len(ids) == 1:
        return f"job {ids[0]}"
    if ids == list(range(ids[0], ids[0] + len(ids))):
        return f"jobs {ids[0]}-{ids[-1]}"
    return "jobs " + ", ".join(map(str, ids))


def _follow(sweep_id: int, *, quiet: bool, warnings: list[str]) -> None:
    """Follow every job of the sweep to its end (a live ranking on stderr), then print the
    ranking; exit 1 unless every job succeeded."""
    from atlas_core.config import as_flags
    from orchestrator import jobs
    from orchestrator.cli.jobs import sweep_json, sweep_table
    from orchestrator.sweeps import best, rank

    try:
        with Live(console=err, refresh_per_second=4, transient=True) if not quiet else nullcontext() as live:
            for final in jobs.watch(settings(), sweep_id=sweep_id, poll_s=1.0):
                if live is not None:
                    live.update(sweep_table(final))
    except KeyboardInterrupt:
        err.print(f"Stopped following; the jobs of sweep {sweep_id} go on "
                  f"(`rodin status --sweep {sweep_id}`, `rodin cancel JOB`).")
        raise typer.Exit(130) from None
    rows = rank(final)
    top = best(rows)
    failed = [row.job.id for row in rows if row.job.status is not JobStatus.succeeded]
    if quiet:
        emit_json({**sweep_json(final), "status": "failed" if failed else "succeeded",
                   "best_job_id": top.job.id if top else None,
                   "best_model_id": top.job.final_model_id if top else None, "warnings": warnings})
    else:
        console.print(sweep_table(final))
        if top is not None and top.val_chamfer is not None:
            model = top.job.final_model_id
            err.print(f"Best: job {top.job.id} ({escape(as_flags(top.settings))}), validation "
                      f"Chamfer {top.val_chamfer:.5f}: model [bold]{model}[/] (`rodin models show {model}`).")
        if failed:
            err.print(f"[red]{len(failed)} of {len(rows)} jobs did not succeed[/] "
                      f"({', '.join(map(str, failed))}; `rodin status JOB` says why).")
    if failed:
        raise typer.Exit(1)
