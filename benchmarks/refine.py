"""Test-time refinement and out-of-distribution warnings on held-out shapes (figures, not a test).

    python -m benchmarks.refine [--family swords|chairs] [--train 30] [--epochs 300] [--test 20] [--batch 8] [--json]

1. A CPU-default AtlasNet (`TrainConfig.cpu()`: K=10 square patches, 1,000 points, bottleneck
   256, hidden 128, 2 layers) trains on `--train` generated shapes, the situation of a user with
   ~30 meshes, niced; the checkpoint is cached (see --cache) and reused by later runs.
2. `--test` held-out shapes of the same family (another seed) are reconstructed from 10,000
   surface points each (as `rodin reconstruct` ingests a mesh) with no refinement, the code
   only, and the code then the decoders (`atlas_core.refine` defaults) one input at a time and
   in batches of `--batch` (`refine_batch`, as the reconstruct job runs it), and with the
   decoder phase's points before issue 20 ((1000, 2000) a step), and scored the way
   `rodin evaluate` scores (atlas_core.metrics: Chamfer x10^3, F-score and coverage at 1% of the
   unit ball's diameter, 2,500 points) against 2,500 points sampled afresh from the true
   surface, not the points the refinement fitted. Seconds per mesh: refinement and meshing,
   wall and CPU time, on one torch thread; a batch's time divided by its inputs. The methods
   run interleaved, each on the same `--batch` inputs before the next inputs, so that the
   machine's load (printed beside the table) weighs on all alike. Steps: the mean steps each
   phase took (the code phase stops per input on a plateau).
3. Out-of-distribution warnings (`atlas_core.ood`, statistics collected as the train worker
   does, each input judged after the default refinement's code phase): the false-positive rate
   on the held-out shapes of the model's own family and the true-positive rate on clearly
   foreign shapes (basic solids, the other family, and the meshes of --objects when that
   folder exists); also without the fit signal, as when no refinement runs.

The `chairs` family (boxes and cylinders: seat, legs, a solid or slatted back, maybe arms) is
here only to check that the OOD thresholds are not tuned to swords.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import trimesh

from atlas_core.checkpoint import load_model
from atlas_core.config import TrainConfig
from atlas_core.data import PointCloudSet, split_of
from atlas_core.mesh_io import MeshError, Shape, ingest_file, shape_from_mesh
from atlas_core.metrics import sample_mesh, surface_scores
from atlas_core.model import AtlasNet
from atlas_core.ood import collect, ood_warnings
from atlas_core.refine import refine, refine_batch
from atlas_core.swords import generate_swords

TRAIN_POINTS = 5000  # per shape, as `rodin datasets make` samples
INPUT_POINTS = 10000  # per input, as `rodin reconstruct` ingests a mesh
EVAL_POINTS = 2500
#: (label, refine_batch's options, inputs refined together: 0 for --batch)
METHODS: list[tuple[str, dict[str, Any], int]] = [
    ("no refinement", {"latent_steps": 0, "decoder_steps": 0}, 1),
    ("latent only", {"decoder_steps": 0}, 1),
    ("latent + decoders, one at a time", {}, 1),
    ("latent + decoders, batches of {batch}", {}, 0),
    ("before issue 20: (1000, 2000) points, one at a time", {"decoder_points": (1000, 2000)}, 1),
]


# -----------------------------------------------------------------------------
# Shapes


def _box(size: tuple[float, float, float], center: tuple[float, float, float]) -> trimesh.Trimesh:
    return trimesh.creation.box(size, trimesh.transformations.translation_matrix(center))


def _chair(rng: np.random.Generator) -> trimesh.Trimesh:
    """A chair of boxes and cylinders: seat, four legs, a solid or slatted back, maybe arms."""
    w, d, h = rng.uniform(0.8, 1.2), rng.uniform(0.8, 1.2), rng.uniform(0.8, 1.2)
    seat, leg = rng.uniform(0.05, 0.12), rng.uniform(0.05, 0.12)
    parts = [_box((w, seat, d), (0, h, 0))]
    round_legs = rng.random() < 0.5
    for x in (-1, 1):
        for z in (-1, 1):
            center = (x * (w / 2 - leg), h / 2, z * (d / 2 - leg))
            if round_legs:
                cylinder = trimesh.creation.cylinder(leg / 2, h, sections=12)
                cylinder.apply_transform(trimesh.transformations.rotation_matrix(np.pi / 2, (1, 0, 0)))
                cylinder.apply_translation(center)
                parts.append(cylinder)
            else:
                parts.append(_box((leg, h, leg), center))
    back_h, back_t = rng.uniform(0.6, 1.2), rng.uniform(0.04, 0.1)
    slats = int(rng.integers(0, 5))
    if slats == 0:
        parts.append(_box((w, back_h, back_t), (0, h + back_h / 2, -d / 2 + back_t / 2)))
    else:
        for s in range(slats):
            x = -w / 2 + leg / 2 + s * (w - leg) / (slats - 1) if slats > 1 else 0.0
            parts.append(_box((leg, back_h, back_t), (x, h + back_h / 2, -d / 2 + back_t / 2)))
        parts.append(_box((w, 0.1, back_t), (0, h + back_h, -d / 2 + back_t / 2)))
    if rng.random() < 0.4:
        arm_h = rng.uniform(0.2, 0.35)
        for x in (-1, 1):
            parts.append(_box((0.06, 0.05, d), (x * w / 2, h + arm_h, 0)))
            parts.append(_box((0.05, arm_h, 0.05), (x * w / 2, h + arm_h / 2, d / 2 - 0.05)))
    return trimesh.util.concatenate(parts)


def family(name: str, count: int, seed: int) -> Iterator[tuple[str, trimesh.Trimesh]]:
    if name == "swords":
        for sword, mesh, _ in generate_swords(count, seed):
            yield sword, mesh
    else:
        rng = np.random.default_rng(seed)
        for i in range(count):
            yield f"chair_{i:04d}", _chair(rng)


def foreign_shapes(own: str, objects: Path) -> list[Shape]:
    """Clearly foreign inputs for a model of family `own`."""
    meshes = {"cube": trimesh.creation.box(), "sphere": trimesh.creation.icosphere(3),
              "torus": trimesh.creation.torus(1.0, 0.3), "cylinder": trimesh.creation.cylinder(0.3, 2.0),
              "cone": trimesh.creation.cone(0.5, 1.5)}
    other = "chairs" if own == "swords" else "swords"
    meshes.update(dict(family(other, 3, seed=7)))
    shapes = [shape_from_mesh(mesh, name, INPUT_POINTS, seed=0) for name, mesh in meshes.items()]
    if objects.is_dir():
        for path in sorted(objects.iterdir()):
            try:
                shapes.append(ingest_file(path, n_points=INPUT_POINTS, seed=0))
            except MeshError as exc:
                print(f"skipped {path.name}: {exc}", file=sys.stderr)
    return shapes


# -----------------------------------------------------------------------------
# The model


def trained_model(name: str, count: int, epochs: int, cache: Path, threads: int) -> tuple[AtlasNet, TrainConfig, PointCloudSet]:
    """The CPU-default model trained on `count` shapes of `name` (cached), and its data."""
    data = PointCloudSet.from_shapes(shape_from_mesh(mesh, shape, TRAIN_POINTS, seed=2 * 100003 + i)
                                     for i, (shape, mesh) in enumerate(family(name, count, seed=2)))
    config = TrainConfig.cpu().with_overrides(epochs=epochs, checkpoint_every=epochs)
    key = hashlib.sha256(json.dumps([name, count, config.to_dict(), torch.__version__]).encode()).hexdigest()[:12]
    path = cache / f"refine-{name}{count}-e{epochs}-{key}.pt"
    if not path.exists():
        from atlas_core.train import CheckpointEvent, TrainCallbacks, train

        print(f"training on {count} {name} for {epochs} epochs (cached as {path}) ...", file=sys.stderr)
        torch.set_num_threads(threads)
        events: list[CheckpointEvent] = []

        def progress(stats: Any) -> None:
            if stats.epoch % 25 == 0:
                print(f"  epoch {stats.epoch}: val Chamfer {stats.val_chamfer:.5f}", file=sys.stderr)

        started = time.perf_counter()
        result = train(config, data, TrainCallbacks(on_epoch=progress, on_checkpoint=events.append))
        state = [e for e in events if e.epoch == result.final_epoch][-1].state
        cache.mkdir(parents=True, exist_ok=True)
        path.with_suffix(".tmp").write_bytes(state)
        path.with_suffix(".tmp").replace(path)
        print(f"  trained in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    model, config, _ = load_model(path.read_bytes())
    return model, config, data


# -----------------------------------------------------------------------------
# Measurements


def _points(shape: Shape) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(shape.points, dtype=np.float32))[None]


def reconstruction_rows(model: AtlasNet, tests: list[tuple[Shape, Shape]], batch: int) -> list[dict[str, Any]]:
    """One row per method: mean scores over the held-out (input, ground truth) pairs. The
    methods take turns on each `batch` of inputs, starting with another method each time;
    input i's generator is seeded with i."""
    methods = [(label.format(batch=batch), options, size or batch) for label, options, size in METHODS]
    scores: dict[str, list[Any]] = {label: [] for label, _, _ in methods}
    steps: dict[str, list[tuple[int, int]]] = {label: [] for label, _, _ in methods}
    wall = dict.fromkeys(scores, 0.0)
    cpu = dict.fromkeys(scores, 0.0)
    for start in range(0, len(tests), batch):
        chunk = tests[start:start + batch]
        turn = (start // batch) % len(methods)  # each batch of inputs starts with another method
        for label, options, size in methods[turn:] + methods[:turn]:
            for first in range(start, start + len(chunk), size):
                part = tests[first:min(first + size, start + len(chunk))]
                started, cpu_started = time.perf_counter(), time.process_time()
                results = refine_batch(model, [_points(shape) for shape, _ in part],
                                       generators=[torch.Generator().manual_seed(first + j) for j in range(len(part))],
                                       **options)
                meshes = [result.mesh(10000) for result in results]
                wall[label] += time.perf_counter() - started
                cpu[label] += time.process_time() - cpu_started
                for j, (mesh, result, (_, truth)) in enumerate(zip(meshes, results, part)):
                    pred, pred_normals = sample_mesh(mesh, EVAL_POINTS, seed=first + j)
                    scores[label].append(surface_scores(pred, pred_normals, truth.points, truth.normals))
                    steps[label].append((result.latent_steps, result.decoder_steps))
        print(f"  {start + len(chunk)}/{len(tests)} inputs", file=sys.stderr)
    return [{
        "method": label, "shapes": len(tests), "batch": size,
        "chamfer_x1e3": float(np.mean([s.chamfer for s in scores[label]])),
        "fscore": float(np.mean([s.fscore for s in scores[label]])),
        "fscore_min": float(np.min([s.fscore for s in scores[label]])),
        "coverage": float(np.mean([s.coverage for s in scores[label]])),
        "normal_consistency": float(np.mean([s.normal_consistency for s in scores[label]])),
        "latent_steps": float(np.mean([a for a, _ in steps[label]])),
        "decoder_steps": float(np.mean([b for _, b in steps[label]])),
        "seconds_per_mesh": wall[label] / len(tests), "cpu_seconds_per_mesh": cpu[label] / len(tests),
    } for label, _, size in methods]


def ood_rates(model: AtlasNet, config: TrainConfig, data: PointCloudSet, own: list[Shape],
              foreign: list[Shape]) -> dict[str, Any]:
    """False positives on the model's own held-out family, true positives on foreign shapes."""
    train_idx, val_idx = split_of(data, config.val_fraction, config.seed, config.split)
    # As workers/train_job.py does: the validation shapes from 2 of them, else the training ones.
    reference = data.points[val_idx] if len(val_idx) >= 2 else data.points[train_idx]
    stats = collect(model, reference, data.points[train_idx])

    def judge(i: int, shape: Shape) -> dict[str, Any]:
        # The code phase of the default refinement, as `rodin reconstruct` runs it.
        r = refine(model, _points(shape), decoder_steps=0, generator=torch.Generator().manual_seed(i))
        return {"name": shape.name, **stats.ratios(r.chamfer_before, r.encoded, r.chamfer_latent),
                "warned": bool(ood_warnings(stats, r.chamfer_before, r.encoded, r.chamfer_latent)),
                "warned_without_fit": bool(ood_warnings(stats, r.chamfer_before, r.encoded))}

    own_rows = [judge(i, s) for i, s in enumerate(own)]
    foreign_rows = [judge(i, s) for i, s in enumerate(foreign)]

    def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
        return {"shapes": len(rows), "warned": sum(r["warned"] for r in rows),
                "warned_without_fit": sum(r["warned_without_fit"] for r in rows),
                **{key: [min(r[key] for r in rows), max(r[key] for r in rows)]
                   for key in ("fit_ratio", "chamfer_ratio", "latent_ratio")}}

    return {"reference": f"{stats.shapes} {stats.reference} shapes",
            "fit_reference": f"{stats.fit_shapes} training and validation shapes",
            "fit_factor": stats.fit_factor, "chamfer_factor": stats.chamfer_factor,
            "latent_factor": stats.latent_factor,
            "own": summary(own_rows), "foreign": summary(foreign_rows),
            "false_positive_rate": summary(own_rows)["warned"] / len(own_rows),
            "true_positive_rate": summary(foreign_rows)["warned"] / len(foreign_rows),
            "foreign_not_warned": [r["name"] for r in foreign_rows if not r["warned"]],
            "own_warned": [r["name"] for r in own_rows if r["warned"]]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=("swords", "chairs"), default="swords")
    parser.add_argument("--train", type=int, default=30, help="training shapes (default 30)")
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--test", type=int, default=20, help="held-out shapes (default 20)")
    parser.add_argument("--batch", type=int, default=8, help="inputs refined together (default 8, as the job)")
    parser.add_argument("--cache", type=Path,
                        default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "rodin" / "benchmarks")
    parser.add_argument("--objects", type=Path, default=Path("/work/shared/meshes/objects"),
                        help="a folder of meshes counted as foreign (skipped when absent)")
    parser.add_argument("--train-threads", type=int, default=2)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    os.nice(10)  # other people's work on the machine comes first

    model, config, data = trained_model(args.family, args.train, args.epochs, args.cache, args.train_threads)
    torch.set_num_threads(1)  # refine's own default; also for the encoder and meshing around it
    tests = [(shape_from_mesh(mesh, name, INPUT_POINTS, seed=1000 + i), shape_from_mesh(mesh, name, EVAL_POINTS, seed=5000 + i))
             for i, (name, mesh) in enumerate(family(args.family, args.test, seed=3))]
    load_before = os.getloadavg()
    rows = reconstruction_rows(model, tests, args.batch)
    load_rows = [round(max(a, b), 2) for a, b in zip(load_before, os.getloadavg())]
    ood = ood_rates(model, config, data, [shape for shape, _ in tests], foreign_shapes(args.family, args.objects))
    load = [round(max(a, b), 2) for a, b in zip(load_before, os.getloadavg())]
    report = {"family": args.family, "train_shapes": args.train, "epochs": args.epochs, "test_shapes": args.test,
              "rows": rows, "rows_load_average_1_5_15": load_rows, "ood": ood, "load_average_1_5_15": load,
              "cpus": os.cpu_count(),
              "torch_threads": 1}
    if args.json:
        print(json.dumps(report))
        return
    print(f"\nCPU-default AtlasNet trained on {args.train} {args.family} ({args.epochs} epochs); "
          f"{args.test} held-out {args.family}, scored against fresh samples of the true surface\n")
    print("| method | Chamfer x1e3 | F-score@1% (min) | coverage | normal cons. | steps | s per mesh (wall) | CPU s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['chamfer_x1e3']:.3f} | {r['fscore']:.3f} ({r['fscore_min']:.3f}) | "
              f"{r['coverage']:.3f} | {r['normal_consistency']:.3f} | "
              f"{r['latent_steps']:.0f} + {r['decoder_steps']:.0f} | {r['seconds_per_mesh']:.2f} | "
              f"{r['cpu_seconds_per_mesh']:.2f} |")
    print(f"load average while these ran (1, 5, 15 min, max of start and end): {load_rows} on {os.cpu_count()} CPUs")
    own, foreign = ood["own"], ood["foreign"]
    print(f"\nOOD: warns above {ood['fit_factor']:g}x the fit after refining the code ({ood['fit_reference']}), "
          f"{ood['chamfer_factor']:g}x the encoder's Chamfer ({ood['reference']}) or "
          f"{ood['latent_factor']:g}x the code distance, each of its reference's 95th percentile")
    print(f"  false positives: {own['warned']}/{own['shapes']} held-out {args.family} "
          f"(ratios at most: fit {own['fit_ratio'][1]:.2f}x, Chamfer {own['chamfer_ratio'][1]:.3g}x, "
          f"code {own['latent_ratio'][1]:.2f}x)")
    print(f"  true positives:  {foreign['warned']}/{foreign['shapes']} foreign shapes "
          f"(ratios at least: fit {foreign['fit_ratio'][0]:.2f}x, Chamfer {foreign['chamfer_ratio'][0]:.3g}x, "
          f"code {foreign['latent_ratio'][0]:.2f}x)")
    print(f"  without the fit signal (no refinement): {own['warned_without_fit']}/{own['shapes']} and "
          f"{foreign['warned_without_fit']}/{foreign['shapes']}")
    if ood["foreign_not_warned"]:
        print(f"  foreign without a warning: {', '.join(ood['foreign_not_warned'])}")
    print(f"\nload average during the run (1, 5, 15 min, max of start and end): {load} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
