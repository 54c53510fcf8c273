"""Per-version serving statistics over a sliding window, kept in this process (each replica has its own).

A canary is judged against production on the *same* window: requests, errors and latency p50/p99 of each version
over the last ``window_s`` seconds. The router records every finished request here, so the hot path must stay
cheap: one dict lookup, then three counter bumps in the current time slot. Memory is bounded whatever the traffic:
per (alias, version) a ring of ``slots`` time slots, each a fixed log-scale latency histogram (bins 10 % wide, so a
quantile is within about 5 % of the true value) -- no per-request samples are kept, and a busy production version
and a quiet canary cover exactly the same seconds (a bounded reservoir of samples would cover a shorter span for
the busier one).

The window slides by whole slots: what is counted is the current slot and the ``slots - 1`` before it, so the
span is between ``window_s * (slots - 1) / slots`` and ``window_s`` seconds.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import msgspec

_GROWTH = 1.1
_LOG_GROWTH = math.log(_GROWTH)
#: bin 0 holds <= 1 ms; bin i holds (1.1**(i-1), 1.1**i] ms; the last bin (about 1 hour and over) is open-ended
_BINS = 160


def _bin(ms: float) -> int:
    if ms <= 1.0:
        return 0
    return min(_BINS - 1, int(math.log(ms) / _LOG_GROWTH) + 1)


def _value(index: int) -> float:
    """The representative latency of a bin: its geometric middle."""
    return 1.0 if index == 0 else _GROWTH ** (index - 0.5)


class VersionWindow(msgspec.Struct, kw_only=True):
    """One version's numbers over the window (``p50_ms``/``p99_ms`` None without latency samples)."""

    version: str | None
    requests: int = 0
    errors: int = 0
    error_rate: float = 0.0
    p50_ms: float | None = None
    p99_ms: float | None = None


class _Slot:
    __slots__ = ("epoch", "errors", "hist", "requests", "timed")

    def __init__(self) -> None:
        self.epoch = -1
        self.requests = 0
        self.errors = 0
        self.timed = 0
        self.hist = [0] * _BINS

    def reset(self, epoch: int) -> None:
        self.epoch = epoch
        self.requests = self.errors = self.timed = 0
        self.hist = [0] * _BINS


class VersionStats:
    """Sliding-window counters per (alias, version): :meth:`record` on the hot path, :meth:`window` to read."""

    def __init__(self, window_s: float = 60.0, *, slots: int = 12, clock: Callable[[], float] = time.monotonic) -> None:
        if window_s <= 0 or slots < 2:
            raise ValueError("window_s must be > 0 and slots >= 2")
        self.window_s = float(window_s)
        self._slots = slots
        self._slot_s = self.window_s / slots
        self._clock = clock
        self._series: dict[tuple[str, str | None], list[_Slot]] = {}

    def record(self, alias: str, version: str | None, latency_s: float | None, *, error: bool) -> None:
        """One finished request of ``alias`` served by ``version``; ``latency_s`` None: it never reached a model
        (a canary that could not take its share), counted but not timed."""
        ring = self._series.get((alias, version))
        if ring is None:
            ring = self._series[(alias, version)] = [_Slot() for _ in range(self._slots)]
        epoch = int(self._clock() // self._slot_s)
        slot = ring[epoch % self._slots]
        if slot.epoch != epoch:
            slot.reset(epoch)
        slot.requests += 1
        if error:
            slot.errors += 1
        if latency_s is not None:
            slot.timed += 1
            slot.hist[_bin(latency_s * 1000.0)] += 1

    def window(self, alias: str, version: str | None) -> VersionWindow:
        """``version``'s numbers under ``alias`` over the window ending now."""
        ring = self._series.get((alias, version))
        out = VersionWindow(version=version)
        if ring is None:
            return out
        now = int(self._clock() // self._slot_s)
        live = [s for s in ring if now - self._slots < s.epoch <= now]
        out.requests = sum(s.requests for s in live)
        out.errors = sum(s.errors for s in live)
        out.error_rate = round(out.errors / out.requests, 4) if out.requests else 0.0
        timed = sum(s.timed for s in live)
        if timed:
            hist = [sum(col) for col in zip(*(s.hist for s in live), strict=True)]
            out.p50_ms = round(_quantile(hist, timed, 0.50), 1)
            out.p99_ms = round(_quantile(hist, timed, 0.99), 1)
        return out


def _quantile(hist: list[int], total: int, q: float) -> float:
    rank = max(1, math.ceil(q * total))
    seen = 0
    for index, count in enumerate(hist):
        seen += count
        if seen >= rank:
            return _value(index)
    return _value(_BINS - 1)
