"""Shared fixtures: an isolated RODIN_HOME, the real `rodin` CLI as a subprocess, real workers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from orchestrator.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
SHARED_MESHES = ROOT.parent / "shared" / "meshes"
needs_shared_meshes = pytest.mark.skipif(
    not SHARED_MESHES.is_dir(), reason=f"{SHARED_MESHES} is absent (shared/ sits beside the checkout in CI)"
)

RODIN_VARS = ("RODIN_HOME", "RODIN_DATABASE_URL", "RODIN_BROKER_URL", "RODIN_ARTIFACTS_URL",
              "RODIN_CONFIG", "RODIN_DEVICE", "RODIN_WORKER_NAME", "RODIN_DEBUG")


@dataclass
class Rodin:
    """Runs the real `rodin` CLI in a subprocess against one isolated home."""

    home: Path
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in RODIN_VARS}
        env.update({"RODIN_HOME": str(self.home), "PYTHONUNBUFFERED": "1"}, **self.extra_env)
        return env

    def run(self, *args: str, timeout: float = 300, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        """The CLI in its own process, as a user starts it (for what needs one: a separate
        interpreter, a working folder, a process to kill)."""
        return subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], env=self.env,
                              capture_output=True, text=True, timeout=timeout, cwd=cwd)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """The CLI in this process (typer.testing), with the same environment as `run`."""
        from typer.testing import CliRunner

        from orchestrator.cli.context import settings
        from orchestrator.cli.main import app

        settings.cache_clear()  # each Rodin has its own home
        env: dict[str, str | None] = {var: None for var in RODIN_VARS}
        env.update({"RODIN_HOME": str(self.home)}, **self.extra_env)
        try:
            result = CliRunner().invoke(app, list(args), env=env, catch_exceptions=False)
        finally:
            settings.cache_clear()
        return subprocess.CompletedProcess(["rodin", *args], result.exit_code, result.stdout, result.stderr)

    def json(self, *args: str, expect_code: int = 0, timeout: float | None = None,
             cwd: Path | None = None) -> dict:
        """One command's JSON object; in this process unless it needs a working folder.
        (`timeout` bounds a separate process only: in-process commands end with their job.)"""
        result = self.run(*args, "--json", cwd=cwd) if cwd else self.cli(*args, "--json")
        assert result.returncode == expect_code, (result.returncode, result.stdout, result.stderr)
        lines = [line for line in result.stdout.splitlines() if line.strip()]
        assert len(lines) == 1, f"expected exactly one JSON line on stdout, got {result.stdout!r}"
        return json.loads(lines[0])

    def settings(self):  # type: ignore[no-untyped-def]
        from orchestrator.settings import load_settings

        return load_settings(self.env)

    def held_out(self, ref: str = "swords@1", val_fraction: float = 0.25, seed: int = 0) -> int:
        """How many shapes of a version a training with this validation share holds out: the
        split goes by shape identity (`atlas_core.data.split_of`), so the share on average,
        not exactly."""
        from atlas_core.data import split_of
        from orchestrator import datasets
        from orchestrator.artifacts import open_store
        from orchestrator.registry.db import session_scope
        from orchestrator.registry.queries import resolve_dataset

        settings = self.settings()
        with session_scope(settings) as s:
            row = resolve_dataset(s, ref)
            uri, sha256 = row.artifact_uri, row.artifact_sha256
        return len(split_of(datasets.open_version(open_store(settings), uri, sha256), val_fraction, seed)[1])

    @property
    def worker_cwd(self) -> Path:
        """An empty folder the workers start in, to catch files written outside RODIN_HOME."""
        path = self.home.parent / "worker-cwd"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def start_worker(self, name: str, queues: str = "train,infer") -> subprocess.Popen[bytes]:
        self.home.mkdir(parents=True, exist_ok=True)
        log = (self.home / f"{name.replace('%', '')}.log").open("ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.cli", "worker", "--hostname", name,
             "--device", "cpu", "--queues", queues, "--loglevel", "INFO"],
            env={**self.env, "OMP_NUM_THREADS": self.extra_env.get("OMP_NUM_THREADS", "2")}, stdout=log, stderr=subprocess.STDOUT,
            cwd=self.worker_cwd,
        )
        # Named as Celery names nodes: the registry holds the expanded name (%h: this host).
        try:
            self._wait_ready(name.replace("%h", os.uname().nodename), proc, log_name=name.replace("%", ""))
        except BaseException:
            stop_process(proc)  # a worker that never got ready must not outlive the test
            raise
        return proc

    def _wait_ready(self, name: str, proc: subprocess.Popen[bytes], timeout: float = 60,
                    log_name: str | None = None) -> None:
        from orchestrator.registry.db import session_scope
        from orchestrator.registry.queries import live_workers

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert proc.poll() is None, (self.home / f"{log_name or name}.log").read_text()[-3000:]
            with session_scope(self.settings()) as s:
                if name in [w.hostname for w in live_workers(s, 30)]:
                    return
            time.sleep(0.3)
        raise TimeoutError(f"worker {name} did not become ready")


def until(predicate, timeout: float = 120, what: str = "", every: float = 0.3):  # type: ignore[no-untyped-def]
    """Poll `predicate` every `every` s until it returns something true, and return that; fail
    the test (naming `what`) after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}" if what else "timed out"
        time.sleep(every)
    return value


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def dataset_row(settings: Settings) -> int:
    """Register a dataset row whose artifact is never read (what a job row needs); its id."""
    from orchestrator.registry.db import session_scope
    from orchestrator.registry.models import Dataset

    with session_scope(settings) as s:
        ds = Dataset(name="d", version=1, content_sha256="0" * 64, shape_count=1, points_per_shape=1,
                     source="test", skipped=[], artifact_uri="file:///nowhere", artifact_sha256="0" * 64)
        s.add(ds)
        s.flush()
        return ds.id


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU (tests/cuda: skipped without one; "
                                       "`make gpu-check` runs them on a GPU machine)")


#: Folders whose every test starts servers, workers or benchmarks.
SLOW_FOLDERS = ("integration", "benchmarks")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark `slow` what `make test-fast` leaves out: the tests that start real workers, servers
    or benchmarks. A module names its worker-starting fixtures in `SLOW_FIXTURES`, or marks
    itself with `pytestmark = pytest.mark.slow`."""
    for item in items:
        path = Path(str(item.fspath))
        slow_fixtures = set(getattr(getattr(item, "module", None), "SLOW_FIXTURES", ()))
        if path.parent.name in SLOW_FOLDERS or slow_fixtures & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:  # type: ignore[no-untyped-def]
    """One line naming the servers whose tests were skipped and the command that brings them."""
    import re

    packages: set[str] = set()
    count = 0
    for report in terminalreporter.stats.get("skipped", []):
        reason = str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else str(report.longrepr)
        found = re.findall(r"apt-get\s+install\s+([\w.-]+)", reason)
        if found:
            packages.update(found)
            count += 1
    if packages:
        terminalreporter.write_line(
            f"{count} test(s) skipped for want of {', '.join(sorted(packages))}: "
            "`sudo bash scripts/test_servers.sh` installs them (make test does, as root)", yellow=True)


@pytest.fixture
def rodin(tmp_path: Path):  # type: ignore[no-untyped-def]
    r = Rodin(tmp_path / "rodin-home")
    yield r
    r.run("down", "--timeout", "10")  # in case a command started a background worker
