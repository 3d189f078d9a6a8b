"""Settings from `RODIN_*` environment variables, with an embedded single-machine default.

With nothing set, everything lives under `~/.rodin`: a SQLite registry, Celery's `filesystem://`
broker and a local content-addressed artifact folder, so one machine works with no server.
"""

from __future__ import annotations

import math
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, from PyPI
    import tomli as tomllib

ENV_PREFIX = "RODIN_"


@dataclass(frozen=True)
class Settings:
    """Where the registry, the broker and the artifacts live.

    Empty URLs mean "the embedded default under `home`".
    """

    home: Path = field(default_factory=lambda: Path.home() / ".rodin")
    database_url: str = ""
    broker_url: str = ""
    artifacts_url: str = ""
    #: S3 endpoint for `s3://` artifact URLs (MinIO, Ceph, ...); empty means AWS itself (or
    #: `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL`, which botocore reads). Credentials come from
    #: the standard `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` variables or `~/.aws`.
    s3_endpoint_url: str = ""
    #: Seconds without a heartbeat after which a worker counts as gone (`rodin workers`); a
    #: running job's own rule is `stale_after_s`.
    worker_timeout_s: float = 30.0
    #: Redis: seconds before an unacknowledged task is handed to another worker. It must be
    #: longer than the longest job, or a second worker starts the same job while the first runs.
    visibility_timeout_s: float = 24 * 3600.0
    #: Seconds a worker told to stop at once (SIGQUIT, `rodin down`) lets its running job go on
    #: before interrupting it; the job's message then goes back to the queue.
    soft_shutdown_s: float = 15.0
    #: Seconds without a heartbeat after which a running job's worker is presumed dead: any live
    #: worker's reaper then takes the job back and sends it to the queue again.
    stale_after_s: float = 20.0
    #: A job whose attempts die this many times (its worker or its process lost) fails with the
    #: reason instead of running again.
    max_attempts: int = 3
    #: A queued job whose message has not been taken this long while a worker of its queue sits
    #: idle is sent again (a broker restarted without its data, a lost message file).
    resend_after_s: float = 30.0
    #: How long a worker keeps retrying a registry write (PostgreSQL restarting) before giving up.
    registry_retry_s: float = 300.0
    #: Seconds a job process may go without showing progress (a training batch, a reconstructed
    #: input) before its worker ends it and gives the job back to the queue as a lost attempt:
    #: a process that is frozen, deadlocked or stuck in I/O. Generous by default: it must also
    #: cover what a job does before its first step (fetching a large dataset, building the
    #: model) and its longest single step.
    progress_timeout_s: float = 900.0
    #: Ingestion limits: bytes of a mesh file, bytes once decompressed (.gz, .bz2), and faces.
    max_file_bytes: int = 512 * 1024 * 1024
    max_inflated_bytes: int = 1024 * 1024 * 1024
    max_faces: int = 20_000_000
    #: The worker machine's cache of dataset shards (content-addressed, shared by every job
    #: process of the machine); empty: `home/cache`.
    cache_dir: str = ""
    #: Bytes the shard cache may hold; least recently used shards go first (a shard in use is
    #: never removed from under its reader: it is held open).
    cache_bytes: int = 20 * 1024**3
    #: `rodin datasets add`: seconds one file may take in its reader process before it is
    #: skipped (its process killed), and bytes of memory (address space) each reader process
    #: may use; a file that would need more is skipped, counted before parsing where it can be.
    ingest_file_timeout_s: float = 300.0
    ingest_memory_bytes: int = 2 * 1024 * 1024 * 1024
    #: Bytes `datasets add`'s cache of shapes already read (`home/ingest-cache`) may hold; the
    #: least recently used entries go first, after each add. 0: no bound.
    ingest_cache_bytes: int = 10 * 1024**3
    #: A `--nodes` training job: the address other worker machines reach this one at, where
    #: its rank 0 serves the rendezvous (empty: the address this machine reaches the broker
    #: from, else the registry's, else loopback), and seconds rank 0 waits for every other
    #: machine's ranks to arrive before the attempt is given back.
    node_address: str = ""
    nodes_arrive_timeout_s: float = 300.0

    @property
    def registry_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'registry.db'}"

    @property
    def queue_url(self) -> str:
        return self.broker_url or "filesystem://"

    @property
    def broker_folder(self) -> Path:
        """Message folder of the embedded `filesystem://` broker."""
        return self.home / "broker"

    @property
    def cache_folder(self) -> Path:
        """The shard cache's folder (`RODIN_CACHE_DIR`, default `home/cache`)."""
        return Path(self.cache_dir).expanduser() if self.cache_dir else self.home / "cache"

    @property
    def artifact_root(self) -> str:
        return self.artifacts_url or (self.home / "artifacts").as_uri()

    @property
    def storage_options(self) -> dict[str, object]:
        """fsspec options for the artifact URL (the S3 endpoint, when one is set)."""
        if self.artifact_root.startswith(("s3://", "s3a://")) and self.s3_endpoint_url:
            return {"endpoint_url": self.s3_endpoint_url}
        return {}

    @property
    def embedded(self) -> bool:
        """True when the broker is the single-machine default (no server to reach)."""
        return self.queue_url.startswith("filesystem://")

    def as_dict(self) -> dict[str, str]:
        return {
            "home": str(self.home),
            "database_url": self.registry_url,
            "broker_url": self.queue_url,
            "artifacts_url": self.artifact_root,
            "s3_endpoint_url": self.s3_endpoint_url,
            "embedded": str(self.embedded).lower(),
            "worker_timeout_s": f"{self.worker_timeout_s:g}",
            "visibility_timeout_s": f"{self.visibility_timeout_s:g}",
            "soft_shutdown_s": f"{self.soft_shutdown_s:g}",
            "stale_after_s": f"{self.stale_after_s:g}",
            "max_attempts": str(self.max_attempts),
            "resend_after_s": f"{self.resend_after_s:g}",
            "registry_retry_s": f"{self.registry_retry_s:g}",
            "progress_timeout_s": f"{self.progress_timeout_s:g}",
            "max_file_bytes": str(self.max_file_bytes),
            "max_inflated_bytes": str(self.max_inflated_bytes),
            "max_faces": str(self.max_faces),
            "cache_dir": str(self.cache_folder),
            "cache_bytes": str(self.cache_bytes),
            "ingest_file_timeout_s": f"{self.ingest_file_timeout_s:g}",
            "ingest_memory_bytes": str(self.ingest_memory_bytes),
            "ingest_cache_bytes": str(self.ingest_cache_bytes),
            "node_address": self.node_address,
            "nodes_arrive_timeout_s": f"{self.nodes_arrive_timeout_s:g}",
        }


def mesh_limits(settings: Settings) -> Any:
    """The ingestion limits as atlas_core.mesh_io.Limits (which cannot read settings)."""
    from atlas_core.mesh_io import Limits

    return Limits(max_file_bytes=settings.max_file_bytes, max_inflated_bytes=settings.max_inflated_bytes,
                  max_faces=settings.max_faces)


def _number(name: str, value: object, kind: type[float] | type[int]) -> float | int:
    """A numeric setting from text or TOML; a finite, non-negative number or a ValueError."""
    number: float | int | None
    try:
        number = kind(str(value))
    except (TypeError, ValueError):
        number = None
    if number is None or not math.isfinite(number) or number < 0:
        unit = "a number of seconds" if kind is float else "a whole number"
        raise ValueError(f"setting {name} (RODIN_{name.upper()}) must be {unit}, not {value!r}")
    return number


def _config_file(home: Path, env: Mapping[str, str]) -> Path:
    return Path(env.get("RODIN_CONFIG") or home / "config.toml")


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read settings: environment first, then `RODIN_HOME/config.toml`, then defaults."""
    env = os.environ if environ is None else environ
    home = Path(env.get("RODIN_HOME") or Path.home() / ".rodin").expanduser()
    values: dict[str, object] = {}
    config = _config_file(home, env)
    if config.is_file():
        with config.open("rb") as fh:
            values.update({k: v for k, v in tomllib.load(fh).items()})
    for f in fields(Settings):
        key = ENV_PREFIX + f.name.upper()
        if key in env and f.name != "home":
            values[f.name] = env[key]
    values["home"] = home
    known = {f.name for f in fields(Settings)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown setting(s) {', '.join(unknown)} in {config}")
    for f in fields(Settings):
        if f.type in ("float", "int") and f.name in values:
            values[f.name] = _number(f.name, values[f.name], float if f.type == "float" else int)
    return Settings(**values)  # type: ignore[arg-type]


_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:@/\s]*):(?P<password>[^/\s]*)@")
_SECRET_PARAM = re.compile(r"(?P<key>[?&](?:password|pass|pwd|secret|token|access_key|secret_key)=)[^&\s]*",
                           re.IGNORECASE)


def redact(text: str) -> str:
    """Hide passwords in URLs anywhere in `text` (`redis://:pw@host`, `?password=pw`), so that
    settings and error messages can be printed and logged."""
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)
    return _SECRET_PARAM.sub(lambda m: f"{m['key']}***", text)
