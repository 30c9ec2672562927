"""``make bench --only admin``: what admin scrapes of 1,000 clients cost proxied requests.

Theory of operation
-------------------
One nginx (1 worker) is the upstream. hostproxy runs with an ``io.l5d.fs`` namer over a directory of
``--clients`` files (``svc-0000`` ..), each naming that same upstream, and ``/svc => /#/io.l5d.fs``, so
every service name binds to its own bound name and so its own client (the router's ``bindingCache`` is
sized to hold them all; the fs namer itself watches at most 1,000 names, so ``--clients`` above 1,000
measures eviction churn too). One request per name warms every client; ``/client_state.json`` then
says how many clients exist.

Then the same fixed load, ``h2load --h1`` at ``--admin-rps`` requests/s (default 1000) over 10 connections,
all to ``Host: svc-0000``, with per-request timings from ``--log-file``, runs in several modes: with the
admin server idle, and once per ``--scrape-interval`` (default 0.1 s, then 1 s) with a scraper thread
that at that interval GETs ``/admin/metrics.json``, ``/client_state.json`` and
``/admin/metrics/prometheus`` in turn on one keep-alive connection (a round that takes longer than the
interval is followed by the next at once). Each mode gets ``--admin-duration`` seconds of load spread
over ``--admin-rounds`` rounds (default 5), every mode in each round, and each mode's numbers are summed
over its runs: a slow spell of the machine then falls on every mode alike, not on whichever ran in it.
It prints each mode's requests completed (h2load does not send the requests a stalled connection
missed, so fewer than intended means the proxy stalled), responses other than 2xx, requests that failed
at the connection level (h2load's "errored": none may), p50/p99/max, p99 added over the idle mode,
hostproxy's CPU seconds, the host's steal during the mode's runs (``/proc/stat``, ms per second over all
CPUs), and per scraped endpoint the number of scrapes, their duration (p50/max) and response size.

A benchmark, not a test: it asserts nothing; the README records its numbers. Everything listens on
127.0.0.1 and is stopped at the end.
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hostproxy.bench import (
    cpu_seconds,
    free_port,
    positive_int,
    process_tree,
    round_seconds,
    start_nginx_upstream,
    stopping,
    wait_port,
    with_steal,
)

SCRAPE_PATHS = ("/admin/metrics.json", "/client_state.json", "/admin/metrics/prometheus")


def service_name(i: int) -> str:
    return f"svc-{i:04d}"


def write_config(tmp: Path, port: int, admin: int, upstream: int, clients: int) -> Path:
    """hostproxy's config and the fs namer's directory: ``clients`` names, all at ``upstream``."""
    disco = tmp / "disco"
    disco.mkdir(exist_ok=True)
    for i in range(clients):
        (disco / service_name(i)).write_text(f"127.0.0.1 {upstream}\n")
    cache = max(1000, clients + 16)
    conf = tmp / "hostproxy-admin.yaml"
    conf.write_text(f"""
admin: {{ip: 127.0.0.1, port: {admin}}}
namers:
- kind: io.l5d.fs
  rootDir: {disco}
routers:
- protocol: http
  label: bench
  dtab: /svc => /#/io.l5d.fs;
  bindingCache: {{paths: {cache}, trees: {cache}, bounds: {cache}, clients: {cache}}}
  servers: [{{ip: 127.0.0.1, port: {port}}}]
""")
    return conf


def start_hostproxy(conf: Path, port: int, log: Path, host: str) -> tuple[subprocess.Popen[bytes], float]:
    """Start hostproxy on ``conf``; return it with the seconds until ``Host: host`` was proxied (200)."""
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "hostproxy", "run", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=open(log, "wb"),  # noqa: SIM115 - the child holds it
    )
    deadline = t0 + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"hostproxy exited with {proc.returncode}: {log.read_text()[-2000:]}")
        status = 0
        try:
            status, _ = get(port, "/", host, timeout=1)
        except OSError:
            pass
        if status == 200:
            return proc, time.monotonic() - t0
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    raise RuntimeError(f"hostproxy did not proxy Host {host!r} within 30 s; see {log}")


def get(port: int, path: str, host: str | None = None, timeout: float = 10) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Host": host} if host else {})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def warm(port: int, clients: int) -> int:
    """One request per service name on one keep-alive connection; returns how many got a 200."""
    ok = 0
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        for i in range(clients):
            try:
                conn.request("GET", "/", headers={"Host": service_name(i)})
                r = conn.getresponse()
                r.read()
                ok += r.status == 200
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    finally:
        conn.close()
    return ok


@dataclass
class Load:
    """The fixed load's results, summed over one mode's runs: every latency (ms), responses other
    than 2xx, requests that failed at the connection level, and the host's steal (ms) over the runs'
    wall time (s)."""

    latencies: list[float] = field(default_factory=list)
    non2xx: int = 0
    errored: int = 0
    steal_ms: float | None = 0.0
    seconds: float = 0.0

    def add(self, port: int, host: str, rps: int, duration: int, tmp: Path, tag: str) -> None:
        """One run of the load (:func:`fixed_rate`), added."""
        (latencies, non2xx, errored), stolen, wall = with_steal(
            lambda: fixed_rate(port, host, rps, duration, tmp, tag)
        )
        self.seconds += wall
        self.latencies += latencies
        self.non2xx += non2xx
        self.errored += errored
        self.steal_ms = None if self.steal_ms is None or stolen is None else self.steal_ms + stolen

    def summary(self) -> dict[str, float]:
        """requests, non2xx, errored, and with two latencies or more p50/p99/max (ms); the host's
        steal in ms per second over all CPUs where the kernel keeps it."""
        out = {
            "requests": float(len(self.latencies)),
            "non2xx": float(self.non2xx),
            "errored": float(self.errored),
        }
        if self.steal_ms is not None and self.seconds > 0:
            out["steal"] = self.steal_ms / self.seconds
        lat = sorted(self.latencies)
        if len(lat) >= 2:
            q = statistics.quantiles(lat, n=100, method="inclusive")
            out.update({"p50": q[49], "p99": q[98], "max": lat[-1]})
        return out


def fixed_rate(
    port: int, host: str, rps: int, duration: int, tmp: Path, tag: str
) -> tuple[list[float], int, int]:
    """``h2load --h1`` at ``rps`` requests/s over 10 connections: every request's latency (ms), how
    many responses were not 2xx, and how many requests failed at the connection level.

    The Host header goes in as ``:authority`` (h2load's ``-H 'Host: ...'`` adds a second Host header
    to HTTP/1.1 requests, which a proxy rightly refuses)."""
    log = tmp / f"h2load-admin-{tag}.log"
    log.unlink(missing_ok=True)
    conns = 10
    done = subprocess.run(
        [
            "h2load",
            "--h1",
            f"-c{conns}",
            f"--rps={max(1, rps // conns)}",
            f"-D{duration}",
            f"--log-file={log}",
            "-H",
            f":authority: {host}",
            f"http://127.0.0.1:{port}/",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=duration + 60,
    )
    lat: list[float] = []
    bad = 0
    for line in log.read_text().splitlines():
        parts = line.split("\t")
        if len(parts) < 3:
            continue
        lat.append(int(parts[2]) / 1000.0)
        bad += not parts[1].startswith("2")
    return lat, bad, h2load_errored(done.stdout)


def h2load_errored(summary: str) -> int:
    """Requests h2load counted as errored: failed at the connection level (its ``requests:`` summary
    line; timeouts are among them). Responses of any status are not counted here: ``non2xx`` is."""
    m = re.search(r"requests: .*?, (\d+) errored", summary)
    if m is None:
        raise RuntimeError(f"no requests summary in h2load's output:\n{summary}")
    return int(m.group(1))


@dataclass
class Scraper:
    """A thread scraping the admin endpoints every ``interval`` seconds until stopped."""

    port: int
    interval: float
    paths: tuple[str, ...] = SCRAPE_PATHS
    durations: dict[str, list[float]] = field(default_factory=dict)
    sizes: dict[str, list[int]] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        """Start scraping (again, after a ``stop``: the counts go on from where they were)."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="admin-scraper", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _loop(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        next_at = time.monotonic()
        try:
            while not self._stop.is_set():
                for path in self.paths:
                    t0 = time.perf_counter()
                    try:
                        conn.request("GET", path)
                        r = conn.getresponse()
                        body = r.read()
                        ok = r.status == 200
                    except (OSError, http.client.HTTPException):
                        conn.close()
                        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                        ok, body = False, b""
                    if ok:
                        self.durations.setdefault(path, []).append((time.perf_counter() - t0) * 1000)
                        self.sizes.setdefault(path, []).append(len(body))
                    else:
                        self.errors[path] = self.errors.get(path, 0) + 1
                next_at += self.interval
                self._stop.wait(max(0.0, next_at - time.monotonic()))
                next_at = max(next_at, time.monotonic())
        finally:
            conn.close()


def client_count(admin: int) -> int:
    status, body = get(admin, "/client_state.json")
    doc = json.loads(body) if status == 200 else {}
    return len(doc) if isinstance(doc, dict) else 0


@dataclass
class LoadRun:
    """One mode's fixed-rate runs (one per round): its label, the load's numbers summed over them,
    hostproxy's CPU, the scraper (if any)."""

    label: str
    load: Load = field(default_factory=Load)
    cpu_s: float = 0.0
    scraper: Scraper | None = None


def run_admin(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    up, hp, admin = free_port(), free_port(), free_port()
    res: dict[str, Any] = {"clients": args.clients, "rps": args.admin_rps, "rounds": args.admin_rounds}
    runs: list[LoadRun] = []
    res["runs"] = runs
    procs: list[subprocess.Popen[bytes]] = []
    with stopping(procs):
        procs.append(start_nginx_upstream(tmp, up))
        wait_port(up)
        conf = write_config(tmp, hp, admin, up, args.clients)
        hp_proc, res["first_response_s"] = start_hostproxy(
            conf, hp, tmp / "hostproxy-admin.log", service_name(0)
        )
        procs.append(hp_proc)
        t0 = time.monotonic()
        res["warmed"] = warm(hp, args.clients)
        res["warm_s"] = time.monotonic() - t0
        res["client_state_clients"] = client_count(admin)
        pids = process_tree(hp_proc.pid)
        for interval in [None, *args.scrape_interval]:
            label = "no scrapes" if interval is None else f"scrapes every {interval:g} s"
            runs.append(LoadRun(label, scraper=Scraper(admin, interval) if interval is not None else None))
        # In rounds, every mode in each, so that a slow spell of the machine falls on all alike.
        seconds = res["run_s"] = round_seconds(args.admin_duration, args.admin_rounds)
        for _ in range(args.admin_rounds):
            for i, run_ in enumerate(runs):
                c0 = cpu_seconds(pids)
                if run_.scraper is not None:
                    run_.scraper.start()
                try:
                    run_.load.add(hp, service_name(0), args.admin_rps, seconds, tmp, str(i))
                finally:
                    if run_.scraper is not None:
                        run_.scraper.stop()
                run_.cpu_s += cpu_seconds(pids) - c0
    return res


def _q(values: list[float], which: str) -> float:
    if not values:
        return float("nan")
    if which == "max":
        return max(values)
    return statistics.median(values)


def report(res: dict[str, Any]) -> list[str]:
    """The admin benchmark's tables, as lines."""
    runs: list[LoadRun] = res["runs"]
    intended = res["rps"] * res["run_s"] * res["rounds"]
    lines = [
        f"clients warmed: {res['warmed']} of {res['clients']} names in {res['warm_s']:.2f} s; "
        f"/client_state.json lists {res['client_state_clients']} clients",
    ]
    hdr = (
        f"{'run':<22} {'requests':>9} {'of':>6} {'non-2xx':>8} {'errored':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} "
        f"{'p99 added':>10} {'CPU s':>7} {'steal ms/s':>10}"
    )
    lines += [hdr, "-" * len(hdr)]
    base = runs[0].load.summary().get("p99") if runs else None
    for run_ in runs:
        r = run_.load.summary()

        def f(k: str, r: dict[str, float] = r) -> str:
            return f"{r[k]:.2f}" if k in r else "-"

        added = (
            f"{r['p99'] - base:+.2f}" if run_.scraper is not None and base is not None and "p99" in r else "-"
        )
        lines.append(
            f"{run_.label:<22} {r.get('requests', 0):>9.0f} {intended:>6} {r.get('non2xx', 0):>8.0f} "
            f"{r.get('errored', 0):>8.0f} "
            f"{f('p50'):>8} {f('p99'):>8} {f('max'):>8} {added:>10} {run_.cpu_s:>7.2f} "
            f"{(format(r['steal'], '.1f') if 'steal' in r else '-'):>10}"
        )
    for run_ in runs:
        sc = run_.scraper
        if sc is None:
            continue
        hdr = (
            f"{'endpoint, every ' + format(sc.interval, 'g') + ' s':<28} {'scrapes':>8} {'errors':>7} "
            f"{'p50 ms':>8} {'max ms':>8} {'size KiB':>9}"
        )
        lines += ["", hdr, "-" * len(hdr)]
        for path in sc.paths:
            d = sc.durations.get(path, [])
            sizes = sc.sizes.get(path, [])
            size = f"{statistics.median(sizes) / 1024:.1f}" if sizes else "-"
            lines.append(
                f"{path:<28} {len(d):>8} {sc.errors.get(path, 0):>7} {_q(d, 'p50'):>8.2f} "
                f"{_q(d, 'max'):>8.2f} {size:>9}"
            )
    return lines


def intervals(text: str) -> list[float]:
    """``--scrape-interval``: seconds, comma-separated (one scraped run each)."""
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a list of positive seconds; give e.g. 0.1 or 0.1,1"
        )
    return values


def add_arguments(ap: argparse.ArgumentParser) -> None:
    g = ap.add_argument_group("admin scrapes under load (--only admin)")
    g.add_argument("--clients", type=int, default=1000, help="service names, so clients (default 1000)")
    g.add_argument("--admin-rps", type=int, default=1000, help="proxied requests/s (default 1000)")
    g.add_argument(
        "--admin-duration",
        type=int,
        default=10,
        help="seconds of load per mode, over the rounds (default 10)",
    )
    g.add_argument(
        "--admin-rounds",
        type=positive_int,
        default=5,
        help="rounds, each running every mode (no scrapes, each interval) in turn (default 5)",
    )
    g.add_argument(
        "--scrape-interval",
        type=intervals,
        default=[0.1, 1.0],
        help="seconds between scrape rounds, comma-separated, one scraped run each (default 0.1,1)",
    )


def run(args: argparse.Namespace) -> list[str]:
    """Run the admin benchmark and return its report lines."""
    for tool in ("h2load", "nginx"):
        if not shutil.which(tool):
            raise RuntimeError(f"{tool} is not installed; run `make install` first")
    tmp = Path(tempfile.mkdtemp(prefix="hostproxy-bench-admin-"))
    try:
        res = run_admin(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    head = (
        f"admin scrapes under load — {args.clients} clients, {args.admin_rps} req/s over 10 connections "
        f"for {args.admin_rounds} x {res['run_s']} s per mode (interleaved rounds), without and with "
        f"scrapes of {', '.join(SCRAPE_PATHS)}"
    )
    return [head, *report(res)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(ap)
    print("\n".join(run(ap.parse_args(argv))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
