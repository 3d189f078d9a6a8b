"""A training job over several worker machines (`--nodes M --devices D`), seen from rank 0.

The worker that claims the job is machine 0: its job process is rank 0, it serves the c10d
store (torch.distributed's own rendezvous) at this machine's address, and it publishes that
address through the registry as M - 1 *member* jobs (kind `member`, on the train queue), one per
other machine: each holds the store's address and port, the job's config and the blobs every
rank reads. Any worker of the queue claims a member like any job (its own lease, heartbeat and
attempt), starts its machine's D ranks (`workers/member_job.py`) and they join rank 0's process
group: ranks m*D .. m*D+D-1 on machine m. No scheduler beyond the job service: a member is one
more job, and the meeting has a deadline (`RODIN_NODES_ARRIVE_TIMEOUT_S`): if some member's
ranks have not arrived by then, rank 0 ends the attempt's members and gives the job back, a
lost attempt, so a queue that never has M free workers at once fails the job after
RODIN_MAX_ATTEMPTS tries rather than holding workers for ever. Nothing is registered before
every rank has arrived (training has not started).
"""

from __future__ import annotations

import logging
import socket
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from sqlalchemy import select

from orchestrator import jobs
from orchestrator.job_states import JobKind, JobStatus
from orchestrator.kinds import MemberParams
from orchestrator.registry.db import session_scope, with_retries
from orchestrator.registry.models import Job
from orchestrator.settings import Settings
from workers.rank import RankLost, RankTask, arrived_key

log = logging.getLogger(__name__)


def node_address(settings: Settings) -> str:
    """Where other worker machines reach this one: RODIN_NODE_ADDRESS, else the address this
    machine reaches the broker from (every member reaches the broker too, so it is on their
    network), else the registry's, else loopback (an embedded broker: one machine)."""
    if settings.node_address:
        return settings.node_address
    for url in (settings.queue_url, settings.registry_url):
        host = urlsplit(url).hostname
        if host:
            found = _address_towards(host)
            if found:
                return found
    return "127.0.0.1"


def _address_towards(host: str) -> str | None:
    """This machine's address on the route to `host` (a UDP socket's connect sends nothing)."""
    try:
        target = socket.getaddrinfo(host, 9, socket.AF_INET, socket.SOCK_DGRAM)[0][4]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.connect(target)
            return str(sock.getsockname()[0])
    except OSError:
        return None


class MemberFailed(RuntimeError):
    """Another machine's ranks failed with an error (not a lost process): the job fails."""


@dataclass
class Members:
    """The member jobs of one attempt of a `--nodes` job: ids[i] runs machine i + 1."""

    settings: Settings
    train_job: int
    devices: int
    ids: list[int]

    @classmethod
    def publish(cls, settings: Settings, task: RankTask, attempt: int, dataset_id: int,
                nodes: int) -> Members:
        """Queue one member job per other machine, each naming where rank 0's store listens."""
        devices = task.on_machine
        ids = []
        try:
            for node in range(1, nodes):
                params = MemberParams(
                    train_job=task.job_id, attempt=attempt, node=node, master_addr=task.master_addr,
                    master_port=task.master_port, config=task.config, dataset=list(task.dataset),
                    resume=list(task.resume) if task.resume else None,
                    start_from=list(task.start_from) if task.start_from else None, timeout_s=task.timeout_s)
                ids.append(jobs.submit(settings, JobKind.member, params=params, dataset_id=dataset_id))
        except BaseException:
            jobs.end_members(settings, ids, f"job {task.job_id}'s attempt {attempt} could not queue its members")
            raise
        log.info("job %s: members %s for machines 1..%s; rank 0's store at %s:%s", task.job_id, ids,
                 nodes - 1, task.master_addr, task.master_port)
        return cls(settings, task.job_id, devices, ids)

    def _rows(self) -> list[tuple[int, str, str | None, str | None]]:
        """(node, status, worker, error) of each member, in node order."""
        def read() -> list[tuple[int, str, str | None, str | None]]:
            with session_scope(self.settings) as s:
                rows = {r.id: r for r in s.execute(select(Job.id, Job.status, Job.worker, Job.error)
                                                   .where(Job.id.in_(self.ids)))}
            return [(i + 1, rows[j].status, rows[j].worker, rows[j].error) for i, j in enumerate(self.ids)
                    if j in rows]
        return with_retries(self.settings, f"read members of job {self.train_job}", read)

    def check(self) -> None:
        """Raise if a member has ended before its ranks arrived: MemberFailed with its error,
        RankLost for one lost or cancelled (the attempt is given back)."""
        for node, status, worker, error in self._rows():
            if status == JobStatus.failed.value:
                raise MemberFailed(f"machine {node} (worker {worker}): {error}")
            if status in (JobStatus.cancelled.value, JobStatus.succeeded.value):
                raise RankLost(f"machine {node} (worker {worker}) ended before it arrived: {error or status}")

    def late(self, store: object, timeout_s: float) -> RankLost:
        """The exception for members that had not arrived by the deadline, saying which and
        where each stood."""
        missing = []
        rows = {node: (status, worker) for node, status, worker, _ in self._rows()}
        for node in range(1, len(self.ids) + 1):
            ranks = range(node * self.devices, (node + 1) * self.devices)
            if store.check([arrived_key(r) for r in ranks]):  # type: ignore[attr-defined]
                continue
            status, worker = rows.get(node, ("gone", None))
            where = ("queued: no free worker of the train queue took it" if status == JobStatus.queued.value
                     else f"{status} on {worker}")
            missing.append(f"machine {node} (job {self.ids[node - 1]}, {where})")
        return RankLost(f"{', '.join(missing) or 'a machine'} did not arrive within {timeout_s:.0f} s "
                        f"(RODIN_NODES_ARRIVE_TIMEOUT_S); a --nodes {len(self.ids) + 1} job needs "
                        f"{len(self.ids) + 1} free workers at once")

    def cause(self, grace_s: float) -> Exception:
        """Why the process group broke, once rank 0's collective failed and no rank of its own
        machine ended: a member that failed (its error fails the job), else a lost rank on
        another machine (the attempt is given back). Waits up to `grace_s` for a member to
        say."""
        deadline = time.monotonic() + grace_s
        while True:
            rows = self._rows()
            for node, status, worker, error in rows:
                if status == JobStatus.failed.value:
                    return MemberFailed(f"machine {node} (worker {worker}): {error}")
            ended = [(node, worker, error) for node, status, worker, error in rows
                     if JobStatus(status).finished]
            if ended or time.monotonic() >= deadline:
                break
            time.sleep(0.25)
        if ended:
            node, worker, error = ended[0]
            return RankLost(f"machine {node} (worker {worker}) ended: {error or 'no reason given'}")
        return RankLost("a rank on another machine ended (its member job is still running)")

    def end(self, reason: str) -> None:
        """The attempt no longer needs its members: the queued ones end, the running ones end
        as their process group breaks."""
        jobs.end_members(self.settings, self.ids, reason)
