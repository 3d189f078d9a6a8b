"""`--pretrain FAMILY`: find a base model pre-trained on a procedural family, or queue its
pre-training, so that a fine-tune on a user's few shapes starts from it. `--pretrain auto`
first chooses the family (`choose_family`: the one whose generated shapes are nearest the
dataset's, preferring a family whose base exists when it is nearly as near), so that at most
one base is pre-trained, the most promising.

Nothing is implicit: the base is a registered model whose id is printed and recorded as the
fine-tune's parent; a base is reused only when the family, the pre-training recipe and the
architecture all match (`PretrainRecipe.key`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select

from orchestrator import jobs
from orchestrator.artifacts import ArtifactStore
from orchestrator.errors import RegistryInvariantError
from orchestrator.registry.db import session_scope
from orchestrator.registry.models import Dataset, Job, JobKind, JobStatus, ModelCheckpoint
from orchestrator.settings import Settings

if TYPE_CHECKING:
    from atlas_core.config import TrainConfig
    from atlas_core.families import PretrainRecipe
    from atlas_core.family_choice import Choice
    from atlas_core.orientation import Turn


@dataclass(frozen=True)
class Base:
    """Where a fine-tune starts: a registered base model, or the pre-training job that will
    make one (exactly one of the two ids is set)."""

    family: str
    key: str
    model_id: int | None = None
    pretrain_job_id: int | None = None
    queued_now: bool = False  # the pre-training job was queued by this call

    turn: str = "identity"  # how the family was turned to lie as the dataset's shapes do
    #: With `--pretrain auto`: why this family (`atlas_core.family_choice.Choice.as_dict`).
    choice: dict[str, Any] | None = None

    def as_params(self) -> dict[str, Any]:
        params = {"family": self.family, "key": self.key, "model_id": self.model_id,
                  "pretrain_job_id": self.pretrain_job_id, "turn": self.turn}
        return params if self.choice is None else {**params, "choice": self.choice}


#: Shapes of a dataset that its pose is read from (a sharded version's first ones: its shards
#: hold the shapes in a shuffled order, a fair sample); a version of fewer is read whole.
TURN_SHAPES = 2000


def matching_turn(settings: Settings, store: ArtifactStore, family: str, dataset_id: int) -> Turn:
    """The turn that makes the family's generated shapes lie as the dataset's do
    (atlas_core.orientation): read from the dataset's cached point clouds and a fixed sample
    of the family. No torch."""
    from atlas_core.families import family_pose_sample
    from atlas_core.orientation import turn_between

    return turn_between(family_pose_sample(family).points, _dataset_points(settings, store, dataset_id))


def _dataset_points(settings: Settings, store: ArtifactStore, dataset_id: int) -> Any:
    """(S, N, 3) points of up to TURN_SHAPES of the dataset's shapes."""
    from orchestrator.datasets import load_version

    with session_scope(settings) as s:
        dataset = s.get(Dataset, dataset_id)
        if dataset is None:
            raise RegistryInvariantError(f"dataset {dataset_id} vanished while a fine-tune was prepared")
        uri, sha256 = dataset.artifact_uri, dataset.artifact_sha256
    return load_version(store, uri, sha256, max_shapes=TURN_SHAPES).points


#: Shapes pre-trained per second (shape-epochs) by a 2-core CPU worker with the CPU preset: the
#: swords base (500 shapes, 30 epochs) took about 185 s on a quiet machine (README, small data),
#: two to three times that on a loaded one. What `--pretrain auto` quotes for a missing base.
PRETRAIN_SHAPE_EPOCHS_PER_S = 80.0


def choose_family(settings: Settings, store: ArtifactStore, dataset_id: int,
                  recipes: list[PretrainRecipe], finetune: TrainConfig) -> tuple[Choice, PretrainRecipe]:
    """`--pretrain auto`: score every family's generated shapes against the dataset's
    (`atlas_core.family_choice`, each family as generated and turned to lie as the dataset's
    shapes do, whichever fits better) and choose; returns the choice and the chosen family's
    recipe, in that pose. No torch, no base built."""
    import numpy as np

    from atlas_core.families import family_pose_sample
    from atlas_core.family_choice import FamilyScore, choose, score_family
    from atlas_core.orientation import IDENTITY, turn_between

    target = _dataset_points(settings, store, dataset_id)
    architecture = finetune.architecture()
    turned: dict[str, PretrainRecipe] = {}
    fits: dict[str, float] = {}
    for recipe in recipes:
        sample = family_pose_sample(recipe.family).points
        # The frames' turn, or none: a family whose shapes are nearly as wide as deep (chairs,
        # vases) has no telling axes, and its frame can turn it away from a collection it fits;
        # the pose that fits better is kept.
        poses = {turn: score_family(target, sample @ np.asarray(turn, float).T)
                 for turn in {IDENTITY, turn_between(sample, target)}}
        turn = min(poses, key=lambda t: (poses[t], t != IDENTITY))
        turned[recipe.family], fits[recipe.family] = replace(recipe, turn=turn), poses[turn]
    with session_scope(settings) as s:
        based = _keys_with_base(s, {r.key(architecture) for r in turned.values()})
    choice = choose([FamilyScore(family, fits[family], r.key(architecture) in based)
                     for family, r in turned.items()])
    return choice, turned[choice.family]


def pretrain_estimate_s(recipe: PretrainRecipe) -> float:
    """About how long pre-training `recipe`'s base takes on a 2-core CPU worker."""
    return recipe.count * recipe.epochs / PRETRAIN_SHAPE_EPOCHS_PER_S


def find_or_queue_base(settings: Settings, store: ArtifactStore, recipe: PretrainRecipe,
                       finetune: TrainConfig, on_generate: Any = None) -> Base:
    """The newest matching base model; else a matching pre-training job already queued or
    running; else a new pre-training job (generating its family set first if needed)."""
    from atlas_core.config import TrainConfig
    from atlas_core.orientation import describe

    architecture = finetune.architecture()
    key = recipe.key(architecture)
    turn = describe(recipe.turn)
    with session_scope(settings) as s:
        model_id = _base_model(s, key)
        running = None if model_id is not None else _pretraining_in_progress(s, key)
    if model_id is not None:
        return Base(recipe.family, key, model_id=model_id, turn=turn)
    if running is not None:
        return Base(recipe.family, key, pretrain_job_id=running, turn=turn)
    dataset_id, ref = _family_dataset(settings, store, recipe, on_generate)
    config = recipe.pretrain_config(architecture, TrainConfig.cpu())
    config.validate()
    job_id = jobs.submit(settings, JobKind.train, dataset_id=dataset_id, params={
        "config": config.to_dict(), "dataset": ref,
        "pretrain": {"family": recipe.family, "key": key, "recipe": recipe.as_dict()}})
    return Base(recipe.family, key, pretrain_job_id=job_id, queued_now=True, turn=turn)


def _pretrain_jobs(session: Any, keys: set[str], statuses: tuple[JobStatus, ...]) -> list[Job]:
    # The key lives in the job's JSON params; JSON queries differ between SQLite and
    # PostgreSQL, and pre-training jobs are few, so the match is made here.
    rows = session.scalars(select(Job).where(Job.kind == JobKind.train.value,
                                             Job.status.in_([st.value for st in statuses]))
                           .order_by(Job.id.desc())).all()
    return [j for j in rows if (j.params or {}).get("pretrain", {}).get("key") in keys]


def _base_model(session: Any, key: str) -> int | None:
    for job in _pretrain_jobs(session, {key}, (JobStatus.succeeded,)):
        final = _final_model(session, job.id)
        if final is not None:
            return final
    return None


def _keys_with_base(session: Any, keys: set[str]) -> set[str]:
    """The keys among `keys` that have a base model, from one read of the training jobs."""
    found: set[str] = set()
    for job in _pretrain_jobs(session, keys, (JobStatus.succeeded,)):
        key = job.params["pretrain"]["key"]
        if key not in found and _final_model(session, job.id) is not None:
            found.add(key)
    return found


def _final_model(session: Any, job_id: int) -> int | None:
    final = session.scalar(select(func.max(ModelCheckpoint.id)).where(
        ModelCheckpoint.job_id == job_id, ModelCheckpoint.final.is_(True)))
    return int(final) if final is not None else None


def base_model_id(settings: Settings, base: Base) -> int | None:
    """The model a fine-tune started from: the base found, or the final model of the
    pre-training job it waited for (None while that job has none)."""
    if base.model_id is not None or base.pretrain_job_id is None:
        return base.model_id
    with session_scope(settings) as s:
        return _final_model(s, base.pretrain_job_id)


def _pretraining_in_progress(session: Any, key: str) -> int | None:
    active = _pretrain_jobs(session, {key}, (JobStatus.queued, JobStatus.running))
    return active[0].id if active else None


def _family_dataset(settings: Settings, store: ArtifactStore, recipe: PretrainRecipe,
                    on_generate: Any) -> tuple[int, str]:
    """The registered pre-training set of the recipe, generated and registered if absent."""
    from atlas_core.families import family_source, generate_family
    from orchestrator.datasets import register_dataset

    name = f"{recipe.family}-pretrain"
    source = family_source(recipe.family, recipe.count, recipe.seed, recipe.turn)
    with session_scope(settings) as s:
        found = s.scalars(select(Dataset).where(Dataset.name == name, Dataset.source == source,
                                                Dataset.points_per_shape == recipe.points_per_shape)
                          .order_by(Dataset.version.desc())).first()
        if found is not None:
            return found.id, found.ref
    data = generate_family(recipe.family, recipe.count, recipe.seed, recipe.points_per_shape,
                           on_shape=on_generate, turn=recipe.turn)
    summary = register_dataset(settings, store, name, data, source, [])
    return int(summary["id"]), str(summary["ref"])
