"""canary thresholds: the limits past which a canary is rolled back automatically

Revision ID: 0010
Revises: 0009

A canary alias row (``<alias>@canary``) carries the thresholds set with it: the largest error rate, the largest
ratio of its p99 latency to production's, the requests needed before either is judged, and what to do when one is
crossed ("rollback" ends the canary). Nullable: a canary without thresholds is watched by hand, as before.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("aliases", schema=None) as batch_op:
        batch_op.add_column(sa.Column("canary_thresholds", _JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("aliases", schema=None) as batch_op:
        batch_op.drop_column("canary_thresholds")
