"""References to registered artifacts that a job reads, taken out of a registry session."""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.artifacts import ArtifactStore
from orchestrator.registry.models import Dataset, ModelCheckpoint


@dataclass(frozen=True)
class Blob:
    """A registered artifact: its row id, where it lives and the sha256 it must match."""

    id: int
    uri: str
    sha256: str

    def read(self, store: ArtifactStore) -> bytes:
        return store.get_bytes(self.uri, self.sha256)

    @classmethod
    def of_model(cls, model: ModelCheckpoint) -> Blob:
        return cls(model.id, model.artifact_uri, model.sha256)

    @classmethod
    def of_dataset(cls, dataset: Dataset) -> Blob:
        return cls(dataset.id, dataset.artifact_uri, dataset.artifact_sha256)
