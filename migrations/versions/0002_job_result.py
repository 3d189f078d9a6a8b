"""jobs.result: what a job found (evaluation scores, a training's final model)

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: Union[str, None] = "0001"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        # Existing rows get an empty object so the column can be NOT NULL like the model's.
        batch_op.add_column(sa.Column("result", sa.JSON(), nullable=False, server_default="{}"))
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.alter_column("result", server_default=None)


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("result")
