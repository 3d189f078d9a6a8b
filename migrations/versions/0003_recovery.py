"""recovery and fencing: jobs.lost, jobs.lease_token, jobs.sent_at; one checkpoint per (job, epoch)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: Union[str, None] = "0002"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    duplicates = op.get_bind().execute(sa.text(
        "SELECT job_id, epoch, count(*) FROM models GROUP BY job_id, epoch HAVING count(*) > 1"
    )).fetchall()
    if duplicates:
        # Registered checkpoints are never deleted by a migration: a person decides which stays.
        shown = ", ".join(f"job {j} epoch {e} ({n} rows)" for j, e, n in duplicates[:5])
        raise RuntimeError(f"the registry holds duplicate checkpoints ({shown}); keep one row per "
                           "job and epoch (and repoint parent_id / jobs.input_model_id), then upgrade")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("lost", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("lease_token", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.alter_column("lost", server_default=None)
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.create_unique_constraint("uq_models_job_id_epoch", ["job_id", "epoch"])


def downgrade() -> None:
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.drop_constraint("uq_models_job_id_epoch", type_="unique")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("sent_at")
        batch_op.drop_column("lease_token")
        batch_op.drop_column("lost")
