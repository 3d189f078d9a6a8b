"""job dependencies: jobs.depends_on_job_id (a fine-tune waits for its pre-training)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: Union[str, None] = "0003"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("depends_on_job_id", sa.Integer(), nullable=True))
        batch_op.create_index(batch_op.f("ix_jobs_depends_on_job_id"), ["depends_on_job_id"], unique=False)
        batch_op.create_foreign_key(batch_op.f("fk_jobs_depends_on_job_id_jobs"), "jobs",
                                    ["depends_on_job_id"], ["id"])


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_jobs_depends_on_job_id_jobs"), type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_jobs_depends_on_job_id"))
        batch_op.drop_column("depends_on_job_id")
