"""What a client sees of workers and jobs on other machines: `rodin workers` from heartbeats, and
a running job whose worker went silent shown as stale by `rodin status`."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timedelta, timezone

from tests.conftest import Rodin


def _insert(rodin: Rodin, *rows) -> list[int]:  # type: ignore[no-untyped-def]
    from orchestrator.registry.db import session_scope

    with session_scope(rodin.settings()) as s:
        s.add_all(rows)
        s.flush()
        return [r.id for r in rows]


def test_workers_and_stale_jobs_from_heartbeats(rodin: Rodin) -> None:
    from orchestrator.registry.models import Job, Worker

    assert rodin.json("workers") == {"workers": []}
    now = datetime.now(timezone.utc)
    long_ago = now - timedelta(minutes=10)
    stuck, fresh = _insert(
        rodin,
        Job(kind="train", status="running", attempts=1, worker="gone", device="cuda:0 (GPU 1)",
            started_at=long_ago, heartbeat_at=long_ago, created_at=long_ago),
        Job(kind="train", status="running", attempts=1, worker="busy", device="cpu",
            started_at=now, heartbeat_at=now),
    )
    _insert(
        rodin,
        Worker(hostname="gone", pid=1, queues="infer,train", device="cuda:0 (GPU 1)",
               current_job_id=stuck, started_at=long_ago, last_heartbeat=long_ago),
        Worker(hostname="busy", pid=2, queues="infer,train", device="cpu",
               current_job_id=fresh, started_at=now, last_heartbeat=now),
        Worker(hostname="done", pid=3, queues="infer", device="cpu",
               started_at=long_ago, last_heartbeat=long_ago, stopped_at=long_ago),
    )
    live = rodin.json("workers")["workers"]
    assert [(w["hostname"], w["state"], w["current_job_id"], w["current_job_kind"]) for w in live] \
        == [("busy", "live", fresh, "train")]
    everyone = {w["hostname"]: w for w in rodin.json("workers", "--all")["workers"]}
    assert {k: w["state"] for k, w in everyone.items()} == {"busy": "live", "gone": "stale",
                                                            "done": "stopped"}
    assert everyone["gone"]["current_job_id"] == stuck  # what it was doing when it went quiet
    assert everyone["gone"]["heartbeat_age_s"] >= 590
    table = rodin.run("workers", "--all")
    assert table.returncode == 0 and "stale" in table.stdout and "GPU 1" in table.stdout

    wide = Rodin(rodin.home, extra_env={"COLUMNS": "200"})
    listing = wide.run("status")
    assert listing.returncode == 0
    assert [line for line in listing.stdout.splitlines() if "stale" in line] == \
        [line for line in listing.stdout.splitlines() if "gone" in line]
    assert "stale: no heartbeat for 10m" in listing.stdout
    assert "stale" in rodin.run("status", str(stuck)).stdout
    assert "stale" not in rodin.run("status", str(fresh)).stdout
    assert rodin.json("status", str(stuck))["heartbeat_at"].startswith(long_ago.date().isoformat())


def test_client_status_imports_neither_torch_nor_alembic(rodin: Rodin) -> None:
    rodin.json("status")  # creates and upgrades the embedded registry (that path uses Alembic)
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "orchestrator.cli", "status"],
                            env=rodin.env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    modules = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if "|" in line}
    assert not {m for m in modules if m.split(".")[0] in ("torch", "alembic", "celery", "numpy")}
