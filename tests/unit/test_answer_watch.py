"""The watch around a non-streaming answer (``gateway.inference.service._CancelIfGone``): the request timeout and
the caller leaving share one timer, and each ends the work with its own error; nothing else is touched."""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.errors import ClientGone
from gateway.inference.service import WATCH_AFTER_S, _CancelIfGone


def never_gone() -> asyncio.Event:
    return asyncio.Event()


async def test_work_slower_than_the_deadline_raises_timeout_error_at_the_deadline() -> None:
    left = never_gone()
    for timeout in (0.03, WATCH_AFTER_S + 0.1):  # before and after the watch starts
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            async with _CancelIfGone(left.wait, timeout):
                await asyncio.sleep(5)
        assert timeout <= time.monotonic() - t0 < timeout + 0.5


async def test_a_caller_who_leaves_ends_the_work_with_client_gone() -> None:
    left = never_gone()
    asyncio.get_running_loop().call_later(WATCH_AFTER_S + 0.05, left.set)
    t0 = time.monotonic()
    with pytest.raises(ClientGone):
        async with _CancelIfGone(left.wait, 30):
            await asyncio.sleep(5)
    assert time.monotonic() - t0 < 1


async def test_fast_work_is_untouched_and_the_task_carries_on() -> None:
    left = never_gone()
    async with _CancelIfGone(left.wait, 30):
        await asyncio.sleep(0)
    async with _CancelIfGone(None, 0.05):
        result = 7
    await asyncio.sleep(0.1)  # no cancellation left behind for a later await, no late timer firing
    assert result == 7 and asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_a_cancellation_from_outside_stays_a_cancellation() -> None:
    left = never_gone()

    async def work() -> None:
        async with _CancelIfGone(left.wait, 30):
            await asyncio.sleep(5)

    task = asyncio.ensure_future(work())
    await asyncio.sleep(WATCH_AFTER_S + 0.05)  # the watch is running
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
