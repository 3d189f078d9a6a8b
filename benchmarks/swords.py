"""How fast procedural swords generate and ingest (figures, not a test).

    python -m benchmarks.swords [--count 1000]
"""

from __future__ import annotations

import argparse
import json
import time

from atlas_core.mesh_io import shape_from_mesh
from atlas_core.swords import generate_swords


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--points", type=int, default=5000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    start = time.perf_counter()
    meshes = [m for _, m, _ in generate_swords(args.count, seed=0)]
    generate_s = time.perf_counter() - start
    start = time.perf_counter()
    for i, mesh in enumerate(meshes):
        shape_from_mesh(mesh, f"s{i}", args.points, seed=i)
    sample_s = time.perf_counter() - start
    faces = sum(len(m.faces) for m in meshes) / len(meshes)
    row = {"count": args.count, "generate_s": round(generate_s, 3),
           "sample_s": round(sample_s, 3), "mean_faces": round(faces)}
    if args.json:
        print(json.dumps(row))
    else:
        print(f"{args.count} swords: generate {generate_s:.2f} s, sample {args.points} points each "
              f"{sample_s:.2f} s, {faces:.0f} faces per sword on average")


if __name__ == "__main__":
    main()
