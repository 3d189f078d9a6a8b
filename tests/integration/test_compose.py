"""docker-compose.yml is valid and has the promised topology. No Docker engine is needed: the
file is checked by `docker-compose config` (Debian's docker-compose package) or `docker compose
config`, and against the Compose JSON schema with jsonschema; then its services are inspected."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT

yaml = pytest.importorskip("yaml")

COMPOSE, ENV_EXAMPLE = ROOT / "docker-compose.yml", ROOT / ".env.example"
SCHEMAS = [Path("/usr/lib/python3/dist-packages/compose/config/compose_spec.json")]


def _compose_cli() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"],
                                                 capture_output=True).returncode == 0:
        return ["docker", "compose"]
    return None


def _config(*extra: str) -> dict:
    cli = _compose_cli()
    if cli is None:
        pytest.skip("neither docker-compose nor the docker compose plugin is installed "
                    "(apt-get install docker-compose)")
    result = subprocess.run([*cli, "--env-file", str(ENV_EXAMPLE), "-f", str(COMPOSE), *extra,
                             "config"], capture_output=True, text=True, cwd=ROOT, timeout=120,
                            env={"PATH": "/usr/local/bin:/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


@pytest.fixture(scope="module")
def config() -> dict:
    return _config()


def test_compose_file_matches_the_compose_schema() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema_path = next((p for p in SCHEMAS if p.is_file()), None)
    if schema_path is None:
        pytest.skip("no copy of the Compose JSON schema here (it comes with docker-compose)")
    raw = yaml.safe_load(COMPOSE.read_text())
    jsonschema.Draft201909Validator(json.loads(schema_path.read_text())).validate(raw)


def test_default_services_and_their_order(config: dict) -> None:
    services = config["services"]
    assert {"redis", "postgres", "minio", "minio-init", "migrate", "flower", "worker"} <= set(services)
    # The GPU workers start only with COMPOSE_PROFILES=gpu; everything else on a plain `up`.
    assert [name for name, svc in services.items() if svc.get("profiles")] in ([], ["gpu-worker"])
    assert services.get("gpu-worker", {"profiles": ["gpu"]})["profiles"] == ["gpu"]
    worker = services["worker"]
    assert worker["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert worker["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"
    assert worker["depends_on"]["redis"]["condition"] == "service_healthy"
    assert services["migrate"]["command"] == ["db", "upgrade"]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["migrate"]["restart"] == "no"
    assert "deploy" not in worker or "replicas" not in worker.get("deploy", {})  # --scale worker=N


def test_redis_persists_and_requires_a_password(config: dict) -> None:
    redis = config["services"]["redis"]
    command = redis["command"]
    command = command if isinstance(command, list) else command.split()
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--requirepass") + 1] == "change-me-redis"
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    env = config["services"]["worker"]["environment"]
    assert env["RODIN_BROKER_URL"] == "redis://:change-me-redis@redis:6379/0"
    assert env["RODIN_DATABASE_URL"].startswith("postgresql+psycopg://rodin:change-me-postgres@postgres:5432/")
    assert env["RODIN_ARTIFACTS_URL"] == "s3://rodin/artifacts"
    assert env["RODIN_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert env["REMAP_SIGTERM"] == "SIGQUIT"


def test_flower_has_basic_auth_and_listens_on_loopback_only(config: dict) -> None:
    flower = config["services"]["flower"]
    assert flower["environment"]["FLOWER_BASIC_AUTH"] == "admin:change-me-flower"
    ports = flower["ports"]
    assert ports and all(str(p.get("host_ip", p) if isinstance(p, dict) else p).startswith("127.0.0.1")
                         for p in ports)


def test_minio_bucket_is_created(config: dict) -> None:
    init = config["services"]["minio-init"]
    script = " ".join(init["entrypoint"])
    assert "mc mb --ignore-existing" in script and "MINIO_BUCKET" in script
    assert init["depends_on"]["minio"]["condition"] == "service_healthy"


def test_gpu_worker_reserves_gpus_the_compose_way() -> None:
    services = _config("--profile", "gpu")["services"]
    gpu = services["gpu-worker"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}] or \
        devices == [{"driver": "nvidia", "count": -1, "capabilities": ["gpu"]}]
    assert gpu["command"][:3] == ["worker", "--gpus", "all"]
    assert gpu["stop_grace_period"] == "2m"  # longer than RODIN_SOFT_SHUTDOWN_S
    assert gpu["environment"]["REMAP_SIGTERM"] == "SIGQUIT"


def test_env_example_sets_every_required_variable() -> None:
    import re

    required = set(re.findall(r"\$\{(\w+):\?", COMPOSE.read_text()))
    given = {line.split("=", 1)[0] for line in ENV_EXAMPLE.read_text().splitlines()
             if line and not line.startswith("#") and "=" in line}
    assert required and required <= given
