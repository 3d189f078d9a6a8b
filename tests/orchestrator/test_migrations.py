"""Alembic owns the schema: upgrade gives exactly the models' schema, downgrade removes it."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from orchestrator.registry.db import downgrade, head_revision, make_engine, upgrade
from orchestrator.registry.models import Base


def test_upgrade_matches_models_and_downgrade_empties(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    upgrade(url)
    engine = make_engine(url)
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert context.get_current_revision() == head_revision()
        assert compare_metadata(context, Base.metadata) == []
    downgrade(url, "base")
    assert set(inspect(make_engine(url)).get_table_names()) == {"alembic_version"}
