"""How long `--pretrain FAMILY` takes from an empty registry, per family (issue 20: at most 10
minutes on a quiet 2-core machine).

For each family, in a fresh RODIN_HOME with the embedded queue and one worker (`rodin up`):
30 generated shapes of the family are the user's dataset, then

    rodin submit train --dataset mine --pretrain FAMILY --wait

is timed from the command's start to its end. The wall time is split into the pre-training job
and the fine-tuning job (each from its start to its end, read from the registry) and the rest:
what the client did before the first job (checking the family, generating and registering its
pre-training set) and the queue's and the CLI's overheads. Beside it, the client's own
estimate (`orchestrator.pretrain.pretrain_estimate_s`, what `--pretrain auto` shows before it
builds a base), and which family `--pretrain auto` picks for the 30 (nothing trained for it).

    python -m benchmarks.pretrain_time [--families swords,furniture,vessels,generic] [--home DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

from benchmarks.small_data import auto_pick, rodin, timed


def _seconds(job: dict[str, Any]) -> float:
    start, end = (datetime.fromisoformat(job[k]) for k in ("started_at", "finished_at"))
    return (end - start).total_seconds()


def one_family(home: Path, family: str) -> dict[str, Any]:
    from atlas_core.families import PretrainRecipe
    from orchestrator.pretrain import pretrain_estimate_s

    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    rodin(home, "up")
    try:
        rodin(home, "datasets", "make", family, "--name", "mine", "--count", "30", "--seed", "2")
        auto = auto_pick(home, "mine")
        load = os.getloadavg()[0]
        out, wall = timed(home, "submit", "train", "--dataset", "mine", "--pretrain", family, "--wait")
        pre = rodin(home, "status", str(out["pretrain_job_id"]))
        fine = rodin(home, "status", str(out["job_id"]))
    finally:
        rodin(home, "down")
    pre_s, fine_s = _seconds(pre), _seconds(fine)
    return {"family": family, "wall_s": round(wall, 1), "pretrain_job_s": round(pre_s, 1),
            "finetune_job_s": round(fine_s, 1), "rest_s": round(wall - pre_s - fine_s, 1),
            "estimate_s": round(pretrain_estimate_s(PretrainRecipe(family=family))),
            "auto_picks": auto["family"], "auto_s": auto["seconds"],
            "load_before": round(load, 2), "load_after": round(os.getloadavg()[0], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", default="swords,furniture,vessels,generic")
    parser.add_argument("--home", type=Path, default=Path(tempfile.gettempdir()) / "rodin-pretrain-time")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = [one_family(args.home / f, f) for f in args.families.split(",")]
    if args.json:
        print(json.dumps(rows))
        return
    print("| --pretrain FAMILY from an empty registry | wall s | pre-training job s | fine-tune job s "
          "| the rest s (generating the set, the queue, the CLI) | estimate of the pre-training s "
          "| `--pretrain auto` picks | load before -> after |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['family']} | {r['wall_s']:.0f} | {r['pretrain_job_s']:.0f} | {r['finetune_job_s']:.0f} | "
              f"{r['rest_s']:.0f} | {r['estimate_s']:.0f} | {r['auto_picks']} ({r['auto_s']:.0f} s) | {r['load_before']:.2f} -> {r['load_after']:.2f} |")


if __name__ == "__main__":
    main()
