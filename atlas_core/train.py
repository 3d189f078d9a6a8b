"""The AtlasNet training loop as a library function.

    result = train(TrainConfig(epochs=20), PointCloudSet.from_bytes(...), TrainCallbacks(on_epoch=print))

It knows nothing of queues or registries: whoever calls it stores checkpoints and reports
progress through the callbacks. The data is any `atlas_core.data.ShapeSource`: a PointCloudSet
in memory, or a sharded version read shard by shard (`ShardedPointClouds`), which is streamed
when its training shapes do not fit the shuffle buffer (`buffer_bytes`): memory then holds the
buffer and one shard, whatever the number of shapes. All randomness (shuffling, point subsets, template samples) comes
from one seeded generator that is saved with every checkpoint, so a resumed run continues the
same random stream.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from atlas_core import distributed
from atlas_core.augment import augment, principal_axes
from atlas_core.chamfer import chamfer_distance, nearest_neighbors
from atlas_core.checkpoint import dump_checkpoint, load_checkpoint
from atlas_core.config import TrainConfig
from atlas_core.data import PointCloudSet, ShapeSource, gather_points, split_of
from atlas_core.model import AtlasNet, restack_optimizer_state

#: Points a streamed run holds in memory for shuffling (and for a validation set it keeps
#: resident): a version whose training shapes fit is read once and kept, as a PointCloudSet is;
#: a larger one is streamed through a buffer of this many bytes of points.
BUFFER_BYTES = 64 * 1024 * 1024


@dataclass
class EpochStats:
    epoch: int  # 1-based number of the epoch just finished
    epochs: int
    train_loss: float  # mean training Chamfer over the epoch's batches
    val_chamfer: float  # Chamfer on the validation shapes (the training shapes if none)
    lr: float
    seconds: float

    def as_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.__dict__.items()}


@dataclass
class CheckpointEvent:
    epoch: int
    metrics: dict[str, Any]
    state: bytes  # see atlas_core.checkpoint
    reason: str  # "periodic", "last" (end or early stop) or "best" (kept for keep_best)


@dataclass
class TrainCallbacks:
    #: Called after every epoch; returning False stops training (e.g. the job was cancelled).
    on_epoch: Callable[[EpochStats], bool | None] | None = None
    on_checkpoint: Callable[[CheckpointEvent], None] | None = None
    #: Called after every training batch and validation chunk: proof that the run is moving
    #: (a worker ends a job process that stops calling it).
    on_step: Callable[[], None] | None = None


@dataclass
class TrainResult:
    model: AtlasNet  # weights of the last epoch run
    history: list[dict[str, float]] = field(default_factory=list)
    last_epoch: int = 0
    #: The epoch whose checkpoint is the result: the best validation epoch with keep_best.
    final_epoch: int | None = None
    stopped: bool = False  # a callback asked to stop (cancelled): no final model
    stopped_early: bool = False  # patience ran out


def _draw_points(clouds: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """A random subset of n points per shape, without replacement.

    clouds: (B, P, 3) -> (B, n, 3)
    """
    b, p, _ = clouds.shape
    if n >= p:
        return clouds
    idx = torch.rand(b, p, generator=generator).argsort(dim=1)[:, :n].to(clouds.device)
    return clouds.gather(1, idx.unsqueeze(-1).expand(-1, -1, 3))


def _batches(n: int, batch_size: int, generator: torch.Generator, min_size: int = 2) -> list[torch.Tensor]:
    """Shuffled index batches; never a batch smaller than `min_size`: 2, as BatchNorm cannot train
    on one shape, or the number of devices, each of which needs a shape. A smaller last batch
    joins the one before it (with no batch before it, its shapes are shown more than once, with
    different point subsets)."""
    order = torch.randperm(n, generator=generator)
    batches = list(order.split(batch_size))
    if len(batches[-1]) < min_size:
        if len(batches) > 1:
            last = batches.pop()
            batches[-1] = torch.cat([batches[-1], last])
        else:
            batches[0] = batches[0].repeat(-(-min_size // len(batches[0])))
    return batches


@torch.no_grad()
def evaluate_chamfer(
    model: AtlasNet, clouds: torch.Tensor | Iterable[torch.Tensor], n_points: int, batch_size: int,
    seed: int, on_step: Callable[[], None] | None = None,
) -> float:
    """Mean Chamfer (the training loss) over shapes, with seeded point subsets.

    clouds: (S, P, 3) on the model's device, or its chunks of `batch_size` shapes in order (a
    streamed validation set: the same value). `on_step` is called after every chunk.
    """
    was_training = model.training
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    total, count = 0.0, 0
    chunks = clouds.split(batch_size) if isinstance(clouds, torch.Tensor) else clouds
    for chunk in chunks:
        x = _draw_points(chunk, n_points, generator)
        pred = model(x, generator=generator)
        total += float(chamfer_distance(pred, x, reduction="none").sum())
        count += len(chunk)
        if on_step is not None:
            on_step()
    model.train(was_training)
    return total / count


def _as_tensor(points: np.ndarray, device: torch.device) -> torch.Tensor:
    """Points (any shape) as a tensor of torch's default dtype on `device`: float32 as stored,
    unless the caller trains in float64 (`torch.set_default_dtype`, as the equivalence checks
    of `atlas_core.distributed` do)."""
    return torch.from_numpy(points).to(device=device, dtype=torch.get_default_dtype())


class _Loader:
    """The training and validation shapes of a ShapeSource, as train() draws them.

    Resident (a PointCloudSet, or training shapes that fit the buffer): read once, kept on the
    device, batches from a permutation of all of them, as before streaming existed. Streamed:
    every epoch reads the blocks (shards) in a shuffled order, each block's training shapes in a
    shuffled order, through a shuffle buffer of `buffer` shapes from which each batch draws at
    random. The validation shapes are kept when they fit the buffer, read again in order each
    epoch when they do not (the same chunks, the same Chamfer). All randomness comes from the
    run's generator, so a resumed run draws what the uninterrupted one would.
    """

    def __init__(self, data: ShapeSource, train_idx: np.ndarray, val_idx: np.ndarray,
                 buffer_bytes: int, device: torch.device):
        self.data, self.device = data, device
        self.train_idx = train_idx
        self.val_idx = val_idx if len(val_idx) else train_idx
        per_shape = max(1, data.points_per_shape * 3 * 4)
        self.buffer = max(2, int(buffer_bytes // per_shape))
        in_memory = isinstance(data, PointCloudSet)
        self.resident = in_memory or len(train_idx) <= self.buffer
        self.train_clouds: torch.Tensor | None = None
        self.axes: torch.Tensor | None = None
        if self.resident:
            points = gather_points(data, train_idx)
            self.train_clouds = _as_tensor(points, device)
            self.axes = _as_tensor(principal_axes(points), torch.device("cpu"))
        self.val_clouds: torch.Tensor | None = None
        if in_memory or len(self.val_idx) <= self.buffer:
            self.val_clouds = _as_tensor(gather_points(data, self.val_idx), device)
        #: Up to 8 validation shapes for the patch-health check.
        self.health = (self.val_clouds[:8] if self.val_clouds is not None else
                       _as_tensor(gather_points(data, self.val_idx[:8]), device))
        # Per block: the positions (within the block) of its training and validation shapes.
        blocks = data.blocks()
        self._train_in = [np.flatnonzero(np.isin(m, train_idx)) for m in blocks]
        self._val_in = [np.flatnonzero(np.isin(m, self.val_idx)) for m in blocks]

    def epoch(self, batch_size: int, generator: torch.Generator,
              min_size: int = 2) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        """(clouds (B, P, 3) on the device, principal axes (B, 3) or None) per training batch,
        never fewer than `min_size` shapes (see `_batches`)."""
        if self.resident:
            if self.train_clouds is None or self.axes is None:
                raise RuntimeError("resident training shapes were not loaded")
            for idx in _batches(len(self.train_clouds), batch_size, generator, min_size):
                yield self.train_clouds[idx.to(self.device)], self.axes[idx]
            return
        for batch in _no_single_batches(self._streamed(generator), batch_size, min_size):
            points = np.stack(batch)
            yield _as_tensor(points, self.device), None

    def _streamed(self, generator: torch.Generator) -> Iterator[np.ndarray]:
        """Every training shape once, shuffled across blocks and within the buffer (one array
        of `buffer` shapes, allocated once per epoch: memory is its size, not the data's)."""
        buffer = np.empty((min(self.buffer, len(self.train_idx)), self.data.points_per_shape, 3), np.float32)
        filled = 0
        for b in torch.randperm(len(self._train_in), generator=generator).tolist():
            rows = self._train_in[b]
            if not len(rows):
                continue
            points = self.data.read_points(b)
            for r in torch.randperm(len(rows), generator=generator).tolist():
                if filled < len(buffer):
                    buffer[filled] = points[rows[r]]
                    filled += 1
                    continue
                k = int(torch.randint(len(buffer), (1,), generator=generator))
                out = buffer[k].copy()
                buffer[k] = points[rows[r]]
                yield out
            del points
        for k in torch.randperm(filled, generator=generator).tolist():
            yield buffer[k].copy()

    def validation(self, batch_size: int) -> torch.Tensor | Iterator[torch.Tensor]:
        """The validation shapes (the training shapes if none), whole or as ordered chunks."""
        if self.val_clouds is not None:
            return self.val_clouds
        return self._val_chunks(batch_size)

    def _val_chunks(self, batch_size: int) -> Iterator[torch.Tensor]:
        pending: list[np.ndarray] = []
        for b, rows in enumerate(self._val_in):
            if not len(rows):
                continue
            points = self.data.read_points(b)
            for r in rows:
                pending.append(np.array(points[r], dtype=np.float32))
                if len(pending) == batch_size:
                    yield _as_tensor(np.stack(pending), self.device)
                    pending = []
        if pending:
            yield _as_tensor(np.stack(pending), self.device)


class _Rehearsal:
    """Shapes added to every training batch (`train`'s `rehearsal`), resident on the device."""

    def __init__(self, share: float, clouds: torch.Tensor, axes: torch.Tensor):
        self.share, self.clouds, self.axes = share, clouds, axes

    @classmethod
    def of(cls, share: float, data: PointCloudSet | None, device: torch.device) -> _Rehearsal | None:
        if share <= 0:
            return None
        if data is None or len(data) == 0:
            raise ValueError("rehearsal > 0 needs the base's training shapes (train's `rehearsal`)")
        return cls(share, _as_tensor(data.points, device), _as_tensor(principal_axes(data.points), torch.device("cpu")))

    def mix(self, x: torch.Tensor, axes: torch.Tensor | None, n_points: int,
            generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (B, n_points, 3), axes (B, 3) or None -> (B + k, n_points, 3) and (B + k, 3) or
        None: k rehearsed shapes appended, drawn with the run's generator (a resumed run draws
        the same), each sampled to `n_points` as the batch's own were."""
        k = max(1, round(len(x) * self.share / (1 - self.share)))
        idx = torch.randint(len(self.clouds), (k,), generator=generator)
        points = _draw_points(self.clouds[idx.to(self.clouds.device)], n_points, generator)
        if points.shape[1] != x.shape[1]:
            raise ValueError(f"the rehearsed shapes have {points.shape[1]} points, the batch's {x.shape[1]}: "
                             "pre-train the base with at least as many points per shape")
        return torch.cat([x, points]), None if axes is None else torch.cat([axes, self.axes[idx]])


def _no_single_batches(items: Iterator[np.ndarray], batch_size: int,
                       min_size: int = 2) -> Iterator[list[np.ndarray]]:
    """Batches of `batch_size` items; as `_batches`, never a batch smaller than `min_size`: a
    smaller last batch joins the batch before it (or is repeated when it is the only one)."""
    held: list[np.ndarray] | None = None
    pending: list[np.ndarray] = []
    for item in items:
        pending.append(item)
        if len(pending) == batch_size:
            if held is not None:
                yield held
            held, pending = pending, []
    if 0 < len(pending) < min_size:
        if held is not None:
            held, pending = held + pending, []
        else:
            pending = pending * -(-min_size // len(pending))
    if held is not None:
        yield held
    if pending:
        yield pending


def _health(model: AtlasNet, clouds: torch.Tensor, n_points: int) -> dict[str, Any]:
    """Coverage and collapsed patches on up to 8 validation shapes. clouds: (S, P, 3)."""
    from atlas_core.meshing import reconstruct
    from atlas_core.metrics import FSCORE_THRESHOLD, patch_health

    was_training = model.training
    sample = clouds[:8]
    x = _draw_points(sample, n_points, torch.Generator().manual_seed(0))
    meshes = reconstruct(model, x, n_vertices=max(400, 40 * model.config.n_patches))
    model.train(was_training)
    # Coverage against the vertices of the patch grids: cheap, and what "torn" means here.
    verts = torch.from_numpy(np.stack([m.vertices for m in meshes])).to(x)
    _, d = nearest_neighbors(x, verts)
    coverage = float((d.sqrt() < FSCORE_THRESHOLD).float().mean())
    health = patch_health(meshes, model.config.n_patches)
    return {"coverage": coverage, "collapsed_patches": health.collapsed,
            "warnings": health.warnings(coverage)}


def train(
    config: TrainConfig,
    data: ShapeSource,
    callbacks: TrainCallbacks | None = None,
    resume_from: bytes | None = None,
    init_weights: dict[str, torch.Tensor] | None = None,
    registered_epochs: Collection[int] = (),
    buffer_bytes: int = BUFFER_BYTES,
    rehearsal: PointCloudSet | None = None,
) -> TrainResult:
    """Train AtlasNet on `data` (a PointCloudSet, or any ShapeSource such as a sharded version);
    resume from checkpoint bytes or start from given weights. The validation split is
    `atlas_core.data.split_of` with the config's `val_fraction`, `seed` and `split`.

    Checkpoints go to `callbacks.on_checkpoint` every `checkpoint_every` epochs and at the end;
    with `keep_best`, the best validation epoch's checkpoint is also handed over (once) if it
    was not one of those, no later than the next checkpoint, and `TrainResult.final_epoch`
    names it. Handing the best over before any later checkpoint is what makes a resumed run
    choose exactly what an uninterrupted one would: whatever checkpoint it resumes from, every
    better epoch before it is already stored. `registered_epochs` are the epochs whose
    checkpoints the caller already holds (an earlier attempt's): a resumed run takes its best
    epoch from the resumed history, among those.

    With `config.rehearsal` = r > 0, `rehearsal` holds the shapes the fine-tuned base was
    trained on, and every training batch of B shapes gets round(B r / (1 - r)) of them drawn at
    random (so that they are a share r of it): the few shapes of `data` are not memorised and
    the base's shape space is not forgotten. Validation and checkpoints' scores stay on `data`.

    Data-parallel (`config.world_size` = nodes x devices > 1): call it in each of that many
    processes, inside a process group of that size (`atlas_core.distributed.process_group`), with the same config,
    data and resume state. Every rank draws the same global batches from the same seeded
    generator and computes its part of each (`distributed.batch_part`); the model's BatchNorm
    takes the global batch's statistics (`distributed.sync_batchnorm`; the fused kernels, which
    compute a local batch's, give way to the plain layers), each rank's Chamfer sum is scaled
    by world / global batch so that DistributedDataParallel's average of the gradients is the
    gradient of the global batch's mean, and the loss is summed over the ranks: N ranks train
    what one process trains on the same global batches, up to float rounding. Only rank 0
    validates, checks patience and keeps checkpoints, so only rank 0 takes the callbacks that
    write (`on_epoch`, `on_checkpoint`; the others pass none) and its decisions (stop, stop
    early, the best epoch) reach the others at the end of every epoch.
    """
    config.validate()
    callbacks = callbacks or TrainCallbacks()
    rank, world = distributed.world()
    if world != config.world_size:
        raise ValueError(f"the config trains on {config.world_size} device(s) but this process is one of "
                         f"{world} rank(s): start {config.world_size} ranks in a process group "
                         "(atlas_core.distributed.process_group)")
    if rank != 0 and (callbacks.on_epoch is not None or callbacks.on_checkpoint is not None):
        raise ValueError(f"rank {rank} was given on_epoch/on_checkpoint callbacks: only rank 0 "
                         "reports and keeps checkpoints")
    # Ranks are laid out machine by machine: rank r is device r % devices of its machine.
    device = (distributed.rank_device(config.device, rank % config.devices) if world > 1
              else torch.device(config.device))
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)

    train_idx, val_idx = split_of(data, config.val_fraction, config.seed, config.split)
    loader = _Loader(data, train_idx, val_idx, buffer_bytes, device)
    replay = _Rehearsal.of(config.rehearsal, rehearsal, device)

    # Several ranks: the plain layers (the fused kernels take a local batch's statistics).
    model = AtlasNet(config.model, fused=world == 1).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(
        optimizer, milestones=config.lr_milestones(), gamma=0.1
    )
    history: list[dict[str, float]] = []
    start_epoch = 1
    if resume_from is not None:
        state = load_checkpoint(resume_from, map_location=device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(restack_optimizer_state(model, state["model"], state["optimizer"]))
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["rng"])
        history = list(state["history"])
        start_epoch = int(state["epoch"]) + 1
    elif init_weights is not None:
        model.load_state_dict(init_weights)
    trainee: torch.nn.Module = model  # what the training steps call: the model, or its DDP wrapper
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        distributed.sync_batchnorm(model, device)
        # No buffer broadcast: synchronised BatchNorm keeps the running statistics equal.
        trainee = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                          forward_sync_buffers=False)

    def snapshot(epoch: int) -> bytes:
        return dump_checkpoint(config=config, model=model, optimizer=optimizer,
                               scheduler=scheduler, epoch=epoch, generator=generator,
                               history=history)

    def emit(epoch: int, state: bytes, reason: str, extra: dict[str, Any]) -> None:
        stats = history[epoch - 1]
        metrics = {"train_loss": stats["train_loss"], "val_chamfer": stats["val_chamfer"], **extra}
        callbacks.on_checkpoint(CheckpointEvent(epoch, metrics, state, reason))  # type: ignore[misc]
        registered.add(epoch)

    registered: set[int] = set(registered_epochs)
    if resume_from is not None:
        registered.add(start_epoch - 1)
    best_epoch, best_val = _best_so_far(history, registered if config.keep_best else None)
    best_state: bytes | None = None  # the best epoch's checkpoint, until it is handed over
    best_extra: dict[str, Any] = {}
    n_points = config.model.n_points
    result = TrainResult(model=model, history=history, last_epoch=start_epoch - 1)
    for epoch in range(start_epoch, config.epochs + 1):
        started = time.perf_counter()
        trainee.train()
        losses: list[float] = []
        # Several ranks: each step's Chamfer sum over this rank's part, and the global batch size.
        part_sums: list[torch.Tensor] = []
        sizes: list[int] = []
        for clouds, axes in loader.epoch(config.batch_size, generator, max(2, world)):
            # The global batch's points and augmentation, drawn alike on every rank.
            x = _draw_points(clouds, n_points, generator)
            if config.augment.enabled and axes is None:
                # streamed: each shape's axis from its whole cloud, as resident
                axes = _as_tensor(principal_axes(clouds.cpu().numpy()), torch.device("cpu"))
            if replay is not None:
                x, axes = replay.mix(x, axes, n_points, generator)
            if config.augment.enabled and axes is not None:
                x = augment(x, axes, config.augment, generator)
            if world == 1:
                pred = trainee(x, generator=generator)
                loss = chamfer_distance(pred, x)
            else:
                part = distributed.batch_part(x, world, rank)
                pred = trainee(part, generator=generator)
                part_sum = chamfer_distance(pred, part, reduction="none").sum()
                # DDP averages the ranks' gradients: this scale makes the average the gradient
                # of the global batch's mean Chamfer.
                loss = part_sum * (world / len(x))
                part_sums.append(part_sum.detach())
                sizes.append(len(x))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if world == 1:
                losses.append(loss.item())
            if callbacks.on_step is not None:
                callbacks.on_step()
        if world > 1:  # each step's global mean: the ranks' sums, added in one all-reduce an epoch
            totals = distributed.all_reduce_sum(torch.stack(part_sums).to(torch.float64))
            losses = (totals.cpu() / torch.tensor(sizes, dtype=torch.float64)).tolist()
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        val = math.nan  # rank 0's value reaches the other ranks at the end of the epoch
        if rank == 0:
            val = evaluate_chamfer(model, loader.validation(config.batch_size), n_points,
                                   config.batch_size, config.seed + 1, callbacks.on_step)
        stats = EpochStats(epoch, config.epochs, float(np.mean(losses)), val, lr,
                           time.perf_counter() - started)
        if not math.isfinite(stats.train_loss):
            raise FloatingPointError(
                f"training diverged at epoch {epoch} (loss {stats.train_loss}): lower --lr"
            )
        history.append(stats.as_dict())
        result.last_epoch = epoch

        improved = val < best_val
        if improved:
            best_val, best_epoch, best_state = val, epoch, None
        out_of_patience = config.patience > 0 and epoch - best_epoch >= config.patience
        last = epoch == config.epochs or out_of_patience
        if callbacks.on_checkpoint is not None:
            periodic = epoch % config.checkpoint_every == 0
            if periodic or last:
                if best_state is not None:  # stored before any later checkpoint: see above
                    emit(best_epoch, best_state, "best", best_extra)
                    best_state = None
                extra = _health(model, loader.health, n_points)
                emit(epoch, snapshot(epoch), "last" if last else "periodic", extra)
                if improved:
                    best_extra = extra
            elif improved and config.keep_best:
                best_state, best_extra = snapshot(epoch), _health(model, loader.health, n_points)
        stop = callbacks.on_epoch is not None and callbacks.on_epoch(stats) is False and not last
        if world > 1:  # rank 0 validated and heard the callbacks: its decisions hold for all
            agreed = distributed.broadcast_floats([val, stop, out_of_patience, best_epoch, best_val], device)
            history[-1]["val_chamfer"] = agreed[0]
            stop, out_of_patience = bool(agreed[1]), bool(agreed[2])
            best_epoch, best_val = int(agreed[3]), agreed[4]
        if stop:
            result.stopped = True
            return result
        if out_of_patience:
            result.stopped_early = True
            break

    result.final_epoch = best_epoch if config.keep_best else result.last_epoch
    if callbacks.on_checkpoint is not None and result.final_epoch not in registered:
        if best_state is None:
            raise RuntimeError(f"epoch {result.final_epoch} was chosen but its checkpoint was "
                               "neither kept nor registered")
        emit(result.final_epoch, best_state, "best", best_extra)
    return result


def _best_so_far(history: list[dict[str, float]], stored: set[int] | None) -> tuple[int, float]:
    """(epoch, validation Chamfer) of the best epoch in a resumed history, as the uninterrupted
    run saw it: the first epoch with the lowest value. With `stored` (keep-best), only an epoch
    whose checkpoint is stored can be chosen: a history from before the best was handed over at
    every checkpoint may name one whose weights are gone. (0, inf) for a fresh run."""
    epochs = [(e, h["val_chamfer"]) for e, h in enumerate(history, start=1)
              if stored is None or e in stored]
    if not epochs:
        return 0, math.inf
    return min(epochs, key=lambda ev: (ev[1], ev[0]))
