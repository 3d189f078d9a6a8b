"""The helper ranks of a multi-device training job, and `python -m workers.rank`, one of them.

A job whose config says `devices: N > 1` trains in N processes of this worker machine. The job
process is rank 0: it alone talks to the registry (progress, checkpoints, the lease; its
heartbeat is the worker's) and writes to the artifact store. It starts ranks 1..N-1 as
subprocesses (`HelperRanks`: a Celery job process is daemonic, so multiprocessing cannot start
children there) and hands each, on its stdin, what it needs: the job's config, the dataset's
and the resume checkpoint's addresses and sha256, its rank, the world size and the port of the
c10d store that rank 0 serves on loopback. A helper reads the dataset and the checkpoint
through the store and the machine's shard cache, as rank 0 does (read only, sha256 checked),
says it has arrived in the c10d store, joins the process group and trains with no callbacks.

Ends: a helper ends with rank 0's decision (finished, cancelled: `atlas_core.train` broadcasts
it every epoch). A helper that dies makes rank 0's next collective fail; rank 0 then kills the
others and gives the attempt back (`HelperRanks.cause`). A helper dies with rank 0
(PR_SET_PDEATHSIG, and a thread that watches the parent's pid where that is missing), and rank 0
kills every helper in a `finally`, so no rank outlives its job.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import IO, Any

log = logging.getLogger(__name__)

#: How long rank 0 waits for every helper to start (import torch, read the dataset) and arrive.
ARRIVAL_TIMEOUT_S = 600.0
#: After a collective failed on rank 0: how long it waits for a helper to be seen ended.
DEATH_GRACE_S = 5.0


@dataclass(frozen=True)
class RankTask:
    """What a helper rank needs, as JSON on its stdin. Blobs are [uri, sha256]."""

    job_id: int
    config: dict[str, Any]  # TrainConfig.to_dict(), the device set by the worker
    dataset: tuple[str, str]
    resume: tuple[str, str] | None  # the job's newest checkpoint (a resumed attempt)
    start_from: tuple[str, str] | None  # the model a fine-tune starts from, when not resuming
    rank: int
    world_size: int
    master_addr: str
    master_port: int
    parent_pid: int
    timeout_s: float  # how long a collective waits for the other ranks
    #: This rank's index on its machine (its device there), and how many ranks the machine
    #: runs (0: all of them, a one-machine job). A `--nodes` job's machine m runs ranks
    #: m*D .. m*D+D-1, its local ranks 0..D-1.
    local_rank: int = 0
    machine_ranks: int = 0

    @property
    def on_machine(self) -> int:
        """How many of the job's ranks run on this machine."""
        return self.machine_ranks or self.world_size

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> RankTask:
        d = json.loads(text)
        for key in ("dataset", "resume", "start_from"):
            d[key] = tuple(d[key]) if d[key] is not None else None
        return cls(**d)


def arrived_key(rank: int) -> str:
    """The c10d store key a helper sets once it is ready to join the process group."""
    return f"rodin/arrived/{rank}"


class RankLost(RuntimeError):
    """A helper rank died (killed, out of memory, crashed): the attempt is lost, not failed."""


class HelperRanks:
    """Ranks 1..N-1 of a job, seen from rank 0 (the job process)."""

    def __init__(self, procs: list[subprocess.Popen[bytes]], first: int = 0):
        self.procs = procs  # procs[i] is rank first + i + 1
        self.first = first
        self._reports: dict[int, dict[str, Any]] = {}

    @property
    def ranks(self) -> list[int]:
        """The helpers' ranks in the job's process group."""
        return [self.first + i + 1 for i in range(len(self.procs))]

    @classmethod
    def start(cls, task: RankTask, keep_fds: tuple[int, ...] = ()) -> HelperRanks:
        """Start the machine's other ranks for `task` (the machine's local rank 0's: ranks
        task.rank+1 .. task.rank+on_machine-1, each told its own rank and local rank). On the
        CPU each helper runs one torch thread. `keep_fds`: open descriptors each helper
        inherits and holds until it ends (the job's device locks, `workers.devices.Grant`)."""
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        procs: list[subprocess.Popen[bytes]] = []
        helpers = cls(procs, task.rank)
        try:
            for local in range(1, task.on_machine):
                proc = subprocess.Popen([sys.executable, "-m", "workers.rank"], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, env=env, pass_fds=keep_fds)
                procs.append(proc)
                own = RankTask(**{**asdict(task), "rank": task.rank + local, "local_rank": local})
                assert proc.stdin is not None
                proc.stdin.write(own.to_json().encode())
                proc.stdin.close()
        except BaseException:
            helpers.kill()
            raise
        return helpers

    def wait_arrived(self, store: Any, timeout_s: float = ARRIVAL_TIMEOUT_S,
                     tick: Callable[[], None] | None = None, ranks: list[int] | None = None,
                     check: Callable[[], None] | None = None,
                     late: Callable[[], Exception] | None = None) -> None:
        """Until every rank of `ranks` (default: these helpers) has set its arrival key in rank
        0's c10d store: a helper that ends or never arrives raises here, before this process
        blocks in the process group's rendezvous. `check` runs every second and raises to stop
        the wait (another machine's member has failed); `late` makes the exception raised at
        the deadline (default: RankLost)."""
        keys = [arrived_key(r) for r in (self.ranks if ranks is None else ranks)]
        deadline = time.monotonic() + timeout_s
        checked = 0.0
        while not store.check(keys):
            cause = self.cause()
            if cause is not None:
                raise cause
            if check is not None and time.monotonic() - checked >= 1.0:
                checked = time.monotonic()
                check()
            if time.monotonic() > deadline:
                raise late() if late is not None else RankLost(
                    f"helper ranks did not start within {timeout_s:.0f} s")
            if tick is not None:
                tick()
            time.sleep(0.05)

    def _report(self, index: int) -> dict[str, Any]:
        """What an ended helper wrote on its stdout: {"ok": true} or {"error": "..."}; {} for
        none (it was killed)."""
        if index not in self._reports:
            out = self.procs[index].stdout
            text = out.read().decode(errors="replace") if out is not None else ""
            try:
                self._reports[index] = json.loads(text.strip().splitlines()[-1]) if text.strip() else {}
            except (ValueError, IndexError):
                self._reports[index] = {}
        return self._reports[index]

    def cause(self, grace_s: float = 0.0) -> Exception | None:
        """Why the ranks cannot go on, if a helper has ended (waiting up to `grace_s` for one
        to be seen ended): RankLost for a helper killed or crashed (the attempt is given back),
        RuntimeError with the helper's one-line error for one that raised (the job fails with
        it); None while every helper runs, or when all ended well."""
        deadline = time.monotonic() + grace_s
        while True:
            ended = [(i, p.poll()) for i, p in enumerate(self.procs) if p.poll() is not None]
            if ended or time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        lost = []
        failed = []
        for i, code in ended:
            report = self._report(i)
            if code == 0 and report.get("ok"):
                continue
            if "error" in report:
                failed.append(f"rank {self.first + i + 1}: {report['error']}")
            else:
                how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
                lost.append(f"rank {self.first + i + 1} died ({how})")
        if lost:  # a killed rank is the cause; the others' errors are its consequence
            return RankLost("; ".join(lost))
        if failed:
            return RuntimeError(failed[0])
        return None

    def join(self, timeout_s: float = 60.0) -> None:
        """Wait for the helpers to end after training (they end with rank 0's last epoch)."""
        deadline = time.monotonic() + timeout_s
        for proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("helper rank pid %s still running after training; killing it", proc.pid)

    def kill(self) -> None:
        """End every helper still running (SIGKILL) and reap it: none outlives its job."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL is not refused
                log.error("helper rank pid %s did not end after SIGKILL", proc.pid)
            if proc.stdout is not None:
                proc.stdout.close()


# ------------------------------------------------------------------------- the helper's side


def _die_with_parent(parent_pid: int) -> None:
    """This rank ends when rank 0 (its parent) does: PR_SET_PDEATHSIG on Linux, and a thread
    that polls the parent's pid (also where the signal is missing, and for a parent that died
    before the signal was set)."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass

    def watch() -> None:
        while True:
            if os.getppid() != parent_pid:
                os._exit(1)
            time.sleep(1.0)

    if os.getppid() != parent_pid:
        os._exit(1)
    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def read_inputs(task: RankTask, settings: Any, store: Any) -> tuple[Any, bytes | None, dict[str, Any] | None]:
    """What a rank other than rank 0 reads before it arrives: the dataset (through the store
    and the machine's shard cache, sha256 checked), the checkpoint a resumed attempt continues
    and the weights a fine-tune starts from (None where there is none)."""
    from atlas_core.checkpoint import load_checkpoint
    from orchestrator.datasets import open_version
    from orchestrator.shard_cache import ShardCache

    data = open_version(store, task.dataset[0], task.dataset[1], ShardCache.for_settings(settings, store))
    resume = store.get_bytes(*task.resume) if task.resume else None
    init = None
    if task.start_from is not None and resume is None:
        init = load_checkpoint(store.get_bytes(*task.start_from), map_location="cpu")["model"]
    return data, resume, init


def connect(task: RankTask) -> Any:
    """A client of rank 0's c10d store (raises once `task.timeout_s` has passed without it)."""
    import datetime

    import torch.distributed as dist

    return dist.TCPStore(task.master_addr, task.master_port, task.world_size, is_master=False,
                         timeout=datetime.timedelta(seconds=task.timeout_s))


def rank_spec(task: RankTask) -> Any:
    """The task's place in the process group (atlas_core.distributed.RankSpec)."""
    from atlas_core import distributed

    return distributed.RankSpec(task.rank, task.world_size, task.master_addr, task.master_port,
                                local_rank=task.local_rank)


def run_rank(task: RankTask) -> None:
    """Read the job's data (and checkpoint), arrive, join the process group, train."""
    import torch

    from atlas_core import distributed
    from atlas_core.config import TrainConfig
    from atlas_core.train import train
    from orchestrator.artifacts import open_store
    from orchestrator.settings import load_settings

    config = TrainConfig.from_dict(task.config)
    if torch.device(config.device).type == "cpu":
        torch.set_num_threads(1)
    settings = load_settings()
    data, resume, init = read_inputs(task, settings, open_store(settings))
    client = connect(task)
    client.set(arrived_key(task.rank), "1")
    with distributed.process_group(rank_spec(task), config.device, store=client, timeout_s=task.timeout_s):
        train(config, data, resume_from=resume, init_weights=init)


def main() -> int:
    """`python -m workers.rank`: one helper rank; its task as JSON on stdin. Its last stdout
    line says how it ended ({"ok": true} or {"error": one line}); everything else it prints
    goes to stderr (the worker's log)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the worker's to handle
    result: IO[str] = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    task = RankTask.from_json(sys.stdin.read())
    _die_with_parent(task.parent_pid)
    logging.basicConfig(level=logging.INFO, format=f"[rank {task.rank} of job {task.job_id}] %(message)s")
    try:
        run_rank(task)
    except Exception as exc:  # noqa: BLE001 - reported to rank 0 in one line, the traceback in the log
        log.exception("rank %s of job %s failed", task.rank, task.job_id)
        from orchestrator.jobs import one_line

        result.write(json.dumps({"error": one_line(exc)}) + "\n")
        result.flush()
        return 1
    result.write(json.dumps({"ok": True}) + "\n")
    result.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
