"""Checkpoints as bytes: everything needed to resume training, loadable with weights_only.

Only plain containers, numbers, strings and tensors go in, so `torch.load(weights_only=True)`
can read a checkpoint without executing anything it contains.
"""

from __future__ import annotations

import io
from typing import Any

import torch

from atlas_core.config import TrainConfig

CHECKPOINT_FORMAT = 1


class CheckpointError(ValueError):
    pass


def dump_checkpoint(
    *,
    config: TrainConfig,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    epoch: int,
    generator: torch.Generator,
    history: list[dict[str, float]],
) -> bytes:
    state = {
        "format": CHECKPOINT_FORMAT,
        "config": config.to_dict(),
        "epoch": epoch,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": generator.get_state(),
        "history": history,
    }
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def load_checkpoint(data: bytes, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Parse checkpoint bytes without unpickling arbitrary objects."""
    try:
        state = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any parse failure means "not a checkpoint"
        raise CheckpointError(f"not a readable rodin checkpoint ({type(exc).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError("not a rodin checkpoint (unknown format)")
    return state


def load_model(data: bytes, device: str | torch.device = "cpu"):
    """Build the AtlasNet a checkpoint describes and load its weights, in eval mode."""
    from atlas_core.model import AtlasNet

    state = load_checkpoint(data, map_location=device)
    config = TrainConfig.from_dict(state["config"])
    model = AtlasNet(config.model).to(device)
    model.load_state_dict(state["model"])
    model.eval()
    return model, config, state
