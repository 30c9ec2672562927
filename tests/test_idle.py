"""hostproxy.idle.wait_idle: returns once the loop has been idle, or after ``at_most_s`` when it never is."""

from __future__ import annotations

import trio

from hostproxy.idle import wait_idle


async def busy(until: float) -> None:
    """Keep the loop busy (this task always runnable) until ``until``."""
    while trio.current_time() < until:
        await trio.lowlevel.checkpoint()


async def test_an_idle_loop_returns_true() -> None:
    with trio.fail_after(5):
        assert await wait_idle(0.001) is True
        assert await wait_idle(0.001, at_most_s=5.0) is True


async def test_a_busy_loop_holds_it_until_it_is_idle_or_at_most() -> None:
    async with trio.open_nursery() as nursery:
        start = trio.current_time()
        nursery.start_soon(busy, start + 0.2)
        # Never idle within 0.05 s: gives up then.
        assert await wait_idle(0.001, at_most_s=0.05) is False
        assert trio.current_time() - start >= 0.05
        # Without a bound it waits for the busy task to end.
        assert await wait_idle(0.001) is True
        assert trio.current_time() - start >= 0.2
