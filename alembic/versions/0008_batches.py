"""batches: uploaded files, batches, per-line results, feedback; audit records findable by request id

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy import Text  # noqa: F401  (autogenerate renders JSONB with astext_type=Text())
from sqlalchemy.dialects import postgresql

import gateway.db.base
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('batch_files',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('owner', sa.String(length=200), nullable=False),
    sa.Column('filename', sa.String(length=255), nullable=False),
    sa.Column('purpose', sa.String(length=32), nullable=False),
    sa.Column('bytes', sa.BigInteger(), nullable=False),
    sa.Column('lines', sa.Integer(), nullable=False),
    sa.Column('chunks', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('created_at', gateway.db.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('expires_at', gateway.db.base.UTCDateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_batch_files'))
    )
    with op.batch_alter_table('batch_files', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_batch_files_expires_at'), ['expires_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_batch_files_owner'), ['owner'], unique=False)

    op.create_table('batch_results',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('batch_id', sa.String(length=40), nullable=False),
    sa.Column('line_no', sa.Integer(), nullable=False),
    sa.Column('status_code', sa.Integer(), nullable=False),
    sa.Column('request_id', sa.String(length=64), nullable=False),
    sa.Column('line', sa.LargeBinary(), nullable=False),
    sa.Column('finished_at', gateway.db.base.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_batch_results')),
    sa.UniqueConstraint('batch_id', 'line_no', name=op.f('uq_batch_results_batch_id_line_no'))
    )
    with op.batch_alter_table('batch_results', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_batch_results_batch_id'), ['batch_id'], unique=False)

    op.create_table('batches',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('owner', sa.String(length=200), nullable=False),
    sa.Column('endpoint', sa.String(length=64), nullable=False),
    sa.Column('input_file_id', sa.String(length=40), nullable=False),
    sa.Column('completion_window', sa.String(length=8), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('meta', sa.JSON().with_variant(postgresql.JSONB(astext_type=Text()), 'postgresql'), nullable=True),
    sa.Column('errors', sa.JSON().with_variant(postgresql.JSONB(astext_type=Text()), 'postgresql'), nullable=True),
    sa.Column('output_file_id', sa.String(length=40), nullable=True),
    sa.Column('error_file_id', sa.String(length=40), nullable=True),
    sa.Column('total', sa.Integer(), nullable=False),
    sa.Column('completed', sa.Integer(), nullable=False),
    sa.Column('failed', sa.Integer(), nullable=False),
    sa.Column('concurrency', sa.Integer(), nullable=False),
    sa.Column('created_at', gateway.db.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('in_progress_at', gateway.db.base.UTCDateTime(timezone=True), nullable=True),
    sa.Column('expires_at', gateway.db.base.UTCDateTime(timezone=True), nullable=True),
    sa.Column('finalizing_at', gateway.db.base.UTCDateTime(timezone=True), nullable=True),
    sa.Column('completed_at', gateway.db.base.UTCDateTime(timezone=True), nullable=True),
    sa.Column('failed_at', gateway.db.base.UTCDateTime(timezone=True), nullable=True),
    sa.Column('expired_at', gateway.db.base.UTCDateTime(timezone=True), nullable=True),
    sa.Column('cancelling_at', gateway.db.base.UTCDateTime(timezone=True), nullable=True),
    sa.Column('cancelled_at', gateway.db.base.UTCDateTime(timezone=True), nullable=True),
    sa.Column('lease_owner', sa.String(length=128), nullable=True),
    sa.Column('lease_until', gateway.db.base.UTCDateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_batches'))
    )
    with op.batch_alter_table('batches', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_batches_owner'), ['owner'], unique=False)
        batch_op.create_index(batch_op.f('ix_batches_status'), ['status'], unique=False)

    op.create_table('feedback',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('request_id', sa.String(length=128), nullable=False),
    sa.Column('actor', sa.String(length=200), nullable=False),
    sa.Column('rater', sa.String(length=200), nullable=False),
    sa.Column('model', sa.String(length=128), nullable=False),
    sa.Column('model_version', sa.String(length=128), nullable=True),
    sa.Column('rating', sa.String(length=8), nullable=False),
    sa.Column('score', sa.Float(), nullable=False),
    sa.Column('comment', sa.LargeBinary(), nullable=True),
    sa.Column('correction', sa.LargeBinary(), nullable=True),
    sa.Column('content', sa.LargeBinary(), nullable=True),
    sa.Column('created_at', gateway.db.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', gateway.db.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updates', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_feedback')),
    sa.UniqueConstraint('request_id', 'actor', name=op.f('uq_feedback_request_id_actor'))
    )
    with op.batch_alter_table('feedback', schema=None) as batch_op:
        batch_op.create_index('ix_feedback_model_created', ['model', 'created_at'], unique=False)

    # feedback looks up the request it rates by id (audit records are append-only; an index is not a change)
    op.create_index(op.f('ix_audit_records_request_id'), 'audit_records', ['request_id'], unique=False)



def downgrade() -> None:
    op.drop_index(op.f('ix_audit_records_request_id'), table_name='audit_records')

    with op.batch_alter_table('feedback', schema=None) as batch_op:
        batch_op.drop_index('ix_feedback_model_created')

    op.drop_table('feedback')
    with op.batch_alter_table('batches', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_batches_status'))
        batch_op.drop_index(batch_op.f('ix_batches_owner'))

    op.drop_table('batches')
    with op.batch_alter_table('batch_results', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_batch_results_batch_id'))

    op.drop_table('batch_results')
    with op.batch_alter_table('batch_files', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_batch_files_owner'))
        batch_op.drop_index(batch_op.f('ix_batch_files_expires_at'))

    op.drop_table('batch_files')
