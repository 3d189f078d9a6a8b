"""What a model bundle is: the format's names, the verified :class:`Bundle`, why one is refused,
and the one JSON encoding and the hashes that its checks use."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from orchestrator.errors import UserInputError
from orchestrator.registry.db import as_utc

FORMAT, FORMAT_VERSION = "rodin-model-bundle", 1
MANIFEST = "manifest.json"
HEX64 = re.compile(r"[0-9a-f]{64}")
BLOB_MEMBER = re.compile(r"blobs/([0-9a-f]{64})")


class BundleError(UserInputError):
    """A bundle that cannot be imported: tampered, truncated, or not a rodin bundle."""


@dataclass(frozen=True)
class Bundle:
    """A bundle read and verified: its manifest, its blobs by sha256, the archive's sha256."""

    manifest: dict[str, Any]
    blobs: dict[str, bytes]
    sha256: str

    @property
    def model(self) -> dict[str, Any]:
        return self.manifest["models"][0]

    def dataset(self, dataset_id: int) -> dict[str, Any]:
        return next(d for d in self.manifest["datasets"] if d["id"] == dataset_id)

    def blob_of(self, role: str) -> dict[str, Any] | None:
        return next((b for b in self.manifest["blobs"] if b["role"] == role), None)


class Invalid(Exception):
    """Why a bundle is refused (the caller adds the file's name)."""


def canonical(obj: Any) -> bytes:
    """The one JSON encoding of a manifest that its hash is taken over."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False, default=str).encode()


def records_sha256(manifest: dict[str, Any]) -> str:
    """The hash a manifest records of itself: over all of it but `records_sha256`."""
    return sha256_of(canonical({k: v for k, v in manifest.items() if k != "records_sha256"}))


def sha256_of(data: bytes) -> str:
    """The sha256 of `data` in hex."""
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: Path) -> str:
    """The sha256 of a file in hex, read a MiB at a time (a bundle may hold gigabytes)."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def parse_time(text: str) -> datetime:
    """A manifest's ISO 8601 time, or the refusal of the bundle."""
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise Invalid(f"time {text[:40]!r} is not ISO 8601") from None


def iso(moment: datetime | None) -> str | None:
    """A registry time as ISO 8601 in UTC (None stays None)."""
    moment = as_utc(moment)
    return moment.isoformat() if moment is not None else None
