"""rodin past a few thousand shapes (figures, not a test): issue 19's rows in one command.

    python -m benchmarks.scale [ingest|train|fetch|registry|all] [--quick] [PART OPTIONS...]

Each part lives in its own module and prints its own table; this only runs them in turn and
says under which conditions (CPUs, load average, niceness):

    ingest    benchmarks/scale_ingest.py    meshes/s with --jobs 1 and 2, client memory, a rerun after Ctrl-C
    train     benchmarks/scale_train.py     one epoch on 2,000 and 20,000 shapes: peak memory, time per shape
    fetch     benchmarks/scale_fetch.py     a 4-job sweep on one machine: bytes fetched from the store
    registry  benchmarks/scale_registry.py  100,000 models, 20,000 jobs: every client command cold

A part whose module is not there yet is named and skipped.
"""

from __future__ import annotations

import importlib
import os
import platform
import sys

PARTS = {"ingest": "benchmarks.scale_ingest", "train": "benchmarks.scale_train",
         "fetch": "benchmarks.scale_fetch", "registry": "benchmarks.scale_registry"}


def conditions() -> str:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"{os.cpu_count()} CPUs, Python {platform.python_version()}, nice {os.nice(0)}, "
            f"load average {load}")


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    which = args.pop(0) if args and not args[0].startswith("-") else "all"
    if which != "all" and which not in PARTS:
        print(f"unknown part {which!r}: one of {', '.join(PARTS)} or all", file=sys.stderr)
        return 2
    print(f"benchmarks.scale: {conditions()}")
    for name in PARTS if which == "all" else [which]:
        try:
            module = importlib.import_module(PARTS[name])
        except ModuleNotFoundError as exc:
            if exc.name != PARTS[name]:
                raise
            print(f"\n[{name}] not written yet ({PARTS[name]})")
            continue
        print(f"\n[{name}]")
        module.main(args)
    print(f"\nat the end: {conditions()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
