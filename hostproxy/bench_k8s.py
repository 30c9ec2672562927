"""``make bench --only k8s``: the ``io.l5d.k8s`` namer watching thousands of Services under endpoint churn.

Theory of operation
-------------------
Two processes, so that the numbers are the namer's and not the fake API server's:

* **the fake API server** (``python -m hostproxy.bench_k8s --serve-fake``): the test suite's
  :class:`FakeKubeApi` (imported from the repository's ``tests/`` directory, which this module puts on
  ``sys.path``; the benchmark needs a source checkout) on a loopback port, loaded with ``--services``
  Services of one port each and their ``v1 Endpoints`` of ``--endpoints`` ready addresses. It reads
  commands on stdin and answers one JSON line each on stdout: at start ``{"ready": port, ...}``; on
  ``churn <rate> <seconds>`` it replaces one address of one Service's Endpoints (chosen by a seeded
  RNG) ``rate`` times a second for ``seconds`` and answers ``{"sent": n, "elapsed": s}``; ``quit``
  (or end of input) stops it. :class:`ScalableFakeApi` indexes open watches by object name and keeps
  a bounded history (older resourceVersions are compacted, i.e. answered with 410, as a real API
  server does) so that one change costs the fake O(1) rather than O(open watches).
* **the namer** (this process): one :class:`K8sNamer` with ``max_names`` = the number of Services,
  every ``/srv/http/<service>`` looked up (so watched: a Service and an Endpoints list/watch each,
  ``2 × services`` long-lived connections), the daemon's JSON logging sent to a file.

It reports the time until every name had its first answer (the states and errors then), the time
until the namer settled (every name bound, every watch streaming; the churn starts only then, so that
retries of watches that failed at start are not counted against it) and how many requests failed on
the way; the namer process's RSS before the namer started, once settled and after the churn (MiB, and bytes per endpoint); the namer
process's CPU seconds per 1000 updates applied while the churn ran; updates sent by the fake vs
Endpoints events the namer applied; and, to check that an update touches only the names it changes,
subscriber notifications and name versions bumped per applied update (ideally 1). ``RLIMIT_NOFILE``
is raised in both processes to ``2 × services + 1024`` (up to the hard limit) and printed.

A benchmark, not a test: it asserts nothing. Everything listens on 127.0.0.1 and is stopped at the end.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import random
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path as FsPath
from typing import Any
from urllib.parse import parse_qs, urlsplit

import trio

_REPO = FsPath(__file__).resolve().parent.parent
_TESTS_DIR = _REPO / "tests"

NS = "srv"
PORT_NAME = "http"
PORT = 8080


def tests_on_path() -> None:
    """Make the test suite's fake API server importable (``k8s_api`` under the repo's ``tests/``)."""
    if not (_TESTS_DIR / "k8s_api" / "server.py").is_file():
        raise RuntimeError(
            f"the k8s benchmark needs the fake API server at {_TESTS_DIR}/k8s_api; run it from a "
            "source checkout of hostproxy"
        )
    if str(_TESTS_DIR) not in sys.path:
        sys.path.insert(0, str(_TESTS_DIR))


def raise_nofile(wanted: int) -> tuple[int, int]:
    """Raise the soft ``RLIMIT_NOFILE`` towards ``wanted`` (never above the hard limit, never
    lowering it); return ``(soft, hard)`` as now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def nofile_needed(services: int) -> int:
    return 2 * services + 1024


def service_name(i: int) -> str:
    return f"svc-{i:05d}"


def ip_for(n: int) -> str:
    """The ``n``-th invented pod IP (10.0.0.1 upwards; unique for 16 million addresses)."""
    n += 1
    return f"10.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"


def rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


# -- the fake API server process ---------------------------------------------------------------------


def make_fake_class() -> type:
    """:class:`ScalableFakeApi`, built once the test suite's fake is importable."""
    tests_on_path()
    from k8s_api.server import _PATH, RESOURCES, FakeKubeApi, event_for

    class _WatchIndex(set):  # type: ignore[type-arg]
        """The fake's set of open watches, also indexed by (resource, namespace, selected name)."""

        def __init__(self) -> None:
            super().__init__()
            self.by_name: dict[tuple[str, str, str | None], set[Any]] = {}

        def add(self, w: Any) -> None:
            super().add(w)
            self.by_name.setdefault((w.resource, w.ns, w.selector.name), set()).add(w)

        def discard(self, w: Any) -> None:
            super().discard(w)
            bucket = self.by_name.get((w.resource, w.ns, w.selector.name))
            if bucket is not None:
                bucket.discard(w)
                if not bucket:
                    del self.by_name[(w.resource, w.ns, w.selector.name)]

    class ScalableFakeApi(FakeKubeApi):  # type: ignore[misc, valid-type]
        """:class:`FakeKubeApi` with O(1) work per change and per by-name list."""

        def __init__(self, history: int = 20000, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self._watches = _WatchIndex()
            self.history_cap = history
            self.history: deque[Any] = deque()  # type: ignore[assignment]

        def _record(self, change: Any) -> None:
            self.history.append(change)
            while len(self.history) > self.history_cap:
                self.history.popleft()
                self.compacted = self.history[0].rv - 1
            if self.stalled:
                return
            name = (change.last.get("metadata") or {}).get("name")
            index = self._watches.by_name
            for key in ((change.resource, change.ns, name), (change.resource, change.ns, None)):
                for w in list(index.get(key, ())):
                    ev = event_for(change, w.selector)
                    if ev is not None:
                        self._push(w, ("event", ev))

        async def _respond(self, conn: Any, stream: Any, req: Any) -> bool:
            """A by-name LIST (``?fieldSelector=metadata.name=x`` only) without scanning every object;
            everything else as the test fake answers it."""
            target = req.target.decode()
            url = urlsplit(target)
            m = _PATH.match(url.path)
            q = {k: v[-1] for k, v in parse_qs(url.query).items()}
            fs = q.get("fieldSelector", "")
            if (
                self.tokens is None
                and not self.hang
                and req.method == b"GET"
                and m is not None
                and m["watch"] is None
                and m["name"] is None
                and RESOURCES[m["resource"]][0] == m["group"]
                and set(q) <= {"fieldSelector"}
                and fs.startswith("metadata.name=")
                and (m["resource"], "list") not in self.forbidden
            ):
                self.requests.append(target)
                resource_, ns, name = m["resource"], m["ns"], fs[len("metadata.name=") :].lstrip("=")
                _, kind, api_version = RESOURCES[resource_]
                obj = self.objects.get((resource_, ns, name))
                items = (
                    [] if obj is None else [{k: v for k, v in obj.items() if k not in ("kind", "apiVersion")}]
                )
                body = {
                    "kind": f"{kind}List",
                    "apiVersion": api_version,
                    "metadata": {"resourceVersion": str(self.rv)},
                    "items": items,
                }
                await self._send_json(conn, stream, 200, body)
                return True
            return bool(await super()._respond(conn, stream, req))

    return ScalableFakeApi


@dataclass
class Churn:
    """Which address of which Service the next update replaces (seeded, so runs are comparable)."""

    services: int
    endpoints: int
    rng: random.Random
    ips: list[list[str]] = field(default_factory=list)
    next_ip: int = 0

    def __post_init__(self) -> None:
        for _ in range(self.services):
            self.ips.append([ip_for(self.next_ip + j) for j in range(self.endpoints)])
            self.next_ip += self.endpoints

    def step(self) -> tuple[int, list[str]]:
        i = self.rng.randrange(self.services)
        ips = self.ips[i]
        if ips:
            ips[self.rng.randrange(len(ips))] = ip_for(self.next_ip)
        else:
            ips.append(ip_for(self.next_ip))
        self.next_ip += 1
        return i, ips


async def serve_fake(services: int, endpoints: int, seed: int) -> None:
    """The fake API server process's main: load, say ready, obey stdin commands."""
    from k8s_api.objects import endpoints as endpoints_obj
    from k8s_api.objects import service as service_obj

    cls = make_fake_class()
    soft, _ = raise_nofile(nofile_needed(services))
    out = sys.stdout

    def say(obj: dict[str, Any]) -> None:
        out.write(json.dumps(obj) + "\n")
        out.flush()

    churn = Churn(services, endpoints, random.Random(seed))
    api = cls()
    t0 = time.monotonic()
    for i in range(services):
        name = service_name(i)
        api.put("services", service_obj(name, [(PORT_NAME, PORT, PORT)], ns=NS))
        api.put("endpoints", endpoints_obj(name, ready=churn.ips[i], ports={PORT_NAME: PORT}, ns=NS))
    api.history.clear()
    api.compacted = api.rv
    load_s = time.monotonic() - t0
    async with trio.open_nursery() as nursery:
        api._nursery = nursery
        await nursery.start(api._listen)
        say({"ready": api.port, "objects": 2 * services, "load_s": round(load_s, 3), "nofile": soft})
        stdin = trio.lowlevel.FdStream(0)
        buf = b""
        while True:
            data = await stdin.receive_some(4096)
            if not data:
                break
            buf += data
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                words = line.decode().split()
                if words[:1] == ["churn"] and len(words) == 3:
                    sent, elapsed = await apply_churn(
                        api, churn, float(words[1]), float(words[2]), endpoints_obj
                    )
                    say({"sent": sent, "elapsed": round(elapsed, 3), "open_watches": api.open_watches})
                elif words[:1] == ["stats"]:
                    say({"open_watches": api.open_watches, "requests": len(api.requests)})
                elif words[:1] == ["quit"]:
                    buf = b""
                    nursery.cancel_scope.cancel()
                    break
                else:
                    say(
                        {
                            "error": f"unknown command {line!r}; expected 'churn <rate> <seconds>', 'stats' or 'quit'"
                        }
                    )
            if nursery.cancel_scope.cancel_called:
                break
        nursery.cancel_scope.cancel()


async def apply_churn(
    api: Any, churn: Churn, rate: float, seconds: float, endpoints_obj: Callable[..., dict[str, Any]]
) -> tuple[int, float]:
    """``rate`` updates a second for ``seconds``, on schedule (late updates are sent at once)."""
    total = int(rate * seconds)
    t0 = trio.current_time()
    for n in range(total):
        due = t0 + n / rate
        now = trio.current_time()
        if due > now:
            await trio.sleep(due - now)
        elif n % 64 == 0:
            await trio.sleep(0)
        i, ips = churn.step()
        name = service_name(i)
        api.put("endpoints", endpoints_obj(name, ready=ips, ports={PORT_NAME: PORT}, ns=NS))
    return total, trio.current_time() - t0


# -- the namer side ----------------------------------------------------------------------------------


@dataclass
class FakeProcess:
    """The fake API server subprocess and its line protocol."""

    proc: trio.Process
    pending: bytes = b""

    async def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        await self.proc.stdin.send_all(line.encode() + b"\n")

    async def receive(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        with trio.move_on_after(timeout):
            while b"\n" not in self.pending:
                data = await self.proc.stdout.receive_some(65536)
                if not data:
                    raise RuntimeError(f"the fake API server exited (status {self.proc.poll()})")
                self.pending += data
            line, self.pending = self.pending.split(b"\n", 1)
            return dict(json.loads(line))
        raise RuntimeError(f"the fake API server did not answer within {timeout}s")


def error_summary(namer: Any, top: int = 2) -> str:
    """The commonest errors of names that are not ``bound`` (``"none"`` when every name is)."""
    errors = Counter(
        re.sub(r"svc-\d+", "svc-N", st.last_error or st.state)
        for st in namer.table.states()
        if st.state != "bound"
    )
    if not errors:
        return "none"
    return "; ".join(f"{n}x {text[:160]}" for text, n in errors.most_common(top))


def settled(namer: Any, n: int) -> bool:
    """Every name bound and both watches of every Service streaming."""
    if any(st.state != "bound" for st in namer.table.states()):
        return False
    return sum(t.svc.streaming + t.eps.streaming for t in namer.targets.values()) >= 2 * n


def eps_events(namer: Any) -> int:
    return sum(t.eps.events for t in namer.targets.values())


def relists(namer: Any) -> Counter[str]:
    """Re-lists so far, by reason, over every Service and Endpoints watch."""
    out: Counter[str] = Counter()
    for t in namer.targets.values():
        for core in (t.svc, t.eps):
            out.update(core.relists)
    return out


async def run_k8s(args: argparse.Namespace, tmp: FsPath) -> dict[str, Any]:
    from hostproxy import log as hlog
    from namers._dtab import Path
    from namers.k8s import ApiServer, K8sNamer

    n, m = args.services, args.endpoints
    res: dict[str, Any] = {"services": n, "endpoints": m, "rate": args.rate, "seconds": args.churn_seconds}
    soft, hard = raise_nofile(nofile_needed(n))
    res["nofile_namer"] = soft
    res["nofile_hard"] = hard
    log_path = FsPath(args.k8s_log) if args.k8s_log else tmp / "k8s-namer.log"
    log_file = open(log_path, "w")  # noqa: SIM115 - closed below, after the namer stopped
    hlog.configure("info", json=True, stream=log_file)
    cmd = [
        sys.executable,
        "-m",
        "hostproxy.bench_k8s",
        "--serve-fake",
        "--services",
        str(n),
        "--endpoints",
        str(m),
        "--seed",
        str(args.seed),
    ]
    proc = await trio.lowlevel.open_process(
        cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=str(_REPO)
    )
    fake = FakeProcess(proc)
    try:
        ready = await fake.receive(timeout=max(60.0, n * 0.02))
        res["nofile_fake"] = ready["nofile"]
        res["fake_load_s"] = ready["load_s"]
        gc.collect()
        rss0 = rss_kb()
        # the periodic re-list (default every 300 s) is kept out of the run, so that the churn's
        # numbers are the cost of updates; it is reported
        resync = max(300.0, 2 * (args.sync_timeout + 6 * args.churn_seconds + 60))
        res["resync_s"] = resync
        namer = K8sNamer(
            ApiServer("127.0.0.1", int(ready["ready"])), max_names=max(n, 1), resync_interval=resync
        )
        notifications = 0

        def count(_namer: Any, _path: Any) -> None:
            nonlocal notifications
            notifications += 1

        namer.subscribe(count)
        async with trio.open_nursery() as nursery:
            t0 = trio.current_time()
            await nursery.start(namer.run)
            for i in range(n):
                namer.lookup(Path.read(f"/{NS}/{PORT_NAME}/{service_name(i)}"))
            deadline = t0 + args.sync_timeout
            while trio.current_time() < deadline:
                pending = sum(1 for st in namer.table.states() if st.state == "pending")
                if pending == 0:
                    break
                await trio.sleep(0.05)
            res["first_answer_s"] = trio.current_time() - t0
            res["states"] = namer.statistics()["states"]
            res["errors"] = error_summary(namer)
            res["unanswered"] = sum(1 for st in namer.table.states() if st.state == "pending")
            # churn starts once the namer has settled: every name bound and every watch streaming
            # (a watch whose start failed is retried with backoff, and its re-list would otherwise
            # be counted against the churn)
            while trio.current_time() < deadline and not settled(namer, n):
                await trio.sleep(0.1)
            res["settled_s"] = trio.current_time() - t0
            res["settled"] = settled(namer, n)
            res["startup_failures"] = sum(c.failures for t in namer.targets.values() for c in t.cores)
            gc.collect()
            res["rss0_kb"] = rss0
            res["rss_synced_kb"] = rss_kb()

            ev0, up0, nt0, rl0 = eps_events(namer), namer.table.updates, notifications, relists(namer)
            rc0, cpu0 = namer.recomputes, cpu_s()
            await fake.send(f"churn {args.rate} {args.churn_seconds}")
            done = await fake.receive(timeout=args.churn_seconds * 3 + 60)
            sent = int(done["sent"])
            # let the namer drain what is already on its sockets: until every update is in, or
            # nothing arrived for two seconds (bounded)
            last, quiet_since = eps_events(namer), trio.current_time()
            drain_end = trio.current_time() + max(30.0, 5 * args.churn_seconds)
            while eps_events(namer) - ev0 < sent and trio.current_time() < drain_end:
                await trio.sleep(0.1)
                now_ev = eps_events(namer)
                if now_ev != last:
                    last, quiet_since = now_ev, trio.current_time()
                elif trio.current_time() - quiet_since > 2.0:
                    break
            cpu = cpu_s() - cpu0
            applied = eps_events(namer) - ev0
            res.update(
                sent=sent,
                churn_elapsed_s=float(done["elapsed"]),
                applied=applied,
                versions=namer.table.updates - up0,
                notifications=notifications - nt0,
                recomputes=namer.recomputes - rc0,
                relists=relists(namer) - rl0,
                churn_cpu_s=cpu,
                cpu_per_1k=cpu / applied * 1000 if applied else math.nan,
            )
            gc.collect()
            res["rss_after_kb"] = rss_kb()
            res["states_after"] = namer.statistics()["states"]
            res["errors_after"] = error_summary(namer)
            nursery.cancel_scope.cancel()
        await fake.send("quit")
    finally:
        if proc.stdin is not None:  # end of input stops the fake even if "quit" was never sent
            with trio.move_on_after(1):
                await proc.stdin.aclose()
        with trio.move_on_after(10) as cs:
            await proc.wait()
        if cs.cancelled_caught:
            proc.kill()
            await proc.wait()
        log_file.close()
    return res


def relist_text(counts: Counter[str]) -> str:
    total = sum(counts.values())
    if not total:
        return "0"
    return f"{total} (" + ", ".join(f"{reason}: {n}" for reason, n in counts.most_common()) + ")"


def report(res: dict[str, Any]) -> list[str]:
    """The k8s benchmark's table, as lines."""
    n, m = res["services"], res["endpoints"]
    mib = 1024.0
    grown = (res["rss_synced_kb"] - res["rss0_kb"]) * 1024
    applied = res.get("applied", 0)

    def per(x: int) -> str:
        return f"{x / applied:.3f}" if applied else "-"

    rows = [
        ("services x endpoints", f"{n} x {m} = {n * m} endpoints, 1 port each"),
        ("namer", f"max_names {n}, resyncIntervalSecs {res['resync_s']:g} (no periodic re-list in the run)"),
        (
            "RLIMIT_NOFILE (soft)",
            f"namer {res['nofile_namer']}, fake API {res['nofile_fake']} (hard {res['nofile_hard']})",
        ),
        ("first answer, all names", f"{res['first_answer_s']:.2f} s ({res['unanswered']} still pending)"),
        ("name states", " ".join(f"{k}={v}" for k, v in res["states"].items() if v)),
        ("errors", res["errors"]),
        (
            "settled",
            f"{res['settled_s']:.2f} s (all bound, all watches streaming: {'yes' if res['settled'] else 'NO'})",
        ),
        ("failed requests at start", str(res["startup_failures"])),
        ("RSS before namer", f"{res['rss0_kb'] / mib:.1f} MiB"),
        ("RSS settled", f"{res['rss_synced_kb'] / mib:.1f} MiB"),
        ("RSS after churn", f"{res['rss_after_kb'] / mib:.1f} MiB"),
        ("bytes per endpoint", f"{grown / (n * m):.0f} B" if n * m else "-"),
        (
            "churn",
            f"{res['rate']:g} updates/s for {res['seconds']:g} s (sent in {res['churn_elapsed_s']:.2f} s)",
        ),
        ("updates applied / sent", f"{applied} / {res['sent']}"),
        (
            "CPU per 1000 updates",
            f"{res['cpu_per_1k']:.3f} s (namer process, {res['churn_cpu_s']:.2f} s total)",
        ),
        ("notifications per update", per(res["notifications"])),
        ("name versions per update", per(res["versions"])),
        ("name recomputes per update", per(res["recomputes"])),
        ("re-lists during churn", relist_text(res["relists"])),
        ("name states after churn", " ".join(f"{k}={v}" for k, v in res["states_after"].items() if v)),
        ("errors after churn", res["errors_after"]),
    ]
    width = max(len(k) for k, _ in rows)
    return [f"{k:<{width}}  {v}" for k, v in rows]


def add_arguments(ap: argparse.ArgumentParser) -> None:
    g = ap.add_argument_group("k8s namer (--only k8s)")
    g.add_argument("--services", type=int, default=5000, help="Services watched (default 5000)")
    g.add_argument("--endpoints", type=int, default=20, help="ready endpoints per Service (default 20)")
    g.add_argument("--rate", type=float, default=500.0, help="endpoint updates per second (default 500)")
    g.add_argument("--churn-seconds", type=float, default=20.0, help="seconds of churn (default 20)")
    g.add_argument(
        "--sync-timeout",
        type=float,
        default=600.0,
        help="seconds to wait for every name's first answer (default 600)",
    )
    g.add_argument("--seed", type=int, default=1, help="seed of the churn's choices (default 1)")
    g.add_argument("--k8s-log", metavar="FILE", help="keep the namer's JSON log in FILE (default: discarded)")


def run(args: argparse.Namespace) -> list[str]:
    """Run the k8s benchmark and return its report lines."""
    tmp = FsPath(tempfile.mkdtemp(prefix="hostproxy-bench-k8s-"))
    try:
        res = trio.run(run_k8s, args, tmp)
    finally:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    head = (
        f"io.l5d.k8s namer — {args.services} Services, {args.endpoints} endpoints each, "
        f"{args.rate:g} updates/s for {args.churn_seconds:g} s, fake API server in its own process"
    )
    return [head, *report(res)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--serve-fake", action="store_true", help="run the fake API server (the benchmark starts this itself)"
    )
    add_arguments(ap)
    args = ap.parse_args(argv)
    if args.serve_fake:
        tests_on_path()
        trio.run(serve_fake, args.services, args.endpoints, args.seed)
        return 0
    print("\n".join(run(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
