"""Dataset versions: checking a name, reading a folder of meshes into point clouds (or
generating a procedural family), registering the result (the point clouds as an artifact,
then the row), and reading versions back (summaries, pictures). No printing: the CLI shows
progress through the callbacks and prints what comes back.
"""

from __future__ import annotations

import hashlib
import re
import tempfile
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from orchestrator.artifacts import ArtifactError, ArtifactStore, StoredArtifact
from orchestrator.errors import RodinError, UserInputError
from orchestrator.registry.db import session_scope
from orchestrator.registry.models import Dataset
from orchestrator.registry.queries import dataset_summary, next_dataset_version, resolve_dataset
from orchestrator.settings import Settings

if TYPE_CHECKING:
    from atlas_core.data import Manifest, PointCloudSet, ShapeRows, ShardedPointClouds
    from atlas_core.mesh_io import Limits
    from orchestrator.ingest import Reading
    from orchestrator.shard_cache import ShardCache
    from orchestrator.spool import Spoolable, SpooledShapes

#: The registry's column width for dataset names.
MAX_NAME_CHARS = 128
#: Characters a terminal would act on rather than show (control characters, ANSI escapes,
#: newlines, bidirectional overrides), or that UTF-8 cannot store (lone surrogates).
_UNSHOWABLE = {"Cc", "Cf", "Cs", "Zl", "Zp"}


class NoUsableFiles(UserInputError):
    """Nothing under the path has a usable surface: the `--json` error object carries every
    file with its reason, as the table on stderr does."""

    def __init__(self, message: str, skipped: list[dict[str, str]]):
        super().__init__(message)
        self.json_fields = {"skipped": skipped}


def check_name(name: str) -> None:
    if not name or "@" in name or "/" in name or name.strip() != name:
        raise UserInputError(f"dataset name {name!r} must be non-empty, without '@', '/' or spaces")
    if any(unicodedata.category(c) in _UNSHOWABLE for c in name):
        raise UserInputError(f"dataset name {name!r} contains control or invisible characters; "
                             "use printable letters, digits and punctuation")
    if len(name) > MAX_NAME_CHARS:
        raise UserInputError(f"dataset name {name[:20]!r}... is {len(name)} characters long; "
                             f"use at most {MAX_NAME_CHARS}")


def generate(kind: str, count: int, seed: int, points: int,
             on_shape: Callable[[], None] | None = None) -> tuple[PointCloudSet, str]:
    """`count` shapes of a procedural family, and the source text the version records."""
    from atlas_core.families import family_names, family_source, generate_family

    if kind not in family_names():
        raise UserInputError(f"cannot generate {kind!r}: the procedural families are "
                             f"{', '.join(family_names())}")
    return generate_family(kind, count, seed, points, on_shape=on_shape), family_source(kind, count, seed)


def mesh_files(root: Path) -> list[Path]:
    from atlas_core.mesh_io import is_mesh_file

    if root.is_file():
        return [root]
    return sorted(p for p in root.rglob("*") if p.is_file() and is_mesh_file(p))


def shown_name(file: Path, root: Path) -> str:
    """How a file found under `root` is named to the user (the skip table, the stored and
    `--json` records): relative to the folder given, or its name when `root` is that file."""
    if file == root:
        return file.name
    try:
        return file.relative_to(root).as_posix()
    except ValueError:
        return str(file)


@dataclass
class Ingested:
    """What reading a folder gave: the usable shapes (on disk, `orchestrator.spool`; None when
    there are none) and the files skipped, with reasons; `cached` of the shapes came from the
    cache of shapes read before. A context manager: leaving it removes a temporary spool and
    prunes the cache to its bound, so register the shapes inside it."""

    shapes: SpooledShapes | None
    skipped: list[dict[str, str]]
    files: int
    cached: int = 0
    reading: Reading | None = None
    spool: tempfile.TemporaryDirectory[str] | None = None

    def __enter__(self) -> Ingested:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        from orchestrator.ingest import prune_cache

        if self.spool is not None:
            self.spool.cleanup()
            self.spool = None
        if self.reading is not None and self.reading.cache_dir is not None and self.reading.cache_bytes:
            prune_cache(self.reading.cache_dir, self.reading.cache_bytes)


def ingest(path: Path, points: int, seed: int, limits: Limits,
           on_start: Callable[[int], None] | None = None,
           on_file: Callable[[], None] | None = None,
           reading: Reading | None = None) -> Ingested:
    """Every mesh file under `path` (a file or a folder searched recursively) as a point cloud
    of `points` (the i-th file in sorted order sampled with seed `seed + i`); a file without a
    usable surface is skipped with its reason. The files are read by `reading.jobs` reader
    processes, each bounded in memory and time (`orchestrator.ingest`; default: the machine's
    cores and a temporary spool in place of the cache), which leave the points on disk. `on_start`
    hears how many files there are, `on_file` each one done. A missing path or one without mesh
    files is a UserInputError; nothing is registered here."""
    from orchestrator.ingest import Reading, default_jobs, read_files
    from orchestrator.spool import SpooledShapes

    if not path.exists():
        raise UserInputError(f"{path} does not exist: give a mesh file or a folder of meshes")
    files = mesh_files(path)
    if not files:
        raise UserInputError(f"no mesh files under {path} (looked for .obj .stl .ply .off .glb .gltf)")
    if on_start is not None:
        on_start(len(files))
    if reading is None:
        reading = Reading(jobs=default_jobs(), file_timeout_s=0, memory_bytes=0, cache_dir=None)
    spool = None
    if reading.cache_dir is None:
        spool = tempfile.TemporaryDirectory(prefix="rodin-spool-")
        reading = replace(reading, cache_dir=Path(spool.name), cache_bytes=0)
    try:
        outcomes = read_files(files, points, [seed + i for i in range(len(files))], limits, reading, on_file)
    except BaseException:
        if spool is not None:
            spool.cleanup()
        raise
    shapes, skipped = [], []
    for file, outcome in zip(files, outcomes):
        if outcome.shape is not None:
            shapes.append(outcome.shape)
        else:
            skipped.append({"file": shown_name(file, path), "reason": str(outcome.reason)})
    dedupe_names(shapes)
    return Ingested(SpooledShapes(shapes, points) if shapes else None, skipped, len(files),
                    cached=sum(o.cached for o in outcomes), reading=reading, spool=spool)


def dedupe_names(shapes: Sequence[Spoolable]) -> None:
    """Same stems in different folders get a short path hash so names stay unique."""
    seen: dict[str, int] = {}
    for shape in shapes:
        seen[shape.name] = seen.get(shape.name, 0) + 1
    for shape in shapes:
        if seen[shape.name] > 1:
            shape.name = f"{shape.name}-{hashlib.sha256(shape.source_sha256.encode()).hexdigest()[:6]}"


def register_dataset(settings: Settings, store: ArtifactStore, name: str, data: ShapeRows,
                     source: str, skipped: list[dict[str, str]], shard_bytes: int | None = None,
                     on_shard: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Store the clouds as shards and their manifest (`store_shards`), then the row (the next
    version of `name`), which points at the manifest; a failure before the commit registers
    nothing. Returns the dataset's summary."""
    blob, manifest = store_shards(store, data, shard_bytes, on_shard)
    with session_scope(settings) as s:
        row = Dataset(
            name=name, version=next_dataset_version(s, name),
            content_sha256=manifest.content_sha256, shape_count=len(data),
            points_per_shape=data.points_per_shape, source=source, skipped=skipped,
            artifact_uri=blob.uri, artifact_sha256=blob.sha256,
        )
        s.add(row)
        s.flush()
        return dataset_summary(row)


def store_shards(store: ArtifactStore, data: ShapeRows, shard_bytes: int | None = None,
                 on_shard: Callable[[int, int], None] | None = None) -> tuple[StoredArtifact, Manifest]:
    """Write `data` as shards of at most about `shard_bytes` (atlas_core.data.SHARD_BYTES by
    default; each an `.npz` PointCloudSet, content-addressed), one in memory at a time, then
    their manifest (JSON, whose sha256 the dataset row records). Shards first: a manifest never
    lists a missing shard. `on_shard` hears (shapes stored so far, shapes in all) per shard."""
    from atlas_core.data import SHARD_BYTES, Manifest, Shard, content_sha256, shard_sets

    shards = []
    done = 0
    for part in shard_sets(data, shard_bytes or SHARD_BYTES):
        blob = store.put_bytes(part.to_bytes(), ".npz")
        shards.append(Shard(uri=store.relative(blob.uri), sha256=blob.sha256, bytes=blob.size,
                            names=tuple(part.names), source_sha256=tuple(part.source_sha256)))
        done += len(part)
        del part, blob  # the next shard replaces this one in memory, not beside it
        if on_shard is not None:
            on_shard(done, len(data))
    manifest = Manifest(data.points_per_shape, content_sha256(data.names, data.source_sha256), tuple(shards))
    return store.put_bytes(manifest.to_bytes(), ".json"), manifest


def read_manifest(store: ArtifactStore, uri: str, sha256: str,
                  cache: ShardCache | None = None) -> Manifest | None:
    """A version's manifest (sha256 checked), or None for a version stored before shards (one
    `.npz` blob, not read here: its first byte tells; a bundle import may have named a manifest
    `.npz`)."""
    from atlas_core.data import Manifest, ManifestError, is_manifest

    if not is_manifest(store.head(uri, 1)):
        return None
    data = cache.read(uri, sha256) if cache is not None else store.get_bytes(uri, sha256)
    if not is_manifest(data):
        return None
    try:
        return Manifest.from_bytes(data)
    except ManifestError as exc:
        raise ArtifactError(f"dataset artifact {uri}: {exc}") from None


def open_version(store: ArtifactStore, uri: str, sha256: str,
                 cache: ShardCache | None = None) -> PointCloudSet | ShardedPointClouds:
    """A stored version to read: sharded (each shard read when asked, through `cache` when
    given, else from the store, its sha256 checked either way), or a version stored before
    shards as one PointCloudSet in memory. A shard that does not match its sha256 is refused
    with one line naming it (ArtifactError)."""
    from atlas_core.data import PointCloudSet, Shard, ShardedPointClouds

    manifest = read_manifest(store, uri, sha256, cache)
    if manifest is None:
        blob = cache.read(uri, sha256) if cache is not None else store.get_bytes(uri, sha256)
        return PointCloudSet.from_bytes(blob)

    def open_shard(shard: Shard) -> Any:
        shard_uri = store.uri_of(shard.uri)
        if cache is not None:
            return cache.open(shard_uri, shard.sha256)
        return store.get_bytes(shard_uri, shard.sha256)

    return ShardedPointClouds(manifest, open_shard)


def load_version(store: ArtifactStore, uri: str, sha256: str, cache: ShardCache | None = None,
                 max_shapes: int | None = None) -> PointCloudSet:
    """A stored version in memory (its first `max_shapes` shapes, when given, of a sharded one;
    its shards are stored in a shuffled order, so those are a fair sample)."""
    from atlas_core.data import PointCloudSet, concatenate

    version = open_version(store, uri, sha256, cache)
    if isinstance(version, PointCloudSet):
        return version
    parts: list[PointCloudSet] = []
    for b in range(len(version.blocks())):
        if max_shapes is not None and sum(len(p) for p in parts) >= max_shapes:
            break
        parts.append(version.read_set(b))
    whole = concatenate(parts)
    return whole if max_shapes is None or len(whole) <= max_shapes else whole.subset(range(max_shapes))


def storage(store: ArtifactStore, uri: str, sha256: str) -> dict[str, Any]:
    """How a version is stored: {"storage": "shards" or "one blob", "shards": n, "stored_bytes":
    the shards' bytes (or the one blob's), "manifest_bytes": the manifest's (0 for one blob)}."""
    manifest = read_manifest(store, uri, sha256)
    if manifest is None:
        return {"storage": "one blob", "shards": 1, "stored_bytes": store.size(uri), "manifest_bytes": 0}
    return {"storage": "shards", "shards": len(manifest.shards), "stored_bytes": manifest.stored_bytes,
            "manifest_bytes": store.size(uri)}


def shard_uris(settings: Settings, store: ArtifactStore) -> set[str]:
    """The URIs of every registered version's shards (what `rodin gc` must keep besides the rows'
    own artifacts). A manifest that cannot be read is an error: collecting then could delete
    shards a version needs."""
    uris: set[str] = set()
    with session_scope(settings) as s:
        rows = s.execute(select(Dataset.name, Dataset.version, Dataset.artifact_uri,
                                Dataset.artifact_sha256)).all()
    for name, version, uri, sha256 in rows:
        try:
            manifest = read_manifest(store, uri, sha256)
        except ArtifactError as exc:
            raise RodinError(f"cannot read the manifest of dataset {name}@{version} ({exc}); "
                             "nothing was collected") from None
        if manifest is not None:
            uris.update(store.uri_of(shard.uri) for shard in manifest.shards)
    return uris


def list_datasets(settings: Settings) -> list[dict[str, Any]]:
    """Every dataset version's summary, by name, newest version first."""
    with session_scope(settings) as s:
        return [dataset_summary(d) for d in
                s.scalars(select(Dataset).order_by(Dataset.name, Dataset.version.desc()))]


def get(settings: Settings, ref: str, store: ArtifactStore | None = None) -> dict[str, Any]:
    """One version's summary by NAME (its newest) or NAME@V; unknown: the one-line error. With
    the store, how it is stored too (`storage`: shard count and bytes)."""
    with session_scope(settings) as s:
        dataset = resolve_dataset(s, ref)
        summary, uri, sha256 = dataset_summary(dataset), dataset.artifact_uri, dataset.artifact_sha256
    if store is not None:
        try:
            summary.update(storage(store, uri, sha256))
        except ArtifactError as exc:
            raise RodinError(f"cannot read dataset {summary['ref']}: {exc}") from None
    return summary


def pictures(settings: Settings, store: ArtifactStore, ref: str) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The version's summary, and its thumbnail sheet (the first 100 shapes) and size histogram
    as PNG bytes ({"shapes", "sizes"}), drawn from the cached point clouds (sha256 checked).
    numpy and matplotlib only (no torch)."""
    import numpy as np

    from atlas_core.data import PointCloudSet, concatenate
    from atlas_core.render import render_shape_sheet, render_size_histogram

    with session_scope(settings) as s:
        dataset = resolve_dataset(s, ref)
        summary, uri, sha256 = dataset_summary(dataset), dataset.artifact_uri, dataset.artifact_sha256
    try:
        summary.update(storage(store, uri, sha256))
        version = open_version(store, uri, sha256)
        if isinstance(version, PointCloudSet):
            data, scales = version, version.scales
        else:  # shard by shard: the first 100 shapes and every shape's size, one shard in memory
            shown: list[PointCloudSet] = []
            sizes = []
            for b in range(len(version.blocks())):
                part = version.read_set(b)
                sizes.append(part.scales)
                if sum(len(p) for p in shown) < 100:
                    shown.append(part.subset(range(min(len(part), 100 - sum(len(p) for p in shown)))))
            data, scales = concatenate(shown), np.concatenate(sizes)
    except ArtifactError as exc:
        raise RodinError(f"cannot draw dataset {summary['ref']}: {exc}") from None
    return summary, {
        "shapes": render_shape_sheet(data.points, data.names, summary["ref"], normals=data.normals),
        "sizes": render_size_histogram(scales, summary["ref"]),
    }


def plot_stem(name: str, version: int) -> str:
    """`<name>-v<version>` as a file name: characters a file system may refuse become '_'."""
    safe = re.sub(r"[^\w.+-]+", "_", name).strip(".") or "dataset"
    return f"{safe}-v{version}"
