"""Overload watermarks: pure state machine with injected readings; one real process with a low fd limit."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import trio
import trio.testing
from structlog.testing import capture_logs

from hostproxy.overload import (
    Level,
    OverloadConfig,
    OverloadConfigError,
    OverloadManager,
    Reading,
    count_open_fds,
    detect_memory_limit,
    read_rss_bytes,
    sample_loop,
)

MB = 1 << 20
REPO = Path(__file__).resolve().parents[1]


def manager(**kw: object) -> OverloadManager:
    cfg = OverloadConfig(memory_limit_bytes=100 * MB, **kw)  # type: ignore[arg-type]
    return OverloadManager(cfg, clock=lambda: 42.0)


def mem(m: OverloadManager, mb: float) -> list[str]:
    return m.update(Reading(int(mb * MB), 10, 1024))


def actions(m: OverloadManager) -> tuple[bool, bool, bool]:
    return m.keepalive_allowed, m.shed_requests, m.accept_allowed


def test_memory_steps_up() -> None:
    m = manager()
    assert mem(m, 50) == [] and actions(m) == (True, False, True)
    assert mem(m, 80) == ["memory normal -> no_keepalive"]
    assert actions(m) == (False, False, True)
    assert mem(m, 90) == ["memory no_keepalive -> shed"]
    assert actions(m) == (False, True, True)
    assert mem(m, 95) == ["memory shed -> stop_accept"]
    assert actions(m) == (False, True, False)


def test_memory_jumps_straight_to_the_highest_mark_reached() -> None:
    m = manager()
    assert mem(m, 99) == ["memory normal -> stop_accept"]
    assert m.memory_level is Level.STOP_ACCEPT


def test_memory_hysteresis_on_the_way_down() -> None:
    m = manager()
    mem(m, 96)
    assert mem(m, 94) == []  # below the 95 % mark but not 5 points below it
    assert mem(m, 90.5) == []
    assert mem(m, 89.9) == ["memory stop_accept -> shed"]  # < 90 %: out of stop_accept (95 - 5)
    assert mem(m, 85.5) == []
    assert mem(m, 84) == ["memory shed -> no_keepalive"]
    assert mem(m, 75.5) == []
    assert mem(m, 70) == ["memory no_keepalive -> normal"]
    assert actions(m) == (True, False, True)


def test_hovering_at_a_mark_does_not_flap() -> None:
    m = manager()
    changes = [c for mb in [80.1, 79.9, 80.2, 79.5, 80.0, 78.0] for c in mem(m, mb)]
    assert changes == ["memory normal -> no_keepalive"]


def test_no_memory_limit_disables_memory_marks() -> None:
    m = OverloadManager(OverloadConfig(), clock=lambda: 0.0)
    assert m.update(Reading(10_000 * MB, 10, 1024)) == []
    assert actions(m) == (True, False, True)
    assert m.state_json()["memory"]["ratio"] is None


def test_fd_watermark_with_hysteresis() -> None:
    m = manager()  # 90 % of 1000 = 900 stops accepting; 850 resumes
    assert m.update(Reading(1 * MB, 899, 1000)) == []
    assert m.update(Reading(1 * MB, 900, 1000)) == ["fds: stop accepting"]
    assert actions(m) == (True, False, False)
    assert m.update(Reading(1 * MB, 851, 1000)) == []
    assert m.update(Reading(1 * MB, 849, 1000)) == ["fds: accepting again"]
    assert m.accept_allowed


def test_fd_reserve_applies_to_small_limits() -> None:
    m = manager(fd_reserve=16)  # limit 64: 90 % is 57.6, but only 48 leaves 16 spare
    assert m.update(Reading(MB, 47, 64)) == []
    assert m.update(Reading(MB, 48, 64)) == ["fds: stop accepting"]


def test_unlimited_fds_never_exhaust() -> None:
    m = manager()
    assert m.update(Reading(MB, 10**6, 0)) == [] and m.accept_allowed


def test_changes_are_logged_and_state_json() -> None:
    m = manager()
    with capture_logs() as logs:
        m.update(Reading(91 * MB, 950, 1000))
    assert logs == [
        {
            "event": "overload.changed",
            "log_level": "warning",
            "changes": ["memory normal -> shed", "fds: stop accepting"],
            "memory_level": "shed",
            "fd_exhausted": True,
            "rss_bytes": 91 * MB,
            "open_fds": 950,
            "fd_limit": 1000,
        }
    ]
    m.note_shed()
    assert m.state_json() == {
        "memory": {
            "level": "shed",
            "rss_bytes": 91 * MB,
            "limit_bytes": 100 * MB,
            "ratio": 0.91,
            "marks": {"no_keepalive": 0.8, "shed": 0.9, "stop_accept": 0.95},
        },
        "fds": {"open": 950, "limit": 1000, "ratio": 0.95, "stop_accept_mark": 0.9, "exhausted": True},
        "actions": {"keepalive": False, "shed_requests": True, "accept": False},
        "hysteresis": 0.05,
        "transitions": 2,
        "shed": 1,
        "since": 42.0,
    }
    assert m.statistics()["memory_level"] == 2


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        (
            {"shed": 0.7},
            r"^overload marks must rise: noKeepalive \(0.8\) <= shed \(0.7\) <= stopAccept \(0.95\)$",
        ),
        ({"stop_accept": 1.5}, r"^overload.stopAccept: a fraction in \(0, 1\] is expected, got 1.5$"),
        ({"hysteresis": 0.9}, r"^overload.hysteresis: must be >= 0 and below noKeepalive \(0.8\), got 0.9$"),
        ({"memory_limit_bytes": 0}, r"^overload.memoryLimitBytes: must be positive, got 0; leave it unset"),
    ],
)
def test_config_errors(kw: dict[str, float], message: str) -> None:
    with pytest.raises(OverloadConfigError, match=message):
        OverloadConfig(**kw)  # type: ignore[arg-type]


def test_readers_parse_proc_files(tmp_path: Path) -> None:
    status = tmp_path / "status"
    status.write_text("Name:\tpython\nVmPeak:\t  9999 kB\nVmRSS:\t   2048 kB\nThreads:\t1\n")
    assert read_rss_bytes(str(status)) == 2048 * 1024
    assert read_rss_bytes(str(tmp_path / "absent")) == 0
    fd_dir = tmp_path / "fd"
    fd_dir.mkdir()
    for i in range(4):
        (fd_dir / str(i)).write_text("")
    assert count_open_fds(str(fd_dir)) == 3  # one entry is the handle used to list the directory
    cg = tmp_path / "cg"
    cg.mkdir()
    (cg / "memory.max").write_text("max\n")
    assert detect_memory_limit(str(cg)) is None  # "max": no limit
    (cg / "memory.max").write_text("104857600\n")
    assert detect_memory_limit(str(cg)) == 100 * MB
    assert detect_memory_limit(str(tmp_path / "no-cgroup-fs")) is None


def test_real_rss_reading_is_plausible() -> None:
    rss = read_rss_bytes()
    assert MB < rss < 4096 * MB


async def test_sample_loop_feeds_readings(autojump_clock: trio.testing.MockClock) -> None:
    readings = iter([Reading(10 * MB, 10, 1000), Reading(96 * MB, 10, 1000), Reading(10 * MB, 10, 1000)])
    m = manager()
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: sample_loop(m, read=lambda: next(readings), task_status=task_status)
        )
        assert m.memory_level is Level.NORMAL
        await trio.sleep(1.5)
        assert m.memory_level is Level.STOP_ACCEPT
        await trio.sleep(1.0)
        assert m.memory_level is Level.NORMAL
        nursery.cancel_scope.cancel()


CHILD = textwrap.dedent(
    """
    import json, os, resource
    from hostproxy.overload import OverloadConfig, OverloadManager, sample
    m = OverloadManager(OverloadConfig(fd_reserve=8), clock=lambda: 0.0)
    before = sample()
    m.update(before)
    accept_before = m.accept_allowed
    held = []
    while sample().open_fds < 60:
        held.append(os.open(os.devnull, os.O_RDONLY))
    during = sample()
    m.update(during)
    accept_during = m.accept_allowed
    for fd in held:
        os.close(fd)
    after = sample()
    m.update(after)
    print(json.dumps({
        "limit": during.fd_limit, "before": before.open_fds, "during": during.open_fds,
        "after": after.open_fds, "opened": len(held),
        "accept": [accept_before, accept_during, m.accept_allowed],
    }))
    """
)


def test_real_process_with_lowered_nofile_limit() -> None:
    import resource

    def lower() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))

    proc = subprocess.run(
        [sys.executable, "-c", CHILD],
        cwd=REPO,
        preexec_fn=lower,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])  # structlog may print a warning first
    assert out["limit"] == 64
    assert out["during"] == 60
    # The count tracks the descriptors the child really opened and closed.
    assert out["during"] - out["before"] == out["opened"]
    assert out["after"] == out["before"]
    # 60 of 64 is past min(90 %, 64 - 8): accepting stops, and resumes once they are closed.
    assert out["accept"] == [True, False, True]
