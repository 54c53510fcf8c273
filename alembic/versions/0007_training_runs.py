"""training runs: runs (request, approval, lease, metrics, candidate, reproducibility) and run events

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

import gateway.db.base
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
_TS = gateway.db.base.UTCDateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "training_runs",
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("parent_id", sa.String(length=32), nullable=True),
        sa.Column("trial_number", sa.Integer(), nullable=True),
        sa.Column("dataset_id", sa.String(length=64), nullable=False),
        sa.Column("method", sa.String(length=32), nullable=False),
        sa.Column("base", sa.String(length=500), nullable=True),
        sa.Column("config", _JSON, nullable=False),
        sa.Column("gates", _JSON, nullable=False),
        sa.Column("sweep", _JSON, nullable=True),
        sa.Column("requester", sa.String(length=200), nullable=False),
        sa.Column("request_digest", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("approved_by", sa.String(length=200), nullable=True),
        sa.Column("approved_at", _TS, nullable=True),
        sa.Column("approved_digest", sa.String(length=64), nullable=True),
        sa.Column("lease_owner", sa.String(length=200), nullable=True),
        sa.Column("lease_until", _TS, nullable=True),
        sa.Column("heartbeat_at", _TS, nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("run_dir", sa.Text(), nullable=True),
        sa.Column("started_at", _TS, nullable=True),
        sa.Column("finished_at", _TS, nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("metrics", _JSON, nullable=False),
        sa.Column("evaluation", _JSON, nullable=False),
        sa.Column("gate_results", _JSON, nullable=False),
        sa.Column("candidate", _JSON, nullable=False),
        sa.Column("candidate_version", sa.String(length=64), nullable=True),
        sa.Column("reproducibility", _JSON, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.ForeignKeyConstraint(["parent_id"], ["training_runs.id"],
                                name=op.f("fk_training_runs_parent_id_training_runs")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_training_runs")),
    )
    with op.batch_alter_table("training_runs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_training_runs_parent_id"), ["parent_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_training_runs_dataset_id"), ["dataset_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_training_runs_requester"), ["requester"], unique=False)
        batch_op.create_index(batch_op.f("ix_training_runs_status"), ["status"], unique=False)

    op.create_table(
        "training_run_events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.String(length=32), nullable=False),
        sa.Column("at", _TS, nullable=False),
        sa.Column("type", sa.String(length=32), nullable=False),
        sa.Column("data", _JSON, nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["training_runs.id"], ondelete="CASCADE",
                                name=op.f("fk_training_run_events_run_id_training_runs")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_training_run_events")),
    )
    with op.batch_alter_table("training_run_events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_training_run_events_run_id"), ["run_id"], unique=False)


def downgrade() -> None:
    op.drop_table("training_run_events")
    op.drop_table("training_runs")
