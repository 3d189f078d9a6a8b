"""`rodin datasets add NAME URL --on-workers`: a collection every worker can read, ingested by the
queue's workers rather than the client.

The file list is split into parts of `part_size` files; each part is an ordinary `rodin.ingest`
job on the `infer` queue (any free worker, embedded default and Redis alike; leases, attempts
and the reaper as for any job), and one `rodin.assemble` job waits for all of them
(`jobs.submit(depends_on=[...])`) and registers the version. Nothing here reads a mesh.
Files are numbered in sorted order and the i-th is sampled with seed `seed + i`, as a client's
`datasets add` does, so both register the same points for the same files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from orchestrator import jobs
from orchestrator.errors import UserInputError
from orchestrator.job_states import JobKind
from orchestrator.kinds import AssembleParams, IngestParams
from orchestrator.settings import Settings

#: Files per part by default: enough to outweigh a job's start-up, few enough to spread.
PART_SIZE = 100


@dataclass(frozen=True)
class Queued:
    """The jobs of one ingest: its parts, in file order, and the assembly that waits for them."""

    parts: list[int]
    assemble: int
    files: int


def list_files(root: str) -> list[str]:
    """The mesh files under `root` (a folder, or an fsspec URL), relative to it, sorted; none
    or a root that cannot be listed is a UserInputError."""
    from atlas_core.mesh_io import is_mesh_file

    if "://" not in root or root.startswith("file://"):
        folder = Path(root.removeprefix("file://"))
        if not folder.is_dir():
            raise UserInputError(f"{root} is not a folder: --on-workers reads a folder every worker "
                                 "mounts, or a URL such as s3://bucket/prefix")
        found = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and is_mesh_file(p))
    else:
        import fsspec

        try:
            fs, path = fsspec.core.url_to_fs(root)
            prefix = path.rstrip("/") + "/"
            found = sorted(f.removeprefix(prefix) for f in fs.find(path) if is_mesh_file(Path(f)))
        except (OSError, ValueError, ImportError) as exc:
            raise UserInputError(f"cannot list {root}: {exc}") from None
    if not found:
        raise UserInputError(f"no mesh files under {root} (looked for .obj .stl .ply .off .glb .gltf)")
    return found


def queue(settings: Settings, name: str, root: str, files: list[str], *, points: int, seed: int,
          part_size: int = PART_SIZE) -> Queued:
    """Queue the parts and the assembly that registers NAME's next version once all succeed."""
    if part_size < 1:
        raise UserInputError(f"--part-size must be at least 1, got {part_size}")
    parts = []
    for start in range(0, len(files), part_size):
        chunk = files[start:start + part_size]
        params = IngestParams(root=root, files=chunk, seeds=[seed + start + i for i in range(len(chunk))],
                              points=points)
        parts.append(jobs.submit(settings, JobKind.ingest, params=params))
    assemble = jobs.submit(settings, JobKind.assemble, params=AssembleParams(name=name, root=root, parts=parts),
                           depends_on=parts)
    return Queued(parts, assemble, len(files))
