"""Sweeps: the grid's plain functions (orchestrator.sweeps), the job service's sweep calls
against a real registry and broker, and a 2x2 sweep run end to end by two real workers."""

from __future__ import annotations

import math
import sqlite3
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from orchestrator import jobs
from orchestrator.errors import RodinError, UserInputError
from orchestrator.job_view import JobView, SweepView
from orchestrator.registry.db import session_scope
from orchestrator.registry.models import JobStatus, ModelCheckpoint
from orchestrator.settings import Settings
from orchestrator.sweeps import MAX_COMBINATIONS, best, combinations, rank, split_grid, split_values
from tests.conftest import Rodin, stop_process
from tests.orchestrator.views import view

# ------------------------------------------------------------------------- plain functions


def test_split_values_parses_each_kind() -> None:
    assert split_values("1,5,25", int, "--patches") == [1, 5, 25]
    assert split_values(" 0.1 , 1e-3", float, "--lr") == [0.1, 0.001]
    assert split_values("square,sphere", str, "--template") == ["square", "sphere"]
    assert split_values("7", int, "--seed") == [7]


@pytest.mark.parametrize("text, kind, message", [
    ("1,,5", int, "--patches '1,,5': an empty value in the list"),
    ("1,", int, "--patches '1,': an empty value in the list"),
    ("1,x", int, "--patches '1,x': 'x' is not an integer"),
    ("1.5", int, "--patches '1.5': '1.5' is not an integer"),
    ("0.1,fast", float, "--patches '0.1,fast': 'fast' is not a number"),
    ("5,1,5", int, "--patches '5,1,5': '5' is given twice"),
    ("square,square", str, "--patches 'square,square': 'square' is given twice"),
])
def test_split_values_errors_name_the_flag(text: str, kind: Any, message: str) -> None:
    with pytest.raises(UserInputError) as caught:
        split_values(text, kind, "--patches")
    assert str(caught.value).startswith(message), str(caught.value)


def test_split_grid_separates_the_axes_from_the_fixed_settings() -> None:
    grid, fixed = split_grid({"n_patches": [1, 2], "epochs": [3], "template": ["square", "sphere"],
                              "keep_best": [False]})
    assert grid == {"n_patches": [1, 2], "template": ["square", "sphere"]}
    assert list(grid) == ["n_patches", "template"]  # the order given
    assert fixed == {"epochs": 3, "keep_best": False}


def test_combinations_vary_the_first_setting_slowest() -> None:
    assert combinations({"n_patches": [1, 2], "template": ["square", "sphere"]}) == [
        {"n_patches": 1, "template": "square"}, {"n_patches": 1, "template": "sphere"},
        {"n_patches": 2, "template": "square"}, {"n_patches": 2, "template": "sphere"},
    ]
    assert combinations({"lr": [0.1, 0.01, 0.001]}) == [{"lr": 0.1}, {"lr": 0.01}, {"lr": 0.001}]
    assert combinations({}) == [{}]  # no axis: one job with the fixed settings


def test_combinations_refuse_more_than_the_maximum() -> None:
    assert len(combinations({"a": list(range(MAX_COMBINATIONS))})) == MAX_COMBINATIONS
    side = math.isqrt(MAX_COMBINATIONS) + 1
    with pytest.raises(UserInputError, match=f"{side * side} combinations, more than {MAX_COMBINATIONS}"):
        combinations({"a": list(range(side)), "b": list(range(side))})


AT = datetime(2026, 12, 6, 12, tzinfo=timezone.utc)


def _job(job_id: int, status: str, chamfer: float | None = None, **fields: Any) -> JobView:
    return view(job_id, "train", status, sweep_id=1, params={"sweep": {"n_patches": job_id}},
                final_metrics={"val_chamfer": chamfer} if chamfer is not None else None,
                final_model_id=100 + job_id if chamfer is not None else None, worker=None, **fields)


def _sweep(grid: dict[str, list[Any]], *jobs: JobView) -> SweepView:
    return SweepView(id=1, dataset="d@1", grid=grid, fixed={}, created_at=None, jobs=list(jobs))


def test_rank_puts_succeeded_jobs_by_chamfer_then_running_queued_and_failed() -> None:
    sweep = _sweep({"n_patches": [1, 2, 3, 4, 5, 6, 7]},
                   _job(1, "failed", error="boom"),
                   _job(2, "succeeded", 0.3),
                   _job(3, "queued"),
                   # one epoch of three took 21 s: 42 s to go
                   _job(4, "running", progress={"epoch": 1, "epochs": 3, "train_loss": 0.5},
                        started_at=AT - timedelta(seconds=21), heartbeat_at=AT),
                   _job(5, "succeeded", 0.1),
                   _job(6, "succeeded", float("nan")),  # a score that is no score: not ranked
                   _job(7, "succeeded", 0.2))
    rows = [row.as_json() for row in rank(sweep, at=AT)]
    assert [r["job_id"] for r in rows] == [5, 7, 2, 4, 3, 1, 6]
    assert [r["rank"] for r in rows] == [1, 2, 3, None, None, None, None]
    assert [r["val_chamfer"] for r in rows[:3]] == [0.1, 0.2, 0.3]
    assert rows[0]["settings"] == {"n_patches": 5} and rows[0]["final_model_id"] == 105
    running = rows[3]
    assert (running["epoch"], running["epochs"], running["train_loss"], running["eta_s"]) == (1, 3, 0.5, 42.0)
    assert rows[5]["error"] == "boom" and rows[6]["val_chamfer"] is None
    ranked = rank(sweep, at=AT)
    assert best(ranked) == ranked[0]
    assert best(rank(_sweep({}, _job(1, "running")))) is None
    assert best([]) is None


def test_rank_breaks_ties_by_job_id() -> None:
    rows = rank(_sweep({}, _job(3, "succeeded", 0.5), _job(2, "succeeded", 0.5)))
    assert [(r.job.id, r.rank, r.settings) for r in rows] == [(2, 1, {}), (3, 2, {})]


# ---------------------------------------------------------------- the job service, no worker


def test_submit_sweep_registers_the_sweep_and_queues_its_jobs(settings: Settings, dataset_id: int) -> None:
    grid = {"n_patches": [1, 2]}
    sweep_id, job_ids = jobs.submit_sweep(
        settings, dataset_id=dataset_id, grid=grid, fixed={"epochs": 1},
        params=[{"config": {}, "dataset": "d@1", "sweep": {"n_patches": k}} for k in (1, 2)])
    assert len(job_ids) == 2 and len(list((settings.broker_folder / "queue").glob("*.msg"))) == 2
    sweep = jobs.get_sweep(settings, sweep_id)
    assert (sweep.id, sweep.dataset, sweep.grid, sweep.fixed) == (sweep_id, "d@1", grid, {"epochs": 1})
    assert [j.id for j in sweep.jobs] == job_ids
    assert all(j.status is JobStatus.queued and j.sweep_id == sweep_id for j in sweep.jobs)
    assert [j.params["sweep"] for j in sweep.jobs] == [{"n_patches": 1}, {"n_patches": 2}]
    assert jobs.get(settings, job_ids[0]).sweep_id == sweep_id

    # Both end: the final model's metrics come with the summary, and the wait returns.
    for job_id, chamfer in zip(job_ids, (0.2, 0.1)):
        with session_scope(settings) as s:
            model = ModelCheckpoint(job_id=job_id, dataset_id=dataset_id, epoch=1, config={},
                                    metrics={"val_chamfer": chamfer}, artifact_uri="file:///nowhere",
                                    sha256="0" * 64, size_bytes=0, code_version="test", torch_version="test")
            s.add(model)
            s.flush()
            model_id = model.id
        lease = jobs.claim(settings, job_id, "w", "cpu")
        assert lease is not None
        jobs.finish(settings, job_id, JobStatus.succeeded, lease=lease, final_model_id=model_id)
    seen: list[SweepView] = []
    final = jobs.wait_sweep(settings, sweep_id, seen.append, poll_s=0.01)
    assert seen == [final] and [j.final_metrics for j in final.jobs] == [{"val_chamfer": 0.2},
                                                                          {"val_chamfer": 0.1}]
    assert [r.job.id for r in rank(final)] == job_ids[::-1]


def test_an_unknown_sweep_is_a_user_error(settings: Settings, dataset_id: int) -> None:
    with pytest.raises(UserInputError, match=r"sweep 3 does not exist \(none yet"):
        jobs.get_sweep(settings, 3)
    sweep_id, _ = jobs.submit_sweep(settings, dataset_id=dataset_id, grid={}, fixed={}, params=[{}])
    with pytest.raises(UserInputError, match=f"sweep {sweep_id + 1} does not exist \\(newest is {sweep_id}\\)"):
        jobs.get_sweep(settings, sweep_id + 1)


def test_a_broker_that_refuses_a_message_fails_the_unsent_jobs(settings: Settings, dataset_id: int,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import orchestrator.queue

    real = orchestrator.queue.send_job
    sent: list[int] = []

    def flaky(app: Any, kind: str, job_id: int) -> str:
        if sent:
            raise ConnectionError("broker gone")
        sent.append(job_id)
        return real(app, kind, job_id)

    monkeypatch.setattr(orchestrator.queue, "send_job", flaky)
    with pytest.raises(RodinError, match="its 3 unsent jobs are marked failed") as caught:
        jobs.submit_sweep(settings, dataset_id=dataset_id, grid={"seed": [1, 2, 3, 4]}, fixed={},
                          params=[{"sweep": {"seed": i}} for i in range(4)])
    assert "broker gone" in str(caught.value)
    sweep = jobs.get_sweep(settings, 1)
    states = [(j.status.value, j.error or "") for j in sweep.jobs]
    assert states[0] == ("queued", "")
    assert states[1][0] == "failed" and "broker gone" in states[1][1]
    first_unsent = sweep.jobs[1].id
    assert all(s == "failed" and f"job {first_unsent}" in e for s, e in states[2:])


# ------------------------------------------------------------- end to end, with real workers

TINY = ["--epochs", "1", "--points", "64", "--bottleneck", "16", "--hidden", "16", "--layers", "1",
        "--batch-size", "4", "--checkpoint-every", "1", "--val-fraction", "0.34"]


def _count(home: Rodin, table: str) -> int:
    with sqlite3.connect(home.home / "registry.db") as db:
        return db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


#: Fixtures that start a real worker: their tests are `slow` (tests/conftest.py).
SLOW_FIXTURES = ("home",)


@pytest.fixture(scope="module")
def home(tmp_path_factory):  # type: ignore[no-untyped-def]
    """6 swords (2 held out) and two live workers, one thread each."""
    rodin = Rodin(tmp_path_factory.mktemp("sweeps") / "home", extra_env={"OMP_NUM_THREADS": "1"})
    rodin.json("datasets", "make", "swords", "--count", "6", "--points-per-shape", "300")
    workers = [rodin.start_worker("w1", queues="train"), rodin.start_worker("w2", queues="train")]
    yield rodin
    for worker in workers:
        stop_process(worker)


@pytest.fixture(scope="module")
def sweep_2x2(home: Rodin) -> dict[str, Any]:
    """A 2x2 sweep, submitted and followed to its end: (what submit printed, the final status)."""
    queued = home.json("submit", "sweep", "--dataset", "swords", "--patches", "1,2",
                       "--template", "square,sphere", *TINY)
    final = jobs.wait_sweep(home.settings(), queued["sweep_id"], poll_s=0.5)
    return {"queued": queued, "final": final.as_json()}


def test_a_2x2_sweep_runs_its_4_jobs_on_two_workers(home: Rodin, sweep_2x2: dict[str, Any]) -> None:
    queued, final = sweep_2x2["queued"], sweep_2x2["final"]
    assert isinstance(queued["sweep_id"], int) and len(queued["job_ids"]) == 4
    assert "6 shapes" in queued["warnings"][0]  # the small-dataset note, as `submit train` gives it
    assert [j["id"] for j in final["jobs"]] == queued["job_ids"]
    assert [(j["status"], j["error"]) for j in final["jobs"]] == [("succeeded", None)] * 4
    assert {j["worker"] for j in final["jobs"]} == {"w1", "w2"}  # the two workers shared the sweep
    combos = [(1, "square"), (1, "sphere"), (2, "square"), (2, "sphere")]
    for job_id, (patches, template) in zip(queued["job_ids"], combos):
        job = home.json("status", str(job_id))
        assert job["sweep_id"] == queued["sweep_id"] and job["kind"] == "train"
        assert job["params"]["sweep"] == {"n_patches": patches, "template": template}
        model = job["params"]["config"]["model"]
        assert (model["n_patches"], model["template"], model["n_points"], model["bottleneck"]) == \
            (patches, template, 64, 16)
        assert job["params"]["config"]["epochs"] == 1


def test_status_of_a_sweep_ranks_its_jobs_by_validation_chamfer(home: Rodin, sweep_2x2: dict[str, Any]) -> None:
    queued = sweep_2x2["queued"]
    out = home.json("status", "--sweep", str(queued["sweep_id"]))
    assert out["sweep_id"] == queued["sweep_id"] and out["dataset"] == "swords@1"
    assert out["columns"] == ["n_patches", "template"]
    assert out["grid"] == {"n_patches": [1, 2], "template": ["square", "sphere"]}
    assert out["fixed"]["epochs"] == 1 and out["fixed"]["n_points"] == 64
    assert out["job_ids"] == queued["job_ids"]
    rows = out["jobs"]
    assert [r["rank"] for r in rows] == [1, 2, 3, 4]
    scores = [r["val_chamfer"] for r in rows]
    assert all(isinstance(v, float) and v > 0 for v in scores) and scores == sorted(scores)
    expected = dict(zip(queued["job_ids"], [{"n_patches": 1, "template": "square"},
                                            {"n_patches": 1, "template": "sphere"},
                                            {"n_patches": 2, "template": "square"},
                                            {"n_patches": 2, "template": "sphere"}]))
    for row in rows:
        assert row["settings"] == expected[row["job_id"]] and row["status"] == "succeeded"
        assert row["eta_s"] is None and row["epoch"] == row["epochs"] == 1
        model = home.json("models", "show", str(row["final_model_id"]))
        assert model["job_id"] == row["job_id"] and model["metrics"]["val_chamfer"] == row["val_chamfer"]

    text = home.cli("status", "--sweep", str(queued["sweep_id"]))
    assert text.returncode == 0, text.stderr
    assert f"sweep {queued['sweep_id']} on swords@1" in text.stdout
    assert "patches" in text.stdout and "template" in text.stdout and "val chamfer" in text.stdout
    first = next(line for line in text.stdout.splitlines() if line.strip().startswith("1 "))
    assert str(rows[0]["job_id"]) in first and f"{rows[0]['val_chamfer']:.5f}" in first


def test_submit_sweep_wait_reports_the_best_model(home: Rodin) -> None:
    out = home.json("submit", "sweep", "--dataset", "swords", "--patches", "1", "--template", "square,sphere",
                    *TINY, "--wait")
    assert out["status"] == "succeeded" and out["columns"] == ["template"]
    assert out["fixed"]["n_patches"] == 1 and len(out["job_ids"]) == 2
    top = out["jobs"][0]
    assert top["rank"] == 1 and out["best_job_id"] == top["job_id"]
    assert out["best_model_id"] == top["final_model_id"] is not None
    assert [r["rank"] for r in out["jobs"]] == [1, 2]
    assert home.json("models", "show", str(out["best_model_id"]))["job_id"] == top["job_id"]


@pytest.mark.parametrize("args, message", [
    (["--patches", "1,2", "--template", "square,cube"],
     "--patches 1 --template cube: invalid training settings: template must be square or sphere, not 'cube'"),
    (["--patches", "1,80", "--points", "64"],
     "--patches 80: invalid training settings: points (64) must be at least the number of patches (80)"),
    (["--patches", "1,x"], "--patches '1,x': 'x' is not an integer"),
    (["--epochs", "1,1"], "--epochs '1,1': '1' is given twice"),
    (["--pretrain", "swords"], "a sweep does not pre-train"),
])
def test_a_bad_combination_is_refused_before_anything_is_queued(home: Rodin, args: list[str], message: str) -> None:
    sweeps, queued = _count(home, "sweeps"), _count(home, "jobs")
    result = home.cli("submit", "sweep", "--dataset", "swords", *args)
    assert result.returncode == 2 and message in result.stderr, (result.returncode, result.stderr)
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert (_count(home, "sweeps"), _count(home, "jobs")) == (sweeps, queued)


def test_an_unknown_sweep_or_dataset_is_one_line_and_exit_2(home: Rodin) -> None:
    for args, message in ((["status", "--sweep", "999"], "sweep 999 does not exist (newest is"),
                          (["status", "1", "--sweep", "1"], "give a job id or --sweep ID, not both"),
                          (["submit", "sweep", "--dataset", "nosuch", "--patches", "1,2"],
                           "dataset 'nosuch' is not registered")):
        result = home.cli(*args)
        assert result.returncode == 2 and message in result.stderr, (args, result.returncode, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
