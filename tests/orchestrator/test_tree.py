"""`rodin models tree`: the forest (datasets -> jobs -> final models -> fine-tunes across
datasets), drawn and as JSON, filtered by dataset, in a few queries whatever its size."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import event

from atlas_core.config import TrainConfig
from atlas_core.data import PointCloudSet
from orchestrator import aliases, jobs
from orchestrator.artifacts import open_store
from orchestrator.datasets import register_dataset
from orchestrator.lineage import (
    DEFAULT_DEPTH,
    DEFAULT_ROOTS,
    build_forest,
    forest,
    load_models,
    load_registry,
    plan_forest,
)
from orchestrator.registry.db import get_engine, session_scope
from orchestrator.registry.models import JobKind, JobStatus
from orchestrator.settings import Settings
from tests.conftest import Rodin


def _dataset(settings: Settings, name: str, shapes: int = 2) -> int:
    rng = np.random.default_rng(0)
    points = rng.normal(size=(shapes, 16, 3)).astype(np.float32)
    data = PointCloudSet(names=[f"s{i}" for i in range(shapes)], points=points, normals=points,
                         centers=np.zeros((shapes, 3)), scales=np.ones(shapes),
                         source_sha256=[f"{name}{i}" for i in range(shapes)])
    return int(register_dataset(settings, open_store(settings), name, data, f"test {name}", [])["id"])


def _train(settings: Settings, dataset_id: int, epochs: list[int], *, from_model: int | None = None,
           final: int | None = -1, status: JobStatus = JobStatus.succeeded) -> tuple[int, list[int]]:
    """A training job through the job service: claimed, its checkpoints registered (each
    continuing from the previous, the first from `from_model`), finished with checkpoint
    `final` (an index) chosen. Returns (job id, model ids)."""
    job_id = jobs.submit(settings, JobKind.train, params={}, dataset_id=dataset_id, input_model_id=from_model)
    lease = jobs.claim(settings, job_id, "test-worker", "cpu")
    assert lease is not None
    store, parent, ids = open_store(settings), from_model, []
    for epoch in epochs:
        blob = store.put_bytes(f"weights {job_id} {epoch}".encode(), ".pt")
        parent = jobs.register_checkpoint(
            settings, lease, dataset_id=dataset_id, parent_id=parent, epoch=epoch,
            config=TrainConfig.cpu().to_dict(), metrics={"val_chamfer": 1.0 / epoch},
            artifact_uri=blob.uri, sha256=blob.sha256, size_bytes=blob.size,
            code_version="test", torch_version="test")
        ids.append(parent)
    if status.finished:
        jobs.finish(settings, job_id, status, lease=lease,
                    final_model_id=ids[final] if ids and final is not None else None)
    return job_id, ids


@pytest.fixture
def lab(rodin: Rodin) -> dict[str, Any]:
    """swords@1: job A (5 checkpoints, final = the last) -> fine-tune B on mine@1 from A's final
    -> fine-tune C on mine@1 from B's final; job D on swords@1 from A's epoch 2; job E still
    running on swords@2; empty@1 never trained on."""
    settings = rodin.settings()
    swords, mine = _dataset(settings, "swords"), _dataset(settings, "mine")
    swords2 = _dataset(settings, "swords")
    _dataset(settings, "empty")
    a, a_models = _train(settings, swords, [1, 2, 3, 4, 5])
    b, b_models = _train(settings, mine, [1, 2], from_model=a_models[-1])
    c, c_models = _train(settings, mine, [1], from_model=b_models[-1])
    d, d_models = _train(settings, swords, [3], from_model=a_models[1])
    e, e_models = _train(settings, swords2, [1, 2], status=JobStatus.running)
    with session_scope(settings) as s:
        aliases.tag(s, b_models[-1], "mine-best")
    return {"settings": settings, "jobs": (a, b, c, d, e), "models": (a_models, b_models, c_models, d_models, e_models)}


def _walk_jobs(nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    found = []
    for job in nodes:
        found.append(job)
        for c in job["checkpoints"]:
            found += _walk_jobs(c.get("continued_by", []))
        found += _walk_jobs(job["waiting_jobs"])
    return found


def test_the_forest_as_json(rodin: Rodin, lab: dict[str, Any]) -> None:
    a, b, c, d, e = lab["jobs"]
    a_models, b_models, c_models, d_models, e_models = lab["models"]
    out = rodin.json("models", "tree")
    assert (out["jobs"], out["models"]) == (5, 11)
    roots = {t["dataset"]: t for t in out["datasets"]}
    # mine@1 is only fine-tuned on: it hangs under swords' model, not as a root of its own.
    assert set(roots) == {"swords@1", "swords@2", "empty@1"}
    assert roots["empty@1"]["jobs"] == []
    [job_a] = roots["swords@1"]["jobs"]
    assert (job_a["job_id"], job_a["status"], job_a["checkpoint_count"]) == (a, "succeeded", 5)
    # Not five lines for five checkpoints: the one D continued from, and the final one.
    assert [m["model_id"] for m in job_a["checkpoints"]] == [a_models[1], a_models[-1]]
    [job_d] = job_a["checkpoints"][0]["continued_by"]
    assert job_d["job_id"] == d and job_d["checkpoints"][0]["final"]
    [job_b] = job_a["checkpoints"][1]["continued_by"]
    assert (job_b["job_id"], job_b["dataset"]) == (b, "mine@1")
    [b_final] = job_b["checkpoints"]
    assert (b_final["model_id"], b_final["aliases"], b_final["final"]) == (b_models[-1], ["mine-best"], True)
    assert b_final["val_chamfer"] == pytest.approx(0.5)
    assert [j["job_id"] for j in b_final["continued_by"]] == [c]
    # A running job without a final model shows its newest checkpoint.
    [job_e] = roots["swords@2"]["jobs"]
    assert (job_e["status"], [m["model_id"] for m in job_e["checkpoints"]]) == ("running", [e_models[-1]])
    assert sorted(j["job_id"] for t in out["datasets"] for j in _walk_jobs(t["jobs"])) == sorted(lab["jobs"])


def test_the_forest_drawn(rodin: Rodin, lab: dict[str, Any]) -> None:
    a, b, c, d, e = lab["jobs"]
    result = rodin.cli("models", "tree")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    for line in (f"job {a} on swords@1 succeeded (5 checkpoints)", f"job {b} on mine@1 succeeded",
                 f"job {e} on swords@2 running (2 checkpoints)", "mine-best", "dataset empty@1"):
        assert line in text, text
    # Compact: one indentation level per job, not per checkpoint.
    depth = {line.split("job ")[1].split()[0]: len(line) - len(line.lstrip("│ ├└─"))
             for line in text.splitlines() if "job " in line}
    assert depth[str(b)] < depth[str(c)] and depth[str(a)] < depth[str(b)]


def test_the_forest_of_one_dataset(rodin: Rodin, lab: dict[str, Any]) -> None:
    a, b, c, d, e = lab["jobs"]
    out = rodin.json("models", "tree", "--dataset", "mine")
    # The branch that leads to mine's jobs, from swords@1's job A: D and E are left out.
    assert [t["dataset"] for t in out["datasets"]] == ["swords@1"]
    found = [j["job_id"] for j in _walk_jobs(out["datasets"][0]["jobs"])]
    assert found == [a, b, c]
    out = rodin.json("models", "tree", "--dataset", "swords@2")
    assert [j["job_id"] for t in out["datasets"] for j in _walk_jobs(t["jobs"])] == [e]
    assert rodin.json("models", "tree", "--dataset", "empty")["datasets"] == [{"dataset": "empty@1", "jobs": []}]
    bad = rodin.cli("models", "tree", "--dataset", "nope")
    assert bad.returncode == 2 and "dataset 'nope' is not registered" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_a_fine_tune_waiting_for_its_pre_training(rodin: Rodin) -> None:
    settings = rodin.settings()
    swords = _dataset(settings, "swords")
    pre = jobs.submit(settings, JobKind.train, params={}, dataset_id=swords)
    after = jobs.submit(settings, JobKind.train, params={}, dataset_id=swords, depends_on=pre)
    out = rodin.json("models", "tree")
    [job] = out["datasets"][0]["jobs"]
    assert job["job_id"] == pre and [w["job_id"] for w in job["waiting_jobs"]] == [after]
    assert f"job {after} on swords@1 waiting" in rodin.cli("models", "tree").stdout


def test_an_empty_registry(rodin: Rodin) -> None:
    assert rodin.json("models", "tree") == {"datasets": [], "jobs": 0, "models": 0, "depth": DEFAULT_DEPTH,
                                            "roots": DEFAULT_ROOTS, "hidden_jobs": 0}
    assert "No datasets yet" in rodin.cli("models", "tree").stdout


def _statements(settings: Settings, read: Any) -> tuple[Any, list[str]]:
    statements: list[str] = []
    engine = get_engine(settings)
    listen = lambda *args: statements.append(args[2])  # noqa: E731 - (conn, cursor, statement, ...)
    event.listen(engine, "before_cursor_execute", listen)
    try:
        return read(), statements
    finally:
        event.remove(engine, "before_cursor_execute", listen)


def test_few_queries_whatever_the_size(rodin: Rodin) -> None:
    """The forest of 40 jobs and 200 checkpoints is read in the same few statements as that of
    one job: nothing is queried per row, and the checkpoints read are those drawn."""
    settings = rodin.settings()
    swords = _dataset(settings, "swords")
    _train(settings, swords, [1, 2, 3])
    one, few = _statements(settings, lambda: forest(settings))
    previous: int | None = None
    for i in range(40):
        _, ids = _train(settings, swords, [1, 2, 3, 4, 5], from_model=previous if i % 2 else None)
        previous = ids[-1]
    found, statements = _statements(settings, lambda: forest(settings, depth=0, roots=0))
    assert len(statements) <= len(few) + 1 <= 11, statements
    assert len(_walk_jobs(found.trees[0]["jobs"])) == 41 and found.models == 203 and found.hidden_jobs == 0
    json.dumps(found.trees)  # plain data
    with session_scope(settings) as s:  # the parts, as a notebook would call them
        reg = load_registry(s)
        plan = plan_forest(reg)
        load_models(s, reg, plan.drawn)
    assert build_forest(reg, plan=plan) == found.trees


def test_the_forest_is_bounded(rodin: Rodin, lab: dict[str, Any]) -> None:
    """--depth and --roots leave jobs out and count them where they hang; 0 lifts a bound."""
    a, b, c, d, e = lab["jobs"]
    a_models, b_models, *_ = lab["models"]
    settings = lab["settings"]
    out = rodin.json("models", "tree", "--depth", "1")
    assert out["hidden_jobs"] == 3 and (out["depth"], out["roots"]) == (1, DEFAULT_ROOTS)
    [job_a] = {t["dataset"]: t for t in out["datasets"]}["swords@1"]["jobs"]
    early, final = job_a["checkpoints"]
    assert (early["model_id"], early["more_jobs"], "continued_by" not in early) == (a_models[1], 1, True)
    assert (final["model_id"], final["more_jobs"]) == (a_models[-1], 2)  # B, and C under it
    text = rodin.cli("models", "tree", "--depth", "1").stdout
    assert "... 2 more jobs continued from it" in text and "3 of 5 training jobs not drawn" in text
    assert f"job {b} " not in text
    # Two more fresh starts on swords@1: with --roots 2 the oldest of the three is counted.
    f, _ = _train(settings, 1, [1])  # dataset 1: swords@1, the lab's first
    g, _ = _train(settings, 1, [1])
    out = rodin.json("models", "tree", "--roots", "2")
    tree = {t["dataset"]: t for t in out["datasets"]}["swords@1"]
    assert [j["job_id"] for j in tree["jobs"]] == [f, g] and tree["more_jobs"] == 4  # A, B, C, D
    assert "... 4 more jobs on this dataset" in rodin.cli("models", "tree", "--roots", "2").stdout
    everything = rodin.json("models", "tree", "--depth", "0", "--roots", "0")
    assert everything["hidden_jobs"] == 0
    assert sorted(j["job_id"] for t in everything["datasets"] for j in _walk_jobs(t["jobs"])) == [a, b, c, d, e, f, g]


def test_the_cli_bounds_are_the_forests() -> None:
    from orchestrator.cli import model_tree
    from orchestrator.lineage import DEFAULT_DEPTH as depth
    from orchestrator.lineage import DEFAULT_ROOTS as roots
    from orchestrator.lineage import MAX_DRAWN

    assert (model_tree.DEFAULT_DEPTH, model_tree.DEFAULT_ROOTS, model_tree.MAX_DRAWN) == (depth, roots, MAX_DRAWN)


def test_tree_is_joined_into_models_help(rodin: Rodin, tmp_path: Path) -> None:
    assert "tree" in rodin.cli("models", "--help").stdout
