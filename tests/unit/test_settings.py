"""Settings are typed, read from PALISADE_* once, and refuse bad values at start."""

from __future__ import annotations

import pytest

from gateway.settings import Settings, SettingsError


def _from(monkeypatch, **env):
    for k in list(__import__("os").environ):
        if k.startswith("PALISADE_"):
            monkeypatch.delenv(k)
    for k, v in env.items():
        monkeypatch.setenv(f"PALISADE_{k}", v)
    return Settings.from_env()


def test_embedded_defaults(monkeypatch, tmp_path):
    s = _from(monkeypatch, DATA_DIR=str(tmp_path))
    assert s.embedded_mode and s.is_sqlite
    assert s.database_url == f"sqlite:///{tmp_path / 'palisade.db'}"
    assert s.async_database_url.startswith("sqlite+aiosqlite:///")
    assert s.celery_broker_url == f"sqla+sqlite:///{tmp_path / 'celery-broker.db'}"


def test_production_urls(monkeypatch, tmp_path):
    s = _from(monkeypatch, DATA_DIR=str(tmp_path), DATABASE_URL="postgres://u:pw@db/x", REDIS_URL="redis://r:6379/0")
    assert not s.embedded_mode
    assert s.database_url == "postgresql+psycopg://u:pw@db/x"
    assert "pw" not in s.describe()["database_url"]


@pytest.mark.parametrize(
    ("name", "value", "needle"),
    [
        ("PORT", "eighty", "integer"),
        ("PORT", "70000", "1..65535"),
        ("REDIS_URL", "http://nope", "redis://"),
        ("MODELS_FILE", "/does/not/exist.yaml", "does not exist"),
        ("LOG_LEVEL", "loud", "LOG_LEVEL"),
        ("TLS_CERT", "/tmp/cert.pem", "go together"),
        ("READ_TIMEOUT_S", "soon", "number"),
    ],
)
def test_bad_values_refused_at_start(monkeypatch, tmp_path, name, value, needle):
    with pytest.raises(SettingsError, match=needle):
        _from(monkeypatch, DATA_DIR=str(tmp_path), **{name: value})
