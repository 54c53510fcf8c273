"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight Llama model with a ChatML tokenizer (built locally, no download)."""
    from tests.support.tiny_model import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny-model"))


# --- real services: Postgres and Redis on 127.0.0.1, a fresh database per test session -----------------------

PG_ADMIN_URL = os.environ.get("PALISADE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_TEST_URL = os.environ.get("PALISADE_TEST_REDIS", "redis://127.0.0.1:6379/9")


@pytest.fixture(scope="module")
def pg_url() -> str:
    """A new, empty Postgres database for each test module (dropped afterwards).

    Per module, not per session: each module's processes hold their own master key (data dir), and data keys
    wrapped under one module's key must not meet another module's replicas.
    """
    import secrets

    import psycopg

    name = f"palisade_test_{secrets.token_hex(4)}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def redis_url() -> str:
    import redis

    client = redis.Redis.from_url(REDIS_TEST_URL)
    client.flushdb()
    client.close()
    return REDIS_TEST_URL


@pytest.fixture(scope="session")
def tiny_models_file(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """A models file serving the tiny model as `tiny` (embedded backend)."""
    path = tmp_path_factory.mktemp("models") / "models.yaml"
    path.write_text(f"models:\n  - alias: tiny\n    backend: embedded\n    model: {tiny_model_dir}\n")
    return path
