"""Facts about this worker process: its name, device and code version."""

from __future__ import annotations

import os
import subprocess
from functools import lru_cache
from pathlib import Path

import orchestrator

#: Set by the task bodies so the heartbeat can report what this worker is doing.
current_job_id: int | None = None

# Ask torch to check for GPUs through NVML, which leaves the CUDA driver uninitialised: the
# worker's main process checks the device, then forks the process that runs the jobs, and CUDA
# does not survive a fork once initialised.
os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")


def active_job_id() -> int | None:
    """The job this worker is running now, seen from the worker's main process.

    Jobs run in a child process (Celery's prefork pool), so the main process, where the
    heartbeat thread lives, reads the id from the task Celery has handed to that child.
    """
    if current_job_id is not None:
        return current_job_id
    from celery.worker import state

    for request in list(state.active_requests):
        args = getattr(request, "args", None) or ()
        if args and isinstance(args[0], int):
            return args[0]
    return None


def resolve_device(spec: str | None = None) -> str:
    """`auto` picks the first visible GPU, else the CPU."""
    import torch

    spec = spec or os.environ.get("RODIN_DEVICE", "auto")
    if spec == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {spec} requested but CUDA is not available on this machine")
    return spec


def device_label(device: str) -> str:
    """The device as `rodin workers` and `rodin status` show it.

    `rodin worker --gpus 0,1` runs one process per GPU, each seeing only its own GPU as
    `cuda:0` (CUDA_VISIBLE_DEVICES); the label says which physical GPU that is.
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    if device.startswith("cuda") and visible:
        return f"{device} (GPU {visible})"[:64]
    return device


def hostname() -> str:
    """This worker's name in the registry: RODIN_WORKER_NAME (`--hostname`), else HOST-PID."""
    return os.environ.get("RODIN_WORKER_NAME") or f"{os.uname().nodename}-{os.getpid()}"


@lru_cache(maxsize=1)
def code_version() -> str:
    """The git commit the worker runs (with -dirty for local edits), else the package version.

    An image built without the .git folder gets it from RODIN_CODE_VERSION (a build argument).
    """
    if os.environ.get("RODIN_CODE_VERSION"):
        return os.environ["RODIN_CODE_VERSION"][:64]
    root = Path(__file__).resolve().parents[1]
    try:
        rev = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
        return f"{rev}-dirty" if dirty else rev
    except (OSError, subprocess.SubprocessError):
        return f"rodin-{orchestrator.__version__}"
