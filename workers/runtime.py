"""Facts about this worker process: its name, device and code version."""

from __future__ import annotations

import os
import subprocess
from functools import lru_cache
from pathlib import Path

import orchestrator
from workers.devices import Grant, Offer

#: Set by the task bodies so the heartbeat can report what this worker is doing.
current_job_id: int | None = None
#: The devices this job process holds, on a worker that offers its machine's devices
#: (`workers.devices`: `rodin worker --gpus` or `--devices`); None elsewhere.
current_grant: Grant | None = None

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


def use_grant(grant: Grant) -> None:
    """Make the devices handed to this job process its own, before anything touches them.

    CUDA: CUDA_VISIBLE_DEVICES names the granted GPUs alone, so that rank r of the job (this
    process is rank 0; its helper ranks inherit the environment) trains on `cuda:r`, the r-th
    GPU it was handed, and nothing in the job can reach another job's GPU. This must come before
    CUDA is initialised in the process: a slot's job process is a fresh one for every job
    (`--max-tasks-per-child 1`, workers/main.py), forked from a main process that only ever asks
    NVML. CPU: the process (and the ranks it starts) runs on the granted cores, one torch thread
    per core.
    """
    import torch

    if grant.offer.kind == "cuda":
        if torch.cuda.is_initialized():
            raise RuntimeError("CUDA was initialised in the job process before its GPUs were handed to it")
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(grant.ids)
    else:
        if hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, {int(i) for i in grant.ids})
        torch.set_num_threads(len(grant.ids))
    global current_grant
    current_grant = grant


def device_label(device: str) -> str:
    """The device as `rodin workers` and `rodin status` show it.

    A job on a worker that offers its machine's devices: the devices it was handed (`cuda GPUs
    2,3`); such a worker: every device it offers. Otherwise `rodin worker --device cuda:N`, or a
    process that sees only some GPUs (CUDA_VISIBLE_DEVICES): the label says which physical GPU
    `cuda:0` is.
    """
    if current_grant is not None:
        return current_grant.label()
    offer = Offer.from_env()
    if offer is not None:
        return f"{offer.label()} (shared)"[:64]
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
