"""A worker machine's cache of dataset shards: content-addressed, shared by every job process
of the machine, bounded in size.

    <RODIN_CACHE_DIR>/<aa>/<sha256><suffix>   a shard (or any registered blob), checked
    <RODIN_CACHE_DIR>/locks/<sha256>          who is fetching it

A blob enters the cache once per machine: the fetching process holds the blob's lock
(`fcntl.flock`), so the other processes that want it wait and then find it; it is read from the
artifact store with its recorded sha256 checked (`ArtifactStore.get_bytes`), written under a
temporary name and linked into place (an existing copy wins: `os.link` never replaces), so a
reader never sees a partial file, and a crash leaves only a temporary file (removed by a later
eviction once it is an hour old). Each use touches the file's mtime; when the cache holds more
than `cap_bytes`, the least recently used files go first (never the one just asked for; a file
a reader holds open stays readable after its removal). A process checks each cached file's
sha256 once, the first time it uses it: a copy damaged on disk is removed and fetched again.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from orchestrator.artifacts import ArtifactStore
from orchestrator.settings import Settings

log = logging.getLogger(__name__)

#: A temporary file older than this is a crashed fetch's, removed at the next eviction.
STALE_TMP_S = 3600.0


@dataclass
class CacheCounters:
    """What this process's cache did: blobs and bytes fetched from the store, and hits."""

    fetched: int = 0
    fetched_bytes: int = 0
    hits: int = 0
    evicted: int = 0


@dataclass
class ShardCache:
    folder: Path
    cap_bytes: int
    store: ArtifactStore
    counters: CacheCounters = field(default_factory=CacheCounters)
    _checked: set[str] = field(default_factory=set)

    @classmethod
    def for_settings(cls, settings: Settings, store: ArtifactStore) -> ShardCache:
        return cls(settings.cache_folder, settings.cache_bytes, store)

    def _file(self, sha256: str, suffix: str) -> Path:
        return self.folder / sha256[:2] / f"{sha256}{suffix}"

    def path(self, uri: str, sha256: str) -> Path:
        """The local copy of a registered blob (fetched and checked if it is not there yet)."""
        if len(sha256) != 64 or not all(c in "0123456789abcdef" for c in sha256):
            raise ValueError(f"not a sha256: {sha256!r}")
        suffix = Path(self.store.relative(uri)).suffix
        target = self._file(sha256, suffix)
        if self._usable(target, sha256):
            self.counters.hits += 1
            return target
        with self._locked(sha256):
            if self._usable(target, sha256):  # another process fetched it while we waited
                self.counters.hits += 1
                return target
            data = self.store.get_bytes(uri, sha256)
            self._place(target, data)
            self._checked.add(sha256)
            self.counters.fetched += 1
            self.counters.fetched_bytes += len(data)
        self.evict(keep=target)
        return target

    def open(self, uri: str, sha256: str) -> IO[bytes]:
        """The blob's local copy, open for reading (it stays readable even if evicted)."""
        for _ in range(3):
            target = self.path(uri, sha256)
            try:
                return target.open("rb")
            except FileNotFoundError:  # evicted by another process in between: fetch again
                continue
        raise OSError(f"shard {uri} keeps leaving the cache at {self.folder}: raise RODIN_CACHE_BYTES")

    def read(self, uri: str, sha256: str) -> bytes:
        with self.open(uri, sha256) as fh:
            return fh.read()

    def _usable(self, target: Path, sha256: str) -> bool:
        """Present (and checked once by this process); marks it used. A damaged copy is removed."""
        try:
            os.utime(target)
        except FileNotFoundError:
            return False
        if sha256 not in self._checked:
            if _file_sha256(target) != sha256:
                log.warning("cached shard %s does not match its sha256: fetching it again", target)
                _unlink(target)
                return False
            self._checked.add(sha256)
        return True

    @contextmanager
    def _locked(self, sha256: str) -> Iterator[None]:
        locks = self.folder / "locks"
        locks.mkdir(parents=True, exist_ok=True)
        with open(locks / sha256, "a+b") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _place(self, target: Path, data: bytes) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(tmp, target)  # atomic, and never replaces: an existing copy wins
            except FileExistsError:
                pass
        finally:
            _unlink(tmp)

    def entries(self) -> list[tuple[Path, os.stat_result]]:
        """Every cached file with its stat (temporary and lock files left out)."""
        found: list[tuple[Path, os.stat_result]] = []
        if not self.folder.is_dir():
            return found
        for sub in self.folder.iterdir():
            if sub.name == "locks" or not sub.is_dir():
                continue
            for f in sub.iterdir():
                if ".tmp-" in f.name:
                    continue
                try:
                    found.append((f, f.stat()))
                except FileNotFoundError:
                    continue
        return found

    def size(self) -> int:
        return sum(st.st_size for _, st in self.entries())

    def evict(self, keep: Path | None = None) -> None:
        """Remove least recently used files until the cache holds at most `cap_bytes` (`keep`
        stays whatever its size), and crashed fetches' temporary files."""
        self._remove_stale_tmp()
        entries = sorted(self.entries(), key=lambda e: e[1].st_mtime)
        total = sum(st.st_size for _, st in entries)
        for f, st in entries:
            if total <= self.cap_bytes:
                break
            if keep is not None and f == keep:
                continue
            _unlink(f)
            total -= st.st_size
            self.counters.evicted += 1
            self._checked.discard(f.name.split(".")[0])

    def _remove_stale_tmp(self) -> None:
        now = time.time()
        for tmp in self.folder.glob("*/*.tmp-*"):
            try:
                if now - tmp.stat().st_mtime > STALE_TMP_S:
                    _unlink(tmp)
            except FileNotFoundError:
                continue


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
