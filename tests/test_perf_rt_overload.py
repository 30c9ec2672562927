"""The overload actions are plain attributes that always equal what the state says."""

from __future__ import annotations

import itertools

from hostproxy.overload import Level, OverloadConfig, OverloadManager, Reading

MB = 1 << 20


def expected(m: OverloadManager) -> tuple[bool, bool, bool]:
    level = m.memory_level
    return (
        level < Level.NO_KEEPALIVE,
        level >= Level.SHED,
        level < Level.STOP_ACCEPT and not m.fd_exhausted,
    )


def actions(m: OverloadManager) -> tuple[bool, bool, bool]:
    return m.keepalive_allowed, m.shed_requests, m.accept_allowed


def test_actions_follow_every_assignment_of_the_state() -> None:
    m = OverloadManager(OverloadConfig(memory_limit_bytes=100 * MB), clock=lambda: 0.0)
    assert actions(m) == (True, False, True) == expected(m)
    for level, exhausted in itertools.product(list(Level), [False, True, False]):
        m.memory_level = level
        m.fd_exhausted = exhausted
        assert actions(m) == expected(m)


def test_actions_follow_readings_up_and_down() -> None:
    m = OverloadManager(OverloadConfig(memory_limit_bytes=100 * MB), clock=lambda: 0.0)
    for mb, fds in [(50, 10), (85, 10), (92, 1000), (97, 10), (91, 10), (70, 1020), (10, 10)]:
        m.update(Reading(mb * MB, fds, 1024))
        assert actions(m) == expected(m)
        assert m.state_json()["actions"] == dict(
            zip(("keepalive", "shed_requests", "accept"), expected(m), strict=True)
        )
