"""Registering a dataset version: the point clouds as an artifact, then the row."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from orchestrator.artifacts import ArtifactStore
from orchestrator.registry.db import session_scope
from orchestrator.registry.models import Dataset
from orchestrator.registry.queries import dataset_summary, next_dataset_version
from orchestrator.settings import Settings

if TYPE_CHECKING:
    from atlas_core.data import PointCloudSet


def register_dataset(settings: Settings, store: ArtifactStore, name: str, data: PointCloudSet,
                     source: str, skipped: list[dict[str, str]]) -> dict[str, Any]:
    """Store the clouds, then the row (the next version of `name`); a failure before the commit
    registers nothing. Returns the dataset's summary."""
    blob = store.put_bytes(data.to_bytes(), ".npz")
    with session_scope(settings) as s:
        row = Dataset(
            name=name, version=next_dataset_version(s, name),
            content_sha256=data.content_sha256(), shape_count=len(data),
            points_per_shape=data.points_per_shape, source=source, skipped=skipped,
            artifact_uri=blob.uri, artifact_sha256=blob.sha256,
        )
        s.add(row)
        s.flush()
        return dataset_summary(row)
