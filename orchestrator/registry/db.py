"""Engine, sessions and schema upgrades for the registry."""

from __future__ import annotations

import ast
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import TypeVar

from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.orm import Session, sessionmaker

from orchestrator import waiting
from orchestrator.errors import UserInputError
from orchestrator.job_view import as_utc  # noqa: F401 - offered here to the registry's users
from orchestrator.settings import Settings, load_settings, redact

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    # WAL lets the CLI read while a worker writes; the busy timeout turns lock contention
    # between worker threads (heartbeat, training loop) into a short wait instead of an error.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


#: Driver modules that a `pip install` of rodin's extras provides, and what to tell the user.
_DRIVER_FIXES = {
    "psycopg": "pip install 'rodin[postgres]'",
    "psycopg2": "use postgresql+psycopg:// with pip install 'rodin[postgres]' "
                "(or pip install psycopg2-binary)",
    "pg8000": "pip install pg8000",
    "asyncpg": "pip install asyncpg",
    "pymysql": "pip install pymysql",
    "MySQLdb": "pip install mysqlclient",
}


def make_engine(url: str) -> Engine:
    """The SQLAlchemy engine for `url`; a driver that is not installed is one UserInputError
    naming the module, the URL's scheme and the fix (never the URL: it may hold a password)."""
    try:
        return _make_engine(url)
    except ImportError as exc:
        raise _missing_driver(url, exc) from None


def _missing_driver(url: str, exc: ImportError) -> UserInputError:
    scheme = url.split("://", 1)[0] if "://" in url else url.split(":", 1)[0]
    module = (exc.name or "").split(".")[0] if isinstance(exc, ModuleNotFoundError) else ""
    if module:
        fix = _DRIVER_FIXES.get(module, f"install the Python package that provides {module!r}")
        return UserInputError(f"the registry URL {scheme}:// needs the database driver {module!r}, "
                              f"which is not installed: {fix}")
    detail = redact(" ".join(str(exc).split()))[:200]
    fix = ("; reinstall it with pip install 'rodin[postgres]'" if scheme.startswith("postgresql")
           else "")
    return UserInputError(f"the database driver for the registry URL {scheme}:// cannot be "
                          f"imported ({detail}){fix}")


def _make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    # A shared server: check pooled connections before use (a worker may sit hours in one job)
    # and keep the pool small (every worker process and client holds its own).
    return create_engine(url, pool_pre_ping=True, pool_size=2, max_overflow=4,
                         pool_recycle=1800, connect_args=_server_connect_args(url))


def _server_connect_args(url: str) -> dict[str, object]:
    if url.startswith("postgresql"):
        # Fail in seconds, with the host named, when the registry server cannot be reached.
        return {"connect_timeout": 10, "application_name": "rodin"}
    return {}


def alembic_config(url: str):
    """An Alembic config pointing at rodin's migrations and the given database."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


_ASSIGNMENT = re.compile(r"^(revision|down_revision)\s*(?::[^=]*)?=\s*(.+?)\s*$", re.MULTILINE)


def _scan_head() -> str | None:
    """The newest migration, read from the version files' `revision`/`down_revision` lines.

    Importing Alembic costs a client ~0.1 s on every command; this costs well under a
    millisecond. None when the files are not plainly readable (then Alembic decides).
    """
    revisions: dict[str, tuple[str, ...]] = {}
    for path in (MIGRATIONS_DIR / "versions").glob("*.py"):
        found = dict((m[1], m[2]) for m in _ASSIGNMENT.finditer(path.read_text(encoding="utf-8")))
        if "revision" not in found:
            continue
        try:
            revision = ast.literal_eval(found["revision"])
            down = ast.literal_eval(found.get("down_revision", "None"))
        except (ValueError, SyntaxError):
            return None
        if not isinstance(revision, str):
            return None
        if down is None:
            down = ()
        elif isinstance(down, str):
            down = (down,)
        elif not isinstance(down, (tuple, list)):
            return None
        revisions[revision] = tuple(down)
    parents = {d for downs in revisions.values() for d in downs}
    heads = [r for r in revisions if r not in parents]
    return heads[0] if len(heads) == 1 else None


@lru_cache(maxsize=1)
def head_revision() -> str:
    head = _scan_head()
    if head is not None:
        return head
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head() or ""


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return None
        return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


def upgrade(url: str, revision: str = "head") -> None:
    from alembic import command

    make_engine(url).dispose()  # creates the SQLite file's folder on a fresh RODIN_HOME

    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str = "base") -> None:
    from alembic import command

    command.downgrade(alembic_config(url), revision)


class SchemaOutOfDate(RuntimeError):
    pass


#: Every engine this process made, so that a forked child can let go of the parent's connections.
_ENGINES: list[Engine] = []


def forget_connections_after_fork() -> None:
    """In a child process: never reuse (or close) a connection the parent opened."""
    for engine in _ENGINES:
        engine.dispose(close=False)


@lru_cache(maxsize=8)
def _engine_for(url: str, auto_upgrade: bool) -> Engine:
    engine = make_engine(url)
    _ENGINES.append(engine)
    if current_revision(engine) != head_revision():
        if not auto_upgrade:
            raise SchemaOutOfDate(
                f"the registry at {engine.url.render_as_string(hide_password=True)} is not at the "
                "current schema: run `rodin db upgrade`"
            )
        upgrade(url)
    return engine


def get_engine(settings: Settings | None = None) -> Engine:
    """The registry engine; the embedded SQLite registry is created and upgraded on first use."""
    settings = settings or load_settings()
    return _engine_for(settings.registry_url, not settings.database_url)


@lru_cache(maxsize=8)
def _sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


_THIS_THREAD = threading.local()


@contextmanager
def lock_wait_limit(seconds: float) -> Iterator[None]:
    """Within this block, on this thread, a PostgreSQL transaction waits at most `seconds` for a
    row lock, then fails with a transient error (`is_transient`) instead of waiting on.

    For the worker's heartbeat thread: a job process stopped (SIGSTOP, a frozen VM) while it
    held a job's row lock must not silence its worker, whose same thread is the one that ends
    such a process. SQLite locks the whole file instead; its busy timeout stands."""
    before = getattr(_THIS_THREAD, "lock_wait_ms", None)
    _THIS_THREAD.lock_wait_ms = max(1, int(seconds * 1000))
    try:
        yield
    finally:
        _THIS_THREAD.lock_wait_ms = before


@contextmanager
def session_scope(settings: Settings | None = None) -> Iterator[Session]:
    """A session that commits on success and rolls back (writing nothing) on any error."""
    session = _sessionmaker(get_engine(settings))()
    try:
        lock_wait_ms = getattr(_THIS_THREAD, "lock_wait_ms", None)
        if lock_wait_ms is not None and session.get_bind().dialect.name == "postgresql":
            session.execute(text(f"SET LOCAL lock_timeout = {lock_wait_ms}"))
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


_T = TypeVar("_T")
log = logging.getLogger(__name__)


def is_transient(exc: BaseException) -> bool:
    """A registry error that may pass by itself: the server restarting or unreachable, a lost
    connection, a busy SQLite file. Not a constraint violation or a bad statement."""
    from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

    if isinstance(exc, (OperationalError, InterfaceError)):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def with_retries(settings: Settings, what: str, fn: Callable[[], _T]) -> _T:
    """Run one registry transaction, retrying transient failures with backoff for up to
    `settings.registry_retry_s`; `fn` must be safe to run again (its own session_scope)."""
    deadline = time.monotonic() + settings.registry_retry_s
    delay = 0.25
    while True:
        try:
            return fn()
        except Exception as exc:
            if not is_transient(exc) or time.monotonic() + delay > deadline:
                raise
            log.warning("registry unavailable while trying to %s (%s); retrying in %.1f s",
                        what, type(exc).__name__, delay)
            waiting.waiting()
            time.sleep(delay)
            delay = min(delay * 2, 10.0)
