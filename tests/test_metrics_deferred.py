"""Deferred request records (MetricsRegistry.defer_records / flush, applied by the daemon through
hostproxy.idle.run_when_idle): the same metrics
as recording at once, applied later, never missing for a reader, and flushed only when the event loop
is idle."""

from __future__ import annotations

import json
import random

import trio

from hostproxy.causes import Cause
from hostproxy.idle import run_when_idle
from hostproxy.metrics import MetricsRegistry, flat, prometheus
from hostproxy.metrics import registry as registry_module


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def deferring(now=None):
    """A registry that defers records (on ``now``, a fresh ``Clock`` by default) and one server scope."""
    reg = MetricsRegistry(now or Clock())
    reg.defer_records()
    return reg, reg.router("outgoing").server("127.0.0.1", 4140)


def flushing_when_idle(reg: MetricsRegistry, **timings):
    """The daemon's flush task for ``reg``, with test timings."""
    return lambda: run_when_idle(reg.flush, lambda: reg.deferred, **timings)


CAUSES = [None, None, None, Cause.UPSTREAM_5XX, Cause.TIMEOUT_REQUEST, Cause.CONNECT_REFUSED]


def drive(reg: MetricsRegistry, clock: Clock, seed: int) -> None:
    """The same random requests (three scopes each, the retries histogram too) across a minute and
    more, so records land in several histogram slices and some slices are recycled."""
    rng = random.Random(seed)
    scope = reg.router("outgoing")
    server = scope.server("127.0.0.1", 4140)
    services = [scope.service(f"/svc/s{i}", True) for i in range(3)]
    clients = [scope.client(f"#/io.l5d.fs/c{i}") for i in range(3)]
    per_request = reg.stat("rt/outgoing/service/svc/s0/retries/per_request")
    for _ in range(3000):
        clock.t += rng.uniform(0.0, 0.05)
        svc, client = rng.choice(services), rng.choice(clients)
        cause = rng.choice(CAUSES)
        status = rng.choice([200, 200, 204, 404, 502, 503])
        latency = rng.uniform(0.0, 2.0) ** 3
        for stats in (server, svc, client):
            stats.start()
        for stats in (server, svc, client):
            stats.finish_at(clock.t, latency, cause, status)
        reg.add_at(per_request.hist.add_at, rng.choice([0, 0, 0, 1, 2]), clock.t)
        if rng.random() < 0.01 and reg.deferred:
            reg.flush()


def test_deferred_records_give_exactly_the_metrics_of_immediate_ones() -> None:
    for seed in range(3):
        now_clock, later_clock = Clock(), Clock()
        now_reg, later_reg = MetricsRegistry(now_clock), MetricsRegistry(later_clock)
        later_reg.defer_records()
        drive(now_reg, now_clock, seed)
        drive(later_reg, later_clock, seed)
        assert later_reg.deferred > 0  # not all applied yet
        # ``flat`` reads through ``metrics()``, which flushes first: no reader sees a record missing.
        assert flat(later_reg) == flat(now_reg)
        assert later_reg.deferred == 0
        assert prometheus(later_reg) == prometheus(now_reg)


def test_pending_changes_at_once_and_the_rest_at_the_flush() -> None:
    reg, stats = deferring()
    stats.start()
    stats.finish_at(1000.0, 0.010, None, 200)
    assert stats.pending == 0 and stats.requests.value == 0 and reg.deferred == 1
    assert reg.flush() == 1
    assert stats.requests.value == 1 and stats.success.value == 1 and reg.deferred == 0
    assert reg.flush() == 0


def test_a_full_list_applies_its_oldest_records_in_steps(monkeypatch) -> None:
    monkeypatch.setattr(registry_module, "MAX_DEFERRED", 10)
    monkeypatch.setattr(registry_module, "FLUSH_STEP", 4)
    reg, stats = deferring()
    for i in range(9):
        stats.start()
        stats.finish_at(1000.0, 0.001 * (i + 1), None, 200)
    assert reg.deferred == 9 and stats.requests.value == 0
    stats.start()
    stats.finish_at(1000.0, 0.010, None, 200)  # the tenth fills the list: the oldest four are applied
    assert reg.deferred == 6 and stats.requests.value == 4 and reg.statistics()["flush_steps"] == 1
    assert sorted(stats.latency.hist.snapshot().counts) == [1, 2, 3, 4]  # ms: the oldest four
    # A loop that is never idle: one record applied per record made, the list never full.
    for k in range(1, 41):
        stats.start()
        stats.finish_at(1000.0, 0.001, None, 200)
        assert reg.deferred == 6 + k % 4
        assert stats.requests.value == 4 + k - k % 4
    assert reg.statistics()["flush_steps"] == 11 and reg.statistics()["flushes"] == 0
    assert reg.flush() == 6 and stats.requests.value == 50 and reg.deferred == 0


def test_records_applied_in_steps_give_exactly_the_metrics_of_immediate_ones(monkeypatch) -> None:
    monkeypatch.setattr(registry_module, "MAX_DEFERRED", 37)
    monkeypatch.setattr(registry_module, "FLUSH_STEP", 5)
    now_clock, later_clock = Clock(), Clock()
    now_reg, later_reg = MetricsRegistry(now_clock), MetricsRegistry(later_clock)
    later_reg.defer_records()
    drive(now_reg, now_clock, 7)
    drive(later_reg, later_clock, 7)
    assert later_reg.statistics()["flush_steps"] > 100  # most records were applied in steps
    assert flat(later_reg) == flat(now_reg)
    assert prometheus(later_reg) == prometheus(now_reg)


def test_a_late_failure_applies_the_success_it_moves_first() -> None:
    reg, stats = deferring()
    stats.start()
    stats.finish_at(1000.0, 0.001, None, 200)
    stats.late_failure(Cause.UPSTREAM_RESET)  # the body was reset after the head: not a success
    assert stats.success.value == 0 and stats.failures.value == 1 and stats.requests.value == 1
    assert flat(reg)["rt/outgoing/server/127.0.0.1/4140/failures/upstream/reset"] == 1


async def test_the_flush_waits_for_an_idle_loop_and_flushes_on_cancel() -> None:
    reg, stats = deferring(trio.current_time)

    def record() -> None:
        stats.start()
        stats.finish_at(trio.current_time(), 0.001, None, 200)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(flushing_when_idle(reg, idle_s=0.001, every_s=0.005))
        record()
        assert reg.deferred == 1
        # A busy loop (this task always runnable) is never idle: nothing is flushed, however long.
        deadline = trio.current_time() + 0.1
        while trio.current_time() < deadline:
            await trio.lowlevel.checkpoint()
            assert reg.deferred == 1
        # Idle: flushed soon.
        with trio.fail_after(5):
            while reg.deferred:
                await trio.sleep(0.002)
        assert stats.requests.value == 1
        record()
        nursery.cancel_scope.cancel()
    # Cancelled with a record waiting: it is applied on the way out.
    assert reg.deferred == 0 and stats.requests.value == 2


async def test_a_loop_that_is_never_idle_is_flushed_after_at_most_s() -> None:
    reg, stats = deferring(trio.current_time)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(flushing_when_idle(reg, idle_s=0.001, every_s=0.005, at_most_s=0.05))
        stats.start()
        stats.finish_at(trio.current_time(), 0.001, None, 200)
        # Busy (this task always runnable) for far longer than at_most_s: flushed all the same.
        deadline = trio.current_time() + 5
        while reg.deferred and trio.current_time() < deadline:
            await trio.lowlevel.checkpoint()
        assert reg.deferred == 0 and stats.requests.value == 1
        assert reg.statistics()["flushes"] == 1
        nursery.cancel_scope.cancel()


async def test_a_quiet_flush_looks_less_and_less_often(autojump_clock) -> None:
    """Nothing pending: the flush task looks at 0.05, 0.1, 0.2, 0.4, 0.8 s and then once a second
    (an idle daemon does not wake 20 times a second); a record brings it back to every 0.05 s."""
    reg, stats = deferring(trio.current_time)
    looks: list[float] = []

    def pending() -> int:
        looks.append(round(trio.current_time() - start, 3))
        return reg.deferred

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            lambda: run_when_idle(
                reg.flush, pending, every_s=0.05, idle_s=0.001, at_most_s=1.0, quiet_max_s=1.0
            )
        )
        await trio.sleep(5.0)
        assert looks == [0.05, 0.15, 0.35, 0.75, 1.55, 2.55, 3.55, 4.55]
        stats.start()
        stats.finish_at(trio.current_time(), 0.001, None, 200)
        del looks[:]
        await trio.sleep(1.5)
        assert reg.deferred == 0 and stats.requests.value == 1
        # The next look (5.55 s) finds it and flushes (the loop is idle), asks whether anything is
        # left (nothing: 5.55 again), then looks 0.05 s later, backing off while nothing is pending.
        assert looks == [5.55, 5.55, 5.6, 5.7, 5.9, 6.3]
        nursery.cancel_scope.cancel()


async def test_the_flush_applies_a_piece_per_idle_moment() -> None:
    """The daemon's flush applies ``FLUSH_PIECE`` records at a time, each piece after the loop was
    idle: work that arrives after one piece (a burst of requests) runs before the next piece."""
    reg, stats = deferring(trio.current_time)
    for _ in range(150):
        stats.start()
        stats.finish_at(trio.current_time(), 0.001, None, 200)
    pieces: list[tuple[int, float]] = []
    first_piece = trio.Event()
    busy_until: list[float] = []

    def work() -> None:
        pieces.append((reg.flush(64), trio.current_time()))
        first_piece.set()

    async def burst() -> None:
        await first_piece.wait()
        end = trio.current_time() + 0.05
        while trio.current_time() < end:  # always runnable: the loop is not idle meanwhile
            await trio.lowlevel.checkpoint()
        busy_until.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(burst)
        nursery.start_soon(lambda: run_when_idle(work, lambda: reg.deferred, every_s=0.005, idle_s=0.001))
        with trio.fail_after(5):
            while reg.deferred:
                await trio.sleep(0.01)
        applied = list(pieces)
        nursery.cancel_scope.cancel()
    assert [n for n, _ in applied] == [64, 64, 22] and stats.requests.value == 150
    assert applied[1][1] > busy_until[0]  # the second piece waited for the burst to end
    assert reg.statistics()["flushes"] == 3


async def test_a_flush_cancelled_between_pieces_applies_the_rest() -> None:
    reg, stats = deferring(trio.current_time)
    for _ in range(150):
        stats.start()
        stats.finish_at(trio.current_time(), 0.001, None, 200)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            lambda: run_when_idle(
                lambda: reg.flush(64), lambda: reg.deferred, every_s=10.0, idle_s=0.001, final=reg.flush
            )
        )
        await trio.sleep(0.01)
        assert reg.deferred == 150  # the first look is 10 s away
        nursery.cancel_scope.cancel()
    assert reg.deferred == 0 and stats.requests.value == 150


def test_the_sliced_renderers_apply_deferred_records_even_with_a_cached_layout() -> None:
    """A record deferred after a render (whose layout is now cached) may add a metric (a first
    failure cause, a first status): the next sliced render applies it and shows it."""
    from hostproxy.metrics.render import flat_json_slices, prometheus_slices

    reg, stats = deferring()
    stats.start()
    stats.finish_at(1000.0, 0.001, None, 200)
    for _ in range(2):  # (the first render applies the record, which adds metrics: a new version)
        b"".join(flat_json_slices(reg))
        "".join(prometheus_slices(reg))
    assert reg.render_cache["flat"][0] == reg.render_cache["prometheus"][0] == reg.version  # cached
    stats.start()
    stats.finish_at(1000.0, 0.001, Cause.UPSTREAM_5XX, 500)
    assert reg.deferred == 1
    flat_doc = json.loads(b"".join(flat_json_slices(reg)))
    assert reg.deferred == 0
    assert flat_doc["rt/outgoing/server/127.0.0.1/4140/failures/upstream/5xx"] == 1
    assert flat_doc["rt/outgoing/server/127.0.0.1/4140/status/500"] == 1
    stats.start()
    stats.finish_at(1000.0, 0.001, Cause.TIMEOUT_REQUEST, 503)
    prom = "".join(prometheus_slices(reg))
    assert reg.deferred == 0 and 'code="503"' in prom
