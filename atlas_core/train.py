"""The AtlasNet training loop as a library function.

    result = train(TrainConfig(epochs=20), PointCloudSet.from_bytes(...), TrainCallbacks(on_epoch=print))

It knows nothing of queues or registries: whoever calls it stores checkpoints and reports
progress through the callbacks. All randomness (shuffling, point subsets, template samples) comes
from one seeded generator that is saved with every checkpoint, so a resumed run continues the
same random stream.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from atlas_core.augment import augment, principal_axes
from atlas_core.chamfer import chamfer_distance, nearest_neighbors
from atlas_core.checkpoint import dump_checkpoint, load_checkpoint
from atlas_core.config import TrainConfig
from atlas_core.data import PointCloudSet, split_indices
from atlas_core.model import AtlasNet


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


def _batches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """Shuffled index batches; never a batch of one, which BatchNorm cannot train on."""
    order = torch.randperm(n, generator=generator)
    batches = list(order.split(batch_size))
    if len(batches[-1]) == 1:
        if len(batches) > 1:
            last = batches.pop()
            batches[-1] = torch.cat([batches[-1], last])
        else:  # a single training shape: show it twice, with different point subsets
            batches[0] = batches[0].repeat(2)
    return batches


@torch.no_grad()
def evaluate_chamfer(
    model: AtlasNet, clouds: torch.Tensor, n_points: int, batch_size: int, seed: int,
    on_step: Callable[[], None] | None = None,
) -> float:
    """Mean Chamfer (the training loss) over shapes, with seeded point subsets.

    clouds: (S, P, 3) on the model's device. `on_step` is called after every chunk.
    """
    was_training = model.training
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    total = 0.0
    for chunk in clouds.split(batch_size):
        x = _draw_points(chunk, n_points, generator)
        pred = model(x, generator=generator)
        total += float(chamfer_distance(pred, x, reduction="none").sum())
        if on_step is not None:
            on_step()
    model.train(was_training)
    return total / len(clouds)


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
    data: PointCloudSet,
    callbacks: TrainCallbacks | None = None,
    resume_from: bytes | None = None,
    init_weights: dict[str, torch.Tensor] | None = None,
    registered_epochs: Collection[int] = (),
) -> TrainResult:
    """Train AtlasNet on `data`; resume from checkpoint bytes or start from given weights.

    Checkpoints go to `callbacks.on_checkpoint` every `checkpoint_every` epochs and at the end;
    with `keep_best`, the best validation epoch's checkpoint is also handed over (once) if it
    was not one of those, no later than the next checkpoint, and `TrainResult.final_epoch`
    names it. Handing the best over before any later checkpoint is what makes a resumed run
    choose exactly what an uninterrupted one would: whatever checkpoint it resumes from, every
    better epoch before it is already stored. `registered_epochs` are the epochs whose
    checkpoints the caller already holds (an earlier attempt's): a resumed run takes its best
    epoch from the resumed history, among those.
    """
    config.validate()
    callbacks = callbacks or TrainCallbacks()
    device = torch.device(config.device)
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)

    train_idx, val_idx = split_indices(len(data), config.val_fraction, config.seed)
    train_clouds = torch.from_numpy(data.points[train_idx]).to(device)
    val_clouds = torch.from_numpy(data.points[val_idx if len(val_idx) else train_idx]).to(device)
    axes = torch.from_numpy(principal_axes(data.points[train_idx]))

    model = AtlasNet(config.model).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(
        optimizer, milestones=config.lr_milestones(), gamma=0.1
    )
    history: list[dict[str, float]] = []
    start_epoch = 1
    if resume_from is not None:
        state = load_checkpoint(resume_from, map_location=device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["rng"])
        history = list(state["history"])
        start_epoch = int(state["epoch"]) + 1
    elif init_weights is not None:
        model.load_state_dict(init_weights)

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
        model.train()
        losses = []
        for idx in _batches(len(train_clouds), config.batch_size, generator):
            x = _draw_points(train_clouds[idx.to(device)], n_points, generator)
            if config.augment.enabled:
                x = augment(x, axes[idx], config.augment, generator)
            pred = model(x, generator=generator)
            loss = chamfer_distance(pred, x)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            if callbacks.on_step is not None:
                callbacks.on_step()
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        val = evaluate_chamfer(model, val_clouds, n_points, config.batch_size, config.seed + 1,
                               callbacks.on_step)
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
                extra = _health(model, val_clouds, n_points)
                emit(epoch, snapshot(epoch), "last" if last else "periodic", extra)
                if improved:
                    best_extra = extra
            elif improved and config.keep_best:
                best_state, best_extra = snapshot(epoch), _health(model, val_clouds, n_points)
        if callbacks.on_epoch and callbacks.on_epoch(stats) is False and not last:
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
