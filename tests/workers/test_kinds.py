"""One table of job kinds: every kind is declared, routed and registered as a task from it."""

from __future__ import annotations

import inspect

import pytest

from orchestrator.kinds import KINDS, QUEUES
from orchestrator.queue import TASK_QUEUES, celery_config
from orchestrator.registry.models import JobKind
from orchestrator.settings import Settings


def test_every_kind_is_declared_once_and_routed() -> None:
    assert set(KINDS) == set(JobKind)
    assert {spec.queue for spec in KINDS.values()} <= set(QUEUES)
    routes = celery_config(Settings())["task_routes"]
    assert routes == {spec.task: {"queue": spec.queue} for spec in KINDS.values()}
    assert TASK_QUEUES == {spec.task: spec.queue for spec in KINDS.values()}


def test_the_worker_registers_a_task_per_kind_whose_body_takes_a_lease() -> None:
    from workers.app import _body, app

    for spec in KINDS.values():
        assert spec.task in app.tasks
        assert list(inspect.signature(_body(spec)).parameters) == ["settings", "store", "lease", "device"]


def test_every_kind_declares_its_parameters_and_they_round_trip() -> None:
    from orchestrator.jobs import checked_params
    from orchestrator.kinds import (
        KINDS,
        AssembleParams,
        EvaluateParams,
        IngestParams,
        MemberParams,
        ReconstructParams,
        TrainParams,
    )

    assert {spec.params for spec in KINDS.values()} == {TrainParams, ReconstructParams, EvaluateParams,
                                                        IngestParams, AssembleParams, MemberParams}
    # None that means something is stored; None that means "not this kind of training" is not.
    assert checked_params(JobKind.reconstruct, {"inputs": [], "refine": None}) == {"inputs": [], "refine": None}
    assert checked_params(JobKind.train, TrainParams(config={"epochs": 1}, dataset="d@1")) == \
        {"config": {"epochs": 1}, "dataset": "d@1"}
    with pytest.raises(ValueError, match="TrainParams has no parameter.*inputs"):
        checked_params(JobKind.train, {"config": {}, "inputs": []})
    with pytest.raises(TypeError, match="a train job takes TrainParams"):
        checked_params(JobKind.train, ReconstructParams())
