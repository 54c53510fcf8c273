"""governed datasets: datasets, dataset versions, approvals

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

import gateway.db.base
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
_TS = gateway.db.base.UTCDateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "datasets",
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("owner", sa.String(length=200), nullable=False),
        sa.Column("deleted_at", _TS, nullable=True),
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_datasets")),
    )
    with op.batch_alter_table("datasets", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_datasets_name"), ["name"], unique=True)
        batch_op.create_index(batch_op.f("ix_datasets_owner"), ["owner"], unique=False)

    op.create_table(
        "dataset_versions",
        sa.Column("dataset_id", sa.String(length=32), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("owner", sa.String(length=200), nullable=False),
        sa.Column("purpose", sa.Text(), nullable=False),
        sa.Column("classification", sa.String(length=32), nullable=False),
        sa.Column("legal_basis", sa.String(length=200), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("licence", sa.String(length=200), nullable=False),
        sa.Column("retention_days", sa.Integer(), nullable=True),
        sa.Column("parent_id", sa.String(length=32), nullable=True),
        sa.Column("pipeline_config", _JSON, nullable=False),
        sa.Column("code_version", sa.String(length=64), nullable=True),
        sa.Column("content_digest", sa.String(length=80), nullable=True),
        sa.Column("records_in", sa.Integer(), nullable=False),
        sa.Column("records_out", sa.Integer(), nullable=False),
        sa.Column("stages", _JSON, nullable=False),
        sa.Column("pii", _JSON, nullable=False),
        sa.Column("card", _JSON, nullable=False),
        sa.Column("manifest", _JSON, nullable=False),
        sa.Column("progress", _JSON, nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("bias_flagged", sa.Boolean(), nullable=False),
        sa.Column("input_ref", sa.Text(), nullable=True),
        sa.Column("updated_at", _TS, nullable=False),
        sa.Column("deleted_at", _TS, nullable=True),
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.ForeignKeyConstraint(["dataset_id"], ["datasets.id"], name=op.f("fk_dataset_versions_dataset_id_datasets")),
        sa.ForeignKeyConstraint(["parent_id"], ["dataset_versions.id"],
                                name=op.f("fk_dataset_versions_parent_id_dataset_versions")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dataset_versions")),
        sa.UniqueConstraint("dataset_id", "number", name=op.f("uq_dataset_versions_dataset_id_number")),
    )
    with op.batch_alter_table("dataset_versions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_dataset_versions_dataset_id"), ["dataset_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_dataset_versions_status"), ["status"], unique=False)
        batch_op.create_index(batch_op.f("ix_dataset_versions_owner"), ["owner"], unique=False)
        batch_op.create_index(batch_op.f("ix_dataset_versions_content_digest"), ["content_digest"], unique=False)

    op.create_table(
        "dataset_approvals",
        sa.Column("version_id", sa.String(length=32), nullable=False),
        sa.Column("approver", sa.String(length=200), nullable=False),
        sa.Column("decision", sa.String(length=16), nullable=False),
        sa.Column("digest", sa.String(length=80), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("bias_waived", sa.Boolean(), nullable=False),
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.ForeignKeyConstraint(["version_id"], ["dataset_versions.id"],
                                name=op.f("fk_dataset_approvals_version_id_dataset_versions")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dataset_approvals")),
    )
    with op.batch_alter_table("dataset_approvals", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_dataset_approvals_version_id"), ["version_id"], unique=False)


def downgrade() -> None:
    op.drop_table("dataset_approvals")
    op.drop_table("dataset_versions")
    op.drop_table("datasets")
