"""A training job on two CPU ranks through the queue: `rodin submit train --devices 2`.

A real worker (filesystem broker, SQLite registry): rank 0 is its job process, rank 1 a
`python -m workers.rank` subprocess. Only rank 0 registers; a helper killed mid-training loses
the attempt and the job resumes from its last checkpoint; a cancel stops both ranks; no rank
process outlives its job.
"""

from __future__ import annotations

import os
import signal
from functools import partial
from pathlib import Path

import pytest
import torch

from tests.conftest import Rodin, stop_process, until

TINY = ["--patches", "4", "--points", "128", "--bottleneck", "32", "--hidden", "32", "--layers", "1",
        "--batch-size", "4", "--val-fraction", "0.25", "--devices", "2"]

#: Fixtures that start a real worker: their tests are `slow` (tests/conftest.py).
SLOW_FIXTURES = ("ddp_home",)


def _rank_pids(home: Path) -> list[int]:
    """The `workers.rank` processes of this home (their environment names it), wherever their
    parent is: a helper left behind by a dead job process is found too."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if b"workers.rank" not in (entry / "cmdline").read_bytes().split(b"\0"):
                continue
            if f"RODIN_HOME={home}".encode() in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


_until = partial(until, timeout=180)


@pytest.fixture(scope="module")
def ddp_home(tmp_path_factory):  # type: ignore[no-untyped-def]
    """8 swords and one live worker (2 threads: the two ranks take one each)."""
    rodin = Rodin(tmp_path_factory.mktemp("ddp") / "home", extra_env={"RODIN_STALE_AFTER_S": "6"})
    rodin.json("datasets", "make", "swords", "--count", "8", "--points-per-shape", "400")
    worker = rodin.start_worker("d1@%h")
    yield rodin
    stop_process(worker)
    assert _rank_pids(rodin.home) == []


def _models(rodin: Rodin, job_id: int) -> list[dict]:
    return sorted((m for m in rodin.json("models", "list")["models"] if m["job_id"] == job_id),
                  key=lambda m: m["id"])


def test_two_ranks_train_and_only_rank_0_registers(ddp_home: Rodin) -> None:
    out = ddp_home.json("submit", "train", "--dataset", "swords", "--epochs", "2", "--checkpoint-every", "1",
                        *TINY, "--wait", timeout=300)
    assert out["status"] == "succeeded", out
    job = ddp_home.json("status", str(out["job_id"]))
    assert job["attempts"] == 1
    models = _models(ddp_home, out["job_id"])
    assert [m["epoch"] for m in models] == [1, 2]  # each epoch once: rank 1 registers nothing
    assert [m["parent_id"] for m in models] == [None, models[0]["id"]]
    assert all(m["config"]["devices"] == 2 and m["config"]["batch_size"] == 4 for m in models)
    # The checkpoint is an ordinary one: it loads into the plain model and reconstructs.
    from atlas_core.checkpoint import load_model

    blob = Path(models[-1]["artifact_uri"].removeprefix("file://")).read_bytes()
    model, config, _ = load_model(blob, "cpu")
    assert config.devices == 2
    with torch.no_grad():
        points = model(torch.rand(2, 128, 3), generator=torch.Generator().manual_seed(0))
    assert points.shape == (2, 128, 3) and torch.isfinite(points).all()
    assert _rank_pids(ddp_home.home) == []


def test_a_job_asking_more_devices_than_the_machine_has_fails_in_one_line(ddp_home: Rodin) -> None:
    cores = len(os.sched_getaffinity(0))
    out = ddp_home.json("submit", "train", "--dataset", "swords", "--epochs", "1", *TINY,
                        "--devices", str(cores + 1), "--batch-size", str(4 * (cores + 1)), "--wait",
                        expect_code=1, timeout=300)
    assert out["status"] == "failed"
    assert f"trains on {cores + 1} devices per machine but this worker has {cores} CPU core(s)" in out["error"]


def test_cancel_stops_every_rank(ddp_home: Rodin) -> None:
    job_id = ddp_home.json("submit", "train", "--dataset", "swords", "--epochs", "300", *TINY)["job_id"]
    _until(lambda: (ddp_home.json("status", str(job_id)).get("progress") or {}).get("epoch", 0) >= 2,
           what="two epochs")
    assert len(_rank_pids(ddp_home.home)) == 1
    ddp_home.json("cancel", str(job_id))
    _until(lambda: ddp_home.json("status", str(job_id))["status"] == "cancelled", what="the cancel")
    _until(lambda: _rank_pids(ddp_home.home) == [], timeout=30, what="rank 1 to end")


@pytest.mark.slow
def test_a_killed_rank_loses_the_attempt_and_the_job_resumes_from_its_checkpoint(ddp_home: Rodin) -> None:
    job_id = ddp_home.json("submit", "train", "--dataset", "swords", "--epochs", "150", "--checkpoint-every", "5",
                           "--keep-last", *TINY)["job_id"]
    _until(lambda: len(ddp_home.json("status", str(job_id))["model_ids"]) >= 2, what="two checkpoints")
    [helper] = _rank_pids(ddp_home.home)
    os.kill(helper, signal.SIGKILL)
    done = _until(lambda: (j := ddp_home.json("status", str(job_id)))["status"] in ("succeeded", "failed") and j,
                  timeout=300, what="the job to end")
    assert done["status"] == "succeeded", done["error"]
    assert (done["attempts"], done["lost"]) == (2, 1)
    models = _models(ddp_home, job_id)
    epochs = [m["epoch"] for m in models]
    assert epochs == list(range(5, 151, 5)), epochs  # every checkpoint once, none twice
    # One unbroken lineage: the second attempt continued from the first one's last checkpoint.
    assert [m["parent_id"] for m in models[1:]] == [m["id"] for m in models[:-1]]
    _until(lambda: _rank_pids(ddp_home.home) == [], timeout=30, what="rank 1 of attempt 2 to end")
