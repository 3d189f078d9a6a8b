"""Alembic owns the schema on PostgreSQL too: on an empty database `upgrade head` gives exactly
the models' schema (autogenerate finds nothing to do) and `downgrade base` removes it all."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from orchestrator.registry.db import (
    current_revision,
    downgrade,
    get_engine,
    head_revision,
    make_engine,
    upgrade,
)
from orchestrator.registry.models import Base
from orchestrator.settings import Settings


def test_upgrade_matches_models_and_downgrade_empties(postgres_server) -> None:  # type: ignore[no-untyped-def]
    url = postgres_server.create_database("migrations")
    engine = make_engine(url)
    try:
        assert current_revision(engine) is None
        upgrade(url)
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True,
                                                             "compare_server_default": True})
            assert context.get_current_revision() == head_revision()
            assert compare_metadata(context, Base.metadata) == []
        assert set(inspect(engine).get_table_names()) >= {"jobs", "models", "datasets", "workers"}
        downgrade(url, "base")
        assert set(inspect(engine).get_table_names()) == {"alembic_version"}
        upgrade(url)  # and back up again, from base
        assert current_revision(engine) == head_revision()
    finally:
        engine.dispose()


def test_a_shared_registry_is_never_upgraded_implicitly(postgres_server) -> None:  # type: ignore[no-untyped-def]
    from orchestrator.registry.db import SchemaOutOfDate

    url = postgres_server.create_database("implicit")
    settings = Settings(database_url=url)
    try:
        get_engine(settings)
    except SchemaOutOfDate as exc:
        assert "rodin db upgrade" in str(exc)
    else:
        raise AssertionError("an empty shared registry must not be used without `rodin db upgrade`")
    engine = make_engine(url)
    assert current_revision(engine) is None  # nothing was created
    engine.dispose()


def test_head_revision_is_read_without_alembic_and_agrees_with_it() -> None:
    from alembic.script import ScriptDirectory

    from orchestrator.registry.db import _scan_head, alembic_config

    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    assert _scan_head() == script.get_current_head() == head_revision()
