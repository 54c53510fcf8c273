"""Unusual use: per-principal baselines (requests, tokens, denials and off-hours share per active window -- a
minute unless ``anomaly_window_s`` says otherwise -- as exponentially weighted averages in the database). A window
far above the baseline raises an audit event and a metric and, when an admin enabled ``anomaly.suspend``,
suspends the principal until an admin lifts it. Denials are authorization denials (the guard) and limit refusals.

Counts are per replica (each sees its share of the traffic); baselines are shared through the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import Any

import structlog
from prometheus_client import Counter

from gateway.audit.events import AuditEvent, AuditTrail, Tag
from gateway.authz.attributes import environment
from gateway.changes import ChangeFeed
from gateway.db.base import utcnow
from gateway.db.policy import UsageBaseline
from gateway.db.session import Database
from gateway.limits.config import LimitsConfig
from gateway.metrics import REGISTRY
from gateway.settings import Settings

_log = structlog.get_logger("palisade.anomaly")
ANOMALIES = Counter(
    "palisade_usage_anomalies_total", "Usage spikes above a principal's baseline", ["kind"], registry=REGISTRY
)
TAG_ANOMALY = Tag.USAGE_ANOMALY
TAG_SUSPEND = Tag.PRINCIPAL_SUSPEND
ALPHA = 0.1  # weight of the newest minute in the baseline


@dataclass
class _Minute:
    minute: int
    requests: int = 0
    tokens: int = 0
    denials: int = 0
    offhours: int = 0


class UsageWatch:
    def __init__(
        self, settings: Settings, db: Database, audit: AuditTrail, limits_config: LimitsConfig, change_feed: ChangeFeed,
        clock: Any = time.time,
    ) -> None:
        self.db = db
        self.audit = audit
        self.limits_config = limits_config
        self.change_feed = change_feed
        self.clock = clock
        self.current: dict[str, _Minute] = {}
        self.window_s = settings.anomaly_window_s
        self.warmup = settings.anomaly_warmup_windows  # no verdicts before this many windows
        self._task: asyncio.Task | None = None

    def note(self, principal_id: str, tokens: int, *, denied: bool = False) -> None:
        minute = int(self.clock() // self.window_s)
        m = self.current.get(principal_id)
        if m is None or m.minute != minute:
            if m is not None:
                self._spawn(principal_id, m)
            m = self.current[principal_id] = _Minute(minute)
        m.requests += 1
        m.tokens += tokens
        m.denials += int(denied)
        m.offhours += int(not environment("internal").business_hours)

    def _spawn(self, principal_id: str, m: _Minute) -> None:
        with contextlib.suppress(RuntimeError):
            asyncio.get_running_loop().create_task(self.close_minute(principal_id, m))

    async def start(self) -> None:
        self._task = asyncio.create_task(self._flush_loop(), name="usage-watch")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(min(10.0, self.window_s / 4))
            minute = int(self.clock() // self.window_s)
            for pid, m in list(self.current.items()):
                if m.minute < minute:
                    del self.current[pid]
                    await self.close_minute(pid, m)

    async def close_minute(self, principal_id: str, m: _Minute) -> bool:
        """Compare a finished minute with the baseline, then fold it in. Returns True for a spike."""
        cfg = self.limits_config
        factor = float(cfg.option("anomaly.factor"))
        min_requests = int(cfg.option("anomaly.min_requests"))
        min_denials = int(cfg.option("anomaly.min_denials"))
        try:
            async with self.db.session() as s:
                row = await s.get(UsageBaseline, principal_id)
                if row is None:
                    row = UsageBaseline.fresh(principal_id)
                    s.add(row)
                spikes = []
                if row.minutes >= self.warmup:
                    if m.requests >= min_requests and m.requests > factor * max(row.requests_per_min, 1.0):
                        spikes.append("requests")
                    if m.tokens > factor * max(row.tokens_per_min, 100.0) and m.requests >= 3:
                        spikes.append("tokens")
                    if m.denials >= min_denials and m.denials > factor * max(row.denials_per_min, 1.0):
                        spikes.append("denials")
                    if m.offhours >= min_requests and row.offhours_share < 0.05:
                        spikes.append("offhours")
                baseline = {
                    "requests_per_min": round(row.requests_per_min, 2),
                    "tokens_per_min": round(row.tokens_per_min, 1),
                    "minutes": row.minutes,
                }
                if not spikes:  # a spike does not teach the baseline that spikes are normal
                    w = ALPHA if row.minutes >= self.warmup else 1.0 / (row.minutes + 1)
                    row.requests_per_min += w * (m.requests - row.requests_per_min)
                    row.tokens_per_min += w * (m.tokens - row.tokens_per_min)
                    row.denials_per_min += w * (m.denials - row.denials_per_min)
                    row.offhours_share += w * (m.offhours / max(m.requests, 1) - row.offhours_share)
                    row.minutes += 1
                    row.updated_at = utcnow()
        except Exception as exc:
            _log.warning("usage baseline update failed", error=type(exc).__name__)
            return False
        if spikes:
            await self._raise(principal_id, m, spikes, baseline)
        return bool(spikes)

    async def _raise(
        self, principal_id: str, m: _Minute, spikes: list[str], baseline: dict[str, Any]
    ) -> None:
        for kind in spikes:
            ANOMALIES.labels(kind).inc()
        details = {
            "kinds": spikes,
            "minute": {
                "requests": m.requests,
                "tokens": m.tokens,
                "denials": m.denials,
                "offhours": m.offhours,
            },
            "baseline": baseline,
        }
        await self.audit.record(
            AuditEvent(TAG_ANOMALY, actor="system", target=principal_id, details=details)
        )
        if self.limits_config.option("anomaly.suspend"):
            from gateway.limits.config import LimitsAdmin

            reason = f"usage spike ({', '.join(spikes)})"
            if await LimitsAdmin(self.db).set_suspended(principal_id, reason):
                await self.audit.record(
                    AuditEvent(TAG_SUSPEND, actor="system", target=principal_id, details={"reason": reason})
                )
                await self.change_feed.publish("limits")
