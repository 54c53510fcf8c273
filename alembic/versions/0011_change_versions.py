"""change counters: one row per replicated domain, bumped with every write to its tables

Revision ID: 0011
Revises: 0010

The change feed's periodic check reads these rows (one statement) and re-reads a domain's tables only when its
counter moved, instead of re-reading the policy, limits and registry tables every second.
"""

from __future__ import annotations

import sqlalchemy as sa

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    table = op.create_table(
        "change_versions",
        sa.Column("domain", sa.String(length=32), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("domain", name=op.f("pk_change_versions")),
    )
    op.bulk_insert(table, [{"domain": d, "version": 0} for d in ("policy", "limits", "models")])


def downgrade() -> None:
    op.drop_table("change_versions")
