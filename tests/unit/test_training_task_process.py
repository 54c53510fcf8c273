"""The Celery task process never touches the accelerator: its modules do not even import torch."""

from __future__ import annotations

import subprocess
import sys

from tests.support.server import ROOT


def test_task_modules_do_not_import_torch():
    code = ("import sys\nimport trainer.runs.tasks, trainer.runs.execute, trainer.runs.sweep, trainer.runs.launcher\n"
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"
