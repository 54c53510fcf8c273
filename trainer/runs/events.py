"""The run's events file: one JSON object per line, appended by the training process, read by the task.

Kinds: ``start``, ``step`` (step, loss, lr, tokens_per_s, eta_s, epoch), ``eval`` (eval_loss, perplexity),
``checkpoint``, ``end`` (status, result). The Celery task tails it into the database; nothing else parses logs.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any


class EventWriter:
    def __init__(self, path: Path, *, enabled: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled
        self._fh = None

    def emit(self, kind: str, **fields: Any) -> None:
        if not self.enabled:
            return
        if self._fh is None:  # opened once, appended line by line; each line is flushed for the reader
            self._fh = self.path.open("a", encoding="utf-8")
        self._fh.write(json.dumps({"type": kind, "time": time.time(), **fields}, default=str) + "\n")
        self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


class EventReader:
    """Reads complete lines appended since the last call (a partial last line waits for the next call)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.offset = 0

    def read_new(self) -> list[dict]:
        if not self.path.exists():
            return []
        with self.path.open("rb") as fh:
            fh.seek(self.offset)
            data = fh.read()
        end = data.rfind(b"\n")
        if end < 0:
            return []
        self.offset += end + 1
        return [json.loads(line) for line in data[: end + 1].splitlines() if line.strip()]


def read_all(path: Path) -> list[dict]:
    return EventReader(path).read_new()
