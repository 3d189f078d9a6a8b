"""The body of `rodin.train`: registry in, atlas_core training, checkpoints out.

A job whose config says `devices: N > 1` trains in N ranks on this machine: this job process is
rank 0, the only one that talks to the registry and writes to the store, and it starts the
others (`workers.rank`); see `_train_ranks`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np
import torch
from sqlalchemy import select

from atlas_core import distributed
from atlas_core.checkpoint import load_checkpoint
from atlas_core.config import TrainConfig
from atlas_core.data import PointCloudSet, ShapeSource, gather_points, split_of
from atlas_core.render import render_loss_curves
from atlas_core.train import CheckpointEvent, EpochStats, TrainCallbacks, TrainResult, train
from orchestrator import jobs
from orchestrator.artifacts import ArtifactStore
from orchestrator.datasets import load_version, open_version
from orchestrator.errors import RegistryInvariantError, RodinError
from orchestrator.kinds import TrainParams
from orchestrator.registry.db import session_scope
from orchestrator.registry.models import Job, JobStatus, ModelCheckpoint
from orchestrator.registry.queries import newest_checkpoint
from orchestrator.settings import Settings
from orchestrator.shard_cache import ShardCache
from workers import liveness, nodes, runtime
from workers.blobs import Blob
from workers.rank import DEATH_GRACE_S, HelperRanks, RankLost, RankTask, rank_spec

log = logging.getLogger(__name__)
#: Shapes of the base's training set held for rehearsal (a sample of a larger one).
REHEARSAL_SHAPES = 2000


@dataclass
class _Plan:
    config: TrainConfig
    dataset_id: int
    dataset: Blob
    resume: Blob | None  # this job's newest checkpoint (a retried attempt)
    start_from: Blob | None  # the model to fine-tune
    #: With `--rehearsal`: the dataset the fine-tuned base was trained on (its family's shapes).
    rehearsal: Blob | None = None


def _plan(settings: Settings, job_id: int, device: str) -> _Plan:
    with session_scope(settings) as s:
        job = s.get(Job, job_id)
        if job is None or job.dataset is None:
            raise RegistryInvariantError(f"training job {job_id} has no registered dataset")
        config = TrainConfig.from_dict(TrainParams.from_json(job.params).config)
        config.device = device
        ds = job.dataset
        newest = newest_checkpoint(s, job_id)
        resume = Blob.of_model(newest) if newest else None
        start = Blob.of_model(job.input_model) if job.input_model else None
        rehearsal = None
        if config.rehearsal > 0:
            if job.input_model is None or job.input_model.dataset is None:
                raise RodinError(f"training job {job_id} asks for rehearsal but fine-tunes no base model: "
                                 "--rehearsal needs --pretrain")
            rehearsal = Blob.of_dataset(job.input_model.dataset)
        return _Plan(config, ds.id, Blob.of_dataset(ds), resume, start, rehearsal)


class _Recorder:
    """Training callbacks that write progress and checkpoints to the registry."""

    def __init__(self, settings: Settings, store: ArtifactStore, lease: jobs.Lease, plan: _Plan):
        self.settings, self.store, self.lease, self.plan = settings, store, lease, plan
        start = plan.resume or plan.start_from
        self.origin = start.id if start else None
        #: epoch -> model id of this job's registered checkpoints (including earlier attempts').
        self.ids = _registered_epochs(settings, lease.job_id)

    def parent_for(self, epoch: int) -> int | None:
        """The checkpoint these weights continued from: the newest registered before `epoch`."""
        earlier = [e for e in self.ids if e < epoch]
        return self.ids[max(earlier)] if earlier else self.origin

    def callbacks(self) -> TrainCallbacks:
        return TrainCallbacks(on_epoch=self.on_epoch, on_checkpoint=self.on_checkpoint, on_step=liveness.tick)

    def on_epoch(self, stats: EpochStats) -> bool:
        return jobs.report_progress(self.settings, self.lease, stats.as_dict())

    def on_checkpoint(self, event: CheckpointEvent) -> None:
        # Blob first, row second: a crash in between leaves an unreferenced blob, never a row
        # that points at nothing.
        blob = self.store.put_bytes(event.state, ".pt")
        model_id = jobs.register_checkpoint(
            self.settings, self.lease, dataset_id=self.plan.dataset_id,
            parent_id=self.parent_for(event.epoch), epoch=event.epoch, final=False,
            config=self.plan.config.to_dict(), metrics={**event.metrics, "kind": event.reason},
            artifact_uri=blob.uri, sha256=blob.sha256, size_bytes=blob.size,
            code_version=runtime.code_version(), torch_version=torch.__version__,
        )
        self.ids[event.epoch] = model_id
        log.info("job %s: registered model %s (epoch %s, %s)", self.lease.job_id, model_id,
                 event.epoch, event.reason)


def _registered_epochs(settings: Settings, job_id: int) -> dict[int, int]:
    with session_scope(settings) as s:
        rows = s.execute(select(ModelCheckpoint.epoch, ModelCheckpoint.id)
                         .where(ModelCheckpoint.job_id == job_id)).all()
        return {epoch: model_id for epoch, model_id in rows}


def _open_data(settings: Settings, store: ArtifactStore, plan: _Plan) -> ShapeSource:
    """Shards through the machine's cache (each fetched once per machine, sha256 checked), read
    as training goes; a version stored before shards is one blob in memory, as before."""
    return open_version(store, plan.dataset.uri, plan.dataset.sha256, ShardCache.for_settings(settings, store))


def _open_rehearsal(settings: Settings, store: ArtifactStore, plan: _Plan) -> PointCloudSet | None:
    """The base's own training shapes, in memory (at most REHEARSAL_SHAPES: a family's
    generated set is a few hundred), when the config rehearses them."""
    if plan.rehearsal is None:
        return None
    return load_version(store, plan.rehearsal.uri, plan.rehearsal.sha256, ShardCache.for_settings(settings, store),
                        max_shapes=REHEARSAL_SHAPES)


def _start_state(store: ArtifactStore, plan: _Plan) -> tuple[bytes | None, dict[str, torch.Tensor] | None]:
    """(the checkpoint a resumed attempt continues, the weights a fine-tune starts from)."""
    resume_bytes = plan.resume.read(store) if plan.resume else None
    init_weights = None
    if plan.start_from is not None and resume_bytes is None:
        init_weights = load_checkpoint(plan.start_from.read(store), map_location=plan.config.device)["model"]
    return resume_bytes, init_weights


def run_train(settings: Settings, store: ArtifactStore, lease: jobs.Lease, device: str) -> None:
    job_id = lease.job_id
    plan = _plan(settings, job_id, device)
    recorder = _Recorder(settings, store, lease, plan)
    if plan.config.world_size > 1:
        try:
            result, data = _train_ranks(settings, store, plan, recorder)
        except RankLost as exc:
            # A rank died: the attempt is lost, as if this job process had died, and the job
            # resumes from its last checkpoint (or fails once RODIN_MAX_ATTEMPTS are lost).
            reason = f"{exc}; its other ranks were stopped"
            jobs.take_back(settings, job_id, lease.attempt, runtime.hostname(), reason)
            raise jobs.LeaseLost(f"{reason}; attempt {lease.attempt} given back") from exc
    else:
        data = _open_data(settings, store, plan)
        resume_bytes, init_weights = _start_state(store, plan)
        result = train(plan.config, data, recorder.callbacks(), resume_from=resume_bytes,
                       init_weights=init_weights, registered_epochs=set(recorder.ids),
                       rehearsal=_open_rehearsal(settings, store, plan))

    outputs = []
    if result.history:
        png = store.put_bytes(render_loss_curves(result.history, f"job {job_id}"), ".png")
        outputs.append({"name": "loss_curves.png", "kind": "plot", **png.as_dict()})
    if result.stopped:
        jobs.finish(settings, job_id, JobStatus.cancelled, lease=lease, outputs=outputs)
        return
    if result.final_epoch not in recorder.ids:
        raise RegistryInvariantError(f"job {job_id}: the chosen epoch {result.final_epoch} has no "
                                     "registered checkpoint")
    final_id = recorder.ids[result.final_epoch]
    ood = _ood_stats(store, _blob_of(settings, final_id), data, plan.config, device, job_id)
    jobs.finish(settings, job_id, JobStatus.succeeded, lease=lease, outputs=outputs,
                final_model_id=final_id, final_metrics={"ood": ood} if ood else None,
                result={"final_model_id": recorder.ids[result.final_epoch],
                        "final_epoch": result.final_epoch, "last_epoch": result.last_epoch,
                        "stopped_early": result.stopped_early})


def _usable_devices(device: str) -> tuple[int, str]:
    """(how many devices of this kind this worker process can give one job, their name)."""
    if torch.device(device).type == "cuda":
        return torch.cuda.device_count(), "visible GPU(s)"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return cores, "CPU core(s)"


def check_devices(config: TrainConfig) -> None:
    """Refuse, in one line, a job that needs more devices on each machine than this worker has."""
    usable, what = _usable_devices(config.device)
    if config.devices > usable:
        raise ValueError(f"the job trains on {config.devices} devices per machine but this worker has "
                         f"{usable} {what}: --devices is at most one machine's GPUs (or CPU cores); "
                         f"resubmit with --devices {usable} (and --nodes for more machines) or start a "
                         f"worker where {config.devices} fit")


def collective_timeout_s(settings: Settings) -> float:
    """How long a rank waits in a collective: long enough for rank 0 to ride out a registry or
    store outage while the others wait."""
    return max(distributed.DEFAULT_TIMEOUT_S, 2 * settings.registry_retry_s + settings.progress_timeout_s)


def _train_ranks(settings: Settings, store: ArtifactStore, plan: _Plan,
                 recorder: _Recorder) -> tuple[TrainResult, ShapeSource]:
    """Train on `config.world_size` ranks, this process being rank 0.

    Rank 0 serves the c10d store (on loopback for a one-machine job; at this machine's address
    for a `--nodes` job, which it publishes as member jobs, `workers.nodes`), starts this
    machine's other ranks (`HelperRanks`), reads the data while they start, waits for every
    rank to arrive (a helper that ends first, or a member that fails, raises here rather than
    leaving rank 0 in the rendezvous; members late past RODIN_NODES_ARRIVE_TIMEOUT_S give the
    attempt back), then trains with the callbacks that write; every other rank trains with
    none. A rank that dies makes a collective fail on rank 0: RankLost (killed, crashed) or the
    rank's own error. Every helper is killed on the way out, whatever happened, and the members
    of an attempt that did not finish are ended. On the CPU each rank runs one thread."""
    config = plan.config
    world = config.world_size
    check_devices(config)
    timeout_s = collective_timeout_s(settings)
    address = nodes.node_address(settings) if config.nodes > 1 else "127.0.0.1"
    tcp = distributed.serve_store(address, world, timeout_s=timeout_s)
    task = RankTask(job_id=recorder.lease.job_id, config=config.to_dict(),
                    dataset=(plan.dataset.uri, plan.dataset.sha256),
                    resume=(plan.resume.uri, plan.resume.sha256) if plan.resume else None,
                    start_from=(plan.start_from.uri, plan.start_from.sha256)
                    if plan.start_from and not plan.resume else None,
                    rank=0, world_size=world, master_addr=address, master_port=tcp.port,
                    parent_pid=os.getpid(), timeout_s=timeout_s, machine_ranks=config.devices)
    threads = torch.get_num_threads()
    members = (nodes.Members.publish(settings, task, recorder.lease.attempt, plan.dataset_id, config.nodes)
               if config.nodes > 1 else None)
    finished = False
    # On a machine that offers its devices, each helper holds the job's device locks too: the
    # devices are free again only once every rank has ended (workers/devices.py).
    grant = runtime.current_grant
    helpers = HelperRanks.start(task, keep_fds=grant.fds if grant is not None else ())
    try:
        if torch.device(config.device).type == "cpu":
            torch.set_num_threads(1)
        data = _open_data(settings, store, plan)
        resume_bytes, init_weights = _start_state(store, plan)
        if members is None:
            helpers.wait_arrived(tcp, tick=liveness.tick)
        else:
            arrive_s = settings.nodes_arrive_timeout_s
            helpers.wait_arrived(tcp, timeout_s=arrive_s, tick=liveness.tick, ranks=list(range(1, world)),
                                 check=members.check, late=lambda: members.late(tcp, arrive_s))
        log.info("job %s: %s ranks on %s machine(s), %s", task.job_id, world, config.nodes, config.device)
        try:
            with distributed.process_group(rank_spec(task), config.device, store=tcp, timeout_s=timeout_s):
                result = train(config, data, recorder.callbacks(), resume_from=resume_bytes,
                               init_weights=init_weights, registered_epochs=set(recorder.ids))
        except RuntimeError as exc:  # a collective failed (gloo, NCCL): did a rank end?
            cause = helpers.cause(grace_s=DEATH_GRACE_S)
            if cause is None and members is not None:
                cause = members.cause(grace_s=DEATH_GRACE_S)
            if cause is None:
                raise
            raise cause from exc
        helpers.join()
        finished = True
        return result, data
    finally:
        helpers.kill()
        torch.set_num_threads(threads)
        if members is not None and not finished:
            members.end(f"job {task.job_id}'s attempt {recorder.lease.attempt} ended before it trained "
                        "to the end; a later attempt queues its own members")


def _blob_of(settings: Settings, model_id: int) -> Blob:
    with session_scope(settings) as s:
        model = s.get(ModelCheckpoint, model_id)
        if model is None:
            raise RegistryInvariantError(f"model {model_id} vanished from the registry")
        return Blob.of_model(model)


def _ood_stats(store: ArtifactStore, final: Blob, data: ShapeSource, config: TrainConfig,
               device: str, job_id: int) -> dict[str, object] | None:
    """What "in distribution" means for the final model (atlas_core.ood), from its validation
    shapes (its training shapes if it has none); stored with the final checkpoint. From a
    sharded version, only the shapes the statistics use are read (at most ood.MAX_SHAPES of
    each side, the same seeded choice `collect` makes)."""
    from atlas_core.checkpoint import load_model
    from atlas_core.ood import MAX_SHAPES, collect

    try:
        model, _, _ = load_model(final.read(store), device)
        train_idx, val_idx = split_of(data, config.val_fraction, config.seed, config.split)
        if isinstance(data, PointCloudSet):
            held_out = data.points[val_idx] if len(val_idx) >= 2 else data.points[train_idx]
            return collect(model, held_out, data.points[train_idx]).as_dict()
        ref_idx = val_idx if len(val_idx) >= 2 else train_idx
        training = gather_points(data, _capped(train_idx, MAX_SHAPES, 0))
        if ref_idx is train_idx:
            return collect(model, training, training).as_dict()
        return collect(model, gather_points(data, _capped(ref_idx, MAX_SHAPES, 1)), training).as_dict()
    except Exception:  # noqa: BLE001 - a model without statistics still reconstructs; say so in the log
        log.warning("job %s: could not collect out-of-distribution statistics", job_id, exc_info=True)
        return None


def _capped(indices: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """At most `limit` of the indices: atlas_core.ood's seeded choice of clouds, made on indices
    so that only the chosen shapes are read."""
    if len(indices) <= limit:
        return indices
    return indices[np.sort(np.random.default_rng(seed).choice(len(indices), limit, replace=False))]
