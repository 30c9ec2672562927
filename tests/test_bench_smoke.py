"""Smoke runs of ``make bench``'s k8s and admin parts at tiny sizes: the rows and fields are there and
the counts that do not depend on timing are right. No timing thresholds: numbers are the README's job."""

from __future__ import annotations

import argparse
import os
import random
import re
import subprocess
import time

import pytest

from hostproxy import bench, bench_admin, bench_instr, bench_k8s


def _row(lines: list[str], label: str) -> str:
    """The value part of the report row starting with ``label``."""
    for line in lines:
        if line.startswith(label):
            return line[len(label) :].strip()
    raise AssertionError(f"no row {label!r} in:\n" + "\n".join(lines))


# -- pure pieces ------------------------------------------------------------------------------------


def test_fixed_rate_latencies_leave_out_each_runs_first_burst() -> None:
    # h2load --log-file columns: start (µs since the epoch), status, µs until the response's end;
    # written in completion order, not start order.
    log = "".join(
        f"{start}\t200\t{micros}\n"
        for start, micros in [
            (1_000_030, 900),
            (1_000_000, 5000),
            (1_010_000, 700),
            (1_000_010, 4000),
            (1_010_020, 800),
        ]
    )
    rows = bench.read_h2load_log(log + "\n")
    assert rows == [(1_000_030, 0.9), (1_000_000, 5.0), (1_010_000, 0.7), (1_000_010, 4.0), (1_010_020, 0.8)]
    # Two connections: the two earliest requests (their connections' setup) are left out, the rest
    # kept in start order.
    assert bench.steady_latencies(rows, 2) == [0.9, 0.7, 0.8]
    assert bench.steady_latencies(rows, 5) == []


def test_latency_summary_and_round_seconds() -> None:
    lat = [float(i) for i in range(100, 0, -1)]  # 1..100 ms, any order
    summary = bench.latency_summary(lat)
    assert summary == {"fr_p50": 50.5, "fr_p99": 99.01, "fr_max": 100.0, "fr_latencies": 100.0}
    assert bench.latency_summary([]) == {}
    assert [bench.round_seconds(10, r) for r in (1, 2, 3, 5, 10, 20, 0)] == [10, 5, 3, 2, 1, 1, 10]


def test_host_steal_is_read_from_the_cpu_line_of_proc_stat() -> None:
    text = (
        "cpu  2204872 4128 613220 7387903 10430 0 203833 8410 0 0\n"
        "cpu0 923085 2061 298152 3883566 1454 0 97637 4634 0 0\n"
        "cpu1 1281786 2066 315068 3504337 8976 0 106196 3776 0 0\n"
        "intr 1 2 3\n"
    )
    assert bench.steal_ticks(text) == 8410  # the all-CPUs line, not a CPU's own
    assert bench.steal_ticks("cpu  1 2 3 4 5 6 7\n") is None  # a kernel without the steal value
    assert bench.steal_ticks("intr 1 2 3\n") is None
    now = bench.host_steal_ms()
    with open("/proc/stat") as f:
        ticks = bench.steal_ticks(f.read())
    assert now is not None and ticks is not None
    assert now <= ticks * 1000 / os.sysconf("SC_CLK_TCK")  # read first, so no later than the file


def test_with_steal_brackets_one_run() -> None:
    calls: list[int] = []
    result, stolen, wall = bench.with_steal(lambda: calls.append(1) or "done")
    assert (result, calls) == ("done", [1])
    assert stolen is not None and stolen >= 0 and wall >= 0


def test_rounds_pair_each_proxy_run_with_the_direct_run_of_its_round() -> None:
    direct, proxy = bench._FixedRateRuns(), bench._FixedRateRuns()
    ms = [float(i) for i in range(1, 101)]  # p99 99.01
    direct.each = [bench._Run(ms, 0.0), bench._Run([x - 1 for x in ms], 2.5), bench._Run([], 0.0)]
    proxy.each = [bench._Run([x + 1.5 for x in ms], 0.0), bench._Run(ms, 80.25), bench._Run(ms, None)]
    assert bench.by_round(direct, proxy) == "+1.50 ms (steal 0.0 ms/s), +1.00 ms (steal 80.2 ms/s), -"
    # Only the first round had no steal in both runs: its latencies alone.
    assert bench.quiet_added_p99(direct, proxy) == (pytest.approx(1.5), 1)
    direct.each[2] = bench._Run([x + 10 for x in ms], 0.0)
    proxy.each[2] = bench._Run([x + 20 for x in ms], 0.0)
    # Two quiet rounds, pooled (not the mean of their two added p99s).
    pooled_d = bench.latency_summary(ms + [x + 10 for x in ms])["fr_p99"]
    pooled_p = bench.latency_summary([x + 1.5 for x in ms] + [x + 20 for x in ms])["fr_p99"]
    assert bench.quiet_added_p99(direct, proxy) == (pytest.approx(pooled_p - pooled_d), 2)
    proxy.each[0].steal = proxy.each[2].steal = 5.0
    assert bench.quiet_added_p99(direct, proxy) is None


def test_both_placements_names_each_target_with_what_it_has() -> None:
    a = bench.Target("direct", 1, None, {"fr_steal": 0.0, "iso_fr_steal": 2.5})
    b = bench.Target("hostproxy", 2, None, {"fr_steal": 10.04})  # one CPU: no isolated run
    c = bench.Target("nginx", 3, None, {})
    assert bench.both_placements([a, b, c], "fr_steal", "{:.1f}") == [
        "direct 0.0 shared, 2.5 isolated",
        "hostproxy 10.0 shared",
    ]
    assert bench.both_placements([a, b, c], "fr_preempted", "{:.2f}") == []


def test_target_verdicts_say_met_only_for_numbers_measured_within_the_target() -> None:
    h = {"rps": 10_000.0, "fr_p99": 2.5, "iso_fr_p99": 2.0}
    nginx = {"rps": 50_000.0}
    direct = {"fr_p99": 0.5, "iso_fr_p99": 0.4}
    assert bench.target_verdicts(h, nginx, direct, (1000, 46.6), 0.331) == [
        "requests/s at 50 connections: 20.0% of nginx's (target >= 5%): met",
        "added p99 at 1000 req/s: +2.00 ms shared, +1.60 ms isolated (target <= 2 ms): met",
        "RSS with 1000 idle client connections: 46.6 MB (target <= 50 MB): met",
        "first proxied response: 0.331 s after start (target <= 0.5 s): met",
    ]
    h = {"rps": 2_000.0, "fr_p99": 2.51}  # one CPU: no isolated runs
    assert bench.target_verdicts(h, nginx, direct, (1000, 50.1), 0.51) == [
        "requests/s at 50 connections: 4.0% of nginx's (target >= 5%): NOT met",
        "added p99 at 1000 req/s: +2.01 ms shared (target <= 2 ms): NOT met",
        "RSS with 1000 idle client connections: 50.1 MB (target <= 50 MB): NOT met",
        "first proxied response: 0.510 s after start (target <= 0.5 s): NOT met",
    ]
    # One placement over the target is enough to miss it; numbers not measured are never met.
    h = {"fr_p99": 1.0, "iso_fr_p99": 2.41}
    lines = bench.target_verdicts(h, {}, direct, (812, 30.0), 0.2)
    assert lines[:3] == [
        "requests/s at 50 connections: not measured",
        "added p99 at 1000 req/s: +0.50 ms shared, +2.01 ms isolated (target <= 2 ms): NOT met",
        "RSS with 1000 idle client connections: not measured (812 opened)",
    ]
    assert (
        bench.target_verdicts({}, nginx, {}, (1000, 1.0), 0.1)[1] == "added p99 at 1000 req/s: not measured"
    )


def test_target_verdicts_show_the_reference_proxies_added_p99_without_changing_a_verdict() -> None:
    h = {"rps": 10_000.0, "fr_p99": 2.1, "iso_fr_p99": 6.9}
    direct = {"fr_p99": 0.5, "iso_fr_p99": 0.5}
    nginx = {"rps": 50_000.0, "fr_p99": 0.9, "iso_fr_p99": 5.13}
    haproxy = {"rps": 50_000.0, "fr_p99": 1.3, "iso_fr_p99": 2.5}
    lines = bench.target_verdicts(h, nginx, direct, (1000, 46.6), 0.3, {"nginx": nginx, "haproxy": haproxy})
    assert lines[1:3] == [
        "added p99 at 1000 req/s: +1.60 ms shared, +6.40 ms isolated (target <= 2 ms): NOT met",
        "  the same rounds through nginx +0.40 ms shared, +4.63 ms isolated; haproxy +0.80 ms shared, "
        "+2.00 ms isolated (past the target too: nginx isolated)",
    ]
    # Within the target everywhere: the line says so by naming none; a reference measured in no
    # placement is left out, and hostproxy's verdict is its own.
    quiet = {"fr_p99": 0.8, "iso_fr_p99": 1.0}
    lines = bench.target_verdicts(h, nginx, direct, (1000, 46.6), 0.3, {"nginx": quiet, "haproxy": {}})
    assert lines[1:3] == [
        "added p99 at 1000 req/s: +1.60 ms shared, +6.40 ms isolated (target <= 2 ms): NOT met",
        "  the same rounds through nginx +0.30 ms shared, +0.50 ms isolated",
    ]
    assert bench.added_p99({"fr_p99": 3.0}, direct) == [("shared", 2.5)]
    assert bench.added_p99({"iso_fr_p99": 3.0}, {"fr_p99": 0.5}) == []


def test_fixed_rate_runs_pool_their_rounds(tmp_path) -> None:
    """Two one-second runs of the real load against a real nginx (standing in for a proxy): every
    request of both runs counted, all but each run's first burst in the latencies, and the CPU and
    preemptions of the process summed over both."""
    port = bench.free_port()
    procs: list[subprocess.Popen[bytes]] = []
    with bench.stopping(procs):
        procs.append(bench.start_nginx_upstream(tmp_path, port))
        bench.wait_port(port)
        target = bench.Target("nginx", port, procs[0])
        runs = bench._FixedRateRuns()
        runs.run(target, 1, tmp_path, None)
        first = (len(runs.latencies), runs.requests)
        runs.run(target, 1, tmp_path, None)
    assert first[0] == first[1] - bench.CONNECTIONS > 0
    assert len(runs.latencies) == runs.requests - 2 * bench.CONNECTIONS > first[0]
    assert runs.cpu_s is not None and runs.cpu_s > 0 and runs.preempted is not None
    out = runs.results(is_proxy=True)
    assert out["fr_requests"] == runs.requests and out["fr_latencies"] == len(runs.latencies)
    assert out["fr_cpu_ms"] == pytest.approx(runs.cpu_s / runs.requests * 1000)
    assert out["fr_preempted"] == pytest.approx(runs.preempted / runs.requests * bench.CONNECTIONS)
    assert out["fr_max"] == max(runs.latencies)
    assert "fr_cpu_ms" not in runs.results(is_proxy=False)  # the direct upstream: no proxy to measure
    # The host's steal is the machine's, for every target alike: summed over the runs, per second.
    assert runs.seconds >= 2.0 and runs.steal_ms is not None and runs.steal_ms >= 0
    assert out["fr_steal"] == pytest.approx(runs.steal_ms / runs.seconds)
    assert runs.results(is_proxy=False)["fr_steal"] == out["fr_steal"]
    # Each run kept with its own latencies and the steal per second in it.
    assert [len(r.latencies) for r in runs.each] == [first[0], len(runs.latencies) - first[0]]
    assert runs.each[0].latencies + runs.each[1].latencies == runs.latencies
    assert runs.each[0].p99 == bench.latency_summary(runs.latencies[: first[0]])["fr_p99"]
    assert all(r.steal is not None and r.steal >= 0 for r in runs.each)
    runs.cpu_s = None  # a process whose /proc could not be read: no CPU figure rather than a wrong one
    assert "fr_cpu_ms" not in runs.results(is_proxy=True) and "fr_preempted" in runs.results(is_proxy=True)


def test_preemptions_and_cpu_are_the_kernels_counts_for_every_thread() -> None:
    """``bench.preemptions`` sums ``nonvoluntary_ctxt_switches`` and ``bench.run_cpu_seconds`` the
    scheduler's run time over the threads of the processes given; a process that is gone counts
    nothing."""
    child = subprocess.Popen(["sleep", "30"])
    try:
        # Read once it sleeps (after its exec), so that its counts no longer move.
        for _ in range(500):
            with open(f"/proc/{child.pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "S":
                    break
            time.sleep(0.01)
        with open(f"/proc/{child.pid}/status") as f:
            own = next(int(line.split()[1]) for line in f if line.startswith("nonvoluntary_ctxt_switches:"))
        gone = subprocess.Popen(["true"])
        gone.wait()
        assert bench.preemptions([child.pid]) == own
        assert bench.preemptions([child.pid, gone.pid]) == own
        assert bench.preemptions([]) == 0
        with open(f"/proc/{child.pid}/task/{child.pid}/schedstat") as f:
            ran_ns = int(f.read().split()[0])
        assert bench.run_cpu_seconds([child.pid, gone.pid]) == ran_ns / 1e9  # (a sleeping child: no change)
    finally:
        child.kill()
        child.wait()


def test_isolated_placement_moves_the_proxy_and_the_upstream_and_puts_them_back() -> None:
    sets = bench.cpu_sets()
    everywhere = os.sched_getaffinity(0)
    if len(everywhere) < 2:
        assert sets is None  # one CPU: nothing to isolate, nothing is moved
        return
    assert sets is not None
    proxy_cpus, load_cpus = sets
    assert proxy_cpus == {max(everywhere)} and load_cpus == everywhere - proxy_cpus
    proxy = subprocess.Popen(["sleep", "30"])
    upstream = subprocess.Popen(["sleep", "30"])
    try:
        with bench.isolated([proxy.pid], [upstream.pid]) as given:
            assert given == load_cpus
            assert os.sched_getaffinity(proxy.pid) == proxy_cpus
            assert os.sched_getaffinity(upstream.pid) == load_cpus
        assert os.sched_getaffinity(proxy.pid) == everywhere
        assert os.sched_getaffinity(upstream.pid) == everywhere
        bench.place([proxy.pid, 2**22 + 12345], proxy_cpus)  # a pid that is gone is skipped
        assert os.sched_getaffinity(proxy.pid) == proxy_cpus
    finally:
        for p in (proxy, upstream):
            p.kill()
            p.wait()


def test_ip_for_is_unique_and_dotted() -> None:
    ips = [bench_k8s.ip_for(n) for n in range(70_000)]
    assert len(set(ips)) == len(ips)
    assert ips[0] == "10.0.0.1"
    assert ips[65_535] == "10.1.0.0"


def test_churn_replaces_one_address_of_one_service() -> None:
    churn = bench_k8s.Churn(services=4, endpoints=3, rng=random.Random(7))
    before = [list(ips) for ips in churn.ips]
    i, ips = churn.step()
    assert ips is churn.ips[i]
    changed = [s for s in range(4) if churn.ips[s] != before[s]]
    assert changed == [i]
    assert sum(a != b for a, b in zip(churn.ips[i], before[i], strict=True)) == 1
    new = set(churn.ips[i]) - set(before[i])
    assert len(new) == 1
    assert not new & {ip for row in before for ip in row}  # a fresh address, never used before


def test_churn_is_reproducible_from_its_seed() -> None:
    a = bench_k8s.Churn(50, 5, random.Random(3))
    b = bench_k8s.Churn(50, 5, random.Random(3))
    assert [a.step()[0] for _ in range(20)] == [b.step()[0] for _ in range(20)]


def test_scrape_interval_list_is_checked() -> None:
    assert bench_admin.intervals("0.1,1") == [0.1, 1.0]
    with pytest.raises(
        argparse.ArgumentTypeError, match=r"^'0,x' is not a list of positive seconds; give e.g. 0.1 or 0.1,1$"
    ):
        bench_admin.intervals("0,x")


def test_rounds_must_be_a_whole_number_of_at_least_one(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.positive_int("3") == 3
    for bad in ("0", "-2", "two"):
        with pytest.raises(
            argparse.ArgumentTypeError, match=rf"^'{bad}' is not a whole number of at least 1$"
        ):
            bench.positive_int(bad)
    for flag in ("--rounds", "--admin-rounds"):
        with pytest.raises(SystemExit):
            bench.main([flag, "0"])
        assert "is not a whole number of at least 1" in capsys.readouterr().err


def test_admin_load_sums_its_runs_and_summarises_them() -> None:
    load = bench_admin.Load(latencies=[float(i) for i in range(1, 101)], non2xx=2, errored=1)
    load.steal_ms, load.seconds = 30.0, 6.0
    assert load.summary() == {
        "requests": 100.0,
        "non2xx": 2.0,
        "errored": 1.0,
        "steal": 5.0,
        "p50": 50.5,
        "p99": 99.01,
        "max": 100.0,
    }
    load.steal_ms = None  # a kernel without steal: no steal figure rather than a wrong one
    assert "steal" not in load.summary()
    assert bench_admin.Load(latencies=[3.0]).summary() == {"requests": 1.0, "non2xx": 0.0, "errored": 0.0}


def test_h2load_errored_requests_are_read_from_its_summary() -> None:
    line = "requests: 100 total, 100 started, 97 done, 95 succeeded, 5 failed, 3 errored, 1 timeout"
    assert bench_admin.h2load_errored(f"starting\n{line}\nstatus codes: 95 2xx, 0 3xx, 2 4xx, 0 5xx\n") == 3
    with pytest.raises(RuntimeError, match="no requests summary"):
        bench_admin.h2load_errored("h2load: connection refused\n")


def test_only_rejects_an_unknown_part(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        bench.main(["--only", "dns"])
    assert "invalid choice: 'dns'" in capsys.readouterr().err


# -- the k8s namer benchmark, tiny ------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_k8s_part_alone_reports_every_row(capsys: pytest.CaptureFixture[str]) -> None:
    rc = bench.main(
        [
            "--only",
            "k8s",
            "--services",
            "12",
            "--endpoints",
            "3",
            "--rate",
            "40",
            "--churn-seconds",
            "1",
            "--sync-timeout",
            "60",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0
    assert "req/s@50c" not in out  # the proxies comparison did not run
    assert "admin scrapes" not in out
    lines = out.strip().splitlines()
    assert lines[0].startswith("io.l5d.k8s namer — 12 Services, 3 endpoints each, 40 updates/s for 1 s")
    assert _row(lines, "services x endpoints").startswith("12 x 3 = 36 endpoints")
    assert _row(lines, "namer").startswith("max_names 12, resyncIntervalSecs ")
    assert re.fullmatch(r"namer \d+, fake API \d+ \(hard \d+\)", _row(lines, "RLIMIT_NOFILE (soft)"))
    assert re.fullmatch(r"\d+\.\d\d s \(0 still pending\)", _row(lines, "first answer, all names"))
    assert _row(lines, "name states") == "bound=12"
    assert _row(lines, "errors") == "none"
    assert re.fullmatch(r"\d+\.\d\d s \(all bound, all watches streaming: yes\)", _row(lines, "settled"))
    assert re.fullmatch(r"\d+", _row(lines, "failed requests at start"))
    for label in ("RSS before namer", "RSS settled", "RSS after churn"):
        assert re.fullmatch(r"\d+\.\d MiB", _row(lines, label))
    assert re.fullmatch(r"-?\d+ B", _row(lines, "bytes per endpoint"))
    applied, sent = (int(x) for x in _row(lines, "updates applied / sent").split(" / "))
    assert sent == 40
    assert 0 < applied <= sent
    assert re.fullmatch(
        r"\d+\.\d{3} s \(namer process, \d+\.\d\d s total\)", _row(lines, "CPU per 1000 updates")
    )
    # each update replaces one address of one Service: one name changes, one notification
    assert float(_row(lines, "notifications per update")) == 1.0
    assert float(_row(lines, "name versions per update")) == 1.0
    assert float(_row(lines, "name recomputes per update")) == 1.0
    assert _row(lines, "re-lists during churn") == "0"
    assert _row(lines, "name states after churn") == "bound=12"
    assert _row(lines, "errors after churn") == "none"


# -- admin scrapes under load, tiny -----------------------------------------------------------------


@pytest.mark.timeout(120)
def test_admin_part_alone_reports_both_runs_and_every_endpoint(capsys: pytest.CaptureFixture[str]) -> None:
    rc = bench.main(
        [
            "--only",
            "admin",
            "--clients",
            "6",
            "--admin-rps",
            "50",
            "--admin-duration",
            "2",
            "--admin-rounds",
            "2",
            "--scrape-interval",
            "0.2",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0
    assert "req/s@50c" not in out and "io.l5d.k8s namer" not in out
    lines = out.strip().splitlines()
    assert lines[0].startswith(
        "admin scrapes under load — 6 clients, 50 req/s over 10 connections for 2 x 1 s per mode (interleaved"
    )
    assert lines[1] == "clients warmed: 6 of 6 names in " + lines[1].split(" in ")[1]
    assert lines[1].endswith("/client_state.json lists 6 clients")
    runs = {
        line.split("  ")[0].strip(): line.split()
        for line in lines
        if line.startswith(("no scrapes", "scrapes every"))
    }
    assert set(runs) == {"no scrapes", "scrapes every 0.2 s"}
    idle = runs["no scrapes"]
    # requests of both rounds, of 2 x 50 intended, no non-2xx, none errored
    assert idle[2:6] == [idle[2], "100", "0", "0"]
    assert int(idle[2]) > 50  # more than one round's worth
    assert idle[-3] == "-"  # no p99 added for the idle mode
    scraped = runs["scrapes every 0.2 s"]
    assert scraped[5:8] == ["100", "0", "0"] and int(scraped[4]) > 50
    assert re.fullmatch(r"[+-]\d+\.\d\d", scraped[-3])
    assert all(re.fullmatch(r"\d+\.\d", row[-1]) for row in (idle, scraped))  # the host's steal, ms/s
    table = lines[lines.index(next(x for x in lines if x.startswith("endpoint, every 0.2 s"))) + 2 :]
    got = {row.split()[0]: row.split()[1:] for row in table}
    assert set(got) == set(bench_admin.SCRAPE_PATHS)
    for path in bench_admin.SCRAPE_PATHS:
        scrapes, errors, _p50, _mx, size = got[path]
        assert int(scrapes) >= 2 and errors == "0"  # the scraper ran in both rounds
        assert float(size) > 0


# -- the instructions part ----------------------------------------------------------------------------


def test_callgrind_total_reads_the_totals_line() -> None:
    text = "# callgrind format\nversion: 1\nevents: Ir\nsummary: 0\n\nfn=main\n1 5\n\ntotals: 412890175\n"
    assert bench_instr.callgrind_total(text) == 412890175
    assert bench_instr.callgrind_total("events: Ir\nsummary: 7\n") == 7
    assert bench_instr.callgrind_total("events: Ir\n") is None


def test_instructions_part_counts_each_target() -> None:
    """A tiny run: every target answered every counted request under valgrind (the part raises
    otherwise) and was counted. (At this size each count is mostly its ten connections' setup, so
    the targets' order says nothing here.)"""
    args = argparse.Namespace(instr_requests=60, instr_warmup=20)
    lines = bench_instr.run(args)
    per = {t: float(_row(lines, t).split()[0]) for t in bench_instr.TARGETS}
    assert all(v > 0 for v in per.values()), lines
    assert _row(lines, "trio floor").split()[1] == "1.00", lines


def test_compare_line_sets_the_two_checkouts_side_by_side() -> None:
    """``--compare``: each number of this checkout's hostproxy against the other's from the same runs,
    the added p99 over direct's in those runs, and the change where a ratio means something."""
    a = {
        "rps": 11000.0,
        "cpu_per_10k": 0.9,
        "fr_cpu_ms": 0.15,
        "fr_p99": 2.5,
        "iso_fr_p99": 2.0,
        "rss_mb": 44.0,
    }
    b = {"rps": 10000.0, "cpu_per_10k": 1.0, "fr_cpu_ms": 0.2, "fr_p99": 3.0, "rss_mb": 41.0}
    direct = {"fr_p99": 0.5, "iso_fr_p99": 0.5}
    assert bench.compare_line(a, b, direct) == (
        "hostproxy / hostproxy B, same runs: requests/s at 50 connections 11000 / 10000, +10%; "
        "CPU s/10k 0.90 / 1.00, -10%; CPU per request at 1000 req/s 0.150 / 0.200 ms, -25%; "
        "added p99 shared +2.00 / +2.50 ms; peak RSS 44.0 / 41.0 MB, +7%"
    )
