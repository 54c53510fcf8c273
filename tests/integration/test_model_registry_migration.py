"""Migration 0005 on real Postgres and SQLite: seeded ``model_aliases`` rows become models, production
``endpoint`` versions and aliases (with history), and a downgrade gives the old table back."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

from alembic import command
from gateway.db.migrate import alembic_config, upgrade
from gateway.settings import Settings, normalise_db_url

pytestmark = pytest.mark.postgres


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
def test_model_aliases_become_registry_rows_and_back(backend, pg_url, tmp_path) -> None:
    url = normalise_db_url(pg_url) if backend == "postgres" else f"sqlite:///{tmp_path / 'm.db'}"
    settings = Settings(data_dir=tmp_path, database_url=url)
    upgrade(settings, "0004")
    engine = sa.create_engine(url)
    spec = {"url": "http://up:8000/v1", "upstream_model": "gpt-x", "max_concurrency": 8}
    with engine.begin() as c:
        c.execute(sa.text("INSERT INTO model_aliases (id, created_at, alias, backend, spec, classification, owner, "
                          "enabled) VALUES ('a1', CURRENT_TIMESTAMP, 'mock', 'openai', :spec, 'restricted', "
                          "'team-a', true)"), {"spec": json.dumps(spec)})
    upgrade(settings)
    with engine.connect() as c:
        row = c.execute(sa.text(
            "SELECT a.name, a.generation, v.kind, v.status, v.source, v.spec, m.classification, m.owner "
            "FROM aliases a JOIN model_versions v ON v.id = a.version_id JOIN models m ON m.id = a.model_id")).one()
        hist = c.execute(sa.text("SELECT alias, action FROM alias_history")).all()
    name, generation, kind, status, source, vspec, classification, owner = row
    vspec = json.loads(vspec) if isinstance(vspec, str) else vspec
    assert (name, generation, kind, status, source) == ("mock", 1, "endpoint", "production", "models-file")
    assert vspec == {"backend": "openai", **spec} and (classification, owner) == ("restricted", "team-a")
    assert [tuple(h) for h in hist] == [("mock", "seed")]
    command.downgrade(alembic_config(url), "0004")
    with engine.connect() as c:
        back = c.execute(sa.text("SELECT alias, backend, spec, classification FROM model_aliases")).one()
    engine.dispose()
    bspec = json.loads(back[2]) if isinstance(back[2], str) else back[2]
    assert (back[0], back[1], back[3], bspec) == ("mock", "openai", "restricted", spec)
