"""Scheduled backups: the task body prunes to PALISADE_BACKUP_KEEP, and a real `palisade worker --beat` runs them."""

from __future__ import annotations

import time
from pathlib import Path

from tests.support import backups
from tests.support.backups import verify_ok
from tests.support.server import base_env, cli

backup_key = backups.backup_key  # fixture


def test_scheduled_backups_keep_the_newest(tmp_path, backup_key, monkeypatch):
    """The Celery task's body: a new archive in the backup dir, older ones pruned to PALISADE_BACKUP_KEEP."""
    from gateway.jobs import beat_schedule
    from gateway.ops.service import scheduled_backup
    from gateway.settings import Settings

    env = base_env(tmp_path / "s", PALISADE_BACKUP_KEY=backup_key, PALISADE_BACKUP_KEEP="2",
                   PALISADE_BACKUP_INTERVAL_S="3600")
    cli(env, "migrate")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    settings = Settings.from_env()
    assert beat_schedule(settings)["palisade-ops-backup"]["task"] == "palisade.ops.backup"
    made = [scheduled_backup(settings).path.name for _ in range(3)]
    kept = sorted(p.name for p in (tmp_path / "s" / "backups").iterdir())
    assert kept == made[1:]
    out = verify_ok(env)
    assert "0 problems" in out


def test_beat_runs_scheduled_backups_in_a_real_worker(tmp_path, backup_key):
    """`palisade worker --beat` with PALISADE_BACKUP_INTERVAL_S: archives appear, pruned to PALISADE_BACKUP_KEEP."""
    import subprocess
    import sys

    from tests.support.server import ROOT

    env = base_env(tmp_path / "w", PALISADE_BACKUP_KEY=backup_key, PALISADE_BACKUP_KEEP="2",
                   PALISADE_BACKUP_INTERVAL_S="2")
    cli(env, "migrate")
    log = open(tmp_path / "worker.log", "wb")  # noqa: SIM115
    worker = subprocess.Popen([sys.executable, "-m", "gateway.cli", "worker", "--queues", "cpu", "--beat"], env=env,
                              cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    folder = tmp_path / "w" / "backups"
    try:
        deadline = time.monotonic() + 120
        while _backup_events(tmp_path / "w") < 3 and time.monotonic() < deadline:
            time.sleep(1)
    finally:
        worker.terminate()
        worker.wait(timeout=60)
        log.close()
    assert _backup_events(tmp_path / "w") >= 3, (tmp_path / "worker.log").read_text()[-3000:]
    assert len(list(folder.glob("*.palisade-backup"))) == 2
    verify_ok(env)


def _backup_events(data: Path) -> int:
    import sqlite3

    with sqlite3.connect(data / "palisade.db") as db:
        return db.execute("SELECT count(*) FROM audit_records WHERE tag = 'ops:backup:create'").fetchone()[0]
