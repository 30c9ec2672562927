"""The namer base: NameTable transitions (pure), lookup results, subscribe, LRU bound, waking."""

from __future__ import annotations

import re
from typing import Any

import pytest
import trio

from namers._dtab import (
    NEG,
    PENDING,
    AddrBound,
    Address,
    AddrFailed,
    AddrNeg,
    AddrPending,
    BoundName,
    Leaf,
    NamerError,
    Path,
)
from namers.base import Namer, NameTable, format_time


class FakeClock:
    def __init__(self, t: float = 1_500_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


A = (Address("10.0.0.1", 80), Address("10.0.0.2", 80, 2.0))
B = (Address("10.0.0.3", 81),)
K = (b"users",)


def table(**kw: Any) -> tuple[NameTable, FakeClock]:
    clock = FakeClock()
    return NameTable(clock, **kw), clock


# -- NameTable -----------------------------------------------------------------------------------
def test_new_name_is_pending_version_zero():
    t, _ = table()
    st, created, evicted = t.touch(K)
    assert (st.state, st.version, st.addr, created, evicted) == ("pending", 0, None, True, [])
    assert t.touch(K)[1] is False


def test_bound_then_failure_is_stale_with_last_good_and_age():
    t, clock = table()
    t.touch(K)
    assert t.apply_bound(K, A)
    st = t.get(K)
    assert (st.state, st.addr, st.version, st.last_update) == ("bound", A, 1, clock.t)
    clock.t += 10
    assert t.apply_failure(K, "backend down")
    assert (st.state, st.addr, st.last_error, st.stale_since, st.version) == (
        "stale",
        A,
        "backend down",
        clock.t,
        2,
    )
    clock.t += 5
    assert st.stale_age(clock()) == 5
    # the same failure again is no change; a different one is, but the stale clock keeps running
    assert not t.apply_failure(K, "backend down")
    assert t.apply_failure(K, "still down")
    assert st.stale_since == clock.t - 5 and st.version == 3
    # a good answer clears staleness
    assert t.apply_bound(K, B)
    assert (st.state, st.addr, st.last_error, st.stale_since, st.version) == ("bound", B, None, None, 4)


def test_failure_without_good_answer_is_failed():
    t, _ = table()
    t.touch(K)
    assert t.apply_failure(K, "no such thing")
    st = t.get(K)
    assert (st.state, st.addr, st.last_error, st.version) == ("failed", None, "no such thing", 1)
    assert not t.apply_failure(K, "no such thing")


def test_neg_drops_addresses_and_failure_after_neg_is_failed():
    t, _ = table()
    t.touch(K)
    t.apply_bound(K, A)
    assert t.apply_neg(K)
    assert (t.get(K).state, t.get(K).addr) == ("neg", None)
    assert not t.apply_neg(K)
    t.apply_failure(K, "x")
    assert t.get(K).state == "failed"


def test_same_answer_is_not_a_change():
    t, _ = table()
    t.touch(K)
    assert t.apply_bound(K, A)
    assert not t.apply_bound(K, A)
    assert t.get(K).version == 1
    assert t.apply_bound(K, ())  # bound to nothing is a real answer
    assert t.get(K).addr == ()


def test_unknown_key_is_ignored():
    t, _ = table()
    assert not t.apply_bound(K, A)
    assert not t.apply_neg(K)
    assert not t.apply_failure(K, "x")


def test_lru_bound_evicts_least_recently_touched():
    t, _ = table(max_names=2)
    t.touch((b"a",))
    t.touch((b"b",))
    t.touch((b"a",))  # b is now least recent
    _, created, evicted = t.touch((b"c",))
    assert created and [e.key for e in evicted] == [(b"b",)]
    assert sorted(t.watched()) == [(b"a",), (b"c",)]
    assert t.evictions == 1


def test_max_names_must_be_positive():
    with pytest.raises(ValueError, match=r"^max_names must be at least 1, got 0$"):
        NameTable(max_names=0)


# -- Namer ---------------------------------------------------------------------------------------
class StaticNamer(Namer):
    """A namer whose runner records when it was woken (for tests)."""

    kind = "test.static"

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.seen: list[tuple[float, list[tuple[bytes, ...]]]] = []

    async def run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        self._bind_runner()
        task_status.started()
        while True:
            if await self._wait_for_wake(1000.0):
                self.seen.append((trio.current_time(), self.table.watched()))


def test_lookup_follows_state():
    clock = FakeClock()
    n = StaticNamer(clock=clock)
    assert n.lookup(Path.read("/users/rest/of")) is PENDING
    assert n.lookup(Path.EMPTY) is NEG
    n.table.apply_bound(K, A)
    leaf = n.lookup(Path.read("/users/rest/of"))
    assert leaf == Leaf(BoundName(id=Path.read("/#/test.static/users"), residual=Path.read("/rest/of")))
    assert leaf.value.addr == AddrBound(A, {})
    n.table.apply_failure(K, "backend down")
    leaf = n.lookup(Path.read("/users"))
    # Last good addresses, marked with the time the name went stale (clients show the age).
    assert leaf.value.addr == AddrBound(A, {"staleSince": clock()}) and leaf.value.residual == Path.EMPTY
    n.table.apply_neg(K)
    assert n.lookup(Path.read("/users")) is NEG
    assert n.addr(K) == AddrNeg()
    n.table.apply_failure(K, "backend down")
    with pytest.raises(NamerError, match=r"^/#/test.static/users: backend down$"):
        n.lookup(Path.read("/users"))
    assert n.addr(Path.read("/users")) == AddrFailed("backend down")
    assert n.addr((b"other",)) == AddrPending()


def test_custom_prefix():
    n = StaticNamer(prefix="/disco")
    n.lookup(Path.read("/users"))
    n.table.apply_bound(K, A)
    assert n.lookup(Path.read("/users")).value.id == Path.read("/#/disco/users")
    assert n.state_json()["prefix"] == "/#/disco"
    with pytest.raises(
        ValueError, match=re.escape("namer prefix 'disco' must start with '/', e.g. '/test.static'")
    ):
        StaticNamer(prefix="disco")


def test_subscribers_called_on_eviction_and_errors_contained():
    n = StaticNamer(max_names=1)
    calls: list[tuple[Any, Path]] = []

    def bad(namer: Any, key: Path) -> None:
        raise RuntimeError("subscriber bug")

    n.subscribe(bad)
    unsubscribe = n.subscribe(lambda namer, key: calls.append((namer, key)))
    n.lookup(Path.read("/a"))
    n.lookup(Path.read("/b"))  # evicts /a
    assert calls == [(n, Path.read("/a"))]
    assert n.callback_errors == 1
    unsubscribe()
    n.lookup(Path.read("/c"))
    assert len(calls) == 1
    assert n.statistics()["evictions"] == 2


def test_state_json_shape():
    clock = FakeClock(1_539_238_654.0)
    n = StaticNamer(clock=clock)
    n.lookup(Path.read("/users"))
    n.lookup(Path.read("/other"))
    n.table.apply_bound(K, A)
    clock.t += 30
    n.table.apply_failure(K, "backend down")
    clock.t += 12.5
    body = n.state_json()
    assert body == {
        "kind": "test.static",
        "prefix": "/#/test.static",
        "names": {
            "users": {
                "state": "stale",
                "addrs": [
                    {"host": "10.0.0.1", "port": 80, "weight": 1.0, "meta": {}},
                    {"host": "10.0.0.2", "port": 80, "weight": 2.0, "meta": {}},
                ],
                "lastUpdate": "2018-10-11 06:18:04 +0000",
                "lastConfirmed": "2018-10-11 06:17:34 +0000",
                "lastError": "backend down",
                "staleAgeSecs": 12.5,
                "version": 2,
            },
            "other": {
                "state": "pending",
                "addrs": None,
                "lastUpdate": None,
                "lastConfirmed": None,
                "lastError": None,
                "staleAgeSecs": None,
                "version": 0,
            },
        },
    }
    assert format_time(1_539_238_654.0) == "2018-10-11 06:17:34 +0000"
    stats = n.statistics()
    assert stats["states"] == {"pending": 1, "bound": 0, "neg": 0, "failed": 0, "stale": 1}
    assert stats["watched"] == 2 and stats["lookups"] == 2


async def test_first_lookup_wakes_runner(autojump_clock):
    n = StaticNamer()
    async with trio.open_nursery() as nursery:
        await nursery.start(n.run)
        n.lookup(Path.read("/users"))
        n.lookup(Path.read("/users"))  # not new: no second wake
        await trio.sleep(1)
        assert n.seen == [(0.0, [K])]
        nursery.cancel_scope.cancel()


async def test_lookup_from_another_thread_wakes_runner():
    n = StaticNamer()
    async with trio.open_nursery() as nursery:
        await nursery.start(n.run)
        await trio.to_thread.run_sync(n.lookup, Path.read("/other"))
        with trio.fail_after(10):
            while not n.seen:
                await trio.sleep(0.01)
        assert n.seen[0][1] == [(b"other",)]
        nursery.cancel_scope.cancel()


def test_export_and_import_state_round_trip():
    clock = FakeClock()
    n = StaticNamer(clock=clock)
    n.lookup(Path.read("/users"))
    n.lookup(Path.read("/gone"))
    n.lookup(Path.of(b"\xff"))
    n.table.apply_bound(K, A)
    n.table.apply_neg((b"gone",))
    n.table.apply_bound((b"\xff",), B)
    saved = n.export_state()
    assert sorted(saved["names"]) == ["/\\xff", "/users"]

    fresh = StaticNamer(clock=clock)
    assert fresh.import_state(saved) == 2
    st = fresh.table.get(K)
    assert (st.state, st.addr, st.last_error) == ("stale", A, "restored from saved state; not yet confirmed")
    assert fresh.lookup(Path.read("/users")).value.addr.addresses == A
    assert "staleSince" in fresh.lookup(Path.read("/users")).value.addr.meta
    assert fresh.table.get((b"\xff",)).addr == B
    # the backend's first answer replaces the restored one
    fresh.table.apply_neg(K)
    assert fresh.lookup(Path.read("/users")) is NEG
    assert fresh.import_state(saved) == 0  # names already known are left alone
    assert fresh.lookup(Path.read("/users")) is NEG

    with pytest.raises(
        ValueError,
        match=re.escape(
            "saved namer state is for 'test.static' at '/#/test.static', not 'test.static' at '/#/other'; "
            "remove the file or fix the prefix"
        ),
    ):
        StaticNamer(prefix="/other").import_state(saved)
    broken = {**saved, "names": {"/users": {"addrs": [{"host": "h"}]}}}
    assert StaticNamer().import_state(broken) == 0
