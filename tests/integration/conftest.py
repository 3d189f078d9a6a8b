"""Integration tests against real servers: Redis, PostgreSQL and an S3-compatible server.

The servers start once per session from their binaries (tests/servers.py); a test whose server
is not installed here is skipped with the reason.
"""

from pathlib import Path

import pytest

from tests.integration.recovery import FAST_RECOVERY
from tests.servers import postgres_fixture, redis_fixture, s3_fixture  # noqa: F401


@pytest.fixture
def shared(tmp_path: Path, redis_server, postgres_server) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """A Redis, a PostgreSQL database and a store every process of a recovery test shares."""
    return {"RODIN_BROKER_URL": redis_server.url,
            "RODIN_DATABASE_URL": postgres_server.create_database("recovery"),
            "RODIN_ARTIFACTS_URL": (tmp_path / "artifacts").as_uri(), **FAST_RECOVERY}
