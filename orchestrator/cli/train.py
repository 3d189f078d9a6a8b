"""`rodin submit train`: queue AtlasNet training on a registered dataset.

The defaults come from `TrainConfig.cpu()` (or `TrainConfig.reference()` with `--reference`);
every flag that is given replaces one setting by its name in `TrainConfig.flat()`. A new
hyper-parameter is a field of TrainConfig (or ModelConfig/AugmentConfig) and a parameter of
`train` below with the same name; nothing else (`rodin submit sweep` takes every setting of
`train` as a grid flag, from its signature).
"""


import inspect
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from typer.models import OptionInfo

from orchestrator.cli.context import registry, settings, store
from orchestrator.cli.follow import follow, queue_job, report_end, wait_with_progress
from orchestrator.cli.output import Json, err
from orchestrator.errors import UserInputError
from orchestrator.registry.models import JobKind

if TYPE_CHECKING:
    from atlas_core.config import TrainConfig
    from atlas_core.families import PretrainRecipe

app = typer.Typer(help="Queue work for the workers.", no_args_is_help=True)
#: Fine-tuning keeps the model being fine-tuned's architecture: these flags may not change it.
ARCHITECTURE = ("n_patches", "template", "bottleneck", "hidden", "layers")
#: Parameters of `train` that are not training settings.
NOT_SETTINGS = ("dataset", "from_model", "pretrain", "pretrain_shapes", "pretrain_epochs", "reference",
                "wait", "as_json")
#: Fewer shapes than this, trained from scratch, usually lose to retrieval (README, Figures).
SMALL_DATASET = 200


@lru_cache(maxsize=1)
def _presets() -> tuple[dict[str, Any], dict[str, Any], Any]:
    """The CPU and reference presets (flat) and the pre-training recipe's defaults, for the help
    text. atlas_core.config and .families are plain dataclasses (no torch, no trimesh)."""
    from atlas_core.config import TrainConfig
    from atlas_core.families import PretrainRecipe

    return TrainConfig.cpu().flat(), TrainConfig.reference().flat(), PretrainRecipe()


def _help(text: str, name: str) -> str:
    """Help text with the default read from the presets."""
    cpu_preset, reference_preset, _ = _presets()
    cpu, ref = cpu_preset[name], reference_preset[name]
    shown = (lambda v: "on" if v else "off") if isinstance(cpu, bool) else str
    default = f"default: {shown(cpu)}" + (f"; --reference: {shown(ref)}" if ref != cpu else "")
    return f"{text} ({default})."


def _setting(text: str, name: str, *flags: str) -> Any:
    return typer.Option(*flags, help=_help(text, name), show_default=False)


@app.command("train")
def train(
    dataset: Annotated[str, typer.Option("--dataset", "-d", help="NAME or NAME@VERSION.")],
    epochs: Annotated[int | None, _setting("Epochs", "epochs")] = None,
    n_patches: Annotated[int | None, _setting("Atlas patches K", "n_patches", "--patches")] = None,
    template: Annotated[str | None, _setting("Patch template: square or sphere", "template")] = None,
    n_points: Annotated[int | None, _setting("Points per shape per step", "n_points", "--points")] = None,
    batch_size: Annotated[int | None, _setting("Shapes per step", "batch_size")] = None,
    lr: Annotated[float | None, _setting("Adam learning rate, /10 at 80, 93, 97% of epochs", "lr")] = None,
    bottleneck: Annotated[int | None, _setting("Latent size", "bottleneck")] = None,
    hidden: Annotated[int | None, _setting("Decoder width", "hidden")] = None,
    layers: Annotated[int | None, _setting("Hidden layers per decoder", "layers")] = None,
    val_fraction: Annotated[float | None, _setting("Shapes held out for validation", "val_fraction")] = None,
    checkpoint_every: Annotated[int | None, _setting("Register a checkpoint every E epochs", "checkpoint_every")] = None,
    seed: Annotated[int | None, _setting("Seed for the split, sampling and initialisation", "seed")] = None,
    augment_rotate: Annotated[bool | None, _setting(
        "Rotate each shape about its principal axis", "augment_rotate",
        "--augment-rotate/--no-augment-rotate")] = None,
    augment_scale: Annotated[float | None, _setting("Anisotropic scaling by up to ±S per axis", "augment_scale")] = None,
    augment_jitter: Annotated[float | None, _setting("Gaussian point noise, std in unit-ball units", "augment_jitter")] = None,
    keep_best: Annotated[bool | None, _setting(
        "Final model: the best validation Chamfer (on) or the last epoch (off)", "keep_best",
        "--keep-best/--keep-last")] = None,
    patience: Annotated[int | None, _setting(
        "Stop after P epochs without a better validation Chamfer, 0: never", "patience")] = None,
    from_model: Annotated[str | None, typer.Option(
        "--from-model", metavar="ID|ALIAS", show_default=False,
        help="Fine-tune from this registered model (id or alias).")] = None,
    pretrain: Annotated[str | None, typer.Option(
        "--pretrain", metavar="FAMILY", show_default=False,
        help="Fine-tune from a base model pre-trained on this procedural family (swords): the "
             "registry's base with the same recipe and architecture, else its pre-training is "
             "queued first. Fine-tuning follows rodin's measured recipe (lr 1e-4, 40 epochs, "
             "scaling 0.1), each value overridable by its flag.")] = None,
    pretrain_shapes: Annotated[int | None, typer.Option(
        "--pretrain-shapes", min=2, show_default=False,
        help=f"Generated shapes to pre-train on (default: {_presets()[2].count}).")] = None,
    pretrain_epochs: Annotated[int | None, typer.Option(
        "--pretrain-epochs", min=1, show_default=False,
        help=f"Pre-training epochs (default: {_presets()[2].epochs}).")] = None,
    reference: Annotated[bool, typer.Option(
        "--reference", help="Start from the paper's configuration (150 epochs, K=25, 2500 points, 1024/512).")] = False,
    wait: Annotated[bool, typer.Option("--wait", help="Follow the job until it ends; non-zero exit if it fails.")] = False,
    as_json: Json = False,
) -> None:
    """Queue AtlasNet training on a registered dataset; prints the job id."""
    given = settings_given(locals())
    if pretrain is not None and from_model is not None:
        raise UserInputError("--pretrain and --from-model both name where training starts; give one")
    start = resolve_start(dataset, from_model)
    dataset_id, ref, parent, start_id = start.dataset_id, start.ref, start.parent_config, start.model_id
    if pretrain is not None:
        from atlas_core.families import PretrainRecipe

        recipe = PretrainRecipe(family=pretrain)
        recipe = replace(recipe, count=pretrain_shapes or recipe.count, epochs=pretrain_epochs or recipe.epochs)
        _finetune_pretrained(recipe, given, reference, dataset_id, ref, wait, as_json)
        return
    config = train_config(given, reference, parent)
    warnings = scratch_warnings(start)
    job_id = queue_job(JobKind.train, quiet=as_json, dataset_id=dataset_id, input_model_id=start_id,
                       params={"config": config.to_dict(), "dataset": ref})
    if not as_json:
        print_notes(warnings)
        err.print(f"Queued training job [bold]{job_id}[/] on {escape(ref)}"
                  + (f", fine-tuning model {start_id}" if start_id else "") + ".")
    follow(job_id, wait=wait, as_json=as_json, queued={"warnings": warnings},
           extra=lambda summary: {"model_id": summary["final_model_id"], "warnings": warnings})


def _finetune_pretrained(recipe: "PretrainRecipe", given: dict[str, Any], reference: bool,
                         dataset_id: int, ref: str, wait: bool, as_json: bool) -> None:
    """Fine-tune on the dataset from a base pre-trained by `recipe` (found, or queued first)."""
    from atlas_core.families import FAMILIES
    from orchestrator import jobs
    from orchestrator.pretrain import find_or_queue_base, matching_turn

    family = recipe.family
    if family not in FAMILIES:
        raise UserInputError(f"--pretrain {family!r}: no such procedural family; known: "
                             f"{', '.join(sorted(FAMILIES))}")
    config = train_config({**recipe.finetune, **given}, reference, None)
    recipe = replace(recipe, turn=matching_turn(settings(), store(), family, dataset_id))
    base = find_or_queue_base(settings(), store(), recipe, config)
    job_id = queue_job(JobKind.train, quiet=as_json, dataset_id=dataset_id,
                       input_model_id=base.model_id, depends_on=base.pretrain_job_id,
                       params={"config": config.to_dict(), "dataset": ref, "base": base.as_params()})
    if not as_json:
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

    def base_model_id() -> int | None:
        if base.model_id is not None or base.pretrain_job_id is None:
            return base.model_id
        return jobs.summary(settings(), base.pretrain_job_id)["final_model_id"]

    ids = {"pretrain_job_id": base.pretrain_job_id}
    if wait and base.pretrain_job_id is not None:
        pretrained = wait_with_progress(base.pretrain_job_id, quiet=as_json)
        if not as_json:
            report_end(pretrained)
    follow(job_id, wait=wait, as_json=as_json, queued={**ids, "base_model_id": base.model_id},
           extra=lambda summary: {"model_id": summary["final_model_id"], **ids,
                                  "base_model_id": base_model_id()})


@dataclass(frozen=True)
class Start:
    """Where training starts: the dataset version, and the model fine-tuned from (if any)."""

    dataset_id: int
    ref: str
    shapes: int
    #: The fine-tuned model's stored config and id; None when training from scratch.
    parent_config: dict[str, Any] | None
    model_id: int | None


def resolve_start(dataset: str, from_model: str | None) -> Start:
    """The registered dataset version and `--from-model` (id or alias); unknown: exit 2."""
    from orchestrator.aliases import resolve_model
    from orchestrator.registry.queries import resolve_dataset

    with registry() as s:
        ds = resolve_dataset(s, dataset)
        model = resolve_model(s, from_model) if from_model is not None else None
        return Start(ds.id, ds.ref, ds.shape_count, model.config if model is not None else None,
                     model.id if model is not None else None)


def settings_given(values: dict[str, Any]) -> dict[str, Any]:
    """A command's parameters that are training settings and were given (by TrainConfig name)."""
    return {k: v for k, v in values.items() if k not in NOT_SETTINGS and v is not None}


def scratch_warnings(start: Start) -> list[str]:
    """What to tell someone training from scratch on a dataset too small for it."""
    if start.model_id is not None or start.shapes >= SMALL_DATASET:
        return []
    return [f"{start.ref} has {start.shapes} shapes: trained from scratch on so few, AtlasNet usually "
            "loses to retrieval (copying the nearest training shape); `--pretrain swords` "
            "fine-tunes a pre-trained base instead"]


def print_notes(warnings: list[str]) -> None:
    for warning in warnings:
        err.print(f"[yellow]note:[/] {escape(warning)}")


def train_config(given: dict[str, Any], reference: bool, parent: dict[str, Any] | None) -> "TrainConfig":
    """The preset, the fine-tuned model's architecture, then the flags given; validated."""
    from atlas_core.config import TrainConfig

    config = TrainConfig.reference() if reference else TrainConfig.cpu()
    if parent is not None:
        model = TrainConfig.from_dict(parent).model
        for name in ARCHITECTURE:
            if name in given and given[name] != getattr(model, name):
                raise UserInputError(
                    f"--{name.replace('n_', '').replace('_', '-')} {given[name]} differs from the "
                    f"model being fine-tuned ({getattr(model, name)}); drop the flag to keep its architecture"
                )
        config = config.with_overrides(**{name: getattr(model, name) for name in ARCHITECTURE})
    config = config.with_overrides(**given)
    try:
        config.validate()
    except ValueError as exc:
        raise UserInputError(f"invalid training settings: {exc}") from None
    return config


def setting_options() -> list[tuple[inspect.Parameter, OptionInfo]]:
    """The parameters of `train` that are training settings, with their options, in order:
    what `rodin submit sweep` offers as grid flags."""
    found = []
    for param in inspect.signature(train, eval_str=True).parameters.values():
        infos = [m for m in getattr(param.annotation, "__metadata__", ()) if isinstance(m, OptionInfo)]
        if param.name not in NOT_SETTINGS and infos:
            found.append((param, infos[0]))
    return found


@lru_cache(maxsize=1)
def setting_flags() -> dict[str, str]:
    """Each training setting's flag as `train` spells it: n_patches -> --patches."""
    flags = {}
    for param, info in setting_options():
        # In `Annotated[..., typer.Option("--x")]` typer keeps the first name in `default`.
        names = [info.default, *(info.param_decls or ())] if isinstance(info.default, str) \
            else list(info.param_decls or ())
        long = [n.split("/")[0] for n in names if n.startswith("--")]
        flags[param.name] = long[0] if long else "--" + param.name.replace("_", "-")
    return flags


def _add_sweep() -> None:
    from orchestrator.cli import sweep

    sweep.add_command(setting_options())
    app.add_typer(sweep.app)  # `rodin submit sweep`


_add_sweep()
