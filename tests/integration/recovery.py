"""What the recovery tests share (tests/integration/test_recovery_*.py): a model small enough
that a job of hundreds of epochs can be killed midway, and the checks every scenario ends with:
the job succeeded, no (job, epoch) was registered twice, and its checkpoints form one unbroken
lineage (each attempt continues from the newest registered checkpoint of the one before).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from tests.conftest import Rodin, stop_process, until
from tests.servers import REDIS_PASSWORD, free_port, redis_binary

#: An epoch of this model on 8 swords takes ~50 ms: jobs meant to be interrupted midway run
#: hundreds of epochs.
TRAIN = ["--patches", "4", "--points", "128", "--bottleneck", "32", "--hidden", "32", "--layers", "1",
         "--batch-size", "4", "--checkpoint-every", "1", "--val-fraction", "0.25", "--keep-last"]
# Heartbeats come every stale/3 s (workers/heartbeat.py): 6 s leaves room on a loaded machine.
FAST_RECOVERY = {"RODIN_STALE_AFTER_S": "6", "OMP_NUM_THREADS": "1"}


_until = partial(until, timeout=180)

Worker = subprocess.Popen[bytes]


@contextmanager
def _workers() -> Iterator[Callable[[Rodin, str], Worker]]:
    """start(rodin, name): a worker of the scenario, stopped (if still running) when the block
    ends, however it ends."""
    started: list[Worker] = []

    def start(rodin: Rodin, name: str) -> Worker:
        started.append(rodin.start_worker(name))
        return started[-1]

    try:
        yield start
    finally:
        for proc in started:
            stop_process(proc)


def _job(rodin: Rodin, job_id: int) -> dict:
    return rodin.json("status", str(job_id))


def _ended(rodin: Rodin, job_id: int, timeout: float = 180) -> dict:
    """The job's summary once it has succeeded or failed."""
    return _until(lambda: (j := _job(rodin, job_id))["status"] in ("succeeded", "failed") and j,
                  timeout=timeout, what=f"job {job_id} to end")


def _checkpoints_are_one_lineage(rodin: Rodin, job_id: int) -> list[Any]:
    from orchestrator.registry.db import session_scope
    from orchestrator.registry.models import ModelCheckpoint

    with session_scope(rodin.settings()) as s:
        rows = s.execute(select(ModelCheckpoint.id, ModelCheckpoint.epoch, ModelCheckpoint.parent_id)
                         .where(ModelCheckpoint.job_id == job_id).order_by(ModelCheckpoint.id)).all()
    epochs = [r.epoch for r in rows]
    assert len(set(epochs)) == len(epochs), f"an epoch registered twice: {epochs}"
    assert epochs == sorted(epochs), epochs
    assert [r.parent_id for r in rows[1:]] == [r.id for r in rows[:-1]], "a broken lineage"
    return rows


def _resumed_once(rodin: Rodin, done: dict, back_after: float, within: float) -> list[Any]:
    """The checks of a job whose first attempt was lost: it succeeded on its second attempt,
    running again within `within` seconds, its checkpoints one lineage (returned)."""
    assert done["status"] == "succeeded", done["error"]
    assert (done["attempts"], done["lost"]) == (2, 1)
    assert back_after < within, back_after
    return _checkpoints_are_one_lineage(rodin, done["id"])


def _kill_when_training(rodin: Rodin, worker: subprocess.Popen[bytes], job_id: int) -> float:
    """SIGKILL the worker once the job has registered two checkpoints; returns the kill time."""
    _until(lambda: len(_job(rodin, job_id)["model_ids"]) >= 2, what="two checkpoints")
    worker.send_signal(signal.SIGKILL)
    worker.wait(30)
    return time.monotonic()


def _half_written_by_a_dead_process(rodin: Rodin) -> Path:
    """A temporary file in the store as a job process killed mid-write leaves it (the kill
    above rarely lands inside a write, so one is made by a process that is then killed)."""
    from orchestrator.artifacts import open_store

    store = open_store(rodin.settings())
    folder = Path(store.root) / "sha256" / "ab"
    folder.mkdir(parents=True, exist_ok=True)
    writer = subprocess.run(
        [sys.executable, "-c", "import sys; from orchestrator import artifacts; "
         "name = artifacts._tmp_name(sys.argv[1]); open(name, 'wb').write(b'half'); print(name)",
         str(folder / ("ab" + "0" * 62 + ".pt"))],
        capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parents[2])
    tmp = Path(writer.stdout.strip())
    assert tmp.exists()
    return tmp


def _cluster(tmp_path: Path, env: dict[str, str]) -> Rodin:
    client = Rodin(tmp_path / "client", extra_env=env)
    client.json("db", "upgrade")
    client.json("datasets", "make", "swords", "--count", "8", "--points-per-shape", "400")
    return client


class _Redis:
    """A Redis of this test's own, with AOF, that can be killed and started again on its port."""

    def __init__(self, folder: Path) -> None:
        binary = redis_binary()
        if binary is None:
            pytest.skip("redis-server is not installed (apt-get install redis-server)")
        self.binary, self.folder, self.port = binary, folder, free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://:{REDIS_PASSWORD}@127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder),
             "--requirepass", REDIS_PASSWORD, "--appendonly", "yes", "--appendfsync", "everysec",
             "--save", "", "--daemonize", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        import socket

        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        raise TimeoutError("redis did not start")

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()


def _job_process(worker: subprocess.Popen[bytes]) -> int:
    """The pid of the worker's job process (the one child of Celery's prefork pool)."""
    def children() -> list[int]:
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[1]) == worker.pid:
                found.append(int(stat.parent.name))
        return found

    return _until(lambda: (c := children()) and len(c) == 1 and c[0], what="the job process")
