"""A machine that dies costs only time: workers killed outright, servers restarted mid-training.

Each scenario ends with the same checks: the job succeeded, no (job, epoch) was registered
twice, and its checkpoints form one unbroken lineage (each attempt continues from the newest
registered checkpoint of the one before).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
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


def _kill_when_training(rodin: Rodin, worker: subprocess.Popen[bytes], job_id: int) -> float:
    """SIGKILL the worker once the job has registered two checkpoints; returns the kill time."""
    _until(lambda: len(_job(rodin, job_id)["model_ids"]) >= 2, what="two checkpoints")
    worker.send_signal(signal.SIGKILL)
    worker.wait(30)
    return time.monotonic()


def test_embedded_worker_killed_outright_the_job_runs_again(tmp_path: Path) -> None:
    rodin = Rodin(tmp_path / "home", extra_env=FAST_RECOVERY)
    rodin.json("datasets", "make", "swords", "--count", "8", "--points-per-shape", "400")
    first = rodin.start_worker("e1")
    second = None
    try:
        job_id = rodin.json("submit", "train", "--dataset", "swords", "--epochs", "300", *TRAIN)["job_id"]
        killed = _kill_when_training(rodin, first, job_id)
        half_written = _half_written_by_a_dead_process(rodin)
        # The message died with the worker (the embedded broker had handed it over): only the
        # registry knows the job, and the new worker's reaper sends it again.
        second = rodin.start_worker("e2")
        _until(lambda: (j := _job(rodin, job_id))["worker"] == "e2" and j["status"] == "running",
               what="the job running again")
        back_after = time.monotonic() - killed
        done = _ended(rodin, job_id)
    finally:
        stop_process(first)
        if second is not None:
            stop_process(second)
    assert done["status"] == "succeeded", done["error"]
    assert (done["attempts"], done["lost"]) == (2, 1)
    assert back_after < 60, back_after
    rows = _checkpoints_are_one_lineage(rodin, job_id)
    assert rows[-1].epoch == 300
    assert not half_written.exists()  # the worker that started next on this machine removed it


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


@pytest.fixture
def shared(tmp_path: Path, redis_server, postgres_server) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {"RODIN_BROKER_URL": redis_server.url,
            "RODIN_DATABASE_URL": postgres_server.create_database("recovery"),
            "RODIN_ARTIFACTS_URL": (tmp_path / "artifacts").as_uri(), **FAST_RECOVERY}


def _cluster(tmp_path: Path, env: dict[str, str]) -> Rodin:
    client = Rodin(tmp_path / "client", extra_env=env)
    client.json("db", "upgrade")
    client.json("datasets", "make", "swords", "--count", "8", "--points-per-shape", "400")
    return client


def test_redis_worker_killed_the_job_runs_again_without_the_visibility_timeout(
        tmp_path: Path, shared: dict[str, str]) -> None:
    client = _cluster(tmp_path, shared)  # visibility timeout: the default 24 h
    one = Rodin(tmp_path / "w1", extra_env=shared).start_worker("r1")
    two = None
    try:
        job_id = client.json("submit", "train", "--dataset", "swords", "--epochs", "300", *TRAIN)["job_id"]
        _until(lambda: _job(client, job_id)["worker"] == "r1", what="r1 to take the job")
        two = Rodin(tmp_path / "w2", extra_env=shared).start_worker("r2")  # idle beside it
        killed = _kill_when_training(client, one, job_id)
        _until(lambda: (j := _job(client, job_id))["worker"] == "r2" and j["status"] == "running",
               what="the job running again")
        back_after = time.monotonic() - killed
        done = _ended(client, job_id)
    finally:
        stop_process(one)
        if two is not None:
            stop_process(two)
    assert done["status"] == "succeeded", done["error"]
    assert (done["attempts"], done["lost"]) == (2, 1)
    assert back_after < 60, back_after
    _checkpoints_are_one_lineage(client, job_id)


def test_a_visibility_timeout_shorter_than_the_job_never_runs_it_twice(
        tmp_path: Path, shared: dict[str, str]) -> None:
    env = {**shared, "RODIN_VISIBILITY_TIMEOUT_S": "2"}
    client = _cluster(tmp_path, env)
    workers = [Rodin(tmp_path / f"w{i}", extra_env=env).start_worker(f"v{i}") for i in (1, 2)]
    try:
        job_id = client.json("submit", "train", "--dataset", "swords", "--epochs", "30", *TRAIN)["job_id"]
        done = _ended(client, job_id)
    finally:
        for w in workers:
            stop_process(w)
    assert done["status"] == "succeeded" and done["attempts"] == 1, done
    _checkpoints_are_one_lineage(client, job_id)


def test_postgres_restarted_during_training(tmp_path: Path, shared: dict[str, str], postgres_server) -> None:  # type: ignore[no-untyped-def]
    client = _cluster(tmp_path, shared)
    worker = Rodin(tmp_path / "w", extra_env=shared).start_worker("p1")
    try:
        job_id = client.json("submit", "train", "--dataset", "swords", "--epochs", "300", *TRAIN)["job_id"]
        for _ in range(2):
            _until(lambda: len(_job(client, job_id)["model_ids"]) >= 3, what="checkpoints")
            postgres_server.restart()
            time.sleep(1.5)
        done = _ended(client, job_id)
    finally:
        stop_process(worker)
    assert done["status"] == "succeeded", done["error"]
    assert done["attempts"] == 1
    rows = _checkpoints_are_one_lineage(client, job_id)
    assert [r.epoch for r in rows] == list(range(1, 301))


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


def test_redis_killed_and_restarted_during_training(tmp_path: Path, postgres_server) -> None:  # type: ignore[no-untyped-def]
    redis = _Redis(tmp_path / "redis")
    (tmp_path / "redis").mkdir()
    redis.start()
    env = {"RODIN_BROKER_URL": redis.url, "RODIN_DATABASE_URL": postgres_server.create_database("rk"),
           "RODIN_ARTIFACTS_URL": (tmp_path / "artifacts").as_uri(), **FAST_RECOVERY}
    try:
        client = _cluster(tmp_path, env)
        worker = Rodin(tmp_path / "w", extra_env=env).start_worker("k1")
        try:
            job_id = client.json("submit", "train", "--dataset", "swords", "--epochs", "30", *TRAIN)["job_id"]
            _until(lambda: len(_job(client, job_id)["model_ids"]) >= 3, what="checkpoints")
            redis.kill()  # kill -9: what the last second wrote may be lost
            time.sleep(2)
            redis.start()
            queued = client.json("submit", "train", "--dataset", "swords", "--epochs", "2", *TRAIN)["job_id"]
            ends = [_ended(client, j) for j in (job_id, queued)]
        finally:
            stop_process(worker)
    finally:
        redis.kill()
    for done in ends:
        assert done["status"] == "succeeded", done["error"]
    assert ends[0]["attempts"] == 1  # the training went on through the broker's restart
    _checkpoints_are_one_lineage(client, job_id)


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


def test_a_postgres_outage_longer_than_the_stale_window_takes_back_nobody(
        tmp_path: Path, shared: dict[str, str], postgres_server) -> None:  # type: ignore[no-untyped-def]
    """No worker can beat while the registry is away; none is dead for it. Outage: 2.5 stale
    windows (RODIN_OUTAGE_S to try others: the README's figures use 30 and 120 s)."""
    outage_s = float(os.environ.get("RODIN_OUTAGE_S", "15"))
    client = _cluster(tmp_path, shared)
    workers = [Rodin(tmp_path / f"w{i}", extra_env=shared).start_worker(f"o{i}") for i in (1, 2)]
    try:
        ids = [client.json("submit", "train", "--dataset", "swords", "--epochs", "400", *TRAIN)["job_id"]
               for _ in range(2)]
        for job_id in ids:
            _until(lambda j=job_id: len(_job(client, j)["model_ids"]) >= 2, what="both jobs training")
        postgres_server.stop()
        time.sleep(outage_s)
        postgres_server.start()
        ends = [_ended(client, j, timeout=300) for j in ids]
    finally:
        for w in workers:
            stop_process(w)
    logs = "".join((tmp_path / f"w{i}" / f"o{i}.log").read_text() for i in (1, 2))
    assert "reaper requeued" not in logs
    for done in ends:
        assert done["status"] == "succeeded", done["error"]
        assert (done["attempts"], done["lost"]) == (1, 0), done
        _checkpoints_are_one_lineage(client, done["id"])


def test_a_stopped_job_process_is_ended_and_its_job_runs_again(
        tmp_path: Path, shared: dict[str, str]) -> None:
    """kill -STOP of the job process: its worker still beats, but the job makes no progress;
    after RODIN_PROGRESS_TIMEOUT_S the worker ends it and the job resumes elsewhere."""
    env = {**shared, "RODIN_PROGRESS_TIMEOUT_S": "4"}
    client = _cluster(tmp_path, env)
    one = Rodin(tmp_path / "w1", extra_env=env).start_worker("s1")
    two = None
    try:
        job_id = client.json("submit", "train", "--dataset", "swords", "--epochs", "300", "--keep-best",
                             *[f for f in TRAIN if f != "--keep-last"])["job_id"]
        _until(lambda: _job(client, job_id)["worker"] == "s1", what="s1 to take the job")
        two = Rodin(tmp_path / "w2", extra_env=env).start_worker("s2")
        _until(lambda: len(_job(client, job_id)["model_ids"]) >= 2, what="two checkpoints")
        os.kill(_job_process(one), signal.SIGSTOP)
        stopped = time.monotonic()
        _until(lambda: (j := _job(client, job_id))["attempts"] == 2 and j["status"] == "running",
               timeout=60, what="the job running again")
        back_after = time.monotonic() - stopped
        done = _ended(client, job_id)
    finally:
        stop_process(one)
        if two is not None:
            stop_process(two)
    assert done["status"] == "succeeded", done["error"]
    assert (done["attempts"], done["lost"]) == (2, 1)
    # Within the progress timeout plus one reaper period (5 s), with room for a loaded machine.
    assert back_after < 4 + 5 + 6, back_after
    assert "made no progress" in (tmp_path / "w1" / "s1.log").read_text()
    _checkpoints_are_one_lineage(client, job_id)
