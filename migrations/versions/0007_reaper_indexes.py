"""indexes for the reaper's periodic reads: jobs (status, heartbeat_at), (status, depends_on_job_id)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-10
"""
from typing import Sequence, Union

from alembic import op

revision: str = "0007"
down_revision: Union[str, None] = "0006"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.create_index("ix_jobs_status_heartbeat_at", ["status", "heartbeat_at"], unique=False)
        batch_op.create_index("ix_jobs_status_depends_on_job_id", ["status", "depends_on_job_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_status_depends_on_job_id")
        batch_op.drop_index("ix_jobs_status_heartbeat_at")
