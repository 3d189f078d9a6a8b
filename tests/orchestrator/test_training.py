"""The training-submission service (orchestrator.training) against a real registry and broker,
no worker: plans check everything and write nothing; submissions write the job, the sweep, or
the fine-tune after its base. And the commands' options come from the settings' declaration."""

from __future__ import annotations

from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from atlas_core.config import TrainConfig, training_settings
from atlas_core.families import PretrainRecipe
from atlas_core.orientation import IDENTITY
from orchestrator.errors import UserInputError
from orchestrator.registry.db import session_scope
from orchestrator.registry.models import Job, JobKind, JobStatus, ModelCheckpoint
from orchestrator.settings import Settings
from orchestrator.training import TrainingRequest, plan_sweep, plan_training, submit_sweep, submit_training

CHECKPOINT = dict(metrics={}, artifact_uri="file:///x", size_bytes=1, code_version="t", torch_version="t",
                  sha256="0" * 64)


def _jobs(settings: Settings) -> list[Job]:
    with session_scope(settings) as s:
        return list(s.query(Job).order_by(Job.id))


def _model(settings: Settings, dataset_id: int, config: TrainConfig, job_id: int | None = None) -> int:
    """A registered final checkpoint with `config` (of a new succeeded job unless given one)."""
    with session_scope(settings) as s:
        if job_id is None:
            job = Job(kind=JobKind.train.value, status=JobStatus.succeeded.value, dataset_id=dataset_id,
                      params={})
            s.add(job)
            s.flush()
            job_id = job.id
        model = ModelCheckpoint(job_id=job_id, dataset_id=dataset_id, epoch=1, final=True,
                                config=config.to_dict(), **CHECKPOINT)
        s.add(model)
        s.flush()
        return model.id


def test_a_plan_builds_the_preset_then_the_flags_and_writes_nothing(settings: Settings, dataset_id: int) -> None:
    plan = plan_training(settings, TrainingRequest("d", {"epochs": 3, "n_patches": 4, "keep_best": False}))
    assert (plan.config.epochs, plan.config.model.n_patches, plan.config.keep_best) == (3, 4, False)
    assert plan.config.model.bottleneck == TrainConfig.cpu().model.bottleneck
    assert plan_training(settings, TrainingRequest("d", reference=True)).config == TrainConfig.reference()
    assert plan.start.ref == "d@1" and plan.recipes == ()
    assert "d@1 has 1 shapes" in plan.warnings[0]  # from scratch on too few shapes
    assert _jobs(settings) == []


@pytest.mark.parametrize("request_, message", [
    (TrainingRequest("d", {"n_patches": 50, "n_points": 10}),
     "invalid training settings: points (10) must be at least the number of patches (50)"),
    (TrainingRequest("nosuch"), "dataset 'nosuch' is not registered"),
    (TrainingRequest("d", pretrain="swords", from_model="1"), "--pretrain and --from-model both"),
    (TrainingRequest("d", pretrain="chairs"), "--pretrain 'chairs': no such procedural family; known: furniture, generic"),
    (TrainingRequest("d", {"rehearsal": 0.5}), "--rehearsal mixes .* it needs --pretrain"),
    (TrainingRequest("d", {"rehearsal": 0.95}, pretrain="swords"), "rehearsal must be in \\[0, 0.9\\]"),
])
def test_a_bad_request_is_refused_before_anything_is_written(settings: Settings, dataset_id: int,
                                                             request_: TrainingRequest, message: str) -> None:
    with pytest.raises(UserInputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        plan_training(settings, request_)
    assert _jobs(settings) == []


def test_a_fine_tune_keeps_its_parents_architecture(settings: Settings, dataset_id: int) -> None:
    parent = TrainConfig.cpu().with_overrides(n_patches=3, hidden=64, activation="tanh")
    model_id = _model(settings, dataset_id, parent)
    plan = plan_training(settings, TrainingRequest("d", {"epochs": 2}, from_model=str(model_id)))
    assert plan.config.architecture() == parent.architecture()  # the activation too
    assert plan.config.epochs == 2 and plan.warnings == [] and plan.start.model_id == model_id
    with pytest.raises(UserInputError, match=r"--patches 9 differs from the model being fine-tuned \(3\)"):
        plan_training(settings, TrainingRequest("d", {"n_patches": 9}, from_model=str(model_id)))
    same = plan_training(settings, TrainingRequest("d", {"n_patches": 3}, from_model=str(model_id)))
    assert same.config.model.n_patches == 3  # the same value is no change

    submitted = submit_training(settings, None, plan)  # type: ignore[arg-type]  # no store needed
    job = _jobs(settings)[-1]
    assert (submitted.job_id, submitted.input_model_id, job.input_model_id) == (job.id, model_id, model_id)
    assert job.status == "queued" and job.params == {"config": plan.config.to_dict(), "dataset": "d@1"}


def test_pretrain_uses_the_recipe_and_a_matching_base(settings: Settings, dataset_id: int,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import orchestrator.pretrain

    monkeypatch.setattr(orchestrator.pretrain, "matching_turn", lambda *args: IDENTITY)
    plan = plan_training(settings, TrainingRequest("d", {"n_patches": 4, "lr": 3e-4}, pretrain="swords",
                                                   pretrain_shapes=6, pretrain_epochs=2))
    assert plan.recipes == (PretrainRecipe(count=6, epochs=2),) and plan.warnings == []
    assert (plan.config.lr, plan.config.epochs, plan.config.augment.scale) == (3e-4, 40, 0.1)  # flag, recipe
    key = plan.recipes[0].key(plan.config.architecture())

    # A pre-training job of the same key is running: the fine-tune waits for it.
    running = Job(kind=JobKind.train.value, status=JobStatus.running.value, dataset_id=dataset_id,
                  params={"pretrain": {"key": key}})
    with session_scope(settings) as s:
        s.add(running)
        s.flush()
        running_id = running.id
    waiting = submit_training(settings, None, plan)  # type: ignore[arg-type]
    assert waiting.base is not None and waiting.base.pretrain_job_id == running_id
    assert waiting.input_model_id is None and waiting.base.model_id is None
    job = _jobs(settings)[-1]
    assert (job.status, job.depends_on_job_id, job.params["base"]["key"]) == ("waiting", running_id, key)
    assert orchestrator.pretrain.base_model_id(settings, waiting.base) is None

    # It succeeds with a final model: that model is the base of the next fine-tune.
    with session_scope(settings) as s:
        s.get(Job, running_id).status = JobStatus.succeeded.value  # type: ignore[union-attr]
    base_id = _model(settings, dataset_id, plan.config, job_id=running_id)
    assert orchestrator.pretrain.base_model_id(settings, waiting.base) == base_id
    found = submit_training(settings, None, plan)  # type: ignore[arg-type]
    assert found.base is not None and (found.base.model_id, found.input_model_id) == (base_id, base_id)
    assert _jobs(settings)[-1].status == "queued" and _jobs(settings)[-1].input_model_id == base_id


def test_a_sweep_plan_checks_every_combination(settings: Settings, dataset_id: int) -> None:
    plan = plan_sweep(settings, "d", {"n_patches": [1, 2], "template": ["square", "sphere"], "epochs": [1]})
    assert plan.grid == {"n_patches": [1, 2], "template": ["square", "sphere"]} and plan.fixed == {"epochs": 1}
    assert [(c.model.n_patches, c.model.template, c.epochs) for c in plan.configs] == \
        [(1, "square", 1), (1, "sphere", 1), (2, "square", 1), (2, "sphere", 1)]
    with pytest.raises(UserInputError, match="--patches 1 --template cube: invalid training settings"):
        plan_sweep(settings, "d", {"n_patches": [1, 2], "template": ["square", "cube"]})
    assert _jobs(settings) == []

    submitted = submit_sweep(settings, plan)
    rows = _jobs(settings)
    assert submitted.job_ids == [j.id for j in rows] and {j.sweep_id for j in rows} == {submitted.sweep_id}
    assert [j.params["sweep"] for j in rows] == plan.combinations
    assert [j.params["config"] for j in rows] == [c.to_dict() for c in plan.configs]


# ------------------------------------------------------- the commands read the declaration


def _options(path: list[str]) -> dict[str, list[str]]:
    from orchestrator.cli.main import app

    command: Any = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]
    return {p.name: [*p.opts, *p.secondary_opts] for p in command.params}


def test_train_and_sweep_offer_every_declared_flag() -> None:
    declared = {s.name: [s.flag, *([s.off_flag] if s.off_flag else [])] for s in training_settings() if s.flag}
    for path in (["submit", "train"], ["submit", "sweep"]):
        options = _options(path)
        assert {name: options[name] for name in declared} == declared
        names = list(options)
        assert names[1:1 + len(declared)] == list(declared)  # after --dataset, in declaration order


def test_submit_train_hands_the_flags_given_to_the_service(monkeypatch: pytest.MonkeyPatch) -> None:
    import orchestrator.training
    from orchestrator.cli.main import app

    seen: list[TrainingRequest] = []

    def plan(settings: Settings, request: TrainingRequest) -> None:
        seen.append(request)
        raise UserInputError("stop here")

    monkeypatch.setattr(orchestrator.training, "plan_training", plan)
    result = CliRunner().invoke(app, ["submit", "train", "-d", "d", "--epochs", "3", "--keep-last",
                                      "--no-augment-rotate", "--augment-scale", "0.2", "--reference"])
    assert result.exit_code == 2 and "stop here" in result.stderr
    assert seen == [TrainingRequest("d", {"epochs": 3, "augment_rotate": False, "augment_scale": 0.2,
                                          "keep_best": False}, reference=True)]



@pytest.mark.parametrize("family", ["furniture", "generic", "swords", "vessels"])
def test_pretrain_auto_chooses_the_nearest_family_and_queues_one_base(settings: Settings, family: str) -> None:
    from atlas_core.families import family_names, generate_family
    from orchestrator import datasets
    from orchestrator.artifacts import open_store

    store = open_store(settings)
    data = generate_family(family, 10, seed=99, points_per_shape=400)
    datasets.register_dataset(settings, store, "mine", data, "test", [])
    plan = plan_training(settings, TrainingRequest("mine", {}, pretrain="auto", pretrain_shapes=6, pretrain_epochs=2))
    assert [r.family for r in plan.recipes] == family_names()
    submitted = submit_training(settings, store, plan)
    assert submitted.base is not None and submitted.base.family == family
    choice = submitted.base.choice
    assert choice is not None and choice["family"] == family
    assert sorted(row["family"] for row in choice["scores"]) == family_names()
    assert all(row["pretrain_estimate_s"] > 0 and not row["has_base"] for row in choice["scores"])
    pretraining = [j for j in _jobs(settings) if (j.params or {}).get("pretrain")]
    assert len(pretraining) == 1 and pretraining[0].params["pretrain"]["family"] == family  # one base, not all
    finetune = _jobs(settings)[-1]
    assert finetune.status == "waiting" and finetune.params["base"]["choice"]["family"] == family

    # Its pre-training succeeds: the next auto fine-tune picks that base and pre-trains nothing.
    with session_scope(settings) as s:
        s.get(Job, pretraining[0].id).status = JobStatus.succeeded.value  # type: ignore[union-attr]
    base_id = _model(settings, pretraining[0].dataset_id, plan.config, job_id=pretraining[0].id)
    again = submit_training(settings, store, plan)
    assert again.base is not None and (again.base.model_id, again.input_model_id) == (base_id, base_id)
    assert again.base.choice is not None and again.base.choice["family"] == family
    assert [row["has_base"] for row in again.base.choice["scores"] if row["family"] == family] == [True]
    assert len([j for j in _jobs(settings) if (j.params or {}).get("pretrain")]) == 1
    with pytest.raises(UserInputError, match="no such procedural family.*or auto"):
        plan_training(settings, TrainingRequest("mine", {}, pretrain="autos"))
