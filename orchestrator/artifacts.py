"""Content-addressed artifact store behind an fsspec URL.

Blobs live at `<root>/sha256/<aa>/<full sha256><suffix>`: equal bytes are stored once, and a
reader can always check that what it got is what the registry recorded.

The root is any fsspec URL: a local folder (the embedded default), a folder on a mount that
every machine shares at the same path (`file:///mnt/shared/rodin`), or an object store
(`s3://bucket/prefix`, with `endpoint_url` for MinIO and other S3-compatible servers).
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec

from orchestrator import waiting
from orchestrator.errors import RodinError

log = logging.getLogger(__name__)


#: errno of a refused write -> (what happened, what to do).
_REFUSALS = {
    errno.ENOSPC: ("the store is full", "free space there or point RODIN_ARTIFACTS_URL elsewhere"),
    errno.EDQUOT: ("the store's quota is used up", "free space there or point RODIN_ARTIFACTS_URL elsewhere"),
    errno.EROFS: ("the store is read-only", "mount it read-write"),
    errno.EACCES: ("permission denied", "give this user write access"),
    errno.EPERM: ("permission denied", "give this user write access"),
}


class ArtifactError(RuntimeError):
    pass


#: A temporary file's name after the blob's: `.tmp-<pid>@<host>-<uuid>`. The writer's pid and
#: machine let a worker remove what a job process it saw die left half-written
#: (`ArtifactStore.remove_dead_writers`), instead of leaving it for `rodin gc` an hour later.
_TMP = re.compile(r"\.tmp-(\d+)@(.+)-[0-9a-f]{32}$")


def _tmp_name(path: str) -> str:
    return f"{path}.tmp-{os.getpid()}@{socket.gethostname()}-{uuid.uuid4().hex}"


#: Temporary files this process could not remove when their write failed (a store gone
#: read-only refuses the removal too): tried again at the next write.
_left_behind: set[str] = set()
_left_lock = threading.Lock()


@dataclass(frozen=True)
class StoredArtifact:
    uri: str
    sha256: str
    size: int

    def as_dict(self) -> dict[str, object]:
        return {"uri": self.uri, "sha256": self.sha256, "size": self.size}


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def safe_name(name: object) -> str:
    """The file name to write for a name taken from a registry row (a job's input or output).

    A row may have been written by anyone who can reach the registry, so its name is treated as
    hostile: only its last path component is kept (no folder, no `..`, no absolute path), and
    names that cannot be a file name at all raise ValueError with a one-line reason.
    """
    if not isinstance(name, str):
        raise ValueError(f"file name {name!r} is not text")
    if any(ord(c) < 32 or 127 <= ord(c) < 160 for c in name):
        raise ValueError(f"file name {name!r} contains NUL or control characters")
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    if base in ("", ".", ".."):
        raise ValueError(f"file name {name!r} names no file (empty, '.' or '..')")
    if len(base.encode("utf-8", "surrogatepass")) > 255:
        raise ValueError(f"file name {base[:40]!r}... is longer than 255 bytes")
    return base


class ArtifactStore:
    def __init__(self, root_url: str, storage_options: dict[str, object] | None = None,
                 write_retry_s: float = 0.0):
        self.root_url = root_url.rstrip("/")
        self.write_retry_s = write_retry_s
        options = dict(storage_options or {})
        if self.root_url.startswith(("s3://", "s3a://")) and "endpoint_url" in options:
            # s3fs takes the endpoint among the botocore client's arguments.
            options.setdefault("client_kwargs", {})["endpoint_url"] = options.pop("endpoint_url")  # type: ignore[index]
        try:
            self.fs, self.root = fsspec.core.url_to_fs(self.root_url, **options)
        except ImportError as exc:
            raise ArtifactError(
                f"artifact store {self.root_url} needs a package that is not installed "
                f"({exc}); for s3:// install s3fs: pip install 'rodin[s3]'"
            ) from None
        protocols = self.fs.protocol if isinstance(self.fs.protocol, (tuple, list)) else (self.fs.protocol,)
        self._protocols = tuple(protocols)
        #: A local or mounted folder: write beside, then rename. Object stores put atomically.
        self._rename_into_place = bool({"file", "local"} & set(self._protocols))

    def _path(self, sha256: str, suffix: str) -> str:
        return f"{self.root}/sha256/{sha256[:2]}/{sha256}{suffix}"

    def _uri(self, path: str) -> str:
        return self.fs.unstrip_protocol(path)

    def put_bytes(self, data: bytes, suffix: str = "") -> StoredArtifact:
        """Store `data` (idempotent) and return where it lives.

        A write the store refuses (full, read-only) is tried again with backoff for
        `write_retry_s` seconds (0 for a client, which should hear at once; a worker rides out
        a store that comes back), then raises ArtifactError naming the store and the blob.
        """
        digest = sha256_bytes(data)
        path = self._path(digest, suffix)
        deadline, pause = time.monotonic() + self.write_retry_s, 0.5
        while True:
            try:
                if not self.fs.exists(path):
                    self._write(path, data)
                return StoredArtifact(self._uri(path), digest, len(data))
            except ArtifactError as exc:
                if time.monotonic() + pause > deadline:
                    raise
                log.warning("%s; trying again in %.1f s", exc, pause)
                waiting.waiting()
                time.sleep(pause)
                pause = min(pause * 2, 10.0)

    def _write(self, path: str, data: bytes) -> None:
        if self._rename_into_place:
            self._write_beside_and_rename(path, data)
            return
        # One PUT: an object appears whole or not at all (a copy+delete "move" would only
        # double the traffic).
        try:
            self.fs.pipe_file(path, data)
        except OSError as exc:
            raise self._write_error(path, len(data), exc) from None

    def _write_beside_and_rename(self, path: str, data: bytes) -> None:
        """Write beside and move into place, so that a crash never leaves a partial blob under
        the content address (two writers of equal bytes both succeed); a write that fails
        (store full, read-only) removes its temporary file at once."""
        self._remove_left_behind()
        tmp = _tmp_name(path)
        try:
            self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
            with self.fs.open(tmp, "wb") as fh:
                fh.write(data)
            self.fs.mv(tmp, path)
        except OSError as exc:
            self._remove_tmp(tmp)
            raise self._write_error(path, len(data), exc) from None

    def _remove_tmp(self, tmp: str) -> None:
        try:
            self.fs.rm_file(tmp)
        except FileNotFoundError:
            pass  # never created
        except OSError:
            with _left_lock:  # the store refuses even that (read-only): try at the next write
                _left_behind.add(tmp)

    def _remove_left_behind(self) -> None:
        with _left_lock:
            pending = list(_left_behind)
            _left_behind.clear()
        for tmp in pending:
            self._remove_tmp(tmp)

    def remove_dead_writers(self, alive: Callable[[int], bool]) -> list[str]:
        """Remove the temporary files that processes of this machine left when they died
        mid-write (a job process killed outright); return their paths.

        Raises ArtifactError, after removing what it could, when the store refuses a removal
        (read-only for now). Only writers on this machine are judged (`alive(pid)` says whether one still runs):
        another machine's half-written file stays for that machine's workers or `rodin gc`.
        An object store has no temporary files (one PUT), so nothing is looked at there.
        """
        if not self._rename_into_place:
            return []
        here = socket.gethostname()
        removed, refused = [], []
        for tmp in self.fs.glob(f"{self.root}/sha256/*/*.tmp-*"):
            found = _TMP.search(tmp)
            if found is None or found.group(2) != here or alive(int(found.group(1))):
                continue
            try:
                self.fs.rm_file(tmp)
                removed.append(tmp)
            except FileNotFoundError:
                continue
            except OSError as exc:
                refused.append(f"{tmp} ({exc.strerror or exc})")
        if refused:
            raise ArtifactError(f"could not remove {len(refused)} temporary file(s) of dead "
                                f"writers from {self.root_url}: {refused[0]}")
        return removed

    def _write_error(self, path: str, size: int, exc: OSError) -> ArtifactError:
        """A failed write as one line: which store, which blob, and what to do."""
        why, fix = _REFUSALS.get(exc.errno or 0, (exc.strerror or str(exc), "check the store"))
        return ArtifactError(f"could not write {size} bytes to the artifact store at "
                             f"{self.root_url} ({self._uri(path)}): {why}; {fix}")

    def _local_path(self, uri: str) -> str:
        """The store's path for a recorded URI.

        A URI comes from a registry row, which is not proof that it points into this store:
        one of another kind of store, outside the root (`file:///etc/passwd`, another bucket or
        prefix) or with `..` in it is refused, so a row can never make rodin read other files.
        """
        protocol, _ = fsspec.core.split_protocol(uri)
        if (protocol or "file") not in self._protocols:
            raise ArtifactError(f"artifact {uri} is not in the store at {self.root_url}")
        path = self.fs._strip_protocol(uri)
        root = self.root.rstrip("/")
        if ".." in path.split("/") or not path.startswith(f"{root}/"):
            raise ArtifactError(f"artifact {uri} is not in the store at {self.root_url}")
        return path

    def get_bytes(self, uri: str, sha256: str) -> bytes:
        """Read a registered artifact, refusing bytes that do not match its recorded sha256."""
        path = self._local_path(uri)
        try:
            data = self.fs.cat_file(path)
        except FileNotFoundError:
            raise ArtifactError(f"artifact {uri} is missing from the store") from None
        if sha256_bytes(data) != sha256:
            raise ArtifactError(
                f"artifact {uri} does not match its recorded sha256 (tampered or corrupt)"
            )
        return data

    def exists(self, uri: str) -> bool:
        return self.fs.exists(self._local_path(uri))

    def size(self, uri: str) -> int:
        """A stored artifact's bytes, without reading it."""
        try:
            return int(self.fs.size(self._local_path(uri)))
        except FileNotFoundError:
            raise ArtifactError(f"artifact {uri} is missing from the store") from None

    def head(self, uri: str, n: int) -> bytes:
        """An artifact's first `n` bytes, unchecked (what kind of file it is; read it whole with
        get_bytes to use it)."""
        try:
            with self.fs.open(self._local_path(uri), "rb") as fh:
                return bytes(fh.read(n))
        except FileNotFoundError:
            raise ArtifactError(f"artifact {uri} is missing from the store") from None

    def relative(self, uri: str) -> str:
        """A stored artifact's address relative to the store's root (`sha256/ab/ab12....npz`):
        what a dataset manifest records for its shards, so that it holds wherever the store is."""
        return self._local_path(uri)[len(self.root.rstrip("/")) + 1:]

    def uri_of(self, relative: str) -> str:
        """The URI of an address given relative to the store's root (read back with its sha256
        as any other; `..` and absolute paths are refused as for any recorded URI)."""
        uri = self._uri(f"{self.root.rstrip('/')}/{relative}")
        self._local_path(uri)
        return uri


def open_store(settings=None, *, write_retry_s: float = 0.0) -> ArtifactStore:
    from orchestrator.settings import load_settings

    settings = settings or load_settings()
    return ArtifactStore(settings.artifact_root, settings.storage_options, write_retry_s)


def download(store: ArtifactStore, outputs: list[dict[str, Any]], folder: Path,
             kinds: set[str] | None = None) -> list[str]:
    """Copy a job's output artifacts (of `kinds`, or all; each checked against its sha256) into
    `folder`; returns their paths.

    Output names come from the job's row, so each is reduced to a plain file name first: a row
    must never make the client write outside `folder`."""
    chosen = [out for out in outputs if kinds is None or out.get("kind") in kinds]
    names = []
    for out in chosen:  # every name is checked before anything is written
        try:
            names.append(safe_name(out.get("name")))
        except ValueError as exc:
            raise RodinError(f"job output not saved to {folder}: {exc}") from None
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for out, name in zip(chosen, names):
        target = folder / name
        target.write_bytes(store.get_bytes(out["uri"], out["sha256"]))
        paths.append(str(target))
    return paths
