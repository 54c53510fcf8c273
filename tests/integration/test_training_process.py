"""The training process as the task runs it: SIGKILL mid-run then resume gives the same loss curve; cancel
keeps a checkpoint. Real processes (``python -m trainer.runs.worker``), a tiny model, CPU."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path

import pytest

from tests.support.training_data import write_source
from trainer.runs import checkpoint
from trainer.runs.events import read_all
from trainer.runs.launcher import TrainingProcess, supervise
from trainer.runs.worker import EXIT_CANCELLED, EXIT_OK

pytestmark = pytest.mark.timeout(240)


def _request(run_dir: Path, base: Path, data: Path, **config) -> Path:
    run_dir.mkdir(parents=True)
    cfg = {"max_steps": 10, "batch_size": 2, "learning_rate": 5e-3, "lora_rank": 4, "checkpoint_every": 3,
           "eval_every": 5, **config}
    (run_dir / "request.json").write_text(json.dumps({"method": "sft-lora", "base": str(base), "config": cfg,
                                                       "dataset_dir": str(data)}))
    return run_dir


def _wait_for(run_dir: Path, pred, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for event in read_all(run_dir / "events.jsonl"):
            if pred(event):
                return event
        time.sleep(0.1)
    raise AssertionError(f"no matching event; log: {(run_dir / 'worker.log').read_text()[-2000:]}")


def test_sigkill_then_resume_matches_uninterrupted_run(tiny_model_dir, tmp_path):
    data = write_source(tmp_path / "data", "chat").root
    straight = _request(tmp_path / "straight", tiny_model_dir, data)
    killed = _request(tmp_path / "killed", tiny_model_dir, data)

    a = TrainingProcess(straight, gpus=0)
    a.start()
    b = TrainingProcess(killed, gpus=0)
    b.start()
    _wait_for(killed, lambda e: e["type"] == "checkpoint" and e["step"] >= 3)
    os.killpg(b.pid, signal.SIGKILL)
    assert b.wait(30) == -signal.SIGKILL
    assert checkpoint.exists(killed) and not (killed / "result.json").exists()
    assert a.wait(180) == EXIT_OK

    resumed = TrainingProcess(killed, gpus=0)
    resumed.start()
    assert resumed.wait(180) == EXIT_OK, (killed / "worker.log").read_text()[-3000:]
    assert any(e["type"] == "resume" and e["step"] >= 3 for e in read_all(killed / "events.jsonl"))

    want = json.loads((straight / "result.json").read_text())
    got = json.loads((killed / "result.json").read_text())
    assert len(got["losses"]) == len(want["losses"]) == 10
    assert got["losses"] == pytest.approx(want["losses"], rel=1e-4, abs=1e-5)
    assert got["eval_loss"] == pytest.approx(want["eval_loss"], rel=1e-4)
    # output: safetensors adapter, model card, and a sha256 for every file
    out = killed / "output"
    sums = (out / "SHA256SUMS").read_text()
    assert "adapter_model.safetensors" in sums and "README.md" in sums
    assert got["reproducibility"]["dataset_digest"] and got["reproducibility"]["base_digest"]


def test_cancel_stops_cooperatively_and_keeps_a_checkpoint(tiny_model_dir, tmp_path):
    data = write_source(tmp_path / "data", "chat").root
    run_dir = _request(tmp_path / "run", tiny_model_dir, data, max_steps=10_000, checkpoint_every=10_000)
    proc = TrainingProcess(run_dir, gpus=0)
    proc.start()
    seen: list[dict] = []
    stepped = lambda: any(e["type"] == "step" for e in seen)  # noqa: E731
    code = asyncio.run(supervise(proc, on_event=seen.append, cancel_requested=stepped, grace_s=60, poll_s=0.1))
    assert code == EXIT_CANCELLED
    assert checkpoint.exists(run_dir)
    assert seen[-1]["type"] == "end" and seen[-1]["status"] == "cancelled"
    state = json.loads((run_dir / "checkpoint" / "state.json").read_text())
    assert 1 <= state["step"] < 10_000


def test_hard_stop_after_grace_period(tiny_model_dir, tmp_path):
    """A process that ignores the cooperative cancel (stuck before its first step) is killed after the grace."""
    data = write_source(tmp_path / "data", "chat").root
    run_dir = _request(tmp_path / "run", tiny_model_dir, data, max_steps=10_000)
    proc = TrainingProcess(run_dir, gpus=0)
    proc.start()
    _wait_for(run_dir, lambda e: e["type"] == "start")  # the SIGTERM handler is installed by now
    os.killpg(proc.pid, signal.SIGSTOP)  # a hung process: cannot react to the cancel file or SIGTERM
    code = asyncio.run(supervise(proc, cancel_requested=lambda: True, grace_s=0.5, poll_s=0.1))
    assert code == -signal.SIGKILL
