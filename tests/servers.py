"""Real Redis, PostgreSQL and S3 servers for the tests, started from their binaries on loopback.

Each server gets a free port and a temporary data folder and is stopped at the end of the test
session. When a binary is missing, the tests that need it are skipped with the reason (CI installs
them: `.ci/run`). The functions here are plain context managers, so benchmarks can use them too;
the pytest fixtures at the bottom wrap them (imported by tests/integration/conftest.py).
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REDIS_PASSWORD = "rodin-test-" + secrets.token_hex(4)
PG_USER, PG_PASSWORD = "rodin", "rodin-test-" + secrets.token_hex(4)
S3_KEY, S3_SECRET = "rodin-test", "rodin-test-secret"


class ServerUnavailable(RuntimeError):
    """The server's binary (or package) is not installed here."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_port(port: int, proc: subprocess.Popen | None, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} while starting")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"{what} did not listen on 127.0.0.1:{port} within {timeout} s")


# ------------------------------------------------------------------------------------- Redis


def redis_binary() -> str | None:
    return shutil.which("redis-server") or next(
        (p for p in ("/usr/bin/redis-server", "/usr/local/bin/redis-server") if os.access(p, os.X_OK)),
        None,
    )


@dataclass
class RedisServer:
    port: int
    password: str
    folder: Path
    #: The server's command line and its running process (for `stop`, `start` and `restart`).
    command: list[str] = field(default_factory=list)
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        """SIGTERM, as `redis-cli shutdown`: Redis writes its AOF and exits; every connection
        is cut. Its port and data folder stay for `start`."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def start(self) -> None:
        """Start it again on the same port and data folder (it reloads its AOF)."""
        self.proc = subprocess.Popen(self.command, stdout=(self.folder / "redis.log").open("ab"),
                                     stderr=subprocess.STDOUT)
        _wait_port(self.port, self.proc, "redis-server")

    def restart(self) -> None:
        self.stop()
        self.start()


@contextmanager
def redis_server() -> Iterator[RedisServer]:
    """redis-server with a password and AOF persistence, as docker-compose runs it."""
    binary = redis_binary()
    if binary is None:
        raise ServerUnavailable("redis-server is not installed (apt-get install redis-server)")
    folder = Path(tempfile.mkdtemp(prefix="rodin-redis-"))
    port = free_port()
    server = RedisServer(port, REDIS_PASSWORD, folder, command=[
        binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder),
        "--requirepass", REDIS_PASSWORD, "--appendonly", "yes", "--appendfsync", "no",
        "--save", "", "--daemonize", "no", "--loglevel", "warning"])
    try:
        server.start()
        yield server
    finally:
        server.stop()  # the process running now (a restart replaces it)
        shutil.rmtree(folder, ignore_errors=True)


# ---------------------------------------------------------------------------------- PostgreSQL


def postgres_bindir() -> Path | None:
    """The folder holding initdb and pg_ctl: on PATH, else Debian's /usr/lib/postgresql/N/bin."""
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                        key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    return Path(candidates[-1]).parent if candidates else None


@dataclass
class PostgresServer:
    port: int
    folder: Path
    #: pg_ctl (with the prefix that runs it as the cluster's owner) and the server's options.
    pg_ctl: list[str] = field(default_factory=list)
    options: str = ""

    def restart(self) -> None:
        """As `pg_ctl restart -m fast`: every connection is cut, the server is back within a
        second. (Stop, then start with the log file, so that the new server does not hold this
        process's pipes open.)"""
        self.stop()
        self.start()

    def stop(self) -> None:
        """`pg_ctl stop -m fast`: every connection is cut; the data folder and port stay."""
        subprocess.run([*self.pg_ctl, "-D", str(self.folder / "data"), "-m", "fast", "-w", "stop"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def start(self) -> None:
        """Start the stopped server again on the same port and data folder."""
        subprocess.run([*self.pg_ctl, "-D", str(self.folder / "data"), "-o", self.options,
                        "-l", str(self.folder / "pg.log"), "-w", "-t", "60", "start"], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{PG_USER}:{PG_PASSWORD}@127.0.0.1:{self.port}/{database}"

    def create_database(self, prefix: str = "rodin") -> str:
        """A new empty database; returns its SQLAlchemy URL."""
        import psycopg

        name = f"{prefix}_{secrets.token_hex(4)}"
        dsn = f"host=127.0.0.1 port={self.port} user={PG_USER} password={PG_PASSWORD} dbname=postgres"
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


@contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """A throwaway cluster (fsync off) with password authentication on 127.0.0.1.

    PostgreSQL refuses to run as root, so as root the cluster belongs to the `postgres` user.
    """
    bindir = postgres_bindir()
    if bindir is None:
        raise ServerUnavailable("PostgreSQL is not installed (apt-get install postgresql)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise ServerUnavailable("psycopg is not installed (pip install -e '.[postgres]')") from None
    as_user: list[str] = []
    folder = Path(tempfile.mkdtemp(prefix="rodin-pg-"))
    if os.geteuid() == 0:
        runuser = shutil.which("runuser")
        import pwd

        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            raise ServerUnavailable("running as root and there is no `postgres` user") from None
        if runuser is None:
            raise ServerUnavailable("running as root and `runuser` is missing")
        os.chown(folder, pw.pw_uid, pw.pw_gid)
        as_user = [runuser, "-u", "postgres", "--"]
    data, sockets = folder / "data", folder / "sockets"
    pwfile = folder / "pwfile"
    pwfile.write_text(PG_PASSWORD + "\n")
    if as_user:
        os.chown(pwfile, pw.pw_uid, pw.pw_gid)
    sockets.mkdir()
    if as_user:
        os.chown(sockets, pw.pw_uid, pw.pw_gid)
    run = lambda *cmd: subprocess.run([*as_user, *cmd], check=True, capture_output=True)  # noqa: E731
    port = free_port()
    try:
        run(str(bindir / "initdb"), "-D", str(data), "-U", PG_USER, f"--pwfile={pwfile}",
            "--auth-host=scram-sha-256", "--auth-local=trust", "-E", "UTF8", "--no-sync",
            "--no-instructions")
        options = (f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        run(str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(folder / "pg.log"),
            "-w", "-t", "60", "start")
        yield PostgresServer(port, folder, [*as_user, str(bindir / "pg_ctl")], options)
    except subprocess.CalledProcessError as exc:
        log = folder / "pg.log"
        detail = log.read_text()[-2000:] if log.exists() else ""
        raise RuntimeError(f"PostgreSQL did not start: {exc.stderr.decode()[-2000:]} {detail}") from exc
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate",
                        "-w", "stop"], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


# ----------------------------------------------------------------------------------------- S3


@dataclass
class S3Server:
    port: int

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        """What a rodin process needs to use this server for `s3://` artifacts."""
        return {"RODIN_S3_ENDPOINT_URL": self.endpoint_url, "AWS_ACCESS_KEY_ID": S3_KEY,
                "AWS_SECRET_ACCESS_KEY": S3_SECRET, "AWS_DEFAULT_REGION": "us-east-1"}

    def create_bucket(self, name: str) -> None:
        import s3fs

        fs = s3fs.S3FileSystem(key=S3_KEY, secret=S3_SECRET, skip_instance_cache=True,
                               client_kwargs={"endpoint_url": self.endpoint_url})
        fs.mkdir(name)


@contextmanager
def s3_server() -> Iterator[S3Server]:
    """moto's S3-compatible server (moto[server]) on loopback, in a thread of this process."""
    try:
        import s3fs  # noqa: F401
        from moto.server import ThreadedMotoServer
    except ImportError:
        raise ServerUnavailable("moto[server] and s3fs are not installed (pip install -e '.[test]')") from None
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        _wait_port(port, None, "moto S3 server")
        yield S3Server(port)
    finally:
        server.stop()


# ------------------------------------------------------------------------------ pytest fixtures


def _session_server(factory):  # type: ignore[no-untyped-def]
    def fixture():  # type: ignore[no-untyped-def]
        try:
            manager = factory()
            server = manager.__enter__()
        except ServerUnavailable as exc:
            pytest.skip(str(exc))
        try:
            yield server
        finally:
            manager.__exit__(None, None, None)

    fixture.__name__ = factory.__name__
    fixture.__doc__ = factory.__doc__
    return pytest.fixture(scope="session", name=factory.__name__)(fixture)


#: Fixtures named redis_server, postgres_server and s3_server (session-scoped).
redis_fixture = _session_server(redis_server)
postgres_fixture = _session_server(postgres_server)
s3_fixture = _session_server(s3_server)
