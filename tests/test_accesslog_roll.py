"""Access log rolling (Linkerd's ``httpAccessLogRollPolicy``, ``httpAccessLogRotateCount``,
``httpAccessLogAppend``; the h2 router's ``h2AccessLog*``): the pure policy module, the log with an
injected clock on real files, config loading, and a real daemon rolling its log by size."""

from __future__ import annotations

import calendar
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hostproxy import logroll
from hostproxy.accesslog import AccessLog
from tests.daemonutil import curl, fs_config, running_daemon
from tests.upstreams import running_upstream

# Friday 2026-11-27 01:59:59.5 UTC.
FRI = calendar.timegm((2026, 11, 27, 1, 59, 59, 0, 0, 0)) + 0.5


def utc(*fields: int) -> float:
    return float(calendar.timegm((*fields, 0, 0, 0)))


# -- the policy -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kind", "weekday", "max_bytes"),
    [
        ("never", "never", None, None),
        ("Never", "never", None, None),
        ("sighup", "never", None, None),
        ("Hourly", "hourly", None, None),
        ("daily", "daily", None, None),
        ("Weekly(1)", "weekly", 1, None),
        ("weekly(7)", "weekly", 7, None),
        ("3.megabytes", "size", None, 3 << 20),
        ("1.gigabyte", "size", None, 1 << 30),
        ("100.Bytes", "size", None, 100),
        ("2.kilobytes", "size", None, 2048),
    ],
)
def test_linkerd_spellings_parse(text: str, kind: str, weekday: int | None, max_bytes: int | None) -> None:
    policy = logroll.parse_policy(text)
    assert (policy.kind, policy.weekday, policy.max_bytes) == (kind, weekday, max_bytes)
    assert policy.rolls == (kind != "never")


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("weekly(8)", "the day of weekly(N) is 1 (Sunday) to 7 (Saturday)"),
        ("weekly(0)", "the day of weekly(N) is 1 (Sunday) to 7 (Saturday)"),
        ("weekly", "the day of weekly(N) is 1 (Sunday) to 7 (Saturday)"),
        ("0.megabytes", "a size must be more than 0"),
        ("3.5.megabytes", logroll.WHAT_TO_WRITE),
        ("3mb", logroll.WHAT_TO_WRITE),
        ("3.furlongs", logroll.WHAT_TO_WRITE),
        ("fortnightly", logroll.WHAT_TO_WRITE),
    ],
)
def test_other_values_say_what_to_write(text: str, says: str) -> None:
    with pytest.raises(ValueError) as e:
        logroll.parse_policy(text)
    assert str(e.value) == f"{text!r} is not a roll policy: {says}"


def test_next_roll_times_are_utc_boundaries() -> None:
    p = logroll.parse_policy
    assert logroll.next_roll_time(p("hourly"), FRI) == utc(2026, 11, 27, 2, 0, 0)
    assert logroll.next_roll_time(p("daily"), FRI) == utc(2026, 11, 28, 0, 0, 0)
    # Java's days: 1 Sunday, 6 Friday, 7 Saturday. Never the day the file was opened.
    assert logroll.next_roll_time(p("weekly(6)"), FRI) == utc(2026, 12, 4, 0, 0, 0)
    assert logroll.next_roll_time(p("weekly(7)"), FRI) == utc(2026, 11, 28, 0, 0, 0)
    assert logroll.next_roll_time(p("weekly(1)"), FRI) == utc(2026, 11, 29, 0, 0, 0)
    assert logroll.next_roll_time(p("weekly(2)"), FRI) == utc(2026, 11, 30, 0, 0, 0)
    assert logroll.next_roll_time(p("100.bytes"), FRI) is None
    assert logroll.next_roll_time(p("never"), FRI) is None


def test_rolled_names_carry_the_opening_time() -> None:
    p = logroll.parse_policy
    assert logroll.rolled_name("/var/log/access.log", p("daily"), FRI) == "/var/log/access-20261127.log"
    assert logroll.rolled_name("/var/log/access.log", p("hourly"), FRI) == "/var/log/access-20261127-01.log"
    assert (
        logroll.rolled_name("/var/log/access.log", p("1.megabyte"), FRI)
        == "/var/log/access-20261127-015959.log"
    )
    assert logroll.rolled_name("/var/log/access.log", p("daily"), FRI, 2) == "/var/log/access-20261127-2.log"
    # Only the file name's last dot counts (not one in a directory), and a leading dot is no extension.
    assert logroll.rolled_name("/var/log.d/access", p("daily"), FRI) == "/var/log.d/access-20261127"
    assert logroll.rolled_name("logs/.access", p("daily"), FRI) == "logs/.access-20261127"


def test_the_rotate_count_keeps_the_newest_rolled_files_and_nothing_else_is_touched() -> None:
    pattern = logroll.rolled_pattern("/logs/access.log", logroll.parse_policy("1.megabyte"))
    names = [
        "access.log",  # the live file
        "access-control.log",  # another application's (Linkerd deleted it)
        "access-20261127-015959-1.log",
        "access-20261127-015959.log",
        "access-20261126-235959.log",
        "access-20261127-015959-2.log",
        "access-20261127.log",  # another policy's
    ]
    assert logroll.to_delete(names, pattern, -1) == []
    assert logroll.to_delete(names, pattern, 2) == [
        "access-20261126-235959.log",
        "access-20261127-015959.log",
    ]
    assert logroll.to_delete(names, pattern, 0) == [
        "access-20261126-235959.log",
        "access-20261127-015959.log",
        "access-20261127-015959-1.log",
        "access-20261127-015959-2.log",
    ]


# -- the log, on real files, with an injected clock ----------------------------------------------------


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def line(log: AccessLog, path: str) -> None:
    log.log(
        router="out",
        method="GET",
        path=path,
        service="/svc/a",
        client="/#/io.l5d.fs/a",
        endpoint="127.0.0.1:1",
        status=200,
        cause=None,
        duration_s=0.001,
    )


def paths_in(log_file: Path) -> list[str]:
    return [row.split("\t")[3] for row in log_file.read_text().splitlines()]


def test_a_daily_log_rolls_at_the_first_line_after_midnight(tmp_path: Path) -> None:
    clock = Clock(utc(2026, 11, 26, 23, 59, 58))
    path = tmp_path / "access.log"
    log = AccessLog(str(path), clock=clock, roll_policy="daily")
    line(log, "/before")
    clock.t = utc(2026, 11, 26, 23, 59, 59)
    line(log, "/still-before")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["access.log"]
    clock.t = utc(2026, 11, 27, 0, 0, 1)
    line(log, "/after")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["access-20261126.log", "access.log"]
    assert paths_in(tmp_path / "access-20261126.log") == ["/before", "/still-before"]
    assert paths_in(path) == ["/after"]
    clock.t = utc(2026, 11, 27, 23, 0, 0)
    line(log, "/same-day")
    assert paths_in(path) == ["/after", "/same-day"]
    stats = log.statistics()
    assert (stats["lines"], stats["rolls"], stats["roll_errors"], stats["roll_policy"]) == (4, 1, 0, "daily")
    log.close()


def test_a_size_policy_rolls_before_the_line_that_would_pass_it_and_keeps_the_rotate_count(
    tmp_path: Path,
) -> None:
    path = tmp_path / "access.log"
    log = AccessLog(str(path), clock=Clock(FRI), roll_policy="300.bytes", rotate_count=2)
    for i in range(20):
        line(log, f"/r{i:02d}")
    names = sorted(p.name for p in tmp_path.iterdir())
    # Every roll fell in one second, so the names after the first carry -1, -2 ...; two are kept.
    assert len(names) == 3 and "access.log" in names, names
    kept = sorted(
        (n for n in names if n != "access.log"),
        key=lambda n: int(n.removesuffix(".log").split("-")[3]) if n.count("-") == 3 else 0,
    )
    seen = [p for n in kept for p in paths_in(tmp_path / n)] + paths_in(path)
    # No line is lost or reordered in what is kept: the newest lines, ending with the last.
    assert seen == [f"/r{i:02d}" for i in range(20 - len(seen), 20)]
    for n in [*kept, "access.log"]:
        assert (tmp_path / n).stat().st_size <= 300
    assert log.statistics()["rolls"] >= 5
    log.close()


def test_a_size_policy_counts_what_the_file_already_held(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    path.write_text("x" * 290 + "\n")
    log = AccessLog(str(path), clock=Clock(FRI), roll_policy="300.bytes")
    line(log, "/first")
    assert paths_in(path) == ["/first"]
    assert (tmp_path / "access-20261127-015959.log").read_text() == "x" * 290 + "\n"
    log.close()


def test_a_file_truncated_in_place_is_counted_from_its_new_size(tmp_path: Path) -> None:
    """logrotate's copytruncate copies the file away and truncates it: the next roll comes after
    another size's worth of lines, not at once."""
    path = tmp_path / "access.log"
    log = AccessLog(str(path), clock=Clock(FRI), roll_policy="300.bytes")
    for i in range(3):
        line(log, f"/r{i}")
    each = path.stat().st_size // 3
    assert 3 * each <= 300 < 4 * each  # (three lines fit, a fourth would pass 300 bytes)
    os.truncate(path, 0)
    for i in range(3):
        line(log, f"/t{i}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["access.log"], "rolled before 300 bytes"
    assert paths_in(path) == ["/t0", "/t1", "/t2"]
    line(log, "/t3")
    rolled = sorted(p.name for p in tmp_path.iterdir() if p.name != "access.log")
    assert len(rolled) == 1
    assert paths_in(tmp_path / rolled[0]) == ["/t0", "/t1", "/t2"]
    assert paths_in(path) == ["/t3"]
    assert log.statistics()["rolls"] == 1
    log.close()


def test_append_false_truncates_at_the_first_open_only(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    path.write_text("from an earlier run\n")
    first = AccessLog(str(path), append=False)
    assert path.read_text() == ""
    line(first, "/one")
    # A reload builds a new router (and log) while the old one is still open: nothing is truncated.
    second = AccessLog(str(path), append=False)
    line(second, "/two")
    first.close()
    third = AccessLog(str(path), append=False)
    line(third, "/three")
    assert paths_in(path) == ["/one", "/two", "/three"]
    second.close()
    third.close()


def test_two_logs_of_one_file_roll_it_once(tmp_path: Path) -> None:
    clock = Clock(utc(2026, 11, 26, 23, 0, 0))
    path = tmp_path / "access.log"
    a = AccessLog(str(path), clock=clock, roll_policy="daily")
    b = AccessLog(str(path), clock=clock, roll_policy="daily", fmt="linkerd")
    line(a, "/a1")
    line(b, "/b1")
    clock.t = utc(2026, 11, 27, 0, 0, 0)
    line(b, "/b2")
    line(a, "/a2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["access-20261126.log", "access.log"]
    assert len((tmp_path / "access-20261126.log").read_text().splitlines()) == 2
    rows = path.read_text().splitlines()
    assert len(rows) == 2 and "/b2" in rows[0] and rows[1].split("\t")[3] == "/a2"
    a.close()
    b.close()


def test_a_log_file_removed_before_its_roll_is_counted_and_recreated(tmp_path: Path) -> None:
    clock = Clock(utc(2026, 11, 26, 23, 0, 0))
    path = tmp_path / "access.log"
    log = AccessLog(str(path), clock=clock, roll_policy="hourly")
    line(log, "/one")
    path.unlink()
    clock.t = utc(2026, 11, 27, 0, 0, 0)
    line(log, "/two")
    assert paths_in(path) == ["/two"]
    stats = log.statistics()
    assert (stats["rolls"], stats["roll_errors"], stats["write_errors"], stats["lines"]) == (0, 1, 0, 2)
    log.close()


def test_a_bad_policy_given_directly_names_the_key() -> None:
    with pytest.raises(ValueError, match=r"^h2AccessLogRollPolicy: 'weekly\(9\)' is not a roll policy: "):
        AccessLog("-", key="h2AccessLog", roll_policy="weekly(9)")


# -- config --------------------------------------------------------------------------------------------


def check(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    cfg = tmp_path / "linkerd.yaml"
    cfg.write_text(text)
    return subprocess.run(
        [sys.executable, "-m", "hostproxy", "check", str(cfg)], capture_output=True, text=True, timeout=60
    )


def test_linkerds_documented_access_log_settings_load(tmp_path: Path) -> None:
    # The first example of Linkerd's HTTP and HTTP/2 protocol pages.
    proc = check(
        tmp_path,
        """\
routers:
- protocol: http
  httpAccessLog: logs/access.log
  httpAccessLogRollPolicy: daily
  httpAccessLogAppend: true
  httpAccessLogRotateCount: -1
  servers: [{port: 4140}]
- protocol: h2
  experimental: true
  h2AccessLog: logs/h2-access.log
  h2AccessLogRollPolicy: daily
  h2AccessLogAppend: false
  h2AccessLogRotateCount: 7
  servers: [{port: 4142}]
""",
    )
    assert proc.returncode == 0, proc.stderr


def test_a_bad_policy_in_a_config_is_refused_at_its_key(tmp_path: Path) -> None:
    proc = check(
        tmp_path,
        "routers:\n- protocol: http\n  httpAccessLog: a.log\n  httpAccessLogRollPolicy: 10mb\n"
        "  servers: [{port: 4140}]\n",
    )
    assert proc.returncode != 0
    assert (
        f"routers[0].httpAccessLogRollPolicy: '10mb' is not a roll policy: {logroll.WHAT_TO_WRITE}"
        in proc.stderr
    )


# -- a real daemon -------------------------------------------------------------------------------------


async def test_a_daemon_rolls_its_access_log_by_size_and_keeps_the_rotate_count(tmp_path: Path) -> None:
    disco = tmp_path / "disco"
    disco.mkdir()
    logs = tmp_path / "logs"
    logs.mkdir()
    log_path = logs / "access.log"
    async with running_upstream() as up:
        (disco / "app").write_text(f"127.0.0.1 {up.port}\n")
        text = fs_config(disco) + (
            f"  httpAccessLog: {log_path}\n  httpAccessLogRollPolicy: 400.bytes\n  httpAccessLogRotateCount: 1\n"
        )
        async with running_daemon(text) as d:
            for i in range(12):
                r = await curl(f"http://127.0.0.1:{d.port('out')}/n{i:02d}", "-H", "Host: app")
                assert r.status == 200, r.l5d_err
            names = sorted(os.listdir(logs))
            assert len(names) == 2 and "access.log" in names, names
            rolled = next(n for n in names if n != "access.log")
            seen = paths_in(logs / rolled) + paths_in(log_path)
            assert seen == [f"/n{i:02d}" for i in range(12 - len(seen), 12)] and len(seen) < 12
            assert all((logs / n).stat().st_size <= 400 for n in names)
            r = await curl(f"{d.admin}/admin/metrics.json")
            tree = r.json()
            assert isinstance(tree, dict)
            assert tree["rt/out/access_log/lines"] == 12
            assert tree["rt/out/access_log/rolls"] >= 2
            assert tree["rt/out/access_log/roll_errors"] == 0
            prom = (await curl(f"{d.admin}/admin/metrics/prometheus")).body.decode()
            assert 'hostproxy_access_log_lines_total{router="out"} 12' in prom


def test_a_number_freed_by_the_rotate_count_is_not_reused() -> None:
    size = logroll.parse_policy("1.megabyte")
    path = "/logs/access.log"
    assert logroll.next_free(path, size, FRI, ["access.log", "access-20261127-015958.log"]) == 0
    assert (
        logroll.next_free(path, size, FRI, ["access-20261127-015959.log", "access-20261127-015959-1.log"])
        == 2
    )
    # The plain name and -1 .. -2 were deleted: the next is -4, after -3, not the plain name.
    assert logroll.next_free(path, size, FRI, ["access.log", "access-20261127-015959-3.log"]) == 4


def test_a_named_pipe_without_a_reader_is_refused_at_once_and_one_with_a_reader_gets_the_lines(
    tmp_path: Path,
) -> None:
    import threading

    fifo = tmp_path / "access.pipe"
    os.mkfifo(fifo)
    with pytest.raises(ValueError) as e:
        AccessLog(str(fifo))  # (opening it for writing used to wait for a reader for ever)
    assert str(e.value) == (
        f"httpAccessLog: {fifo} is a named pipe that no process reads, so nothing could be written; start its "
        "reader first, or log to a file or '-' (log events)"
    )
    got: list[bytes] = []
    opened = threading.Event()

    def reader() -> None:
        with open(fifo, "rb") as f:
            opened.set()
            got.append(f.read())

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    log = None
    for _ in range(500):  # (the reader's open and ours meet; ours is refused until it is there)
        try:
            log = AccessLog(str(fifo))
            break
        except ValueError:
            threading.Event().wait(0.01)
    assert log is not None
    line(log, "/through-the-pipe")
    log.close()
    thread.join(10)
    assert got and got[0].split(b"\t")[3] == b"/through-the-pipe"


def test_a_daemon_with_a_readerless_pipe_as_its_log_says_so_instead_of_hanging(tmp_path: Path) -> None:
    fifo = tmp_path / "access.pipe"
    os.mkfifo(fifo)
    cfg = tmp_path / "hostproxy.yaml"
    cfg.write_text(
        "admin: {ip: 127.0.0.1, port: 0}\nrouters:\n- protocol: http\n"
        f"  httpAccessLog: {fifo}\n  servers: [{{ip: 127.0.0.1, port: 0}}]\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "hostproxy", "run", str(cfg)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode != 0
    assert "is a named pipe that no process reads" in proc.stderr + proc.stdout


def test_paths_through_a_symlinked_directory_share_the_file_and_roll_it_once(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    clock = Clock(utc(2026, 11, 26, 23, 0, 0))
    a = AccessLog(str(real / "access.log"), clock=clock, roll_policy="daily")
    b = AccessLog(str(tmp_path / "link" / "access.log"), clock=clock, roll_policy="daily")
    line(a, "/a1")
    line(b, "/b1")
    clock.t = utc(2026, 11, 27, 0, 0, 0)
    line(b, "/b2")
    line(a, "/a2")
    assert sorted(p.name for p in real.iterdir()) == ["access-20261126.log", "access.log"]
    assert paths_in(real / "access-20261126.log") == ["/a1", "/b1"]
    assert paths_in(real / "access.log") == ["/b2", "/a2"]
    a.close()
    b.close()


async def test_a_request_in_flight_through_a_replaced_router_still_gets_its_line(tmp_path: Path) -> None:
    """A reload that rebuilds a router (its dtab changed) retires the old one, closing its access log,
    only once its requests in flight have ended (up to shutdownGraceMs): their lines are written."""
    import trio

    from hostproxy.config import load_config
    from hostproxy.daemon import Daemon

    log_path = tmp_path / "access.log"
    async with running_upstream() as up:
        disco = tmp_path / "disco"
        disco.mkdir()
        (disco / "web").write_text(f"127.0.0.1 {up.port}\n")
        path = tmp_path / "hostproxy.yaml"
        path.write_text(fs_config(disco) + f"  httpAccessLog: {log_path}\n")
        daemon = Daemon(load_config(path.read_text(), source=str(path)), config_path=str(path))
        async with trio.open_nursery() as nursery:
            await nursery.start(daemon.run)
            try:
                port = daemon.addresses["out"][0][1]
                done: list[int] = []

                async def slow() -> None:
                    r = await curl(f"http://127.0.0.1:{port}/slow/800", "-H", "Host: web")
                    done.append(r.status)

                nursery.start_soon(slow)
                with trio.fail_after(20):
                    while not up.requests:  # (in flight: the upstream has it)
                        await trio.sleep(0.02)
                path.write_text(
                    fs_config(disco, dtab="/svc => /#/io.l5d.fs;\n    /x => /#/io.l5d.fs;")
                    + f"  httpAccessLog: {log_path}\n"
                )
                ok, message = await daemon.reload()
                assert ok, message
                with trio.fail_after(20):
                    while not done:
                        await trio.sleep(0.02)
                assert done == [200]
                assert "/slow/800" in paths_in(log_path)
            finally:
                daemon.request_shutdown()
