"""A real collection in, `--pretrain auto` out: does the path hold on meshes nobody generated?

Takes a folder of a user's mesh files (by default ../shared/meshes/objects: 20 everyday and CAD
objects from public repositories, none made by this project), holds out every `--every`-th file
(sorted by name), registers the rest and the held-out files as two datasets through `rodin
datasets add`, and then, through the real CLI and queue in a fresh RODIN_HOME:

  1. `rodin submit train --dataset real --pretrain auto --wait` from an empty registry: which
     family wins and by how much, what it cost (the base is built, then the fine-tune);
  2. `rodin evaluate` on the held-out files, refined (the default) and with `--refine 0`,
     against retrieval from the training files (Chamfer x1e3, F-score@1%).

    python -m benchmarks.real_collection [--folder DIR] [--every 4] [--home /tmp/rodin-real] [--quick] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.small_data import OBJECTS, evaluate, rodin, timed


def split_files(folder: Path, every: int) -> tuple[list[Path], list[Path]]:
    """(training files, held-out files): every `every`-th file by name is held out."""
    files = sorted(p for p in folder.iterdir() if p.is_file())
    held = [p for i, p in enumerate(files) if i % every == every - 1]
    return [p for p in files if p not in held], held


def linked(files: list[Path], folder: Path) -> Path:
    """A folder of symbolic links to `files` (what `datasets add` reads)."""
    folder.mkdir(parents=True, exist_ok=True)
    for f in files:
        (folder / f.name).symlink_to(f.resolve())
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", type=Path, default=OBJECTS)
    parser.add_argument("--every", type=int, default=4, help="hold out every N-th file (default 4)")
    parser.add_argument("--home", type=Path, default=Path(tempfile.gettempdir()) / "rodin-real")
    parser.add_argument("--quick", action="store_true", help="a smoke run: a tiny base, few epochs")
    parser.add_argument("--points-per-shape", type=int, default=30_000,
                        help="surface points per file (default 30,000: dense enough for the F-score at 1%%)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not args.folder.is_dir():
        raise SystemExit(f"{args.folder} is not a folder of meshes: pass --folder DIR")
    home: Path = args.home
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    train_files, held = split_files(args.folder, args.every)
    quick = ["--pretrain-shapes", "12", "--pretrain-epochs", "2", "--epochs", "2"] if args.quick else []
    figures: dict[str, Any] = {"folder": str(args.folder), "load_average_start": os.getloadavg()[0],
                               "train_files": [p.name for p in train_files], "held_out": [p.name for p in held]}
    rodin(home, "up")
    try:
        points = ["--points-per-shape", str(args.points_per_shape)]
        added = rodin(home, "datasets", "add", "real", str(linked(train_files, home / "train")), *points)
        rodin(home, "datasets", "add", "real-test", str(linked(held, home / "test")), *points)
        figures["train_shapes"] = added.get("shapes", len(train_files))
        out, train_s = timed(home, "submit", "train", "--dataset", "real", "--pretrain", "auto", *quick, "--wait")
        choice = out.get("family_choice") or {}
        figures["auto"] = {"family": choice.get("family"), "reason": choice.get("reason"),
                           "scores": {r["family"]: round(r["chamfer"], 3) for r in choice.get("scores", [])}}
        figures["train"] = {"model_id": out["model_id"], "base_model_id": out.get("base_model_id"),
                            "pretrain_job_id": out.get("pretrain_job_id"), "wall_s": round(train_s, 1),
                            "family": choice.get("family")}
        print(f"trained: {json.dumps(figures['train'])}", file=sys.stderr, flush=True)
        refined, eval_s = evaluate(home, out["model_id"], "real-test")
        plain, _ = evaluate(home, out["model_id"], "real-test", "--refine", "0")
        figures["refined"], figures["unrefined"], figures["evaluate_s"] = refined, plain, round(eval_s, 1)
    finally:
        rodin(home, "down")
    figures["load_average_end"] = os.getloadavg()[0]
    if args.json:
        print(json.dumps(figures))
        return
    print(f"{args.folder}: {len(train_files)} files to fine-tune on, {len(held)} held out "
          f"({', '.join(figures['held_out'])}); load average {figures['load_average_start']:.2f} -> "
          f"{figures['load_average_end']:.2f}")
    print(f"--pretrain auto: {json.dumps(figures['auto'])}")
    t = figures["train"]
    print(f"base family {t['family']}, model {t['model_id']}: {t['wall_s']:.0f} s from an empty registry "
          f"(base built: {t['pretrain_job_id'] is not None})")
    print("| on the held-out files | Chamfer x1e3 | retrieval | beats retrieval on | F-score@1% | retrieval's F-score "
          "| F-score ceiling |")
    print("|---|---|---|---|---|---|---|")
    for label, r in (("refined (default)", refined), ("no refinement", plain)):
        print(f"| {label} | {r['chamfer']:.3f} | {r['retrieval_chamfer']:.3f} | "
              f"{r['shapes_beating_retrieval']}/{r['shapes']} | {r['fscore']:.3f} | {r['retrieval_fscore']:.3f} | "
              f"{r.get('fscore_ceiling') or float('nan'):.3f} |")


if __name__ == "__main__":
    main()
