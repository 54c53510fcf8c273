"""`palisade worker` runs Celery over the embedded SQLite broker: a task sent by name comes back with its result."""

from __future__ import annotations

import subprocess
import sys

from tests.support.server import ROOT, base_env


def test_worker_answers_ping_over_sqlite_broker(tmp_path):
    env = base_env(tmp_path)
    worker = subprocess.Popen([sys.executable, "-m", "gateway.cli", "worker", "--queues", "cpu"], env=env, cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        code = (
            "from gateway.jobs import make_client\n"
            "from gateway.settings import get_settings\n"
            "r = make_client(get_settings()).send_task('palisade.system.ping', queue='cpu')\n"
            "print(r.get(timeout=90)['torch'])\n"
        )
        out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        import torch

        assert out.stdout.strip().endswith(torch.__version__)
        assert (tmp_path / "celery-broker.db").exists()
    finally:
        worker.terminate()
        worker.wait(timeout=30)
