"""Starts and supervises the training process; the caller (a Celery task) never imports torch's CUDA side.

One process on CPU or one GPU (``python -m trainer.runs.worker RUN_DIR``); ``torchrun --nproc_per_node=N``
when N GPUs are visible. The process runs in its own session so a hard stop kills it and anything it started.
``supervise`` tails the events file, beats the caller's heartbeat, and turns a cancel request into the cancel
file + SIGTERM (cooperative: the loop checkpoints and exits), then SIGKILL after a grace period.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainer.runs.events import EventReader
from trainer.runs.worker import CANCEL_FILE


def visible_gpus() -> int:
    """GPUs the training process may use, counted without initialising CUDA in this process."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return len([d for d in env.split(",") if d.strip() and d.strip() != "-1"])
    smi = shutil.which("nvidia-smi")
    if not smi:
        return 0
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10, check=False).stdout  # noqa: S603
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


def command(run_dir: Path, gpus: int) -> list[str]:
    if gpus > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}",
                "-m", "trainer.runs.worker", str(run_dir)]
    return [sys.executable, "-m", "trainer.runs.worker", str(run_dir)]


class TrainingProcess:
    def __init__(self, run_dir: Path, *, gpus: int | None = None, cwd: Path | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.gpus = visible_gpus() if gpus is None else gpus
        self.cwd = cwd or Path(__file__).resolve().parents[2]
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / CANCEL_FILE).unlink(missing_ok=True)
        log = (self.run_dir / "worker.log").open("ab")
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
               "PYTHONPATH": os.pathsep.join(filter(None, [str(self.cwd), os.environ.get("PYTHONPATH")]))}
        self.proc = subprocess.Popen(command(self.run_dir, self.gpus), cwd=self.cwd, stdout=log,  # noqa: S603
                                     stderr=subprocess.STDOUT, env=env, start_new_session=True)
        log.close()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def poll(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def request_cancel(self) -> None:
        (self.run_dir / CANCEL_FILE).touch()
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def _signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass

    def wait(self, timeout: float | None = None) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)


async def _call(fn: Callable[..., Any], *args: Any) -> Any:
    value = fn(*args)
    return await value if inspect.isawaitable(value) else value


async def supervise(process: TrainingProcess, *, on_event: Callable[[dict], Any] = lambda e: None,
                    heartbeat: Callable[[], Any] = lambda: None, cancel_requested: Callable[[], Any] = lambda: False,
                    grace_s: float = 30.0, poll_s: float = 0.5, heartbeat_s: float = 5.0) -> int:
    """Run until the process exits; returns its exit code (-9 after a hard stop).

    Callbacks may be plain or async. ``heartbeat`` returning False means the lease was lost (another worker
    took the run over): the process is stopped at once.
    """
    reader = EventReader(process.run_dir / "events.jsonl")
    cancel_at: float | None = None
    last_beat = 0.0
    while True:
        code = process.poll()
        for event in reader.read_new():
            await _call(on_event, event)
        if code is not None:
            return code
        now = time.monotonic()
        if now - last_beat >= heartbeat_s:
            last_beat = now
            if await _call(heartbeat) is False:
                process.kill()
        if cancel_at is None and await _call(cancel_requested):
            process.request_cancel()
            cancel_at = now
        elif cancel_at is not None and now - cancel_at > grace_s:
            process.kill()
        await asyncio.sleep(poll_s)
