"""audit search indexes for the console: (column, at, seq) instead of (column)

Revision ID: 0009
Revises: 0008

The console's audit search pages newest first with a keyset cursor on (at, seq) and filters by one of actor,
tag, model or decision plus a time range. With one index per column the database must either walk the whole
trail backwards filtering (a rare actor) or fetch every match and sort it (a busy one); with (column, at, seq)
each page is one index range scan whatever the filter and however deep the page. The composite indexes replace
the single-column ones (their leading column serves the same equality lookups, e.g. the export's filters), so
an append still updates the same number of indexes.
"""

from __future__ import annotations

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

COLUMNS = ("actor", "tag", "model", "decision")


def upgrade() -> None:
    with op.batch_alter_table("audit_records", schema=None) as batch_op:
        for col in (*COLUMNS, "at"):
            batch_op.drop_index(batch_op.f(f"ix_audit_records_{col}"))
        batch_op.create_index(batch_op.f("ix_audit_records_at_seq"), ["at", "seq"], unique=False)
        for col in COLUMNS:
            batch_op.create_index(batch_op.f(f"ix_audit_records_{col}_at_seq"), [col, "at", "seq"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("audit_records", schema=None) as batch_op:
        for col in COLUMNS:
            batch_op.drop_index(batch_op.f(f"ix_audit_records_{col}_at_seq"))
        batch_op.drop_index(batch_op.f("ix_audit_records_at_seq"))
        for col in (*COLUMNS, "at"):
            batch_op.create_index(batch_op.f(f"ix_audit_records_{col}"), [col], unique=False)
