"""audit trail and keyring

Revision ID: 0002
Revises: 0001

Tables: audit_records (hash chain), audit_checkpoints (signed heads), audit_signing_keys (Ed25519, private key
encrypted by the keyring), audit_head (the row each append batch locks), data_keys (the keyring's wrapped keys).

On Postgres the trigger ``palisade_audit_append_only`` refuses UPDATE, DELETE and TRUNCATE on audit_records and
audit_checkpoints for every role (pruning, run as the table owner, disables it inside its own transaction). When
``PALISADE_DB_APP_ROLE`` names the role the gateway connects as (run migrations as the owner, not as that role),
that role is also stripped of UPDATE/DELETE/TRUNCATE there and granted only SELECT/INSERT, so even a compromised
gateway cannot disable the trigger (only the owner can).
"""

from __future__ import annotations

import os

import sqlalchemy as sa

import gateway.db.base
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

APPEND_ONLY = ("audit_records", "audit_checkpoints")


def upgrade() -> None:
    op.create_table(
        "audit_checkpoints",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("head_hash", sa.String(length=64), nullable=False),
        sa.Column("at", gateway.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("key_id", sa.String(length=64), nullable=False),
        sa.Column("signature", sa.String(length=128), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_checkpoints")),
    )
    with op.batch_alter_table("audit_checkpoints", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_audit_checkpoints_seq"), ["seq"], unique=False)

    op.create_table(
        "audit_head",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_head")),
    )
    op.execute(
        sa.text("INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, :zero)").bindparams(zero="0" * 64)
    )

    op.create_table(
        "audit_records",
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("at", gateway.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("tag", sa.String(length=128), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=True),
        sa.Column("target", sa.String(length=200), nullable=True),
        sa.Column("model", sa.String(length=128), nullable=True),
        sa.Column("decision", sa.String(length=128), nullable=True),
        sa.Column("request_id", sa.String(length=128), nullable=True),
        sa.Column("details", sa.Text(), nullable=False),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_audit_records")),
    )
    with op.batch_alter_table("audit_records", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_audit_records_actor"), ["actor"], unique=False)
        batch_op.create_index(batch_op.f("ix_audit_records_at"), ["at"], unique=False)
        batch_op.create_index(batch_op.f("ix_audit_records_decision"), ["decision"], unique=False)
        batch_op.create_index(batch_op.f("ix_audit_records_model"), ["model"], unique=False)
        batch_op.create_index(batch_op.f("ix_audit_records_tag"), ["tag"], unique=False)

    op.create_table(
        "audit_signing_keys",
        sa.Column("key_id", sa.String(length=64), nullable=False),
        sa.Column("public_key", sa.Text(), nullable=False),
        sa.Column("private_key", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", gateway.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("key_id", name=op.f("pk_audit_signing_keys")),
    )
    op.create_table(
        "data_keys",
        sa.Column("purpose", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("kek_id", sa.String(length=200), nullable=False),
        sa.Column("wrapped", sa.LargeBinary(), nullable=False),
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("created_at", gateway.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_data_keys")),
        sa.UniqueConstraint("purpose", "version", name=op.f("uq_data_keys_purpose_version")),
    )

    if op.get_bind().dialect.name == "postgresql":
        _postgres_append_only()


def _postgres_append_only() -> None:
    op.execute("""
        CREATE OR REPLACE FUNCTION palisade_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'palisade: % on % is not allowed (the audit trail is append-only)',
                TG_OP, TG_TABLE_NAME USING ERRCODE = 'insufficient_privilege';
        END $$
    """)
    for table in APPEND_ONLY:
        op.execute(
            f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION palisade_audit_append_only()"
        )
        op.execute(
            f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
            "FOR EACH STATEMENT EXECUTE FUNCTION palisade_audit_append_only()"
        )
    role = os.environ.get("PALISADE_DB_APP_ROLE", "").strip()
    if role:
        quoted = '"' + role.replace('"', '""') + '"'
        for table in APPEND_ONLY:
            op.execute(f"REVOKE ALL ON {table} FROM {quoted}")
            op.execute(f"GRANT SELECT, INSERT ON {table} TO {quoted}")
        op.execute(f"GRANT USAGE, SELECT ON SEQUENCE audit_checkpoints_id_seq TO {quoted}")
        op.execute(f"GRANT SELECT, UPDATE ON audit_head TO {quoted}")
        op.execute(f"GRANT SELECT, INSERT ON audit_signing_keys TO {quoted}")
        op.execute(f"GRANT SELECT, INSERT, UPDATE ON data_keys TO {quoted}")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table in APPEND_ONLY:
            op.execute(f"DROP TRIGGER IF EXISTS {table}_append_only ON {table}")
            op.execute(f"DROP TRIGGER IF EXISTS {table}_no_truncate ON {table}")
        op.execute("DROP FUNCTION IF EXISTS palisade_audit_append_only()")
    op.drop_table("data_keys")
    op.drop_table("audit_signing_keys")
    with op.batch_alter_table("audit_records", schema=None) as batch_op:
        for col in ("tag", "model", "decision", "at", "actor"):
            batch_op.drop_index(batch_op.f(f"ix_audit_records_{col}"))
    op.drop_table("audit_records")
    op.drop_table("audit_head")
    with op.batch_alter_table("audit_checkpoints", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_audit_checkpoints_seq"))
    op.drop_table("audit_checkpoints")
