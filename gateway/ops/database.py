"""Consistent online snapshots of the database, and restoring one into an empty database.

SQLite: the online backup API (``sqlite3.Connection.backup``) copies pages while the gateway keeps writing
(WAL mode); the copy is one consistent state. Postgres: a ``REPEATABLE READ`` transaction exports its snapshot
(``pg_export_snapshot``), the facts the manifest needs (schema revision, audit head, wrapped data keys) are read in
it, and ``pg_dump --snapshot`` dumps exactly that state while the transaction stays open, so the manifest and the
dump describe the same instant. Credentials reach ``pg_dump``/``pg_restore`` through the environment, never argv.
"""

from __future__ import annotations

import base64
import os
import shutil
import sqlite3
import subprocess  # nosec B404 # pg_dump/pg_restore run with fixed argument lists, no shell
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

# tables whose rows are schema bookkeeping, not data: a freshly migrated database counts as empty
_SCHEMA_ONLY = {"alembic_version"}
#: rows a migration seeds: only rows past these conditions are data
_SEEDED = {"audit_head": "seq > 0", "change_versions": "version > 0"}


@dataclass
class SnapshotFacts:
    """What the manifest says about the database, read inside the snapshot itself."""

    kind: str
    alembic_revision: str | None
    audit_last_seq: int
    audit_last_hash: str | None
    data_keys: list[dict[str, Any]] = field(default_factory=list)

    @property
    def kek_ids(self) -> list[str]:
        return sorted({k["kek_id"] for k in self.data_keys})


class DatabaseError(Exception):
    """The snapshot or the restore failed; the message says why in an operator's words."""


def sqlite_path(database_url: str) -> Path:
    url = make_url(database_url)
    if not url.database or url.database == ":memory:":
        raise DatabaseError("an in-memory SQLite database cannot be backed up")
    return Path(url.database)


def _pg_env_and_dsn(database_url: str) -> tuple[dict[str, str], list[str]]:
    """libpq environment (password out of argv) and connection flags for pg_dump/pg_restore."""
    url = make_url(database_url)
    env = dict(os.environ)
    if url.password:
        env["PGPASSWORD"] = url.password
    args = ["--host", url.host or "127.0.0.1", "--port", str(url.port or 5432), "--dbname", url.database or ""]
    if url.username:
        args += ["--username", url.username]
    return env, args


def _psycopg_dsn(database_url: str) -> str:
    return make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise DatabaseError(f"{name} is not installed (apt-get install postgresql-client); it is needed for "
                            "backups and restores of a Postgres database")
    return path


def _facts(cur: Any, kind: str) -> SnapshotFacts:
    def one(sql: str) -> Any:
        try:
            cur.execute(sql)
            row = cur.fetchone()
            return row[0] if row else None
        except Exception:  # a table not created yet: an empty installation
            return None

    revision = one("SELECT version_num FROM alembic_version")
    seq = one("SELECT max(seq) FROM audit_records") or 0
    last_hash = one(f"SELECT hash FROM audit_records WHERE seq = {int(seq)}") if seq else None  # noqa: S608 # nosec B608 # seq is an int
    keys: list[dict[str, Any]] = []
    try:
        cur.execute("SELECT purpose, version, kek_id, wrapped FROM data_keys ORDER BY purpose, version")
        for purpose, version, kek_id, wrapped in cur.fetchall():
            keys.append({"purpose": purpose, "version": version, "kek_id": kek_id,
                         "wrapped": base64.b64encode(bytes(wrapped)).decode()})
    except Exception:  # noqa: S110 - no keyring table yet: nothing to list
        pass
    return SnapshotFacts(kind, revision, int(seq), last_hash, keys)


def snapshot_sqlite(database_url: str, dest: Path) -> SnapshotFacts:
    src_path = sqlite_path(database_url)
    if not src_path.exists():
        raise DatabaseError(f"no database at {src_path}; nothing to back up (run `palisade migrate` first)")
    src = sqlite3.connect(f"file:{src_path}?mode=ro", uri=True, timeout=30)
    dst = sqlite3.connect(dest)
    try:
        src.backup(dst, pages=1024)  # steps of 1024 pages: writers are never blocked for long
        dst.commit()
        return _facts(dst.cursor(), "sqlite")
    finally:
        dst.close()
        src.close()


def snapshot_postgres(database_url: str, dest: Path) -> SnapshotFacts:
    import psycopg

    pg_dump = _tool("pg_dump")
    env, args = _pg_env_and_dsn(database_url)
    with psycopg.connect(_psycopg_dsn(database_url)) as conn:
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        snapshot = conn.execute("SELECT pg_export_snapshot()").fetchone()[0]
        with conn.cursor() as cur:
            facts = _facts(cur, "postgresql")
        proc = subprocess.run(  # noqa: S603 # nosec B603 # fixed argv, no shell
            [pg_dump, *args, "--format=custom", "--no-owner", "--no-privileges", f"--snapshot={snapshot}",
             "--file", str(dest)],
            env=env, capture_output=True, text=True, timeout=3600,
        )
        conn.rollback()
    if proc.returncode != 0:
        raise DatabaseError(f"pg_dump failed: {proc.stderr.strip()[-2000:]}")
    return facts


def snapshot(database_url: str, dest_dir: Path) -> tuple[str, Path, SnapshotFacts]:
    """Dump the database into ``dest_dir``; returns the archive member name, the file and the facts."""
    if database_url.startswith("sqlite"):
        path = dest_dir / "sqlite.db"
        return "database/sqlite.db", path, snapshot_sqlite(database_url, path)
    path = dest_dir / "postgres.dump"
    return "database/postgres.dump", path, snapshot_postgres(database_url, path)


# --- restore ------------------------------------------------------------------------------------------------


def nonempty_tables(database_url: str) -> list[str]:
    """Tables that hold rows (schema bookkeeping aside): a restore over them would lose data."""
    from sqlalchemy import create_engine, inspect, text

    if database_url.startswith("sqlite") and not sqlite_path(database_url).exists():
        return []
    engine = create_engine(database_url.replace("sqlite+aiosqlite://", "sqlite://"))
    try:
        with engine.connect() as conn:
            names = [n for n in inspect(conn).get_table_names() if n not in _SCHEMA_ONLY]
            quote = engine.dialect.identifier_preparer.quote
            busy = []
            for n in names:
                where = f" WHERE {_SEEDED[n]}" if n in _SEEDED else ""
                probe = text(f"SELECT 1 FROM {quote(n)}{where} LIMIT 1")  # noqa: S608 (quoted name, constant)
                if conn.execute(probe).first():
                    busy.append(n)
            return busy
    finally:
        engine.dispose()


def restore_sqlite(database_url: str, source: Path) -> None:
    """Replace the SQLite file with the snapshot atomically (the gateways must be stopped)."""
    target = sqlite_path(database_url)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(target.name + ".restoring")
    shutil.copyfile(source, staging)
    check = sqlite3.connect(staging)
    try:
        if check.execute("PRAGMA integrity_check").fetchone()[0] != "ok":
            raise DatabaseError("the SQLite snapshot fails its integrity check")
    finally:
        check.close()
    for suffix in ("-wal", "-shm"):
        Path(str(target) + suffix).unlink(missing_ok=True)
    os.replace(staging, target)


def restore_postgres(database_url: str, source: Path) -> None:
    """Empty the public schema, then ``pg_restore`` the dump in one transaction (all or nothing)."""
    import psycopg

    pg_restore = _tool("pg_restore")
    env, args = _pg_env_and_dsn(database_url)
    with psycopg.connect(_psycopg_dsn(database_url), autocommit=True) as conn:
        # the audit triggers refuse TRUNCATE/DELETE but not DROP: the schema goes as a whole
        conn.execute("DROP SCHEMA IF EXISTS public CASCADE")
        conn.execute("CREATE SCHEMA public")
    proc = subprocess.run(  # noqa: S603 # nosec B603 # fixed argv, no shell
        [pg_restore, *args, "--no-owner", "--no-privileges", "--single-transaction", "--exit-on-error",
         str(source)],
        env=env, capture_output=True, text=True, timeout=3600,
    )
    if proc.returncode != 0:
        raise DatabaseError(f"pg_restore failed: {proc.stderr.strip()[-2000:]}")


def restore(database_url: str, member: str, source: Path) -> None:
    is_sqlite = database_url.startswith("sqlite")
    if is_sqlite != (member == "database/sqlite.db"):
        want = "SQLite" if member == "database/sqlite.db" else "Postgres"
        raise DatabaseError(f"the archive holds a {want} database; PALISADE_DATABASE_URL points elsewhere")
    (restore_sqlite if is_sqlite else restore_postgres)(database_url, source)
