"""Training submission: the service behind `rodin submit train` and `rodin submit sweep`.

Two steps, so that nothing is written before everything is checked. `plan_training` and
`plan_sweep` resolve the dataset and the model fine-tuned from, and build and validate every
TrainConfig: the preset (`TrainConfig.cpu()`, or `reference()`), then the fine-tuned model's
architecture, then the settings given, by their flat names (atlas_core.config's declaration).
`submit_training` and `submit_sweep` then write: the job (after the pre-training flow for
`--pretrain`), or the sweep and its jobs. Between the two a client starts a local worker if
none is alive (the core does not reach the workers). Nothing here prints: the results are
typed, and the CLI words them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from orchestrator import jobs
from orchestrator.errors import UserInputError
from orchestrator.registry.db import session_scope
from orchestrator.registry.models import JobKind
from orchestrator.settings import Settings

if TYPE_CHECKING:
    from atlas_core.config import TrainConfig
    from atlas_core.families import PretrainRecipe
    from orchestrator.artifacts import ArtifactStore
    from orchestrator.pretrain import Base

#: Fewer shapes than this, trained from scratch, usually lose to retrieval (README, Figures).
SMALL_DATASET = 200
#: `--pretrain auto`: choose the family (orchestrator.pretrain.choose_family).
AUTO = "auto"


@dataclass(frozen=True)
class Start:
    """Where training starts: the dataset version, and the model fine-tuned from (if any)."""

    dataset_id: int
    ref: str
    shapes: int
    #: The fine-tuned model's stored config and id; None when training from scratch.
    parent_config: dict[str, Any] | None
    model_id: int | None


@dataclass(frozen=True)
class TrainingRequest:
    """What `rodin submit train` was asked."""

    dataset: str
    #: The training settings given, by flat name (`n_patches`, `augment_scale`).
    given: dict[str, Any] = field(default_factory=dict)
    reference: bool = False
    from_model: str | None = None
    #: A procedural family to pre-train a base on (`--pretrain`), and that pre-training's size.
    pretrain: str | None = None
    pretrain_shapes: int | None = None
    pretrain_epochs: int | None = None


@dataclass(frozen=True)
class TrainingPlan:
    """A training job checked and ready to submit; nothing is written yet."""

    start: Start
    config: TrainConfig
    #: What to tell someone training from scratch on too few shapes (`scratch_warnings`).
    warnings: list[str]
    #: With `--pretrain FAMILY`: the base's recipe (its turn is read when submitting); with
    #: `--pretrain auto`, one recipe per family, chosen among when submitting.
    recipes: tuple[PretrainRecipe, ...] = ()
    auto: bool = False


@dataclass(frozen=True)
class SubmittedTraining:
    """A training job registered and sent (or, after a pre-training job, waiting for it)."""

    job_id: int
    dataset_ref: str
    #: The model fine-tuned from: `--from-model`'s, or the registered base of `--pretrain`.
    input_model_id: int | None
    warnings: list[str]
    #: With `--pretrain`: the base model found, or the pre-training job that will make it.
    base: Base | None = None


@dataclass(frozen=True)
class SweepPlan:
    """A sweep's combinations, each checked as `submit train` checks one; nothing written."""

    start: Start
    #: The swept settings (each with two values or more) and the fixed ones, by flat name.
    grid: dict[str, list[Any]]
    fixed: dict[str, Any]
    combinations: list[dict[str, Any]]
    configs: list[TrainConfig]
    warnings: list[str]


@dataclass(frozen=True)
class SubmittedSweep:
    sweep_id: int
    job_ids: list[int]
    dataset_ref: str
    input_model_id: int | None
    warnings: list[str]


def resolve_start(settings: Settings, dataset: str, from_model: str | None) -> Start:
    """The registered dataset version and `--from-model` (id or alias); unknown: UserInputError."""
    from orchestrator.aliases import resolve_model
    from orchestrator.registry.queries import resolve_dataset

    with session_scope(settings) as s:
        ds = resolve_dataset(s, dataset)
        model = resolve_model(s, from_model) if from_model is not None else None
        return Start(ds.id, ds.ref, ds.shape_count, model.config if model is not None else None,
                     model.id if model is not None else None)


def build_config(given: dict[str, Any], reference: bool, parent: dict[str, Any] | None) -> TrainConfig:
    """The preset, the fine-tuned model's architecture, then the settings given; validated.

    A setting given that would change the fine-tuned model's architecture is refused: its
    weights only mean something in their own architecture."""
    from atlas_core.config import TrainConfig, training_settings

    config = TrainConfig.reference() if reference else TrainConfig.cpu()
    if parent is not None:
        architecture = TrainConfig.from_dict(parent).architecture()
        for setting in training_settings():
            name = setting.name
            if setting.architecture and name in given and given[name] != architecture[name]:
                raise UserInputError(
                    f"{setting.flag} {given[name]} differs from the model being fine-tuned "
                    f"({architecture[name]}); drop the flag to keep its architecture")
        config = config.with_overrides(**architecture)
    config = config.with_overrides(**given)
    try:
        config.validate()
    except ValueError as exc:
        raise UserInputError(f"invalid training settings: {exc}") from None
    return config


def scratch_warnings(start: Start) -> list[str]:
    """What to tell someone training from scratch on a dataset too small for it."""
    if start.model_id is not None or start.shapes >= SMALL_DATASET:
        return []
    return [f"{start.ref} has {start.shapes} shapes: trained from scratch on so few, AtlasNet usually "
            "loses to retrieval (copying the nearest training shape); `--pretrain auto` "
            "fine-tunes a base pre-trained on the nearest procedural family instead "
            "(`rodin datasets families` lists them)"]


def plan_training(settings: Settings, request: TrainingRequest) -> TrainingPlan:
    """Check a training request as a whole (dataset, model, family, settings); writes nothing."""
    if request.pretrain is not None and request.from_model is not None:
        raise UserInputError("--pretrain and --from-model both name where training starts; give one")
    start = resolve_start(settings, request.dataset, request.from_model)
    if request.given.get("rehearsal") and request.pretrain is None:
        raise UserInputError("--rehearsal mixes the shapes a base was pre-trained on into the batches: "
                             "it needs --pretrain FAMILY (or auto)")
    if request.pretrain is None:
        return TrainingPlan(start, build_config(request.given, request.reference, start.parent_config),
                            scratch_warnings(start))
    from atlas_core.families import PretrainRecipe, family_names

    if request.pretrain != AUTO and request.pretrain not in family_names():
        raise UserInputError(f"--pretrain {request.pretrain!r}: no such procedural family; known: "
                             f"{', '.join(family_names())}, or {AUTO} to choose among them")
    families = family_names() if request.pretrain == AUTO else [request.pretrain]
    recipes = tuple(replace(recipe, count=request.pretrain_shapes or recipe.count,
                            epochs=request.pretrain_epochs or recipe.epochs)
                    for recipe in (PretrainRecipe(family=f) for f in families))
    # The recipe's gentle fine-tuning (the same for every family), each value overridable by its flag.
    config = build_config({**recipes[0].finetune, **request.given}, request.reference, None)
    return TrainingPlan(start, config, [], recipes, auto=request.pretrain == AUTO)


def submit_training(settings: Settings, store: ArtifactStore, plan: TrainingPlan) -> SubmittedTraining:
    """Register and send the planned job. With `--pretrain`: turn the family as the dataset's
    shapes lie, find a matching base model or queue (or join) its pre-training, and register
    the fine-tune to wait for it."""
    start, params = plan.start, {"config": plan.config.to_dict(), "dataset": plan.start.ref}
    if not plan.recipes:
        job_id = jobs.submit(settings, JobKind.train, params=params, dataset_id=start.dataset_id,
                             input_model_id=start.model_id)
        return SubmittedTraining(job_id, start.ref, start.model_id, plan.warnings)
    from orchestrator.pretrain import choose_family, find_or_queue_base, matching_turn, pretrain_estimate_s

    choice = None
    if plan.auto:
        found, recipe = choose_family(settings, store, start.dataset_id, list(plan.recipes), plan.config)
        choice = found.as_dict()
        for row in choice["scores"]:  # what building each missing base would cost
            if not row["has_base"]:
                row["pretrain_estimate_s"] = max(1, round(pretrain_estimate_s(
                    next(r for r in plan.recipes if r.family == row["family"]))))
    else:
        recipe = plan.recipes[0]
        recipe = replace(recipe, turn=matching_turn(settings, store, recipe.family, start.dataset_id))
    base = find_or_queue_base(settings, store, recipe, plan.config)
    if choice is not None:
        base = replace(base, choice=choice)
    job_id = jobs.submit(settings, JobKind.train, dataset_id=start.dataset_id,
                         input_model_id=base.model_id, depends_on=base.pretrain_job_id,
                         params={**params, "base": base.as_params()})
    return SubmittedTraining(job_id, start.ref, base.model_id, plan.warnings, base)


def plan_sweep(settings: Settings, dataset: str, values: dict[str, list[Any]], *, reference: bool = False,
               from_model: str | None = None) -> SweepPlan:
    """Check a sweep: `values` holds each setting given as its list of values (a grid axis when
    it has two or more); every combination's config is built as `submit train` builds one.
    Writes nothing."""
    from orchestrator.sweeps import combinations, split_grid

    grid, fixed = split_grid(values)
    combos = combinations(grid)
    start = resolve_start(settings, dataset, from_model)
    configs = [_combination_config(combo, fixed, reference, start.parent_config) for combo in combos]
    return SweepPlan(start, grid, fixed, combos, configs, scratch_warnings(start))


def _combination_config(combo: dict[str, Any], fixed: dict[str, Any], reference: bool,
                        parent: dict[str, Any] | None) -> TrainConfig:
    """One combination's config; a bad one names itself by its flags."""
    from atlas_core.config import as_flags

    try:
        return build_config({**fixed, **combo}, reference, parent)
    except UserInputError as exc:
        if not combo:
            raise
        raise UserInputError(f"{as_flags(combo)}: {exc}") from None


def submit_sweep(settings: Settings, plan: SweepPlan) -> SubmittedSweep:
    """Register the sweep and its jobs in one transaction, and send them."""
    start = plan.start
    sweep_id, job_ids = jobs.submit_sweep(
        settings, dataset_id=start.dataset_id, grid=plan.grid, fixed=plan.fixed,
        input_model_id=start.model_id,
        params=[{"config": config.to_dict(), "dataset": start.ref, "sweep": combo}
                for config, combo in zip(plan.configs, plan.combinations)])
    return SubmittedSweep(sweep_id, job_ids, start.ref, start.model_id, plan.warnings)
