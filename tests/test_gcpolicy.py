"""The collector policy (hostproxy.gcpolicy): freeze after every full collection, one complete walk per
period, pauses timed. Pure tests drive ``on_gc`` with a recording stand-in for ``gc`` and injected
clocks; one test runs the real collector in a child process (freezing this test process's heap would
change what other tests see)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from hostproxy.gcpolicy import GcPolicy


class RecordingGc:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.frozen = 0

    def freeze(self) -> None:
        self.calls.append("freeze")
        self.frozen += 100

    def unfreeze(self) -> None:
        self.calls.append("unfreeze")
        self.frozen = 0

    def get_freeze_count(self) -> int:
        return self.frozen


class Clock:
    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def collect(policy: GcPolicy, timer: Clock, generation: int, pause_s: float) -> None:
    """One collection as the callbacks report it: ``start``, ``pause_s`` later ``stop``."""
    policy.on_gc("start", {"generation": generation})
    timer.t += pause_s
    policy.on_gc("stop", {"generation": generation, "collected": 0, "uncollectable": 0})


def make(full_every_s: float = 3600.0) -> tuple[GcPolicy, RecordingGc, Clock, Clock]:
    fake, clock, timer = RecordingGc(), Clock(), Clock()
    policy = GcPolicy(gc_functions=fake, clock=clock, timer=timer, full_every_s=full_every_s)
    policy.walked_all()  # the daemon's start: collect, freeze
    return policy, fake, clock, timer


def test_young_collections_are_timed_and_change_nothing_frozen() -> None:
    policy, fake, _clock, timer = make()
    collect(policy, timer, 0, 0.0002)
    collect(policy, timer, 0, 0.0004)
    collect(policy, timer, 1, 0.003)
    assert fake.calls == []
    stats = policy.statistics()
    assert stats["collections"] == [2, 1, 0]
    assert stats["pause_ms_max"] == [0.4, 3.0, 0.0]
    assert stats["pause_ms_total"] == [0.6, 3.0, 0.0]


def test_every_full_collection_ends_with_a_freeze() -> None:
    policy, fake, clock, timer = make()
    for _ in range(3):
        clock.t += 60
        collect(policy, timer, 2, 0.02)
    assert fake.calls == ["freeze", "freeze", "freeze"]
    stats = policy.statistics()
    assert stats["freezes"] == 3 and stats["frozen_objects"] == 300
    assert stats["collections"][2] == 3 and stats["pause_ms_max"][2] == 20.0
    assert stats["complete_walks"] == 1  # the start's


def test_once_a_period_a_full_collection_walks_everything() -> None:
    policy, fake, clock, timer = make(full_every_s=100.0)
    clock.t = 50
    collect(policy, timer, 2, 0.01)  # within the period: freeze
    clock.t = 120
    collect(policy, timer, 2, 0.01)  # the period is over: unfreeze, so the next one walks all
    assert fake.calls == ["freeze", "unfreeze"]
    assert policy.walking_all and policy.statistics()["frozen_objects"] == 0
    collect(policy, timer, 1, 0.001)  # young collections do not end it
    assert policy.walking_all
    clock.t = 130
    collect(policy, timer, 2, 0.3)  # the complete walk: freezing resumes at its end
    assert fake.calls == ["freeze", "unfreeze", "freeze"]
    assert not policy.walking_all and policy.complete_walks == 2
    clock.t = 200  # 70 s after that walk: within the new period
    collect(policy, timer, 2, 0.01)
    assert fake.calls[-1] == "freeze"
    clock.t = 231  # 101 s after it: the next period is over
    collect(policy, timer, 2, 0.01)
    assert fake.calls[-1] == "unfreeze"


def test_a_reload_counts_as_a_complete_walk() -> None:
    policy, fake, clock, timer = make(full_every_s=100.0)
    clock.t = 90
    policy.walked_all()  # the reload's unfreeze, collect, freeze
    clock.t = 150  # 150 s after start, 60 s after the reload: within the period
    collect(policy, timer, 2, 0.01)
    assert fake.calls == ["freeze"]
    assert policy.complete_walks == 2


def test_a_stop_without_its_start_is_counted_without_a_pause() -> None:
    policy, _fake, _clock, _timer = make()
    policy.on_gc("stop", {"generation": 0})
    policy.on_gc("stop", {"generation": 7})  # not a generation this CPython has: ignored
    assert policy.statistics()["collections"] == [1, 0, 0]
    assert policy.statistics()["pause_ms_max"] == [0.0, 0.0, 0.0]


CHILD = textwrap.dedent(
    """
    import gc, json, time
    from hostproxy import gcpolicy

    class Node:
        def __init__(self):
            self.other = self  # a cycle: only the collector frees it

    kept = [Node() for _ in range(2000)]  # made after start, alive
    gc.collect()
    gc.freeze()
    policy = gcpolicy.GcPolicy(full_every_s=3600.0)
    policy.walked_all()
    gcpolicy.install(policy)
    frozen_at_start = gc.get_freeze_count()
    more = [Node() for _ in range(3000)]  # made later: in the collector's walks until frozen
    gc.collect(2)  # a full collection ends with a freeze
    after_full = gc.get_freeze_count()
    young = [Node() for _ in range(10)]
    gc.collect(0)  # a young one does not freeze
    after_young = gc.get_freeze_count()
    stats = policy.statistics()
    gcpolicy.uninstall()
    late = [Node() for _ in range(3000)]
    gc.collect(2)
    print(json.dumps({
        "frozen_at_start": frozen_at_start,
        "after_full": after_full,
        "after_young": after_young,
        "stats": stats,
        "after_uninstall": gc.get_freeze_count(),
        "callbacks_left": len(gc.callbacks),
    }))
    """
)


def test_with_the_real_collector_a_full_collection_freezes_its_survivors() -> None:
    out = subprocess.run(
        [sys.executable, "-c", CHILD], capture_output=True, text=True, check=True, timeout=60
    )
    doc = json.loads(out.stdout)
    assert doc["after_full"] >= doc["frozen_at_start"] + 3000  # the 3,000 later nodes went into the freeze
    assert doc["after_young"] == doc["after_full"]
    stats = doc["stats"]
    assert stats["freezes"] == 1 and stats["collections"][2] == 1
    assert stats["pause_ms_max"][2] > 0 and stats["frozen_objects"] == doc["after_full"]
    # Uninstalled: a full collection no longer freezes (the 3,000 nodes made after stay out; a frozen
    # object that died meanwhile was freed), and no callback is left behind.
    assert doc["after_uninstall"] <= doc["after_full"] and doc["callbacks_left"] == 0
