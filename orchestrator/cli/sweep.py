"""`rodin submit sweep`: one training job per combination of settings.

The command takes every setting flag of `rodin submit train`, read from that command's
signature (`train.setting_options`), so a new hyper-parameter is a grid flag with nothing
added here. A flag with a comma list (`--patches 1,5,25`) is a grid axis; a single value is a
fixed setting; on/off flags are fixed settings. Each combination's TrainConfig is built and
validated as `submit train` does (`train.train_config`) before anything is written; then
`orchestrator.jobs.submit_sweep` registers the sweep and its jobs in one transaction.
"""


import inspect
import typing
from copy import copy
from typing import Annotated, Any

import typer
from rich.live import Live
from rich.markup import escape
from typer.models import OptionInfo

from orchestrator.cli.context import settings
from orchestrator.cli.output import Json, console, emit_json, err
from orchestrator.errors import UserInputError

app = typer.Typer()

#: The metavar of a grid flag, by the setting's type.
_METAVARS = {int: "INT,...", float: "FLOAT,...", str: "TEXT,..."}

_KW = inspect.Parameter.KEYWORD_ONLY


def sweep(**values: Any) -> None:
    """Queue one training job per combination of settings; prints the sweep id.

    Every setting flag of `rodin submit train` is accepted. Give a comma list to sweep a
    setting (`--patches 1,5,25 --template square,sphere`): each combination is one job, and
    every combination is checked before anything is queued. Several workers run a sweep's
    jobs in parallel, as they run any queued jobs (`rodin worker` on more machines or GPUs).
    Rank them with `rodin status --sweep ID`.
    """
    queue_sweep(values)


def add_command(options: list[tuple[inspect.Parameter, OptionInfo]]) -> None:
    """Register `sweep` with the training settings of `rodin submit train` as its flags.

    Called by orchestrator.cli.train with its settings, so that this module does not import
    train at module level (train imports it)."""
    params = [
        inspect.Parameter("dataset", _KW, annotation=Annotated[str, typer.Option(
            "--dataset", "-d", help="NAME or NAME@VERSION.")]),
        *(_grid_parameter(param, info) for param, info in options),
        inspect.Parameter("from_model", _KW, default=None, annotation=Annotated[str | None, typer.Option(
            "--from-model", metavar="ID|ALIAS", show_default=False,
            help="Fine-tune every combination from this registered model (id or alias); "
                 "its architecture is kept, so it cannot be swept.")]),
        inspect.Parameter("pretrain", _KW, default=None, annotation=Annotated[str | None, typer.Option(
            "--pretrain", hidden=True)]),  # refused with the way round it (see queue_sweep)
        inspect.Parameter("reference", _KW, default=False, annotation=Annotated[bool, typer.Option(
            "--reference", help="Start every combination from the paper's configuration.")]),
        inspect.Parameter("wait", _KW, default=False, annotation=Annotated[bool, typer.Option(
            "--wait", help="Follow every job until all end, then rank them; non-zero exit "
                           "if any fails.")]),
        inspect.Parameter("as_json", _KW, default=False, annotation=Json),
    ]
    sweep.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    app.command("sweep")(sweep)


def _grid_parameter(param: inspect.Parameter, info: OptionInfo) -> inspect.Parameter:
    """A setting of `train` as a grid flag: the same names and help, taking a comma list
    (text, parsed by `queue_sweep`); an on/off flag stays as it is."""
    kind = _kind(param)
    if kind is bool:
        return param.replace(kind=_KW)
    grid = copy(info)
    grid.metavar = _METAVARS.get(kind, "TEXT,...")
    return param.replace(kind=_KW, annotation=Annotated[str | None, grid])


def _kind(param: inspect.Parameter) -> type:
    """`Annotated[int | None, ...]` -> int."""
    base = typing.get_args(param.annotation)[0]
    return next(t for t in typing.get_args(base) or (base,) if t is not type(None))


def queue_sweep(values: dict[str, Any]) -> None:
    """Validate every combination, register the sweep and its jobs, then print or follow."""
    from orchestrator import jobs
    from orchestrator.cli.train import print_notes, resolve_start, scratch_warnings, setting_options
    from orchestrator.sweeps import combinations, split_grid

    if values["pretrain"] is not None:
        raise UserInputError("a sweep does not pre-train: fine-tune from a base with --from-model ID "
                             "(`rodin submit train --pretrain FAMILY --json` prints its base_model_id)")
    kinds = {param.name: _kind(param) for param, _ in setting_options()}
    grid, fixed = split_grid(_lists(values, kinds))
    combos = combinations(grid)
    start = resolve_start(values["dataset"], values["from_model"])
    configs = [_config(combo, fixed, values["reference"], start.parent_config) for combo in combos]
    warnings = scratch_warnings(start)
    as_json = values["as_json"]
    _ensure_worker(quiet=as_json)
    sweep_id, job_ids = jobs.submit_sweep(
        settings(), dataset_id=start.dataset_id, grid=grid, fixed=fixed,
        input_model_id=start.model_id,
        params=[{"config": c.to_dict(), "dataset": start.ref, "sweep": combo}
                for c, combo in zip(configs, combos)])
    if not as_json:
        print_notes(warnings)
        err.print(f"Queued sweep [bold]{sweep_id}[/]: {len(job_ids)} training job"
                  f"{'s' if len(job_ids) != 1 else ''} ({_span(job_ids)}) on {escape(start.ref)}"
                  + (f", fine-tuning model {start.model_id}" if start.model_id else "")
                  + f"; rank them with `rodin status --sweep {sweep_id}`.")
    if not values["wait"]:
        if as_json:
            emit_json({"sweep_id": sweep_id, "job_ids": job_ids, "warnings": warnings})
        else:
            console.print(sweep_id)
        return
    _follow(sweep_id, quiet=as_json, warnings=warnings)


def _lists(values: dict[str, Any], kinds: dict[str, type]) -> dict[str, list[Any]]:
    """The settings given, each as its list of values (an on/off flag: one value)."""
    from orchestrator.cli.train import setting_flags, settings_given
    from orchestrator.sweeps import split_values

    flags = setting_flags()
    return {name: [value] if isinstance(value, bool) else split_values(value, kinds[name], flags[name])
            for name, value in settings_given(values).items()}


def _config(combo: dict[str, Any], fixed: dict[str, Any], reference: bool,
            parent: dict[str, Any] | None) -> Any:
    """One combination's TrainConfig, as `submit train` would build it; a bad one names itself."""
    from orchestrator.cli.train import train_config

    try:
        return train_config({**fixed, **combo}, reference, parent)
    except UserInputError as exc:
        if not combo:
            raise
        raise UserInputError(f"{label(combo)}: {exc}") from None


def label(combo: dict[str, Any]) -> str:
    """A combination as the flags that make it: `--patches 5 --template sphere`."""
    from orchestrator.cli.train import setting_flags

    flags = setting_flags()
    return " ".join(f"{flags.get(name, name)} {value}" for name, value in combo.items())


def _span(ids: list[int]) -> str:
    """'jobs 12-15' for consecutive ids, else the list."""
    if len(ids) == 1:
        return f"job {ids[0]}"
    if ids == list(range(ids[0], ids[0] + len(ids))):
        return f"jobs {ids[0]}-{ids[-1]}"
    return "jobs " + ", ".join(map(str, ids))


def _ensure_worker(quiet: bool) -> None:
    """On the embedded default, start a background worker if none is alive (as `submit train`)."""
    from workers.supervisor import ensure_local_worker

    started = ensure_local_worker(settings())
    if started is not None and not quiet:
        err.print(f"No worker was running: started one in the background (pid {started.pid}, "
                  f"log {escape(str(started.log))}); stop it with `rodin down`.")


def _follow(sweep_id: int, *, quiet: bool, warnings: list[str]) -> None:
    """Follow every job of the sweep to its end (a live ranking on stderr), then print the
    ranking; exit 1 unless every job succeeded."""
    from orchestrator import jobs
    from orchestrator.cli.jobs import sweep_json, sweep_table
    from orchestrator.sweeps import best, rank

    try:
        if quiet:
            final = jobs.wait_sweep(settings(), sweep_id, poll_s=1.0)
        else:
            with Live(console=err, refresh_per_second=4, transient=True) as live:
                final = jobs.wait_sweep(settings(), sweep_id, lambda s: live.update(sweep_table(s)),
                                        poll_s=1.0)
    except KeyboardInterrupt:
        err.print(f"Stopped following; the jobs of sweep {sweep_id} go on "
                  f"(`rodin status --sweep {sweep_id}`, `rodin cancel JOB`).")
        raise typer.Exit(130) from None
    rows = rank(final, jobs.eta_s)
    top = best(rows)
    failed = [row["job_id"] for row in rows if row["status"] != "succeeded"]
    if quiet:
        emit_json({**sweep_json(final), "status": "failed" if failed else "succeeded",
                   "best_job_id": top["job_id"] if top else None,
                   "best_model_id": top["final_model_id"] if top else None, "warnings": warnings})
    else:
        console.print(sweep_table(final))
        if top is not None:
            err.print(f"Best: job {top['job_id']} ({escape(label(top['settings']))}), validation "
                      f"Chamfer {top['val_chamfer']:.5f}: model [bold]{top['final_model_id']}[/] "
                      f"(`rodin models show {top['final_model_id']}`).")
        if failed:
            err.print(f"[red]{len(failed)} of {len(rows)} jobs did not succeed[/] "
                      f"({', '.join(map(str, failed))}; `rodin status JOB` says why).")
    if failed:
        raise typer.Exit(1)
