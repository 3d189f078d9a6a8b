"""Integration tests against real servers: Redis, PostgreSQL and an S3-compatible server.

The servers start once per session from their binaries (tests/servers.py); a test whose server
is not installed here is skipped with the reason.
"""

from tests.servers import postgres_fixture, redis_fixture, s3_fixture  # noqa: F401
