"""model registry: models, versions, aliases, alias history (replaces model_aliases)

Each row of the old ``model_aliases`` table (seeded from the models file) becomes a model of the same name with
one production version of kind ``endpoint`` whose spec is the entry, and an alias pointing at it.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

import gateway.db.base
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
_TS = gateway.db.base.UTCDateTime(timezone=True)


def _digest(spec: dict) -> str:
    """Same as gateway.models.artifacts.digest for an endpoint version (kept here: migrations are frozen)."""
    body = {"kind": "endpoint", "files": {}, "base": None, "spec": spec}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def upgrade() -> None:
    op.create_table(
        "models",
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("family", sa.String(length=64), nullable=True),
        sa.Column("licence", sa.String(length=128), nullable=True),
        sa.Column("classification", sa.String(length=32), nullable=False),
        sa.Column("owner", sa.String(length=128), nullable=True),
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_models")),
    )
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_models_name"), ["name"], unique=True)

    op.create_table(
        "model_versions",
        sa.Column("model_id", sa.String(length=32), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("artifact", sa.Text(), nullable=True),
        sa.Column("files", _JSON, nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("signature", sa.String(length=128), nullable=True),
        sa.Column("signing_key_id", sa.String(length=64), nullable=True),
        sa.Column("base_version_id", sa.String(length=32), nullable=True),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("run_id", sa.String(length=64), nullable=True),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("spec", _JSON, nullable=False),
        sa.Column("eval_results", _JSON, nullable=False),
        sa.Column("gates", _JSON, nullable=False),
        sa.Column("gates_passed", sa.Boolean(), nullable=False),
        sa.Column("gate_override_by", sa.String(length=200), nullable=True),
        sa.Column("gate_override_reason", sa.String(length=1000), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("status_reason", sa.String(length=1000), nullable=True),
        sa.Column("approved_by", sa.String(length=200), nullable=True),
        sa.Column("approved_digest", sa.String(length=64), nullable=True),
        sa.Column("status_changed_at", _TS, nullable=False),
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.ForeignKeyConstraint(["base_version_id"], ["model_versions.id"],
                                name=op.f("fk_model_versions_base_version_id_model_versions")),
        sa.ForeignKeyConstraint(["model_id"], ["models.id"], name=op.f("fk_model_versions_model_id_models")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_versions")),
        sa.UniqueConstraint("model_id", "number", name=op.f("uq_model_versions_model_id_number")),
    )
    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_model_versions_digest"), ["digest"], unique=False)
        batch_op.create_index(batch_op.f("ix_model_versions_model_id"), ["model_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_model_versions_run_id"), ["run_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_model_versions_status"), ["status"], unique=False)

    op.create_table(
        "aliases",
        sa.Column("name", sa.String(length=160), nullable=False),
        sa.Column("model_id", sa.String(length=32), nullable=True),
        sa.Column("version_id", sa.String(length=32), nullable=True),
        sa.Column("previous_version_id", sa.String(length=32), nullable=True),
        sa.Column("percent", sa.Float(), nullable=True),
        sa.Column("principals", _JSON, nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.Column("updated_by", sa.String(length=200), nullable=True),
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.ForeignKeyConstraint(["model_id"], ["models.id"], name=op.f("fk_aliases_model_id_models")),
        sa.ForeignKeyConstraint(["previous_version_id"], ["model_versions.id"],
                                name=op.f("fk_aliases_previous_version_id_model_versions")),
        sa.ForeignKeyConstraint(["version_id"], ["model_versions.id"],
                                name=op.f("fk_aliases_version_id_model_versions")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_aliases")),
    )
    with op.batch_alter_table("aliases", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_aliases_name"), ["name"], unique=True)

    op.create_table(
        "alias_history",
        sa.Column("alias", sa.String(length=160), nullable=False),
        sa.Column("version_id", sa.String(length=32), nullable=True),
        sa.Column("previous_version_id", sa.String(length=32), nullable=True),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("percent", sa.Float(), nullable=True),
        sa.Column("reason", sa.String(length=1000), nullable=True),
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alias_history")),
    )
    with op.batch_alter_table("alias_history", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_alias_history_alias"), ["alias"], unique=False)

    _migrate_model_aliases()

    with op.batch_alter_table("model_aliases", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_model_aliases_alias"))
    op.drop_table("model_aliases")


def _migrate_model_aliases() -> None:
    conn = op.get_bind()
    old = sa.table("model_aliases", sa.column("alias"), sa.column("backend"), sa.column("spec", _JSON),
                   sa.column("classification"), sa.column("owner"), sa.column("enabled"))
    models = sa.table("models", *(sa.column(c) for c in ("id", "created_at", "name", "classification", "owner")))
    versions = sa.table("model_versions", *(sa.column(c) for c in (
        "id", "created_at", "model_id", "number", "kind", "digest", "source", "created_by", "status",
        "status_changed_at", "gates_passed")), sa.column("files", _JSON), sa.column("spec", _JSON),
        sa.column("eval_results", _JSON), sa.column("gates", _JSON))
    aliases = sa.table("aliases", *(sa.column(c) for c in (
        "id", "created_at", "name", "model_id", "version_id", "generation", "updated_at", "updated_by")),
        sa.column("principals", _JSON))
    history = sa.table("alias_history", *(sa.column(c) for c in (
        "id", "created_at", "alias", "version_id", "action", "actor", "generation")))
    now = datetime.now(UTC)
    for row in conn.execute(sa.select(old)).mappings():
        if not row["enabled"]:
            continue
        spec = {"backend": row["backend"], **(row["spec"] or {})}
        spec.pop("alias", None)
        model_id, version_id = uuid.uuid4().hex, uuid.uuid4().hex
        conn.execute(models.insert().values(id=model_id, created_at=now, name=row["alias"],
                                            classification=row["classification"] or "internal",
                                            owner=row["owner"]))
        conn.execute(versions.insert().values(
            id=version_id, created_at=now, model_id=model_id, number=1, kind="endpoint", files={},
            digest=_digest(spec), source="models-file", created_by="models-file", spec=spec, eval_results={},
            gates={}, gates_passed=True, status="production", status_changed_at=now))
        conn.execute(aliases.insert().values(id=uuid.uuid4().hex, created_at=now, name=row["alias"],
                                             model_id=model_id, version_id=version_id, generation=1,
                                             updated_at=now, updated_by="migration", principals=[]))
        conn.execute(history.insert().values(id=uuid.uuid4().hex, created_at=now, alias=row["alias"],
                                             version_id=version_id, action="seed", actor="migration",
                                             generation=1))


def downgrade() -> None:
    op.create_table(
        "model_aliases",
        sa.Column("alias", sa.String(length=128), nullable=False),
        sa.Column("backend", sa.String(length=32), nullable=False),
        sa.Column("spec", _JSON, nullable=False),
        sa.Column("classification", sa.String(length=32), nullable=False),
        sa.Column("owner", sa.String(length=128), nullable=True),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_aliases")),
    )
    with op.batch_alter_table("model_aliases", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_model_aliases_alias"), ["alias"], unique=True)
    conn = op.get_bind()
    rows = conn.execute(sa.text(
        "SELECT a.name, v.spec, m.classification, m.owner FROM aliases a JOIN model_versions v ON v.id = a.version_id "
        "JOIN models m ON m.id = v.model_id WHERE v.kind = 'endpoint' AND a.name NOT LIKE '%@canary'")).all()
    old = sa.table("model_aliases", sa.column("id"), sa.column("created_at"), sa.column("alias"),
                   sa.column("backend"), sa.column("spec", _JSON), sa.column("classification"),
                   sa.column("owner"), sa.column("enabled"))
    now = datetime.now(UTC)
    for name, spec, classification, owner in rows:
        spec = json.loads(spec) if isinstance(spec, str) else dict(spec)
        backend = spec.pop("backend", "embedded")
        conn.execute(old.insert().values(id=uuid.uuid4().hex, created_at=now, alias=name, backend=backend,
                                         spec=spec, classification=classification, owner=owner, enabled=True))
    for table in ("alias_history", "aliases", "model_versions", "models"):
        op.drop_table(table)
