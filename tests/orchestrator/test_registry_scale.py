"""The registry past a few thousand rows: `models list` pages, a deep lineage is read in one
query and shown folded, `report` stays bounded, and the reaper's periodic reads use indexes.
No timing here (benchmarks/scale_registry.py times them); the registry is filled as the
benchmark fills it, smaller."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from benchmarks.scale_registry import Filled, fill, reaper_plans, uses_indexes
from orchestrator.lineage import FOLD_KEEP
from orchestrator.registry.db import get_engine, session_scope
from orchestrator.registry.models import ModelCheckpoint
from orchestrator.registry.queries import ancestors, lineage
from tests.conftest import Rodin

DEPTH = 120  # the deep model's ancestors, over 40 jobs


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> tuple[Rodin, Filled]:
    home = tmp_path_factory.mktemp("scale") / "home"
    filled = fill(f"sqlite:///{home / 'registry.db'}", home, models=1500, jobs=300, depth=DEPTH)
    return Rodin(home), filled


def _statements(rodin: Rodin, read: Any) -> tuple[Any, list[str]]:
    engine = get_engine(rodin.settings())
    seen: list[str] = []
    listen = lambda *args: seen.append(args[2])  # noqa: E731 - (conn, cursor, statement, ...)
    event.listen(engine, "before_cursor_execute", listen)
    try:
        return read(), seen
    finally:
        event.remove(engine, "before_cursor_execute", listen)


def test_the_reapers_reads_use_indexes(lab: tuple[Rodin, Filled]) -> None:
    rodin, _ = lab
    plans = reaper_plans("", rodin.home)
    sqls = [p["sql"] for p in plans]
    assert any("jobs.heartbeat_at <" in sql for sql in sqls) and any("DISTINCT jobs.depends_on_job_id" in sql for sql in sqls)
    for p in plans:
        assert uses_indexes(p["plan"]), p
    by_sql = {p["sql"]: " ".join(p["plan"]) for p in plans}
    [stale] = [plan for sql, plan in by_sql.items() if "jobs.heartbeat_at <" in sql]
    assert "ix_jobs_status_heartbeat_at" in stale and "heartbeat_at<?" in stale.replace(" ", "")
    [waiting] = [plan for sql, plan in by_sql.items() if "DISTINCT jobs.depends_on_job_id" in sql]
    assert "ix_jobs_status_depends_on_job_id" in waiting and "TEMP B-TREE" not in waiting
    assert not uses_indexes(["SCAN jobs"]) and not uses_indexes(["Seq Scan on models  (cost=0.00..1.00 rows=1 width=4)"])


def test_a_deep_lineage_is_one_query(lab: tuple[Rodin, Filled]) -> None:
    rodin, filled = lab
    with session_scope(rodin.settings()) as s:
        model = s.get(ModelCheckpoint, filled.deep_model_id)
        assert model is not None
        chain, seen = _statements(rodin, lambda: ancestors(s, model))
        assert len(chain) == DEPTH and len(seen) == 1, seen
        assert chain[0].id == model.parent_id and chain[-1].parent_id is None
        assert [a.id for a in chain] == lineage(s, model)
        ids = {a.id: a.parent_id for a in chain}
        assert all(ids[a.id] == b.id for a, b in zip(chain, chain[1:]))


def test_models_show_folds_a_deep_lineage(lab: tuple[Rodin, Filled]) -> None:
    rodin, filled = lab
    deep = str(filled.deep_model_id)
    out, seen = _statements(rodin, lambda: rodin.json("models", "show", deep))
    assert len(out["lineage"]) == DEPTH  # every ancestor's id, nearest first
    assert out["lineage"][0] == out["parent_id"]
    assert len(seen) < 30, seen  # a few queries, not one per ancestor

    def checkpoints(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        found = []
        for job in jobs:
            for c in job["checkpoints"]:
                found.append(c)
                found += checkpoints(c.get("continued_by", []))
        return found

    shown = checkpoints(out["tree"]["jobs"])
    assert [c["model_id"] for c in shown] == [*reversed(out["lineage"]), out["id"]][:FOLD_KEEP] + \
        [*reversed(out["lineage"]), out["id"]][-FOLD_KEEP:]
    [folded] = [c["folded"] for c in shown if "folded" in c]
    assert folded["checkpoints"] == DEPTH + 1 - 2 * FOLD_KEEP and folded["jobs"] > 30
    text = rodin.cli("models", "show", deep).stdout
    assert f"... {folded['checkpoints']} more checkpoints (in {folded['jobs']} more jobs) ..." in text
    assert "this model" in text and len(text.splitlines()) < 60


def test_models_list_pages(lab: tuple[Rodin, Filled]) -> None:
    rodin, filled = lab
    first = rodin.json("models", "list", "--limit", "3")
    assert [m["id"] for m in first["models"]] == [filled.models, filled.models - 1, filled.models - 2]
    assert (first["total"], first["limit"], first["next_before"]) == (filled.models, 3, filled.models - 2)
    assert set(first["models"][0]) >= {"id", "job_id", "dataset", "epoch", "final", "metrics", "sha256"}
    second = rodin.json("models", "list", "--limit", "3", "--before", str(first["next_before"]))
    assert [m["id"] for m in second["models"]] == [filled.models - 3, filled.models - 4, filled.models - 5]
    assert rodin.json("models", "list", "--limit", "3", "--page", "2")["models"] == second["models"]
    assert len(rodin.json("models", "list")["models"]) == 50
    last = rodin.json("models", "list", "--before", "3")
    assert [m["id"] for m in last["models"]] == [2, 1] and last["next_before"] is None
    assert len(rodin.json("models", "list", "--limit", "0")["models"]) == filled.models
    finals = rodin.json("models", "list", "--final", "--limit", "5")
    assert all(m["final"] for m in finals["models"]) and finals["total"] < filled.models
    on = rodin.json("models", "list", "--dataset", "mugs@1", "--limit", "2")
    assert {m["dataset"] for m in on["models"]} == {"mugs@1"} and on["total"] < filled.models
    shown = rodin.cli("models", "list", "--limit", "3")
    assert shown.returncode == 0 and f"older: `rodin models list --before {filled.models - 2}`" in shown.stderr
    bad = rodin.cli("models", "list", "--before", "9", "--page", "2")
    assert bad.returncode == 2 and "not both" in bad.stderr


def test_the_report_of_a_deep_model(lab: tuple[Rodin, Filled], tmp_path: Path) -> None:
    from orchestrator.artifacts import open_store
    from orchestrator.report import MAX_TRAINING_JOBS, render, story_of

    rodin, filled = lab
    settings = rodin.settings()
    story = story_of(settings, open_store(settings), filled.deep_model_id)
    assert len(story.jobs) == MAX_TRAINING_JOBS and story.earlier_jobs == filled.deep_jobs - MAX_TRAINING_JOBS
    assert story.jobs[-1]["id"] == story.model["job_id"] and len(story.reconstructions) == 3
    page = render(story)
    assert f"{story.earlier_jobs} earlier jobs of its lineage are not shown" in page
    assert "more checkpoints in" in page
