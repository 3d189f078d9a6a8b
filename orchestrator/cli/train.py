"""`rodin submit train`: queue AtlasNet training on a registered dataset.

Parse, then `orchestrator.training` plans the job (dataset, model, settings checked; nothing
written), a local worker is started if none is alive, the job is submitted, and the result is
printed or followed. The setting flags come from atlas_core.config's declaration
(`orchestrator.cli.submitting.with_settings`): a new hyper-parameter is a declared field of
TrainConfig (or ModelConfig/AugmentConfig) and nothing here.
"""


from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from orchestrator.cli import sweep
from orchestrator.cli.context import settings, store
from orchestrator.cli.follow import follow, report_end, wait_with_progress
from orchestrator.cli.output import Json, err
from orchestrator.cli.submitting import ensure_worker, given_settings, print_notes, with_settings

if TYPE_CHECKING:
    from orchestrator.pretrain import Base

app = typer.Typer(help="Queue work for the workers.", no_args_is_help=True)
app.add_typer(sweep.app)  # `rodin submit sweep`


def _recipe() -> Any:
    """The pre-training recipe's defaults, for the help text (a plain dataclass: no torch)."""
    from atlas_core.families import PretrainRecipe

    return PretrainRecipe()


@app.command("train")
@with_settings(grid=False)
def train(
    dataset: Annotated[str, typer.Option("--dataset", "-d", help="NAME or NAME@VERSION.")],
    from_model: Annotated[str | None, typer.Option(
        "--from-model", metavar="ID|ALIAS", show_default=False,
        help="Fine-tune from this registered model (id or alias).")] = None,
    pretrain: Annotated[str | None, typer.Option(
        "--pretrain", metavar="FAMILY", show_default=False,
        help="Fine-tune from a base model pre-trained on this procedural family (`rodin datasets "
             "families` lists them), or `auto` to choose the family whose shapes are nearest the "
             "dataset's: the registry's base with the same recipe and architecture, else its "
             "pre-training is queued first (auto builds at most one base, and prefers one that "
             "exists when it is nearly as near). Fine-tuning follows rodin's measured recipe "
             "(lr 1e-4, 40 epochs, scaling 0.1, rehearsal 0.5), each value overridable by its flag.")] = None,
    pretrain_shapes: Annotated[int | None, typer.Option(
        "--pretrain-shapes", min=2, show_default=False,
        help=f"Generated shapes to pre-train on (default: {_recipe().count}).")] = None,
    pretrain_epochs: Annotated[int | None, typer.Option(
        "--pretrain-epochs", min=1, show_default=False,
        help=f"Pre-training epochs (default: {_recipe().epochs}).")] = None,
    reference: Annotated[bool, typer.Option(
        "--reference", help="Start from the paper's configuration (150 epochs, K=25, 2500 points, 1024/512).")] = False,
    wait: Annotated[bool, typer.Option("--wait", help="Follow the job until it ends; non-zero exit if it fails.")] = False,
    as_json: Json = False,
    **given: Any,
) -> None:
    """Queue AtlasNet training on a registered dataset; prints the job id."""
    from orchestrator.training import TrainingRequest, plan_training, submit_training

    request = TrainingRequest(dataset, given_settings(given), reference, from_model, pretrain,
                              pretrain_shapes, pretrain_epochs)
    plan = plan_training(settings(), request)
    ensure_worker(quiet=as_json)
    submitted = submit_training(settings(), store(), plan)
    if submitted.base is not None:
        _follow_finetune(submitted.job_id, submitted.dataset_ref, submitted.base, wait=wait, as_json=as_json)
        return
    warnings, model_id = submitted.warnings, submitted.input_model_id
    if not as_json:
        print_notes(warnings)
        err.print(f"Queued training job [bold]{submitted.job_id}[/] on {escape(submitted.dataset_ref)}"
                  + (f", fine-tuning model {model_id}" if model_id else "") + ".")
    follow(submitted.job_id, wait=wait, as_json=as_json, queued={"warnings": warnings},
           extra=lambda job: {"model_id": job.final_model_id, "warnings": warnings})


def _follow_finetune(job_id: int, ref: str, base: "Base", *, wait: bool, as_json: bool) -> None:
    """Say which base the fine-tune starts from, then follow the pre-training (if queued) and
    the fine-tune."""
    from orchestrator.pretrain import base_model_id

    family = base.family
    if not as_json:
        if base.choice is not None:
            _print_choice(base.choice)
        if base.turn != "identity":
            err.print(f"{escape(ref)}'s shapes lie otherwise than generated {family}: the pre-training "
                      f"set is turned to match ({base.turn}).")
        if base.model_id is not None:
            err.print(f"Using base model [bold]{base.model_id}[/] (pre-trained on {family}; "
                      f"`rodin models show {base.model_id}`).")
        else:
            how = "Queued" if base.queued_now else "Waiting for"
            err.print(f"{how} pre-training job [bold]{base.pretrain_job_id}[/] on generated {family}: "
                      "its final model will be the base.")
        err.print(f"Queued fine-tuning job [bold]{job_id}[/] on {escape(ref)}"
                  + (f", waiting for job {base.pretrain_job_id}" if base.pretrain_job_id else "") + ".")

    ids: dict[str, Any] = {"pretrain_job_id": base.pretrain_job_id}
    if base.choice is not None:
        ids["family_choice"] = base.choice
    if wait and base.pretrain_job_id is not None:
        pretrained = wait_with_progress(base.pretrain_job_id, quiet=as_json)
        if not as_json:
            report_end(pretrained)
    follow(job_id, wait=wait, as_json=as_json, queued={**ids, "base_model_id": base.model_id},
           extra=lambda job: {"model_id": job.final_model_id, **ids,
                                  "base_model_id": base_model_id(settings(), base)})


def _print_choice(choice: dict[str, Any]) -> None:
    """`--pretrain auto`'s reasoning: the family chosen, then every family's score."""
    from rich.table import Table

    err.print(f"--pretrain auto chose [bold]{escape(choice['family'])}[/]: {escape(choice['reason'])}.")
    table = Table(title="nearest generated shape, mean Chamfer x10^3 (lower is nearer)", title_justify="left")
    for column in ("family", "Chamfer", "base"):
        table.add_column(column)
    for row in choice["scores"]:
        base = ("exists" if row["has_base"] else
                f"none (pre-training: about {max(1, round(row['pretrain_estimate_s'] / 60))} min on a quiet 2-core CPU worker)")
        table.add_row(escape(row["family"]), f"{row['chamfer']:.3g}", base)
    err.print(table)
