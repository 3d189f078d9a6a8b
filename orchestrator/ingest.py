"""Reading many mesh files at once, each in a process of its own, with a cache of the results.

`read_files` hands files to `jobs` long-lived reader processes, one file at a time each. A
reader holds every per-file limit of `atlas_core.mesh_io` (bytes, inflated bytes, faces), and
two that only a separate process can: its memory (RLIMIT_AS = RODIN_INGEST_MEMORY_BYTES; a file
whose stated counts need more is refused before it is parsed, and a MemoryError during a parse
is that file's reason), and time (a reader past RODIN_INGEST_FILE_TIMEOUT_S on one file is
killed). A reader that dies (a crash, the system's out-of-memory killer, a timeout) costs only
its file, which is reported with the reason; a fresh reader takes the rest. Results come back
in file order, so the outcome does not depend on `jobs`.

Readers are forked from multiprocessing's fork server (spawned once per client, with the mesh
libraries imported), never from the client itself, which may hold threads and open
connections; where there is no fork server, they are spawned.

Each shape read is kept in a content-addressed cache on the client (`RODIN_HOME/ingest-cache/
<key>.shape`, apart from the workers' shard cache; key = sha256 of the file's content hash, the
points per shape, the file's seed and the reading code's version), written atomically and
checked when read back (`orchestrator/spool.py`), so an ingest that was interrupted, or a
folder ingested again, reads only what it has not read before. A reader sends the client the
entry, not the points: the client registers the version a shard at a time from the entries,
and its memory does not grow with the number of files.
"""

from __future__ import annotations

import hashlib
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from multiprocessing.context import ForkServerContext, SpawnContext
    from multiprocessing.process import BaseProcess

    from atlas_core.mesh_io import Limits
    from orchestrator.settings import Settings
    from orchestrator.spool import Spoolable, SpooledShape

#: Part of every cache key: raise it when what a shape holds changes in a way the sources of
#: the modules below (which are hashed into the key too) do not show.
CACHE_FORMAT = 2
#: The atlas_core modules whose code decides the points of a shape (see atlas_core/mesh_io.py).
_READING_MODULES = ("mesh_io", "mesh_errors", "mesh_limits", "mesh_files", "mesh_draco",
                    "mesh_diagnosis", "mesh_surface", "mesh_sampling")
#: Libraries whose versions can change what a file reads as.
_READING_LIBRARIES = ("numpy", "trimesh")
#: Test hooks only (read by the client, passed to its readers): the reader that gets a file of
#: this name kills itself with SIGKILL, or hangs, as a crashing or frozen parser would.
CRASH_ENV, HANG_ENV = "RODIN_INGEST_TEST_CRASH", "RODIN_INGEST_TEST_HANG"
#: Seconds a new reader may take to start (forked from the fork server: well under one).
_START_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Reading:
    """How files are read: processes, each one's limits, and the cache."""

    jobs: int
    file_timeout_s: float
    memory_bytes: int  # 0: unbounded
    cache_dir: Path | None
    #: Bytes the cache may hold once an add is done (0: no bound); least recently used first.
    cache_bytes: int = 0
    crash_on: str = ""
    hang_on: str = ""

    @classmethod
    def from_settings(cls, settings: Settings, jobs: int | None = None) -> Reading:
        return cls(jobs=jobs or default_jobs(), file_timeout_s=settings.ingest_file_timeout_s,
                   memory_bytes=settings.ingest_memory_bytes, cache_dir=settings.home / "ingest-cache",
                   cache_bytes=settings.ingest_cache_bytes,
                   crash_on=os.environ.get(CRASH_ENV, ""), hang_on=os.environ.get(HANG_ENV, ""))


def default_jobs() -> int:
    """The cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS
        return max(1, os.cpu_count() or 1)


@dataclass
class Outcome:
    """One file's result: its shape (spooled in the cache when the cache could take it, else in
    memory), or the reason it was skipped; `cached` when the shape came from the cache."""

    shape: Spoolable | None = None
    reason: str | None = None
    cached: bool = False


def read_files(files: list[Path], points: int, seeds: list[int], limits: Limits, reading: Reading,
               on_file: Callable[[], None] | None = None) -> list[Outcome]:
    """Each file read (into a Shape of `points`, sampled with its seed) in a reader process,
    results in the order of `files`: with a cache, each shape as its cache entry
    (`orchestrator.spool.SpooledShape`; the cache is pruned by `prune_cache` once the version is
    registered, not before), else in memory. An interruption (Ctrl-C) kills every reader and
    propagates."""
    setup = _Setup(points=points, limits=limits, memory_bytes=reading.memory_bytes,
                   cache_dir=str(reading.cache_dir) if reading.cache_dir else "",
                   code_version=code_version(), crash_on=reading.crash_on, hang_on=reading.hang_on,
                   file_timeout_s=reading.file_timeout_s)
    pool = _Pool(_context(), setup, max(1, min(reading.jobs, len(files))), reading.file_timeout_s)
    outcomes: list[Outcome | None] = [None] * len(files)

    def done(index: int, outcome: Outcome) -> None:
        outcomes[index] = outcome
        if on_file is not None:
            on_file()

    try:
        pool.run(deque((i, str(f), seeds[i]) for i, f in enumerate(files)), done)
    finally:
        pool.close()
    return [o if o is not None else Outcome(reason="not read") for o in outcomes]


# --------------------------------------------------------------------------------------------
# The client's side: a pool of readers, one file each at a time


def _context() -> ForkServerContext | SpawnContext:
    import multiprocessing

    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["atlas_core.mesh_io"])
        return context
    return multiprocessing.get_context("spawn")


@dataclass
class _Reader:
    process: BaseProcess
    conn: Connection
    task: tuple[int, str, int] | None = None
    started: float = 0.0


class _Pool:
    def __init__(self, context: ForkServerContext | SpawnContext, setup: _Setup, size: int, timeout_s: float) -> None:
        self.context, self.setup, self.size, self.timeout_s = context, setup, size, timeout_s
        self.readers: list[_Reader] = []

    def _start(self) -> _Reader:
        ours, theirs = self.context.Pipe()
        process = self.context.Process(target=_reader_main, args=(theirs, self.setup), daemon=True,
                                       name="rodin-ingest-reader")
        with _main_hidden():
            process.start()
        theirs.close()
        reader = _Reader(process, ours)
        self.readers.append(reader)
        return reader

    def _ready(self, reader: _Reader) -> _Reader:
        """Wait for a new reader's first word: one that cannot start (an interpreter that cannot
        import the mesh libraries) is the client's error, not a file's."""
        from orchestrator.errors import RodinError

        try:
            if reader.conn.poll(_START_TIMEOUT_S) and reader.conn.recv() == "ready":
                return reader
        except (EOFError, OSError):
            pass
        reader.process.join(1)
        code = reader.process.exitcode
        self._retire(reader)
        raise RodinError(f"could not start a reader process for the mesh files "
                         f"({'still starting' if code is None else f'exit code {code}'} after "
                         f"{_START_TIMEOUT_S:g} s at most); nothing was registered")

    def _give(self, reader: _Reader, tasks: deque[tuple[int, str, int]]) -> None:
        reader.task, reader.started = tasks.popleft(), time.monotonic()
        try:
            reader.conn.send(reader.task)
        except OSError:  # it died between two files: its sentinel reports it with this file
            pass

    def _retire(self, reader: _Reader) -> None:
        """End a reader (it died, hung or asked to go) and forget it."""
        if reader.process.is_alive():
            reader.process.kill()
        reader.process.join()
        reader.conn.close()
        self.readers.remove(reader)

    def run(self, tasks: deque[tuple[int, str, int]], done: Callable[[int, Outcome], None]) -> None:
        from multiprocessing.connection import wait

        started = [self._start() for _ in range(min(self.size, len(tasks)))]  # they start side by side
        for reader in started:
            self._give(self._ready(reader), tasks)
        while True:
            busy = [r for r in self.readers if r.task is not None]
            if not busy:
                return
            now = time.monotonic()
            timeout = max(0.0, min(r.started + self.timeout_s for r in busy) - now) if self.timeout_s else None
            ready = set(wait([r.conn for r in busy] + [r.process.sentinel for r in busy], timeout))
            for reader in busy:
                assert reader.task is not None
                index = reader.task[0]
                retire = False
                if reader.conn in ready or reader.process.sentinel in ready:
                    message = None
                    try:
                        if reader.conn.poll():  # a result sent just before dying still counts
                            message = reader.conn.recv()
                    except (EOFError, OSError):
                        message = None
                    if message is None:
                        reader.process.join(5)
                        done(index, Outcome(reason=_died(reader.process.exitcode)))
                        retire = True
                    else:
                        outcome, retire = message
                        done(index, outcome)
                elif self.timeout_s and time.monotonic() - reader.started >= self.timeout_s:
                    done(index, Outcome(reason=_took_too_long(self.timeout_s)))
                    retire = True
                else:
                    continue
                reader.task = None
                if retire:
                    self._retire(reader)
                    if tasks:
                        reader = self._ready(self._start())
                if tasks:
                    self._give(reader, tasks)

    def close(self) -> None:
        """Stop every reader: idle ones are asked to leave, busy ones (an interrupted ingest)
        are killed."""
        for reader in list(self.readers):
            if reader.task is None and reader.process.is_alive():
                try:
                    reader.conn.send(None)
                    reader.process.join(2)
                except OSError:
                    pass
            self._retire(reader)


@contextmanager
def _main_hidden() -> Iterator[None]:
    """Start a reader without multiprocessing's import of the caller's main module in it: the
    reader runs this module's code only, and that import would run a user's script again in
    every reader (one without the `if __name__ == "__main__"` guard could not ingest at all)
    and cost the CLI's imports, about 0.4 s a reader. multiprocessing imports the main module
    by the name or path it finds on `sys.modules["__main__"]` as the process starts."""
    main = sys.modules.get("__main__")
    if main is None:
        yield
        return
    hidden: dict[str, object] = {key: main.__dict__.pop(key) for key in ("__spec__", "__file__")
                                 if key in main.__dict__}
    main.__spec__ = None
    try:
        yield
    finally:
        main.__dict__.pop("__spec__", None)
        main.__dict__.update(hidden)


def _died(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = "unknown signal"
        hint = "; perhaps the system's out-of-memory killer" if -exitcode == signal.SIGKILL else ""
        return (f"its reader process died (signal {-exitcode}, {name}{hint}): the mesh reader "
                "cannot read this file; the other files were read")
    return (f"its reader process ended (exit code {exitcode}) before reading it: the mesh reader "
            "cannot read this file; the other files were read")


def _took_too_long(timeout_s: float) -> str:
    return (f"took longer than {timeout_s:g} s to read (RODIN_INGEST_FILE_TIMEOUT_S); raise that "
            "setting if the file is genuine")


def _needs_more_memory(memory_bytes: int) -> str:
    from atlas_core.mesh_limits import size_text

    return (f"reading it needs more memory than the {size_text(memory_bytes)} each ingest process may use "
            "(RODIN_INGEST_MEMORY_BYTES); raise that setting (and use fewer --jobs) if the file is genuine")


def code_version() -> str:
    """What the cache key holds of the reading code: the sources of the modules that make a
    shape and the versions of the libraries they use."""
    from importlib import metadata

    import atlas_core

    digest = hashlib.sha256(f"rodin-shape-cache {CACHE_FORMAT}\n".encode())
    folder = Path(atlas_core.__file__).parent
    for module in _READING_MODULES:
        digest.update((folder / f"{module}.py").read_bytes())
    for library in _READING_LIBRARIES:
        try:
            digest.update(f"{library} {metadata.version(library)}\n".encode())
        except metadata.PackageNotFoundError:
            digest.update(f"{library} ?\n".encode())
    return digest.hexdigest()


def cache_key(content_sha256: str, points: int, seed: int, version: str) -> str:
    return hashlib.sha256(f"{content_sha256}\n{points}\n{seed}\n{version}".encode()).hexdigest()


# --------------------------------------------------------------------------------------------
# The reader's side (runs in the reader process)


@dataclass(frozen=True)
class _Setup:
    points: int
    limits: Limits
    memory_bytes: int
    cache_dir: str
    code_version: str
    crash_on: str
    hang_on: str
    #: The client's time bound per file (0: none); the reader keeps a looser one of its own.
    file_timeout_s: float = 0.0


def _reader_main(conn: Connection, setup: _Setup) -> None:
    """Read the files the client sends, one at a time, until it sends None or goes away."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the client's to handle
    _die_with_parent()
    if setup.memory_bytes:
        import resource

        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        soft = setup.memory_bytes if hard == resource.RLIM_INFINITY else min(setup.memory_bytes, hard)
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    conn.send("ready")
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        if setup.file_timeout_s:
            # The client ends a reader that overruns; this SIGALRM (whose default ends the
            # process) ends one whose client was killed outright and can no longer.
            signal.alarm(int(2 * setup.file_timeout_s) + 10)
        try:
            outcome = _read_one(task[1], task[2], setup)
            retire = False
        except MemoryError:
            outcome, retire = Outcome(reason=_needs_more_memory(setup.memory_bytes)), True
        signal.alarm(0)
        conn.send((outcome, retire))
        if retire:  # a heap that ran out is not trusted with the next file
            return


def _die_with_parent() -> None:
    """Linux: this reader is killed when its parent (the fork server, which ends with the
    client) dies, even in the middle of a file."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _read_one(path: str, seed: int, setup: _Setup) -> Outcome:
    from atlas_core.mesh_io import MeshError, ingest_file
    from orchestrator.spool import SpooledShape, write_entry

    name = Path(path).name
    if setup.crash_on and name == setup.crash_on:
        os.kill(os.getpid(), signal.SIGKILL)
    if setup.hang_on and name == setup.hang_on:
        while True:
            time.sleep(60)
    key = None
    if setup.cache_dir:
        content = _file_sha256(path, setup.limits.max_file_bytes)
        if content is not None:
            key = cache_key(content, setup.points, seed, setup.code_version)
            hit = _cached(Path(setup.cache_dir), key, path, content, setup.points)
            if hit is not None:
                return Outcome(shape=hit, cached=True)
    limits = setup.limits
    if setup.memory_bytes:
        limits = replace(limits, max_memory_bytes=setup.memory_bytes, memory_in_use=_address_space())
    try:
        shape = ingest_file(path, n_points=setup.points, seed=seed, limits=limits)
    except MeshError as exc:
        if _ran_out_of_memory(exc):
            raise MemoryError from None
        return Outcome(reason=str(exc))
    if key is not None:
        entry = write_entry(Path(setup.cache_dir), key, shape)
        if entry is not None:  # the client reads the points back a shard at a time
            return Outcome(shape=SpooledShape(shape.name, shape.source_sha256, str(entry), key))
    return Outcome(shape=shape)


def _cached(folder: Path, key: str, path: str, content: str, points: int) -> SpooledShape | None:
    """The cache's entry for `key`, checked whole; None when absent or not sound (the file is
    then read again and the entry rewritten). A hit renews the entry's time (pruning goes by it)."""
    from atlas_core.mesh_files import split_suffix
    from orchestrator.spool import SUFFIX, SpooledShape, read_entry

    entry = folder / f"{key}{SUFFIX}"
    name = split_suffix(path)[0]
    if read_entry(entry, key, name, content, points) is None:
        return None
    try:
        os.utime(entry)
    except OSError:
        pass
    return SpooledShape(name, content, str(entry), key)


def _ran_out_of_memory(exc: BaseException) -> bool:
    """True when a MeshError stands for a MemoryError (mesh_io folds every parser failure into
    one line, keeping the cause as the exception's context)."""
    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            return False
        if isinstance(seen, MemoryError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _address_space() -> int:
    """Bytes of address space this process holds now (what RLIMIT_AS counts); 0 if unknown."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _file_sha256(path: str, limit: int) -> str | None:
    """The file's sha256 (what Shape.source_sha256 holds), or None when it cannot be read within
    the size limit (the reading itself then says why)."""
    digest = hashlib.sha256()
    try:
        if os.stat(path).st_size > limit:
            return None
        with open(path, "rb") as fh:
            total = 0
            while chunk := fh.read(1 << 20):
                total += len(chunk)
                if total > limit:
                    return None
                digest.update(chunk)
    except OSError:
        return None
    return digest.hexdigest()


def prune_cache(folder: Path, max_bytes: int) -> int:
    """Remove the least recently used entries (by modification time, which a hit renews) until
    the cache holds at most `max_bytes`; returns how many went. An entry another add is reading
    at that moment is read whole or not at all (a hit opens it once), so removing it costs that
    add a read, never a wrong shape."""
    from orchestrator.spool import SUFFIX

    entries = []
    for entry in folder.glob(f"*{SUFFIX}"):
        try:
            info = entry.stat()
        except FileNotFoundError:
            continue
        entries.append((info.st_mtime, info.st_size, entry))
    total, removed = sum(size for _, size, _ in entries), 0
    for _, size, entry in sorted(entries, key=lambda e: e[0]):
        if total <= max_bytes:
            break
        entry.unlink(missing_ok=True)
        total, removed = total - size, removed + 1
    return removed
