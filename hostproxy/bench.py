"""``make bench``: hostproxy against a direct connection, nginx and haproxy, in one run on loopback.

Theory of operation: one nginx (1 worker) serves a small body as the upstream. Three proxies front it —
hostproxy (one process, the config below), nginx (1 worker, keep-alive upstream) and haproxy (1 thread) —
plus the "trio floor" (:mod:`hostproxy.bench_floor`, a bare trio + llhttp forwarder with no features: what
one worker on this stack costs before hostproxy does anything) and "http layers" (hostproxy's HTTP/1.1
server and upstream pool with no router between them), and every target, the direct upstream included,
is driven with the same two loads:

* ``wrk`` keep-alive at 50 connections for ``--duration`` seconds (throughput and latency under load);
* a fixed rate of 1000 requests/s over 10 connections (``h2load --h1 --rps``, the shape of Linkerd's own
  perf baseline), with per-request timings from ``--log-file`` for p50/p99/max. These runs are spread
  over ``--rounds`` rounds (5: two seconds each of the ten), every target in each round, and each
  target's latencies are pooled over the rounds: the machine's slow spells, which last seconds to
  minutes on a shared host, then fall on every target alike instead of on whichever ran in them. Each
  run's first burst (the first request of every connection, which includes the connection's setup)
  is left out of the latencies. Each target runs twice per round: first with every
  process free to run on any CPU (*shared*: the proxy competes with the load generator and the upstream
  for the machine's CPUs, and a burst of requests it serves can be slowed by them), then with the proxy
  alone on the last CPU and the load generator and the upstream on the others (*isolated*, the usual
  placement for measuring what a proxy itself adds; it needs two CPUs at least). The fixed rate needs a
  few percent of a CPU from the load generator and the upstream, so confining them costs them nothing
  (the direct upstream's own p99 is lower so); the ``wrk`` load needs whole CPUs and runs shared only.

For each target it prints requests/s, p50/p99/max, CPU seconds per 10k requests under wrk (utime+stime of
all the proxy's processes from /proc), CPU milliseconds per request at the fixed rate (from the scheduler's
nanosecond account in /proc/PID/task/TID/schedstat: ticks are no good there, the proxy runs in bursts in
step with the load's 10 ms timer), peak RSS (VmHWM summed over the processes), and the ratios of hostproxy to
direct, nginx and haproxy; and how often each proxy was preempted per burst of ten requests at the fixed
rate, shared and isolated (``nonvoluntary_ctxt_switches`` from ``/proc/PID/task/TID/status``: in the shared
placement the load generator and the upstream, woken by the proxy's writes, take its CPU from it). On a
virtual machine it also prints the host's steal during each target's fixed-rate runs (``/proc/stat``: time
the machine's CPUs had work while the host ran something else, which stalls every process here for
milliseconds) and hostproxy's added p99 round by round beside the steal in its run, so that a reader can
tell the machine's stalls from the proxy's. It then opens 1,000 idle client connections to hostproxy and
reports its RSS, and reports how soon after start hostproxy answered its first proxied request. Last,
one line per target of the issue (one worker: requests/s at 50 connections at least 5% of nginx's, added
p99 at 1000 req/s at most 2 ms in every placement measured, RSS with 1,000 idle connections at most 50 MB,
first proxied response within 0.5 s) with the number and whether it was met.

Two more parts run after it (``--only http|k8s|admin`` runs one part alone; each part's sizes have
flags, see ``--help``): :mod:`hostproxy.bench_k8s`, the ``io.l5d.k8s`` namer watching 5,000 Services
of 20 endpoints under 500 endpoint updates/s (memory, CPU per update, notifications per update), and
:mod:`hostproxy.bench_admin`, proxied p99 at 1000 req/s with and without admin scrapes of 1,000
clients. ``--only instructions`` (never in the default run) counts the user-space instructions of one
proxied request under callgrind (:mod:`hostproxy.bench_instr`): repeatable to a few percent where the
timings move by 10-20%, the measure to compare changes to the request path by; ``--only instructions-h2``
(never in the default run either) counts the same for the ``protocol: h2`` path (h2c both ways, ``h2load
-c10 -m10`` against an nginx h2c origin).

This is a benchmark, not a test: it asserts nothing; the README records its numbers. Every process it
starts listens on 127.0.0.1 only and is stopped at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

_T = TypeVar("_T")

BODY = b"hello from the upstream\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.02)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (nginx and haproxy fork workers)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def _sum_over_threads(pids: list[int], name: str, value: Callable[[str], int]) -> int | None:
    """``value`` of each ``/proc/PID/task/TID/<name>`` file of ``pids`` (every thread), summed; a
    process that is gone counts nothing, and None when a file is not there or not as expected."""
    total = 0
    for p in pids:
        try:
            tids = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{p}/task/{tid}/{name}") as f:
                    total += value(f.read())
            except (OSError, StopIteration, IndexError, ValueError):
                return None
    return total


def run_cpu_seconds(pids: list[int]) -> float | None:
    """CPU time of ``pids`` (all their threads) in seconds, to the nanosecond, from the scheduler's own
    account (``/proc/PID/task/TID/schedstat``); None where the kernel does not keep it.

    :func:`cpu_seconds` counts clock ticks, which a process that runs in short bursts in step with a
    10 ms timer (the fixed-rate load) can dodge or hit every time; this one does not sample."""
    ns = _sum_over_threads(pids, "schedstat", lambda text: int(text.split()[0]))
    return None if ns is None else ns / 1e9


def preemptions(pids: list[int]) -> int | None:
    """How often the kernel took the CPU from ``pids`` (all their threads) while they could still run:
    the ``nonvoluntary_ctxt_switches`` of ``/proc/PID/task/TID/status``; None where it is not there."""

    def count(text: str) -> int:
        return int(
            next(x for x in text.splitlines() if x.startswith("nonvoluntary_ctxt_switches:")).split()[1]
        )

    return _sum_over_threads(pids, "status", count)


def steal_ticks(proc_stat: str) -> int | None:
    """The host's steal time in clock ticks, summed over the machine's CPUs: the eighth value of the
    ``cpu`` line of ``/proc/stat`` (time a virtual CPU had work but the host ran something else); None
    where the line has no such value."""
    for line in proc_stat.splitlines():
        fields = line.split()
        if fields and fields[0] == "cpu":
            return int(fields[8]) if len(fields) > 8 else None
    return None


def host_steal_ms() -> float | None:
    """:func:`steal_ticks` of this machine now, in milliseconds; None where it is not kept."""
    try:
        with open("/proc/stat") as f:
            ticks = steal_ticks(f.read())
    except (OSError, ValueError):
        return None
    return None if ticks is None else ticks * 1000 / os.sysconf("SC_CLK_TCK")


def with_steal(run: Callable[[], _T]) -> tuple[_T, float | None, float]:
    """``run()``'s result, the host's steal while it ran (ms, all CPUs; None where not kept) and how
    long it ran (s)."""
    h0, w0 = host_steal_ms(), time.monotonic()
    result = run()
    h1, wall = host_steal_ms(), time.monotonic() - w0
    return result, None if h0 is None or h1 is None else h1 - h0, wall


def cpu_seconds(pids: list[int]) -> float:
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError):
            pass
    return total / tick


def memory_kb(pids: list[int], key: str) -> int:
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith(key + ":"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


@dataclass
class Target:
    name: str
    port: int
    proc: subprocess.Popen[bytes] | None = None
    results: dict[str, float] = field(default_factory=dict)

    def pids(self) -> list[int]:
        return process_tree(self.proc.pid) if self.proc else []


def run_wrk(port: int, duration: int, scheme: str = "http") -> dict[str, float]:
    out = subprocess.run(
        ["wrk", "-t1", "-c50", f"-d{duration}s", "--latency", f"{scheme}://127.0.0.1:{port}/"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    res: dict[str, float] = {}
    for line in out.splitlines():
        parts = line.split()
        if line.startswith("Requests/sec:"):
            res["rps"] = float(parts[1])
        elif len(parts) == 2 and parts[0] in ("50%", "99%"):
            res["p" + parts[0][:-1]] = _ms(parts[1])
        elif parts[:1] == ["Latency"] and len(parts) >= 4:
            res["max"] = _ms(parts[3])
        elif "requests in" in line:
            res["requests"] = float(parts[0])
    return res


def _ms(text: str) -> float:
    for unit, mult in (("us", 0.001), ("ms", 1.0), ("s", 1000.0)):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * mult
    return float(text)


def cpu_sets() -> tuple[set[int], set[int]] | None:
    """The isolated placement's CPUs: ``(the proxy's, the load generator's and upstream's)``, the last
    CPU this process may use and the others; None with fewer than two."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None
    if len(cpus) < 2:
        return None
    return {cpus[-1]}, set(cpus[:-1])


def place(pids: list[int], cpus: set[int]) -> None:
    """Confine every thread of ``pids`` to ``cpus`` (a process that is gone is skipped)."""
    for pid in pids:
        try:
            tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
        except OSError:
            continue
        for tid in tids:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(tid, cpus)


@contextlib.contextmanager
def isolated(proxy_pids: list[int], upstream_pids: list[int]) -> Iterator[set[int] | None]:
    """Within: the proxy on its own CPU, the upstream on the others; yields the load generator's CPUs
    (None when there are not two CPUs: nothing moved). Everything may run anywhere again after."""
    sets = cpu_sets()
    if sets is None:
        yield None
        return
    proxy_cpus, load_cpus = sets
    everywhere = proxy_cpus | load_cpus
    place(proxy_pids, proxy_cpus)
    place(upstream_pids, load_cpus)
    try:
        yield load_cpus
    finally:
        place(proxy_pids, everywhere)
        place(upstream_pids, everywhere)


#: Connections of the fixed-rate load (``h2load -c``); each sends ``RATE_PER_CONNECTION`` requests/s.
CONNECTIONS = 10
RATE_PER_CONNECTION = 100


def run_fixed_rate(
    port: int, duration: int, tmp: Path, load_cpus: set[int] | None = None
) -> tuple[list[float], int]:
    """One run of 1000 requests/s over 10 connections for ``duration`` s; with ``load_cpus``, h2load
    runs on those. Returns the latencies (ms) of the run's steady requests (``steady_latencies``) and
    how many requests were answered in all."""
    log = tmp / f"h2load-{port}.log"
    log.unlink(missing_ok=True)
    subprocess.run(
        [
            "h2load",
            "--h1",
            f"-c{CONNECTIONS}",
            f"--rps={RATE_PER_CONNECTION}",
            f"-D{duration}",
            f"--log-file={log}",
            f"http://127.0.0.1:{port}/",
        ],
        capture_output=True,
        text=True,
        check=True,
        preexec_fn=(lambda: os.sched_setaffinity(0, load_cpus)) if load_cpus else None,
    )
    rows = read_h2load_log(log.read_text())
    return steady_latencies(rows, CONNECTIONS), len(rows)


def read_h2load_log(text: str) -> list[tuple[int, float]]:
    """``(start µs, latency ms)`` of every request in an ``h2load --log-file`` (its columns: start
    time in µs since the epoch, status, µs until the end of the response)."""
    rows = []
    for line in text.splitlines():
        if line:
            start, _status, micros = line.split("\t")[:3]
            rows.append((int(start), int(micros) / 1000.0))
    return rows


def steady_latencies(rows: list[tuple[int, float]], connections: int) -> list[float]:
    """The latencies of a run's requests without its first burst: the first request of each of the
    ``connections``, which starts together with the others and whose time includes its connection's
    setup (the proxy accepting it, and for a proxy its first upstream connection)."""
    ordered = sorted(rows)
    return [latency for _, latency in ordered[connections:]]


def latency_summary(latencies: list[float]) -> dict[str, float]:
    """p50, p99 and max (ms) of the latencies, and how many there were (empty: nothing)."""
    if not latencies:
        return {}
    lat = sorted(latencies)
    q = statistics.quantiles(lat, n=100, method="inclusive")
    return {"fr_p50": q[49], "fr_p99": q[98], "fr_max": lat[-1], "fr_latencies": float(len(lat))}


def round_seconds(duration: int, rounds: int) -> int:
    """Seconds per fixed-rate run when ``duration`` is spread over ``rounds`` (at least one)."""
    return max(1, round(duration / max(1, rounds)))


@dataclass
class _Run:
    """One fixed-rate run: its steady latencies (ms) and the host's steal during it (ms per second
    over all CPUs; None where the kernel does not keep it)."""

    latencies: list[float]
    steal: float | None

    @property
    def p99(self) -> float | None:
        return latency_summary(self.latencies).get("fr_p99")


@dataclass
class _FixedRateRuns:
    """One target's fixed-rate runs in one placement, summed over the rounds."""

    latencies: list[float] = field(default_factory=list)
    requests: int = 0
    cpu_s: float | None = 0.0
    preempted: int | None = 0
    seconds: float = 0.0  # wall time of the runs
    steal_ms: float | None = 0.0  # the host's steal over the runs (all CPUs)
    each: list[_Run] = field(default_factory=list)  # the runs, in order (one per round)

    def run(self, t: Target, seconds: int, tmp: Path, load_cpus: set[int] | None) -> None:
        pids = t.pids()
        r0, s0 = run_cpu_seconds(pids), preemptions(pids)
        (latencies, requests), stolen, wall = with_steal(
            lambda: run_fixed_rate(t.port, seconds, tmp, load_cpus)
        )
        pids = t.pids()
        r1, s1 = run_cpu_seconds(pids), preemptions(pids)
        self.latencies += latencies
        self.requests += requests
        self.cpu_s = None if self.cpu_s is None or r0 is None or r1 is None else self.cpu_s + r1 - r0
        self.preempted = (
            None if self.preempted is None or s0 is None or s1 is None else self.preempted + s1 - s0
        )
        self.seconds += wall
        self.steal_ms = None if self.steal_ms is None or stolen is None else self.steal_ms + stolen
        self.each.append(_Run(latencies, None if stolen is None else stolen / wall))

    def results(self, is_proxy: bool) -> dict[str, float]:
        out = latency_summary(self.latencies)
        if out:
            out["fr_requests"] = float(self.requests)
        if self.steal_ms is not None and self.seconds > 0:
            out["fr_steal"] = self.steal_ms / self.seconds  # ms per s, all CPUs
        if is_proxy and self.requests:
            if self.cpu_s is not None:
                out["fr_cpu_ms"] = self.cpu_s / self.requests * 1000
            if self.preempted is not None:
                out["fr_preempted"] = self.preempted / self.requests * CONNECTIONS  # per burst
        return out


def by_round(direct: _FixedRateRuns, proxy: _FixedRateRuns) -> str:
    """Each round's added p99 of ``proxy`` over ``direct`` (their runs in the same round and placement)
    with the host's steal in the proxy's run: ``+1.52 ms (steal 0.0 ms/s), ...``."""
    out = []
    for d, p in zip(direct.each, proxy.each, strict=False):
        d99, p99 = d.p99, p.p99
        added = "-" if d99 is None or p99 is None else f"{p99 - d99:+.2f} ms"
        out.append(added + ("" if p.steal is None else f" (steal {p.steal:.1f} ms/s)"))
    return ", ".join(out)


def quiet_added_p99(direct: _FixedRateRuns, proxy: _FixedRateRuns) -> tuple[float, int] | None:
    """The added p99 of ``proxy`` over ``direct`` with the latencies of only those rounds in which the
    host stole nothing during either run, pooled; and how many rounds those were. None when no round
    was quiet (or the kernel keeps no steal)."""
    quiet = [(d, p) for d, p in zip(direct.each, proxy.each, strict=False) if d.steal == 0 and p.steal == 0]
    d_p99 = latency_summary([x for d, _ in quiet for x in d.latencies]).get("fr_p99")
    p_p99 = latency_summary([x for _, p in quiet for x in p.latencies]).get("fr_p99")
    if d_p99 is None or p_p99 is None:
        return None
    return p_p99 - d_p99, len(quiet)


def both_placements(targets: list[Target], key: str, fmt: str) -> list[str]:
    """``name X shared, Y isolated`` for each target with a ``key`` result (the isolated part only
    where it ran isolated too), values formatted with ``fmt``."""
    return [
        f"{t.name} {fmt.format(t.results[key])} shared"
        + (f", {fmt.format(t.results['iso_' + key])} isolated" if "iso_" + key in t.results else "")
        for t in targets
        if key in t.results
    ]


# The targets for one worker (README, Performance).
TARGET_RPS_SHARE = 0.05  # of nginx-as-proxy's requests/s at 50 connections, at least
TARGET_ADDED_P99_MS = 2.0  # over direct at 1000 req/s, at most
TARGET_IDLE_RSS_MB = 50.0  # with 1,000 idle client connections, at most
TARGET_FIRST_RESPONSE_S = 0.5  # after start, at most


def added_p99(r: dict[str, float], direct: dict[str, float]) -> list[tuple[str, float]]:
    """A target's added p99 at 1000 req/s over direct's, per placement both were measured in."""
    return [
        (placement, r[key] - direct[key])
        for placement, key in (("shared", "fr_p99"), ("isolated", "iso_fr_p99"))
        if key in r and key in direct
    ]


def target_verdicts(
    h: dict[str, float],
    nginx: dict[str, float],
    direct: dict[str, float],
    idle: tuple[int, float],
    first_s: float,
    references: dict[str, dict[str, float]] | None = None,
) -> list[str]:
    """One line per target: hostproxy's number (``h``, against ``nginx``'s and ``direct``'s results),
    the target, and whether it was met. ``idle``: the idle connections opened and the RSS (MB) with
    them; a number not measured is said so, never counted as met. ``references`` (name → results):
    proxies whose added p99 in the same rounds is printed under hostproxy's, to tell a disturbed
    host from a slow proxy; they change no verdict."""

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    lines = []
    if h.get("rps") and nginx.get("rps"):
        share = h["rps"] / nginx["rps"]
        lines.append(
            f"requests/s at 50 connections: {share:.1%} of nginx's (target >= {TARGET_RPS_SHARE:.0%}): "
            + verdict(share >= TARGET_RPS_SHARE)
        )
    else:
        lines.append("requests/s at 50 connections: not measured")
    added = added_p99(h, direct)
    if added:
        lines.append(
            "added p99 at 1000 req/s: "
            + ", ".join(f"{v:+.2f} ms {placement}" for placement, v in added)
            + f" (target <= {TARGET_ADDED_P99_MS:g} ms): "
            + verdict(all(v <= TARGET_ADDED_P99_MS for _, v in added))
        )
        seen = []
        past = []
        for name, r in (references or {}).items():
            theirs = added_p99(r, direct)
            if theirs:
                seen.append(f"{name} " + ", ".join(f"{v:+.2f} ms {placement}" for placement, v in theirs))
                past += [f"{name} {placement}" for placement, v in theirs if v > TARGET_ADDED_P99_MS]
        if seen:
            # A proxy in C that adds more than the target in the same rounds was held up by the
            # machine (the host's steal, the scheduler), not by its own work.
            lines.append(
                "  the same rounds through "
                + "; ".join(seen)
                + (f" (past the target too: {', '.join(past)})" if past else "")
            )
    else:
        lines.append("added p99 at 1000 req/s: not measured")
    opened, rss_mb = idle
    if opened >= 1000:
        lines.append(
            f"RSS with {opened} idle client connections: {rss_mb:.1f} MB (target <= {TARGET_IDLE_RSS_MB:g} MB): "
            + verdict(rss_mb <= TARGET_IDLE_RSS_MB)
        )
    else:
        lines.append(f"RSS with 1000 idle client connections: not measured ({opened} opened)")
    lines.append(
        f"first proxied response: {first_s:.3f} s after start (target <= {TARGET_FIRST_RESPONSE_S:g} s): "
        + verdict(first_s <= TARGET_FIRST_RESPONSE_S)
    )
    return lines


def start_nginx_upstream(tmp: Path, port: int) -> subprocess.Popen[bytes]:
    conf = tmp / "nginx-upstream.conf"
    conf.write_text(f"""
worker_processes 1; daemon off; pid {tmp}/nginx-up.pid; error_log stderr error;
events {{ worker_connections 4096; }}
http {{ access_log off; client_body_temp_path {tmp}; proxy_temp_path {tmp};
  fastcgi_temp_path {tmp}; uwsgi_temp_path {tmp}; scgi_temp_path {tmp};
  keepalive_requests 1000000;
  server {{ listen 127.0.0.1:{port}; location / {{ return 200 "{BODY.decode().strip()}\\n"; }} }} }}
""")
    return subprocess.Popen(["nginx", "-c", str(conf), "-p", str(tmp)])


def start_nginx_proxy(tmp: Path, port: int, upstream: int) -> subprocess.Popen[bytes]:
    conf = tmp / "nginx-proxy.conf"
    conf.write_text(f"""
worker_processes 1; daemon off; pid {tmp}/nginx-proxy.pid; error_log stderr error;
events {{ worker_connections 4096; }}
http {{ access_log off; client_body_temp_path {tmp}; proxy_temp_path {tmp};
  fastcgi_temp_path {tmp}; uwsgi_temp_path {tmp}; scgi_temp_path {tmp};
  keepalive_requests 1000000;
  upstream up {{ server 127.0.0.1:{upstream}; keepalive 64; }}
  server {{ listen 127.0.0.1:{port};
    location / {{ proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; }} }} }}
""")
    return subprocess.Popen(["nginx", "-c", str(conf), "-p", str(tmp)])


def start_haproxy(tmp: Path, port: int, upstream: int) -> subprocess.Popen[bytes]:
    conf = tmp / "haproxy.cfg"
    conf.write_text(f"""
global
  nbthread 1
  maxconn 4096
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
frontend fe
  bind 127.0.0.1:{port}
  default_backend be
backend be
  http-reuse always
  server up 127.0.0.1:{upstream}
""")
    return subprocess.Popen(["haproxy", "-f", str(conf)])


def start_hostproxy(
    tmp: Path, port: int, upstream: int, admin: int, tree: Path | None = None
) -> tuple[subprocess.Popen[bytes], float]:
    """Start hostproxy and return it with the seconds until its first proxied 200. ``tree``: run the
    ``hostproxy`` package of that checkout instead of this one (``--compare``), with this interpreter."""
    conf = tmp / "hostproxy.yaml"
    conf.write_text(f"""
admin: {{ip: 127.0.0.1, port: {admin}}}
routers:
- protocol: http
  label: bench
  dtab: /svc => /$/inet/127.0.0.1/{upstream};
  servers: [{{ip: 127.0.0.1, port: {port}}}]
""")
    t0 = time.monotonic()
    env = None
    if tree is not None:
        # Its bytecode first, as `make` writes this checkout's: no start of either pays for compiling.
        packages = [str(tree / d) for d in ("dtab", "namers", "hostproxy") if (tree / d).is_dir()]
        subprocess.run([sys.executable, "-m", "compileall", "-q", *packages], check=False)
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(tree), os.environ.get("PYTHONPATH")])),
        }
    proc = subprocess.Popen(
        [sys.executable, "-m", "hostproxy", "run", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=open(tmp / "hostproxy.log", "wb"),  # noqa: SIM115 - the child holds it
        cwd=tree,
        env=env,
    )
    deadline = t0 + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"hostproxy exited with {proc.returncode}: {(tmp / 'hostproxy.log').read_text()}"
            )
        try:
            req = urllib.request.Request(f"http://127.0.0.1:{port}/", headers={"Host": "bench"})
            with urllib.request.urlopen(req, timeout=1) as r:
                if r.status == 200:
                    return proc, time.monotonic() - t0
        except OSError:
            time.sleep(0.01)
    raise RuntimeError("hostproxy did not answer a proxied request within 20 s")


@contextlib.contextmanager
def stopping(procs: list[subprocess.Popen[bytes]]) -> Iterator[None]:
    try:
        yield
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


def start_floor(port: int, upstream: int, *, layers: bool = False) -> subprocess.Popen[bytes]:
    """The bare trio + llhttp forwarder (:mod:`hostproxy.bench_floor`): what one trio worker costs; with
    ``layers``, hostproxy's HTTP/1.1 server and upstream pool with nothing between them."""
    flag = ["--layers"] if layers else []
    return subprocess.Popen(
        [sys.executable, "-m", "hostproxy.bench_floor", *flag, str(port), str(upstream)],
        stderr=subprocess.DEVNULL,
    )


def idle_connections_rss(port: int, pids_of: Target, count: int) -> tuple[int, int]:
    socks = []
    try:
        for _ in range(count):
            s = socket.create_connection(("127.0.0.1", port))
            socks.append(s)
        time.sleep(1.0)
        return len(socks), memory_kb(pids_of.pids(), "VmRSS")
    finally:
        for s in socks:
            s.close()


PARTS = ("http", "h2", "tls", "k8s", "admin")
#: Parts run only when asked for (``--only``): the instructions count (:mod:`hostproxy.bench_instr`).
EXTRA_PARTS = ("instructions", "instructions-h2")


#: The ``--compare`` target's name.
COMPARED = "hostproxy B"


def compare_line(a: dict[str, float], b: dict[str, float], direct: dict[str, float]) -> str:
    """``hostproxy`` against ``hostproxy B`` (``--compare``), measured in the same runs: each number
    this one / the other's, and the change from B to this one."""

    def pair(key: str, what: str, fmt: str, unit: str, minus: dict[str, float] | None = None) -> str | None:
        if key not in a or key not in b or (minus is not None and key not in minus):
            return None
        base = minus[key] if minus is not None else 0.0
        x, y = a[key] - base, b[key] - base
        change = f", {(x - y) / y * 100:+.0f}%" if minus is None and y else ""
        return f"{what} {fmt.format(x)} / {fmt.format(y)}{unit}{change}"

    parts = [
        pair("rps", "requests/s at 50 connections", "{:.0f}", ""),
        pair("cpu_per_10k", "CPU s/10k", "{:.2f}", ""),
        pair("fr_cpu_ms", "CPU per request at 1000 req/s", "{:.3f}", " ms"),
        pair("fr_p99", "added p99 shared", "{:+.2f}", " ms", direct),
        pair("iso_fr_p99", "added p99 isolated", "{:+.2f}", " ms", direct),
        pair("rss_mb", "peak RSS", "{:.1f}", " MB"),
    ]
    return "hostproxy / hostproxy B, same runs: " + "; ".join(p for p in parts if p is not None)


def positive_int(text: str) -> int:
    """An argument that must be a whole number of at least 1 (rounds)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return value


def main(argv: list[str] | None = None) -> int:
    from hostproxy import bench_admin, bench_instr, bench_k8s, bench_proto

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--only",
        choices=PARTS + EXTRA_PARTS,
        action="append",
        help="run only this part (repeatable; default: all of http, h2, tls, k8s, admin; "
        "instructions and instructions-h2 only when asked for)",
    )
    ap.add_argument("--duration", type=int, default=10, help="seconds per load run (default 10)")
    ap.add_argument(
        "--rounds",
        type=positive_int,
        default=5,
        help="rounds the fixed-rate runs are spread over, every target in each (default 5)",
    )
    ap.add_argument("--idle", type=int, default=1000, help="idle client connections for the RSS check")
    ap.add_argument(
        "--compare",
        type=Path,
        metavar="CHECKOUT",
        help="also run the hostproxy of another checkout (its modules, this interpreter and venv) as "
        "target 'hostproxy B' in the http part's same runs and rounds: an A/B of two versions of the "
        "request path that a slow spell of the machine falls on alike",
    )
    bench_k8s.add_arguments(ap)
    bench_admin.add_arguments(ap)
    bench_instr.add_arguments(ap)
    args = ap.parse_args(argv)
    parts = args.only or list(PARTS)
    rc = 0
    if "http" in parts:
        rc = run_http(args)
        if rc:
            return rc
    for part, runner in (
        ("h2", bench_proto.run_h2),
        ("tls", bench_proto.run_tls),
        ("k8s", bench_k8s.run),
        ("admin", bench_admin.run),
        ("instructions", bench_instr.run),
        ("instructions-h2", bench_instr.run_h2),
    ):
        if part not in parts:
            continue
        try:
            lines = runner(args)
        except RuntimeError as e:
            print(f"bench: {part}: {e}", file=sys.stderr)
            return 2
        print()
        print("\n".join(lines), flush=True)
    return rc


def interpreter_build() -> str:
    """Where the interpreter running hostproxy comes from and how it was built, as far as it says:
    its real path, and whether libpython is linked in or shared (a shared one costs calls through
    the PLT; the README's Performance section has the numbers)."""
    try:
        with open("/proc/self/maps") as f:
            shared = any("libpython" in line for line in f)
    except OSError:
        return os.path.realpath(sys.executable)
    return f"{os.path.realpath(sys.executable)}, libpython {'shared' if shared else 'linked in'}"


def run_http(args: argparse.Namespace) -> int:
    """The proxies comparison (the first part); prints its tables."""
    for tool in ("wrk", "h2load", "nginx", "haproxy"):
        if not shutil.which(tool):
            print(f"bench: {tool} is not installed; run `make install` first", file=sys.stderr)
            return 2
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))

    tmp = Path(tempfile.mkdtemp(prefix="hostproxy-bench-"))
    up, hp, ng, ha, admin, fl, ly = (free_port() for _ in range(7))
    procs: list[subprocess.Popen[bytes]] = []
    with stopping(procs):
        procs.append(start_nginx_upstream(tmp, up))
        wait_port(up)
        hp_proc, first_response_s = start_hostproxy(tmp, hp, up, admin)
        procs.append(hp_proc)
        procs.append(start_nginx_proxy(tmp, ng, up))
        procs.append(start_haproxy(tmp, ha, up))
        procs.append(start_floor(fl, up))
        procs.append(start_floor(ly, up, layers=True))
        for p in (ng, ha, fl, ly):
            wait_port(p)
        compare: Target | None = None
        if args.compare is not None:
            (tmp / "b").mkdir()
            b_port = free_port()
            b_proc, _ = start_hostproxy(tmp / "b", b_port, up, free_port(), tree=args.compare.resolve())
            procs.append(b_proc)
            compare = Target(COMPARED, b_port, b_proc)
        targets = [
            Target("direct", up, None),
            Target("hostproxy", hp, hp_proc),
            Target("nginx", ng, procs[2]),
            Target("haproxy", ha, procs[3]),
            Target("trio floor", fl, procs[4]),
            Target("http layers", ly, procs[5]),
        ]
        if compare is not None:
            targets.append(compare)
        for t in targets:
            pids = t.pids()
            c0 = cpu_seconds(pids)
            t.results.update(run_wrk(t.port, args.duration))
            cpu = cpu_seconds(pids) - c0
            if t.proc and t.results.get("requests"):
                t.results["cpu_per_10k"] = cpu / t.results["requests"] * 10_000
        # The fixed rate in rounds: in each, every target in turn, shared then isolated, so that a slow
        # spell of the machine (they last seconds to minutes here) falls on every target alike.
        per_run = round_seconds(args.duration, args.rounds)
        shared = [_FixedRateRuns() for _ in targets]
        alone = [_FixedRateRuns() for _ in targets]
        for _ in range(args.rounds):
            for t, sh, iso in zip(targets, shared, alone, strict=True):
                sh.run(t, per_run, tmp, None)
                with isolated(t.pids(), process_tree(procs[0].pid)) as load_cpus:
                    if load_cpus is not None:
                        iso.run(t, per_run, tmp, load_cpus)
        for t, sh, iso in zip(targets, shared, alone, strict=True):
            # (No isolated runs, on one CPU: ``results`` is empty, and no ``iso_`` key is set.)
            t.results.update(sh.results(t.proc is not None))
            t.results.update({f"iso_{k}": v for k, v in iso.results(t.proc is not None).items()})
            if t.proc:
                t.results["rss_mb"] = memory_kb(t.pids(), "VmHWM") / 1024
        opened, idle_rss = idle_connections_rss(hp, targets[1], args.idle)

    print(
        f"\nhostproxy bench — loopback, {os.cpu_count()} cores, {args.duration}s per run, "
        f"Python {sys.version.split()[0]} ({interpreter_build()})"
    )
    print(
        f"1000 req/s: {args.rounds} rounds of {per_run}s per target and placement, every target in "
        "each round (a slow spell of the machine falls on all alike); each run's first burst "
        "(every connection's setup) left out of the latencies"
    )
    hdr = (
        f"{'target':<11} {'req/s@50c':>10} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} "
        f"{'1k/s p50':>9} {'1k/s p99':>9} {'1k/s max':>9} {'1k/s CPU ms/req':>15} {'CPU s/10k':>10} "
        f"{'peak RSS MB':>12}"
    )
    print(hdr)
    print("-" * len(hdr))
    for t in targets:
        r = t.results

        def f(key: str, fmt: str = "{:.2f}", r: dict[str, float] = r) -> str:
            return fmt.format(r[key]) if key in r else "-"

        print(
            f"{t.name:<11} {f('rps', '{:.0f}'):>10} {f('p50'):>8} {f('p99'):>8} {f('max'):>8} "
            f"{f('fr_p50'):>9} {f('fr_p99'):>9} {f('fr_max'):>9} {f('fr_cpu_ms', '{:.3f}'):>15} "
            f"{f('cpu_per_10k'):>10} "
            f"{f('rss_mb', '{:.1f}'):>12}"
        )
    sets = cpu_sets()
    if sets is not None and "iso_fr_p99" in targets[0].results:
        print()
        print(
            f"1000 req/s isolated: the proxy alone on CPU {min(sets[0])}, h2load and the upstream on "
            f"CPU {','.join(map(str, sorted(sets[1])))}"
        )
        ihdr = f"{'target':<11} {'1k/s p50':>9} {'1k/s p99':>9} {'1k/s max':>9} {'added p99':>10}"
        print(ihdr)
        print("-" * len(ihdr))
        d_iso = targets[0].results["iso_fr_p99"]
        for t in targets:
            r = t.results
            if "iso_fr_p99" not in r:
                continue
            added = "-" if t.name == "direct" else f"{r['iso_fr_p99'] - d_iso:+.2f}"
            print(
                f"{t.name:<11} {r['iso_fr_p50']:>9.2f} {r['iso_fr_p99']:>9.2f} {r['iso_fr_max']:>9.2f} "
                f"{added:>10}"
            )
    by = {t.name: t.results for t in targets}
    h = by["hostproxy"]
    print()
    if COMPARED in by:
        print(f"{COMPARED}: the hostproxy of {args.compare.resolve()}")
        print(compare_line(h, by[COMPARED], by["direct"]))
    for other in ("direct", "nginx", "haproxy", "trio floor"):
        o = by[other]
        if o.get("rps") and h.get("rps"):
            print(f"hostproxy/{other}: requests/s {h['rps'] / o['rps']:.3f}", end="")
            if "fr_p99" in o and "fr_p99" in h:
                print(f", added p99 at 1000 req/s {h['fr_p99'] - o['fr_p99']:+.2f} ms shared", end="")
            if "iso_fr_p99" in o and "iso_fr_p99" in h:
                print(f", {h['iso_fr_p99'] - o['iso_fr_p99']:+.2f} ms isolated", end="")
            print()
    d_r = by["direct"]
    for name, what in (
        ("trio floor", "a bare trio + llhttp forwarder, no features"),
        ("http layers", "hostproxy's HTTP/1.1 server and upstream pool, no router"),
    ):
        theirs = added_p99(by[name], d_r)
        if theirs:
            print(
                f"{name} ({what}): added p99 at 1000 req/s "
                + ", ".join(f"{v:+.2f} ms {placement}" for placement, v in theirs)
                + " over direct"
            )
    if "fr_cpu_ms" in h:
        print(
            "at 1000 req/s the load sends ten requests together every 10 ms and one event loop serves "
            f"them: hostproxy's {h['fr_cpu_ms']:.3f} ms of CPU per request x 10 = "
            f"{h['fr_cpu_ms'] * 10:.2f} ms is the least time the last response of a burst can take"
        )
    preempted = both_placements(targets, "fr_preempted", "{:.2f}")
    if preempted:
        # The shared placement's extra latency is mostly the scheduler's (README, Performance): the
        # load generator and the upstream, woken by the proxy's writes, take the proxy's CPU from it.
        print("preempted per burst of ten requests at 1000 req/s: " + "; ".join(preempted))
    steal = both_placements(targets, "fr_steal", "{:.1f}")
    if steal:
        # A virtual machine's CPUs are the host's threads: when the host runs something else, every
        # process here stalls for milliseconds at a time, and the proxies, which use more CPU than
        # the direct upstream, are the likelier to be caught. This line says how much of that there was.
        print(
            "host steal during the 1000 req/s runs (ms per second over all CPUs, /proc/stat): "
            + "; ".join(steal)
        )
        print(f"hostproxy's added p99 by round, shared: {by_round(shared[0], shared[1])}")
        if alone[1].each:
            print(f"hostproxy's added p99 by round, isolated: {by_round(alone[0], alone[1])}")
        quiet = []
        for placement, runs in (("shared", shared), ("isolated", alone)):
            found = quiet_added_p99(runs[0], runs[1])
            if found is not None:
                quiet.append(f"{found[0]:+.2f} ms {placement} ({found[1]} of {len(runs[1].each)} rounds)")
        print(
            "hostproxy's added p99 over the rounds in which the host stole nothing during its run and "
            "direct's: " + (", ".join(quiet) if quiet else "no such round")
        )
    print(f"hostproxy RSS with {opened} idle client connections: {idle_rss / 1024:.1f} MB")
    print(f"hostproxy first proxied response {first_response_s:.3f} s after start")
    print("targets for one worker:")
    references = {name: by[name] for name in ("nginx", "haproxy")}
    for line in target_verdicts(h, by["nginx"], d_r, (opened, idle_rss / 1024), first_response_s, references):
        print("  " + line)
    sys.stdout.flush()
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
