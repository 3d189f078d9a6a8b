"""`python -m workers`: the worker process that `rodin up` and `rodin worker --gpus` start.

The supervisor starts workers here rather than through the `rodin` CLI, so that the call never
runs back up through the client layer. People start workers with `rodin worker`, which takes the
same options and calls the same `workers.main.run`.
"""

from __future__ import annotations

import argparse
import os
import sys

from orchestrator.errors import RodinError
from orchestrator.settings import load_settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers", description=__doc__.splitlines()[0])
    parser.add_argument("--queues", default=None, help="queues to serve, from train,infer")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda:N")
    parser.add_argument("--gpus", default=None, help="offer these GPUs to jobs of any width, e.g. 0,1 or all")
    parser.add_argument("--devices", type=int, default=None, help="offer N CPU cores to jobs of any width")
    parser.add_argument("--hostname", "-n", default=None, help="worker name")
    parser.add_argument("--loglevel", default="INFO", help="Celery log level")
    args = parser.parse_args(argv)
    try:
        from workers.main import run

        return run(load_settings(), queues=args.queues, device=args.device, gpus=args.gpus,
                   devices=args.devices, hostname=args.hostname, loglevel=args.loglevel)
    except (RodinError, ValueError) as exc:
        if os.environ.get("RODIN_DEBUG"):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
