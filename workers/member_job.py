"""The body of `rodin.member`: one more machine's ranks of a `--nodes` training job.

Rank 0 of the training job published this member (`workers.nodes`): the attempt it belongs
to, the machine's index m, where rank 0's c10d store listens, the config and the blobs. This
job process is rank m*D (the machine's local rank 0); it starts the machine's other D - 1
ranks (`workers.rank`), reads the data as rank 0 does, arrives, joins the process group and
trains with no callbacks that write: rank 0 alone reports, registers and decides (its decision
to stop reaches every rank at the end of every epoch). Only the ticks of its steps are kept,
so that its worker's heartbeat holds the member's own lease while it trains.

How a member ends: `succeeded` when the training ended well, `cancelled` when rank 0 stopped
(cancelled) or its attempt ended (given back, lost: the process group breaks, or the attempt
had ended before the member was claimed), `failed` only for an error of its own that would
come again (a worker without the job's kind of device, a dataset it cannot read), which rank 0
reads back and fails the job with.
"""

from __future__ import annotations

import logging
import os

import torch
from sqlalchemy import select

from atlas_core import distributed
from atlas_core.config import TrainConfig
from atlas_core.train import TrainCallbacks, train
from orchestrator import jobs
from orchestrator.artifacts import ArtifactStore
from orchestrator.errors import RodinError
from orchestrator.kinds import MemberParams
from orchestrator.registry.db import session_scope
from orchestrator.registry.models import Job, JobStatus
from orchestrator.settings import Settings
from workers import liveness, runtime
from workers.rank import DEATH_GRACE_S, HelperRanks, RankLost, RankTask, arrived_key, connect, rank_spec, read_inputs
from workers.train_job import check_devices

log = logging.getLogger(__name__)


def _params(settings: Settings, job_id: int) -> MemberParams:
    with session_scope(settings) as s:
        job = s.get(Job, job_id)
        return MemberParams.from_json(job.params if job is not None else None)


def _attempt_ended(settings: Settings, p: MemberParams) -> str | None:
    """Why the training job's attempt this member was made for is over, or None if it runs."""
    with session_scope(settings) as s:
        row = s.execute(select(Job.status, Job.attempts).where(Job.id == p.train_job)).first()
    if row is None:
        return f"training job {p.train_job} is not in the registry"
    if row.status != JobStatus.running.value or row.attempts != p.attempt:
        return (f"training job {p.train_job}'s attempt {p.attempt} ended before machine {p.node} joined "
                f"(the job is {row.status}, attempt {row.attempts})")
    return None


def _config(p: MemberParams, device: str) -> TrainConfig:
    config = TrainConfig.from_dict(p.config)
    wanted = torch.device(config.device).type
    if torch.device(device).type != wanted:
        raise RodinError(f"training job {p.train_job} trains on {wanted} but this worker's device is {device}: "
                         f"every machine of a --nodes job needs the same kind of device; start the workers "
                         f"that take its members with --device {wanted}")
    config.device = device
    return config


def run_member(settings: Settings, store: ArtifactStore, lease: jobs.Lease, device: str) -> None:
    p = _params(settings, lease.job_id)
    ended = _attempt_ended(settings, p)
    if ended is not None:
        log.info("member job %s: %s", lease.job_id, ended)
        jobs.finish(settings, lease.job_id, JobStatus.cancelled, lease=lease, error=ended)
        return
    config = _config(p, device)
    check_devices(config)
    first = p.node * config.devices
    ranks = list(range(first, first + config.devices))
    task = RankTask(job_id=p.train_job, config=config.to_dict(), dataset=(p.dataset[0], p.dataset[1]),
                    resume=(p.resume[0], p.resume[1]) if p.resume else None,
                    start_from=(p.start_from[0], p.start_from[1]) if p.start_from else None,
                    rank=first, world_size=config.world_size, master_addr=p.master_addr,
                    master_port=p.master_port, parent_pid=os.getpid(), timeout_s=p.timeout_s,
                    local_rank=0, machine_ranks=config.devices)
    threads = torch.get_num_threads()
    grant = runtime.current_grant
    helpers = HelperRanks.start(task, keep_fds=grant.fds if grant is not None else ())
    try:
        if torch.device(config.device).type == "cpu":
            torch.set_num_threads(1)
        data, resume, init = read_inputs(task, settings, store)
        try:
            client = connect(task)
            helpers.wait_arrived(client, tick=liveness.tick)
            client.set(arrived_key(first), "1")
            log.info("member job %s: machine %s of job %s, ranks %s..%s", lease.job_id, p.node, p.train_job,
                     ranks[0], ranks[-1])
            with distributed.process_group(rank_spec(task), config.device, store=client, timeout_s=p.timeout_s):
                result = train(config, data, TrainCallbacks(on_step=liveness.tick), resume_from=resume,
                               init_weights=init)
        except RuntimeError as exc:  # the store or a collective failed: which rank ended?
            cause = helpers.cause(grace_s=DEATH_GRACE_S)
            if cause is not None and not isinstance(cause, RankLost):
                raise cause from exc  # a helper's own error: it would come again
            why = str(cause) if cause is not None else jobs.one_line(exc)
            jobs.finish(settings, lease.job_id, JobStatus.cancelled, lease=lease,
                        error=f"the process group of training job {p.train_job} broke ({why}); "
                              f"job {p.train_job} decides what follows")
            return
        helpers.join()
    finally:
        helpers.kill()
        torch.set_num_threads(threads)
    status = JobStatus.cancelled if result.stopped else JobStatus.succeeded
    jobs.finish(settings, lease.job_id, status, lease=lease,
                result={"train_job": p.train_job, "attempt": p.attempt, "node": p.node, "ranks": ranks})
