"""Parallel ingestion (issue 19): `rodin datasets add --jobs 1` and `--jobs 2` on N generated
meshes written as files (OBJ, STL and PLY in turn), the client's peak memory, and a rerun after
Ctrl-C at about half way against a full run.

    python -m benchmarks.scale ingest [--count N] [--points P] [--quick]
    python -m benchmarks.scale_ingest [...]

Every `rodin` runs as a user starts it (its own process, a fresh RODIN_HOME, so no shape comes
from the cache unless the row says so). The client's peak memory is its own (wait4's ru_maxrss),
not its readers'. The machine may be shared: the load average is printed with every row.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FORMATS = ("obj", "stl", "ply")


def write_meshes(folder: Path, count: int, seed: int = 0) -> float:
    """`count` procedural swords (atlas_core.swords) exported by trimesh; returns the seconds."""
    from atlas_core.swords import generate_swords

    started = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    for i, (name, mesh, _params) in enumerate(generate_swords(count, seed)):
        mesh.export(folder / f"{name}.{FORMATS[i % len(FORMATS)]}")
    return time.perf_counter() - started


def _load() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def _command(folder: Path, jobs: int, points: int) -> list[str]:
    return [sys.executable, "-m", "orchestrator.cli", "datasets", "add", "bench", str(folder),
            "--jobs", str(jobs), "--points-per-shape", str(points), "--json"]


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RODIN_")}
    env.update(RODIN_HOME=str(home), PYTHONUNBUFFERED="1")
    return env


def _run(command: list[str], home: Path, interrupt_at: int | None = None) -> dict:
    """One `rodin datasets add`: seconds, the client's peak RSS (MiB), its JSON (if it ended
    by itself) and its exit code; with `interrupt_at`, SIGINT once that many shapes are cached."""
    started = time.perf_counter()
    # SIGINT at its default in the client, as from a terminal (a shell's background job has it ignored).
    proc = subprocess.Popen(command, env=_env(home), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    if interrupt_at is not None:
        cache = home / "ingest-cache"
        while proc.poll() is None:
            if cache.is_dir() and sum(1 for _ in cache.glob("*.shape")) >= interrupt_at:
                proc.send_signal(signal.SIGINT)
                break
            time.sleep(0.02)
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - started
    lines = [line for line in out.decode().splitlines() if line.strip()]
    result = json.loads(lines[-1]) if lines and proc.returncode == 0 else {}
    return {"seconds": seconds, "peak_mib": usage.ru_maxrss / 1024, "json": result, "code": proc.returncode}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks.scale ingest", description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1000, help="meshes to write (the issue's figure: 10000)")
    parser.add_argument("--points", type=int, default=1000, help="--points-per-shape")
    parser.add_argument("--quick", action="store_true", help="a tiny run (24 meshes) to check it works")
    args, _ = parser.parse_known_args(argv)  # the dispatcher passes every part's options
    count = 24 if args.quick else args.count
    work = Path(tempfile.mkdtemp(prefix="rodin-scale-ingest-"))
    try:
        folder = work / "meshes"
        made = write_meshes(folder, count)
        print(f"{count} swords written as OBJ/STL/PLY in {made:.1f} s "
              f"({sum(f.stat().st_size for f in folder.iterdir()) / 2**20:.1f} MiB); "
              f"--points-per-shape {args.points}")
        print(f"{'run':34} {'s':>7} {'shapes/s':>9} {'client peak MiB':>16}  load average")
        rows = {}
        for jobs in (1, 2):
            home = work / f"home-{jobs}"
            row = _run(_command(folder, jobs, args.points), home)
            assert row["code"] == 0, f"--jobs {jobs} failed with exit code {row['code']}"
            shapes = row["json"]["dataset"]["shapes"]
            rows[jobs] = row
            print(f"{f'--jobs {jobs}, empty cache':34} {row['seconds']:7.1f} {shapes / row['seconds']:9.1f} "
                  f"{row['peak_mib']:16.0f}  {_load()}")
        print(f"speed-up of --jobs 2 over --jobs 1: {rows[1]['seconds'] / rows[2]['seconds']:.2f}x")
        same = rows[1]["json"]["dataset"]["artifact_uri"].rsplit("/", 1)[-1] == \
            rows[2]["json"]["dataset"]["artifact_uri"].rsplit("/", 1)[-1]
        print(f"same registered content with 1 and 2 jobs: {same}")

        home = work / "home-interrupted"
        stopped = _run(_command(folder, 2, args.points), home, interrupt_at=count // 2)
        cached_before = sum(1 for _ in (home / "ingest-cache").glob("*.shape"))
        print(f"{'--jobs 2, Ctrl-C at about 50%':34} {stopped['seconds']:7.1f} {'':9} "
              f"{stopped['peak_mib']:16.0f}  {_load()}  (exit {stopped['code']}, {cached_before} shapes cached)")
        rerun = _run(_command(folder, 2, args.points), home)
        assert rerun["code"] == 0
        shapes = rerun["json"]["dataset"]["shapes"]
        print(f"{'--jobs 2, the rerun':34} {rerun['seconds']:7.1f} {shapes / rerun['seconds']:9.1f} "
              f"{rerun['peak_mib']:16.0f}  {_load()}  ({rerun['json']['cached']} from the cache)")
        print(f"rerun after Ctrl-C / full run with --jobs 2: {rerun['seconds'] / rows[2]['seconds']:.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
