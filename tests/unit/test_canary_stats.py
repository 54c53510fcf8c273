"""Per-version window statistics (counts, error rate, p50/p99 from the log histogram, sliding by slots) and the
canary verdict (min_requests, error-rate and p99-ratio breaches)."""

from __future__ import annotations

import pytest

from gateway.inference.version_stats import VersionStats, VersionWindow
from gateway.models.canary import CanaryThresholds, judge, p99_ratio, verdict


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_counts_errors_and_quantiles_per_version() -> None:
    clock = Clock()
    stats = VersionStats(60, clock=clock)
    for i in range(100):  # 1..100 ms
        stats.record("chat", "v1", (i + 1) / 1000, error=False)
    for _ in range(10):
        stats.record("chat", "v2", 0.5, error=True)
    stats.record("chat", "v2", None, error=True)  # a canary share that no endpoint could take: counted, untimed
    prod, canary = stats.window("chat", "v1"), stats.window("chat", "v2")
    assert (prod.requests, prod.errors, prod.error_rate) == (100, 0, 0.0)
    assert prod.p50_ms == pytest.approx(50, rel=0.06) and prod.p99_ms == pytest.approx(99, rel=0.06)
    assert (canary.requests, canary.errors, canary.error_rate) == (11, 11, 1.0)
    assert canary.p99_ms == pytest.approx(500, rel=0.06)
    assert stats.window("chat", "v3") == VersionWindow(version="v3")
    assert stats.window("other", "v1").requests == 0  # per alias


def test_window_slides_by_slots() -> None:
    clock = Clock()
    stats = VersionStats(60, slots=12, clock=clock)  # 5 s slots
    stats.record("chat", "v1", 2.0, error=True)
    clock.t += 30
    stats.record("chat", "v1", 0.010, error=False)
    w = stats.window("chat", "v1")
    assert (w.requests, w.errors) == (2, 1) and w.p99_ms == pytest.approx(2000, rel=0.06)
    clock.t += 31  # the first request is now older than the window
    w = stats.window("chat", "v1")
    assert (w.requests, w.errors) == (1, 0) and w.p99_ms == pytest.approx(10, rel=0.06)
    clock.t += 120  # everything aged out; slots are reused in place
    assert stats.window("chat", "v1").requests == 0
    stats.record("chat", "v1", 0.001, error=False)
    assert stats.window("chat", "v1").requests == 1


def test_latency_bins_cover_extremes() -> None:
    stats = VersionStats(10, clock=Clock())
    stats.record("a", None, 0.0, error=False)
    stats.record("a", None, 7200.0, error=False)  # two hours: the open-ended last bin
    w = stats.window("a", None)
    assert w.p50_ms == 1.0 and w.p99_ms is not None and w.p99_ms > 3_000_000


def test_judge_needs_min_requests_then_breaches() -> None:
    limits = CanaryThresholds(max_error_rate=0.05, max_p99_ratio=2.0, min_requests=50)
    prod = VersionWindow(version="p", requests=500, errors=1, error_rate=0.002, p50_ms=40, p99_ms=100)
    young = VersionWindow(version="c", requests=49, errors=49, error_rate=1.0, p50_ms=5, p99_ms=10)
    assert judge(limits, young, prod) is None and verdict(limits, young, prod) == "collecting"
    failing = VersionWindow(version="c", requests=60, errors=6, error_rate=0.1, p50_ms=40, p99_ms=90)
    assert "error rate 0.100" in (judge(limits, failing, prod) or "")
    slow = VersionWindow(version="c", requests=60, errors=0, error_rate=0.0, p50_ms=90, p99_ms=250)
    assert p99_ratio(slow, prod) == 2.5 and "2.5x" in (judge(limits, slow, prod) or "")
    fine = VersionWindow(version="c", requests=60, errors=2, error_rate=0.033, p50_ms=40, p99_ms=150)
    assert judge(limits, fine, prod) is None and verdict(limits, fine, prod) == "healthy"
    assert verdict(None, fine, prod) == "no-thresholds" and verdict(limits, None, prod) == "no-canary"
    # no production latency yet: the ratio is not judged (the error rate still is)
    assert judge(limits, slow, VersionWindow(version="p")) is None


def test_thresholds_round_trip_and_validation() -> None:
    import msgspec

    limits = CanaryThresholds(max_error_rate=0.05)
    assert limits.dump() == {"max_error_rate": 0.05, "max_p99_ratio": None, "min_requests": 50, "auto": "rollback"}
    assert CanaryThresholds.load(limits.dump()) == limits and CanaryThresholds.load(None) is None
    with pytest.raises(msgspec.ValidationError):
        CanaryThresholds.load({"max_error_rate": 1.5})


async def test_router_counts_each_finished_request_per_version(tmp_path) -> None:
    """Non-streaming and streaming requests, 5xx failures, a 4xx (not counted), and a canary share that fell back
    to production because no canary endpoint was usable (counted as a canary error, untimed)."""
    from gateway.errors import ApiError, BadRequest
    from gateway.inference.base import GenerationRequest, SamplingParams
    from gateway.inference.openai_upstream import OpenAIBackend
    from gateway.inference.router import Router
    from gateway.settings import Settings
    from tests.support.fake_upstreams import serve_fake

    settings = Settings(data_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'x.db'}", health_interval_s=60.0,
                        breaker_failures=2, breaker_reset_s=30)
    router = Router(settings, max_retries=0)
    with serve_fake("ok", "openai", max_input_chars=50) as good, serve_fake("error500", "openai") as bad:
        router.set_route("chat", [OpenAIBackend(good.url, name="good", upstream_model="m")], version="v1")
        router.set_route("chat@canary", [OpenAIBackend(bad.url, name="bad", upstream_model="m")], version="v2")
        router.set_canary("chat", percent=100)

        def request(text: str = "hi") -> GenerationRequest:
            return GenerationRequest("r", SamplingParams(max_tokens=4), prompt=text)

        try:
            await router.generate("chat", request())
            async for _ in router.stream("chat", request()):
                pass
            with pytest.raises(BadRequest):  # too long for the upstream: the request's fault
                await router.generate("chat", request("x" * 200))
            for _ in range(2):  # two failures open the canary's breaker
                assert router.route_for("chat", key="k") == "chat@canary"
                with pytest.raises(ApiError):
                    await router.generate("chat@canary", request())
            assert router.route_for("chat", key="k") == "chat"  # its share falls back to production
        finally:
            await router.close()
    prod, canary = router.stats.window("chat", "v1"), router.stats.window("chat", "v2")
    assert (prod.requests, prod.errors) == (2, 0) and prod.p99_ms is not None
    assert (canary.requests, canary.errors, canary.error_rate) == (3, 3, 1.0)
