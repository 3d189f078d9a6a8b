"""How long `rodin report` takes on a well-used model (figures, not a test).

    python -m benchmarks.report_speed [--epochs 150] [--reconstructions 12] [--repeats 3] [--json]

Builds a fresh RODIN_HOME (SQLite registry, local artifact store) holding a model with the story
of a long training: a real generated dataset (`swords`, registered as `rodin datasets make`
does), one training job with a checkpoint registered at each of `--epochs` epochs and its
stored loss curves, an evaluation job with its report and plot, and a reconstruction job with
`--reconstructions` inputs (a coloured PLY and a PNG each). Every row is written through the
job service (`orchestrator.jobs`: submit, claim, register_checkpoint, finish) and every blob
through the artifact store, as a worker writes them; only the numbers are made up, so that no
150 epochs have to be trained. Then `rodin report ALIAS` runs `--repeats` times, each in a
fresh process (cold: imports, registry, artifacts, HTML), and its wall time is printed with the
load average. The target is under 10 s.

`fabricate` is also what tests/orchestrator/test_report.py builds its registry with.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

TARGET_S = 10.0
WORKER = "fabricator"  # the worker name the fabricated jobs ran on


@dataclass
class Fabricated:
    dataset_id: int
    train_job_id: int
    model_id: int  # the training job's final model
    evaluate_job_id: int | None
    reconstruct_job_id: int | None
    alias: str


def _settings(home: Path):  # type: ignore[no-untyped-def]
    from orchestrator.settings import load_settings

    return load_settings({"RODIN_HOME": str(home)})


def _losses(epochs: int, seed: int = 0) -> list[dict[str, float]]:
    """A plausible history: decaying train loss and validation Chamfer with a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(1, epochs + 1)
    train = 2e-3 * np.exp(-t / (epochs / 4)) + 2e-4 + rng.normal(0, 1e-5, epochs).clip(-5e-5, 5e-5)
    val = train * 1.15 + 3e-5
    return [{"epoch": float(e), "epochs": float(epochs), "train_loss": float(a), "val_chamfer": float(b),
             "lr": 1e-3, "seconds": 1.0} for e, a, b in zip(t, train, val)]


def _patch_mesh(points: np.ndarray, patches: int = 10, grid: int = 14):  # type: ignore[no-untyped-def]
    """A made-up reconstruction: an ellipsoid around the points, cut into `patches` bands."""
    from atlas_core.meshing import PatchMesh

    center, radius = (points.max(0) + points.min(0)) / 2, (points.max(0) - points.min(0)) / 2 + 1e-3
    verts, faces, ids = [], [], []
    for k in range(patches):
        u = np.linspace(2 * np.pi * k / patches, 2 * np.pi * (k + 1) / patches, grid)
        v = np.linspace(0.05, np.pi - 0.05, grid)
        uu, vv = np.meshgrid(u, v)
        xyz = np.stack([np.cos(uu) * np.sin(vv), np.cos(vv), np.sin(uu) * np.sin(vv)], -1).reshape(-1, 3)
        base = k * grid * grid
        verts.append(xyz * radius + center)
        idx = np.arange(grid * grid).reshape(grid, grid) + base
        a, b, c, d = idx[:-1, :-1], idx[:-1, 1:], idx[1:, :-1], idx[1:, 1:]
        faces.append(np.concatenate([np.stack([a, b, c], -1).reshape(-1, 3), np.stack([b, d, c], -1).reshape(-1, 3)]))
        ids.append(np.full(grid * grid, k))
    return PatchMesh(np.concatenate(verts).astype(np.float32), np.concatenate(faces).astype(np.int64),
                     np.concatenate(ids).astype(np.int64))


def fabricate(home: Path, *, epochs: int = 150, reconstructions: int = 12, evaluated: bool = True,
              shapes: int = 16, alias: str = "bench-best", name: str = "swords") -> Fabricated:
    """Register a dataset, a finished training job with a checkpoint per epoch, and (optionally)
    an evaluation and a reconstruction job of its final model, as workers would have."""
    from atlas_core.config import TrainConfig
    from atlas_core.families import family_source, generate_family
    from atlas_core.meshing import to_ply_bytes
    from atlas_core.render import render_evaluation, render_loss_curves, render_reconstruction
    from orchestrator import aliases, jobs
    from orchestrator.artifacts import open_store
    from orchestrator.datasets import register_dataset
    from orchestrator.registry.db import session_scope
    from orchestrator.registry.models import JobKind, JobStatus

    settings = _settings(home)
    store = open_store(settings)
    data = generate_family("swords", shapes, 0, 600)
    dataset_id = int(register_dataset(settings, store, name, data, family_source("swords", shapes, 0), [])["id"])

    config = TrainConfig.cpu().with_overrides(epochs=epochs, checkpoint_every=1).to_dict()
    job_id = jobs.submit(settings, JobKind.train, params={"config": config}, dataset_id=dataset_id)
    lease = jobs.claim(settings, job_id, WORKER, "cpu")
    assert lease is not None
    history = _losses(epochs)
    parent, ids = None, {}
    for h in history:
        epoch = int(h["epoch"])
        blob = store.put_bytes(f"weights of job {job_id} epoch {epoch}".encode(), ".pt")
        parent = jobs.register_checkpoint(
            settings, lease, dataset_id=dataset_id, parent_id=parent, epoch=epoch, final=False, config=config,
            metrics={"train_loss": h["train_loss"], "val_chamfer": h["val_chamfer"], "coverage": 0.97,
                     "collapsed_patches": [], "warnings": [], "kind": "periodic"},
            artifact_uri=blob.uri, sha256=blob.sha256, size_bytes=blob.size, code_version="fabricated",
            torch_version="2.13.0")
        ids[epoch] = parent
        jobs.report_progress(settings, lease, h)
    best = min(history, key=lambda h: h["val_chamfer"])
    final_epoch = int(best["epoch"])
    curves = store.put_bytes(render_loss_curves(history, f"job {job_id}"), ".png")
    jobs.finish(settings, job_id, JobStatus.succeeded, lease=lease, final_model_id=ids[final_epoch],
                outputs=[{"name": "loss_curves.png", "kind": "plot", **curves.as_dict()}],
                result={"final_model_id": ids[final_epoch], "final_epoch": final_epoch,
                        "last_epoch": epochs, "stopped_early": False})
    model_id = ids[final_epoch]
    with session_scope(settings) as s:
        aliases.tag(s, model_id, alias)

    rng = np.random.default_rng(1)
    evaluate_job = None
    if evaluated:
        per_shape = [{"name": n, "chamfer": float(c), "retrieval_chamfer": float(c * rng.uniform(1.2, 3)),
                      "fscore": 0.9, "precision": 0.9, "coverage": 0.95, "normal_consistency": 0.9,
                      "retrieved": data.names[0]} for n, c in zip(data.names, rng.uniform(0.3, 0.8, len(data)))]
        result = {"model_id": model_id, "dataset": f"{name}@1 (validation split)", "shapes": len(per_shape),
                  "retrieval_library": len(data), "chamfer": float(np.mean([r["chamfer"] for r in per_shape])),
                  "fscore": 0.93, "normal_consistency": 0.91, "coverage": 0.96,
                  "retrieval_chamfer": float(np.mean([r["retrieval_chamfer"] for r in per_shape])),
                  "fscore_threshold": 0.02, "chamfer_units": "x1e3", "collapsed_patches": [],
                  "per_shape": per_shape, "beats_retrieval": True, "shapes_beating_retrieval": len(per_shape),
                  "warnings": [], "refine": None}
        evaluate_job = _finished(settings, JobKind.evaluate, model_id, result, [
            {"name": "evaluation.json", "kind": "report", **store.put_bytes(json.dumps(result).encode(), ".json").as_dict()},
            {"name": "evaluation.png", "kind": "plot",
             **store.put_bytes(render_evaluation(per_shape, f"model {model_id}"), ".png").as_dict()}])

    reconstruct_job = None
    if reconstructions:
        outputs: list[dict[str, Any]] = []
        results = []
        for i in range(reconstructions):
            points = data.points[i % len(data)]
            name = f"{data.names[i % len(data)]}-{i}"
            mesh = _patch_mesh(points)
            before, after = float(rng.uniform(4e-4, 8e-4)), float(rng.uniform(1e-4, 3e-4))
            scores = {"chamfer": after, "chamfer_before": before, "chamfer_after": after, "warnings": []}
            png = render_reconstruction(points, mesh, title=f"{name}: model {model_id}, Chamfer {after:.5f}")
            outputs.append({"name": f"{name}.ply", "kind": "mesh", "input": name, **scores,
                            **store.put_bytes(to_ply_bytes(mesh), ".ply").as_dict()})
            outputs.append({"name": f"{name}.png", "kind": "render", "input": name,
                            **store.put_bytes(png, ".png").as_dict()})
            results.append({"input": name, "output": f"{name}.ply", **scores, "seconds": 1.0})
        reconstruct_job = _finished(settings, JobKind.reconstruct, model_id,
                                    {"refine": None, "inputs": results, "warnings": []}, outputs)
    return Fabricated(dataset_id, job_id, model_id, evaluate_job, reconstruct_job, alias)


def _finished(settings, kind, model_id: int, result: dict[str, Any], outputs: list[dict[str, Any]]) -> int:  # type: ignore[no-untyped-def]
    """A job of `kind` on the model, claimed and finished as its worker would."""
    from orchestrator import jobs
    from orchestrator.kinds import spec
    from orchestrator.registry.models import JobStatus

    job_id = jobs.submit(settings, kind, params=spec(kind).params(), input_model_id=model_id)
    lease = jobs.claim(settings, job_id, WORKER, "cpu")
    assert lease is not None
    jobs.finish(settings, job_id, JobStatus.succeeded, lease=lease, outputs=outputs, result=result)
    return job_id


def time_report(home: Path, model: str, out: Path) -> tuple[float, dict[str, Any]]:
    """One cold `rodin report` in a fresh process: (wall seconds, its JSON)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RODIN_")}
    env["RODIN_HOME"] = str(home)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "orchestrator.cli", "report", model, "--out", str(out),
                           "--no-reconstruct", "--json"], env=env, capture_output=True, text=True, timeout=300)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"rodin report failed: {done.stderr.strip()}")
    return wall, json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=150)
    parser.add_argument("--reconstructions", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="one JSON object")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rodin-report-bench-") as tmp:
        home = Path(tmp) / "home"
        started = time.perf_counter()
        made = fabricate(home, epochs=args.epochs, reconstructions=args.reconstructions)
        setup_s = time.perf_counter() - started
        runs = [time_report(home, made.alias, Path(tmp) / "out") for _ in range(args.repeats)]
        walls = [w for w, _ in runs]
        page = Path(runs[-1][1]["report"])
        row = {"epochs": args.epochs, "reconstructions": runs[-1][1]["reconstructions"],
               "report_s_median": round(statistics.median(walls), 2), "report_s_max": round(max(walls), 2),
               "runs": [round(w, 2) for w in walls], "page_bytes": page.stat().st_size,
               "target_s": TARGET_S, "meets_target": max(walls) < TARGET_S,
               "load_average": [round(x, 2) for x in os.getloadavg()], "cpus": os.cpu_count(),
               "setup_s": round(setup_s, 1)}
    if args.json:
        print(json.dumps(row))
        return
    print(f"rodin report, model with {row['epochs']} epochs and {row['reconstructions']} reconstructions "
          f"({row['page_bytes'] / 1e6:.1f} MB page):")
    print(f"  cold wall time: median {row['report_s_median']} s, max {row['report_s_max']} s over "
          f"{args.repeats} runs {row['runs']} (target < {TARGET_S:g} s: {'met' if row['meets_target'] else 'MISSED'})")
    print(f"  load average {' '.join(str(x) for x in row['load_average'])} on {row['cpus']} CPUs "
          f"(setup {row['setup_s']} s, not timed)")


if __name__ == "__main__":
    main()
