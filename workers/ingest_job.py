"""Collections read by the workers (`rodin datasets add NAME URL --on-workers`).

A part (`rodin.ingest`) reads its files, from a folder every worker mounts or an fsspec URL
(`s3://bucket/prefix`), with the per-file limits of a client's `datasets add` (size, inflated
bytes, faces, the memory a parse would need): a file that cannot be used is skipped with its
reason. The files are read in the job process itself (a Celery job process may not start
processes of its own): a file that hangs it is the liveness watch's (RODIN_PROGRESS_TIMEOUT_S),
one that kills it costs the part an attempt, and a part that fails RODIN_MAX_ATTEMPTS times
fails the assembly with the reason. Its shapes go to the store as one point-cloud set. The assembly
(`rodin.assemble`) waits for every part (`jobs.submit(depends_on=[...])`); once all have
succeeded it registers the version from their shapes, in file order, so a part that failed or
was cancelled registers nothing and the assembly fails naming it.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any

from orchestrator import jobs
from orchestrator.artifacts import ArtifactStore
from orchestrator.errors import RegistryInvariantError, RodinError
from orchestrator.job_states import JobStatus
from orchestrator.kinds import AssembleParams, IngestParams
from orchestrator.registry.db import session_scope
from orchestrator.registry.models import Job
from orchestrator.settings import Settings, mesh_limits
from workers import liveness

log = logging.getLogger(__name__)


def _params(settings: Settings, job_id: int, kind: type[Any]) -> Any:
    with session_scope(settings) as s:
        job = s.get(Job, job_id)
        if job is None:
            raise RegistryInvariantError(f"job {job_id} is not in the registry")
        return kind.from_json(job.params)


def is_url(root: str) -> bool:
    """A URL (read through fsspec) rather than a folder every worker mounts."""
    return "://" in root and not root.startswith("file://")


def _local_copies(root: str, files: list[str], folder: Path) -> list[Path]:
    """The part's files as local paths: in place under a mounted folder, else each fetched
    into `folder` (keeping its name, whose suffix says its format)."""
    if not is_url(root):
        base = Path(root.removeprefix("file://"))
        if not base.is_dir():  # not mounted here: this worker cannot do the part
            raise RodinError(f"{root} is not a folder this worker can read: --on-workers needs it "
                             "mounted at the same path on every worker")
        return [base / f for f in files]
    import fsspec

    paths = []
    for i, name in enumerate(files):
        target = folder / f"{i:06d}" / PurePosixPath(name).name  # its own name: the shape's name
        target.parent.mkdir()
        with fsspec.open(f"{root.rstrip('/')}/{name}", "rb") as src, target.open("wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
                liveness.tick()
        paths.append(target)
    return paths


def run_ingest(settings: Settings, store: ArtifactStore, lease: jobs.Lease, device: str) -> None:
    """Read one part's files; store their shapes (if any) and the skipped files' reasons."""
    from atlas_core.data import PointCloudSet

    params: IngestParams = _params(settings, lease.job_id, IngestParams)
    done = 0

    def one_more() -> None:
        nonlocal done
        done += 1
        liveness.tick()
        jobs.report_progress(settings, lease, {"done": done, "total": len(params.files)})

    from atlas_core.mesh_io import MeshError, ingest_file

    limits = mesh_limits(settings)
    shapes, skipped = [], []
    with tempfile.TemporaryDirectory(prefix="rodin-ingest-") as tmp:
        paths = _local_copies(params.root, params.files, Path(tmp))
        for name, path, seed in zip(params.files, paths, params.seeds):
            try:
                shapes.append(ingest_file(path, n_points=params.points, seed=seed, limits=limits))
            except MeshError as exc:
                skipped.append({"file": name, "reason": str(exc)})
            one_more()
    outputs = []
    if shapes:
        blob = store.put_bytes(PointCloudSet.from_shapes(shapes).to_bytes(), ".npz")
        outputs.append({"kind": "shapes", "name": f"part-{lease.job_id}.npz", "uri": blob.uri,
                        "sha256": blob.sha256})
    jobs.finish(settings, lease.job_id, JobStatus.succeeded, lease=lease, outputs=outputs,
                result={"files": len(params.files), "shapes": len(shapes), "skipped": skipped})


def run_assemble(settings: Settings, store: ArtifactStore, lease: jobs.Lease, device: str) -> None:
    """Register the version from every part's shapes, in file order (all parts succeeded: the
    job service sends this job only then). Each part's shapes are spooled to a local folder
    (`orchestrator.spool`) before the next part is read, so that this job holds one part and
    one shard in memory, whatever the collection's size."""
    from atlas_core.data import PointCloudSet
    from atlas_core.mesh_io import Shape
    from orchestrator.datasets import dedupe_names, register_dataset
    from orchestrator.spool import Spoolable, SpooledShape, SpooledShapes, write_entry

    params: AssembleParams = _params(settings, lease.job_id, AssembleParams)
    shapes: list[Spoolable] = []
    skipped: list[dict[str, str]] = []
    files = points = 0
    with tempfile.TemporaryDirectory(prefix="rodin-assemble-") as tmp:
        for part_id in params.parts:
            part = jobs.get(settings, part_id)
            if part.status is not JobStatus.succeeded:  # never sent otherwise; a registry edited by hand
                raise RodinError(f"part job {part_id} is {part.status.value}: nothing registered")
            result = part.result or {}
            files += int(result.get("files", 0))
            skipped += list(result.get("skipped", []))
            for out in part.outputs:
                if out.get("kind") != "shapes":
                    continue
                data = PointCloudSet.from_bytes(store.get_bytes(out["uri"], out["sha256"]))
                points = data.points_per_shape
                for i in range(len(data)):
                    shape = Shape(data.names[i], data.points[i], data.normals[i], data.centers[i],
                                  float(data.scales[i]), data.source_sha256[i])
                    key = f"{part_id}-{i}"
                    entry = write_entry(Path(tmp), key, shape)
                    shapes.append(shape if entry is None else
                                  SpooledShape(shape.name, shape.source_sha256, str(entry), key))
                del data
            liveness.tick()
        if not shapes:
            raise RodinError(f"none of the {files} files under {params.root} has a usable surface; "
                             f"nothing registered ({len(skipped)} skipped: `rodin status JOB` on a part says why)")
        dedupe_names(shapes)
        summary = register_dataset(settings, store, params.name, SpooledShapes(shapes, points),
                                   params.root, skipped, on_shard=lambda done, total: liveness.tick())
    jobs.finish(settings, lease.job_id, JobStatus.succeeded, lease=lease,
                result={"dataset": summary, "files": files, "skipped": skipped})
