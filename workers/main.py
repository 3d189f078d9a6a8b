"""Starting a worker: check the device, pick the queues, run Celery's worker (or, for a machine
that offers its devices to jobs of any width, one per device: `workers.supervisor.run_slots`).

`rodin worker` parses its options and calls `run` here; torch and Celery are imported only
once a worker is really started, so that the CLI stays fast for clients.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from orchestrator.errors import RodinError
from orchestrator.kinds import QUEUES
from orchestrator.settings import Settings
from workers.devices import Offer
from workers.supervisor import run_slots

Log = Callable[[str], None]


def parse_queues(queues: str) -> list[str]:
    """`train,infer` -> ["train", "infer"]; anything else is a RodinError."""
    wanted = [q.strip() for q in queues.split(",") if q.strip()]
    if not wanted or set(wanted) - set(QUEUES):
        raise RodinError(f"--queues {queues!r}: choose from {','.join(QUEUES)}")
    return wanted


def default_queues(settings: Settings, device: str, log: Log) -> str:
    """Both queues, except a CPU machine on a shared broker, which leaves training to GPUs."""
    if settings.embedded or device.startswith("cuda"):
        return "train,infer"
    if device == "auto":
        import torch

        if torch.cuda.is_available():
            return "train,infer"
    log("No GPU on this machine: serving the infer queue on the CPU "
        "(`--queues train,infer` trains here too).")
    return "infer"


def gpu_ids(spec: str) -> list[str]:
    """`0,1` -> ["0", "1"]; `all` -> every GPU this process may see."""
    spec = spec.strip()
    if spec == "all":
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
        if visible:
            ids = [v.strip() for v in visible.split(",") if v.strip()]
        else:
            import torch

            ids = [str(i) for i in range(torch.cuda.device_count())]
        if not ids:
            raise RodinError("--gpus all: no GPU is visible on this machine; run "
                             "`rodin worker --device cpu --queues infer` instead")
        return ids
    ids = [v.strip() for v in spec.split(",")]
    if not ids or any(not v or " " in v for v in ids) or len(set(ids)) != len(ids):
        raise RodinError(f"--gpus {spec!r}: give GPU indices such as 0,1 (or all)")
    return ids


def expand_name(name: str) -> str:
    """Celery's node-name variables: %h the host name, %n its first label, %d the domain."""
    host = os.uname().nodename
    short, _, domain = host.partition(".")
    return name.replace("%h", host).replace("%n", short).replace("%d", domain)


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def cpu_offer_ids(count: int) -> list[str]:
    """The first `count` cores this process may run on, as a CPU worker's device ids."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    if count < 1 or count > len(cores):
        raise RodinError(f"--devices {count}: this machine offers 1 to {len(cores)} CPU core(s) "
                         "(a CPU device is a core, each rank of a job one thread)")
    return [str(c) for c in cores[:count]]


def _offer(settings: Settings, device: str, gpus: str | None, devices: int | None) -> Offer | None:
    """What a worker started with --gpus or --devices offers its jobs; None for one without."""
    if gpus is not None and devices is not None:
        raise RodinError("give --gpus (the GPUs to offer) or --devices N (N CPU cores), not both")
    if gpus is not None:
        if device != "auto" and not device.startswith("cuda"):
            raise RodinError("--gpus offers GPUs; leave out --device")
        return Offer.for_home(settings.home, "cuda", gpu_ids(gpus))
    if devices is not None:
        if device.startswith("cuda"):
            raise RodinError(f"--devices {devices} offers CPU cores; offer GPUs with --gpus")
        if device == "auto":
            import torch

            if torch.cuda.is_available():
                raise RodinError(f"--devices {devices} offers CPU cores and this machine has GPUs: "
                                 "offer them with --gpus, or add --device cpu to train on the cores")
        return Offer.for_home(settings.home, "cpu", cpu_offer_ids(devices))
    return None


def run(settings: Settings, *, queues: str | None, device: str, gpus: str | None,
        hostname: str | None, loglevel: str, devices: int | None = None, log: Log = _to_stderr) -> int:
    """Serve the queue in the foreground until stopped; returns the exit code.

    With --gpus or --devices N the machine offers its devices: one worker process (a slot) per
    device, under `run_slots`, each running one job at a time on the devices the machine's
    allocator hands it (workers/devices.py)."""
    # GPU checks through NVML: the worker forks its job process after them (workers/app.py).
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    if device != "auto" and device != "cpu" and not device.startswith("cuda"):
        raise RodinError(f"--device {device!r}: use auto, cpu or cuda:N")
    offer = _offer(settings, device, gpus, devices)
    if offer is not None:
        wanted = parse_queues(queues or "train,infer")
        base = expand_name(hostname or os.environ.get("RODIN_WORKER_NAME") or os.uname().nodename)
        return run_slots(offer, ",".join(wanted), base, loglevel, log=log)
    slot = Offer.from_env()  # a slot that run_slots started
    wanted = parse_queues(queues or default_queues(settings, device, log))
    os.environ["RODIN_DEVICE"] = device
    # One name for the worker and the job processes it forks: the registry knows a job's worker
    # by it (`jobs.claim` lets a worker take back the job its dead job process held).
    name = hostname or os.environ.get("RODIN_WORKER_NAME") or f"{os.uname().nodename}-{os.getpid()}"
    os.environ["RODIN_WORKER_NAME"] = expand_name(name)
    from workers.runtime import resolve_device

    try:
        resolve_device(device)  # a missing GPU stops the worker here, not in its first job
    except RuntimeError as exc:
        raise RodinError(f"{exc}; use --device cpu") from None
    from workers.app import app as celery_app
    from workers.runtime import hostname as worker_name

    argv = [
        "worker", "--queues", ",".join(wanted), "--hostname", f"{worker_name()}@%h",
        # One job at a time, in a child process: see workers/app.py.
        "--pool", "prefork", "--concurrency", "1", "--prefetch-multiplier", "1",
        "--loglevel", loglevel, "--without-gossip", "--without-mingle",
    ]
    if slot is not None:
        # A fresh job process for every job: it is handed its devices before it touches CUDA
        # (CUDA_VISIBLE_DEVICES, read once per process), and gives back all it held by ending.
        argv += ["--max-tasks-per-child", "1"]
    if settings.embedded:
        argv.append("--without-heartbeat")  # nobody listens for events on one machine
    celery_app.worker_main(argv)
    return 0
