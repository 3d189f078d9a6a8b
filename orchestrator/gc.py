"""Artifacts that no registry row references: what a crash between "blob written" and "row
committed" leaves behind (a checkpoint, an upload of a refused job, a killed worker's plot).

Writers put the blob first and the row second, so a blob younger than the grace period may
still be about to be referenced: it is never collected.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import select

from orchestrator.artifacts import ArtifactStore
from orchestrator.registry.db import session_scope
from orchestrator.registry.models import Dataset, Job, ModelCheckpoint
from orchestrator.settings import Settings

#: Blobs younger than this are never collected (a write in progress).
GRACE_S = 3600.0


@dataclass(frozen=True)
class Orphan:
    uri: str
    size: int
    age_s: float


def referenced_uris(settings: Settings) -> set[str]:
    """Every artifact URI a registry row points at."""
    with session_scope(settings) as s:
        uris = set(s.scalars(select(Dataset.artifact_uri)))
        uris |= set(s.scalars(select(ModelCheckpoint.artifact_uri)))
        for outputs, params in s.execute(select(Job.outputs, Job.params)):
            uris |= {o["uri"] for o in outputs or [] if isinstance(o, dict) and "uri" in o}
            inputs = (params or {}).get("inputs", []) if isinstance(params, dict) else []
            uris |= {i["uri"] for i in inputs if isinstance(i, dict) and "uri" in i}
    return uris


def _modified(info: dict[str, Any]) -> datetime | None:
    """A listing entry's modification time, local (`mtime`) or object store (`LastModified`)."""
    value = info.get("mtime", info.get("LastModified", info.get("last_modified")))
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(value, timezone.utc)
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    return None


def kept_uris(settings: Settings, store: ArtifactStore) -> set[str]:
    """Every artifact the registry needs: those a row points at, and the shards their
    dataset manifests list."""
    from orchestrator.datasets import shard_uris

    return referenced_uris(settings) | shard_uris(settings, store)


def find_orphans(settings: Settings, store: ArtifactStore, grace_s: float = GRACE_S) -> list[Orphan]:
    """Blobs under the store's `sha256/` folder that the registry does not need (`kept_uris`),
    older than `grace_s`."""
    referenced = kept_uris(settings, store)
    root = f"{store.root.rstrip('/')}/sha256"
    if not store.fs.exists(root):
        return []
    now = datetime.now(timezone.utc)
    orphans = []
    for path, info in sorted(store.fs.find(root, detail=True).items()):
        uri = store.fs.unstrip_protocol(path)
        if uri in referenced:
            continue
        modified = _modified(info)
        age = (now - modified).total_seconds() if modified else 0.0
        if modified is not None and age >= grace_s:
            orphans.append(Orphan(uri, int(info.get("size") or 0), age))
    return orphans


def delete(store: ArtifactStore, orphans: list[Orphan]) -> None:
    for orphan in orphans:
        store.fs.rm_file(store.fs._strip_protocol(orphan.uri))
