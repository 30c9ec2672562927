"""io.l5d.k8s and /$/inet when the control plane fails: the last good state is kept, the API server
and the nameservers are never hammered, and the state JSON says what is wrong.

Real components throughout: the namer against the in-repo fake Kubernetes API server (the real wire
protocol on loopback), and the inet resolver against a scripted DNS responder on a loopback UDP
port. No timing assertions: the k8s namer's ``sleep`` is injected and recorded, so a test counts the
backoffs the namer waits between requests (and their growth), never requests per second; waits are
bounded polls of observable state.
"""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path as FsPath
from typing import Any

import pytest
import trio
from k8s_api.objects import endpoints, service
from k8s_api.server import FakeKubeApi, open_fake_api

from namers._dtab import Path
from namers.inet import HostTable, InetResolver
from namers.k8s import ApiServer, K8sNamer
from namers.k8s.client import TokenFile


async def wait_for(pred: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Poll ``pred`` until truthy; fail after ``timeout`` seconds (a bound, not a measurement)."""
    with trio.fail_after(timeout):
        while not (v := pred()):
            await trio.sleep(0.002)
        return v


# == io.l5d.k8s ==================================================================================

BASE, MAX = 0.01, 0.04  # backoff_base / backoff_max; with rng 0.5 a step waits 0.75 x its base
STEPS = [0.0075, 0.015, 0.03, 0.03, 0.03]  # the waits of steps 1, 2, 3, ... (capped at MAX)


class RecordingSleep:
    """The namer's injected ``sleep``: records (task, delay) and sleeps for real (briefly)."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, float]] = []

    async def __call__(self, delay: float) -> None:
        self.calls.append((id(trio.lowlevel.current_task()), delay))
        await trio.sleep(delay)

    def per_task(self) -> list[list[float]]:
        out: dict[int, list[float]] = {}
        for task, delay in self.calls:
            out.setdefault(task, []).append(round(delay, 6))
        return list(out.values())


@asynccontextmanager
async def k8s_namer(api: ApiServer, **kwargs: Any) -> AsyncIterator[K8sNamer]:
    opts: dict[str, Any] = {
        "resync_interval": 30.0,
        "request_timeout": 5.0,
        "backoff_base": BASE,
        "backoff_max": MAX,
        "rng": lambda: 0.5,
    }
    opts.update(kwargs)
    namer = K8sNamer(api, **opts)
    async with trio.open_nursery() as nursery:
        await nursery.start(namer.run)
        yield namer
        nursery.cancel_scope.cancel()


KEY = (b"srv", b"http", b"sessions")


def k8s_state(namer: K8sNamer) -> str | None:
    st = namer.table.get(KEY)
    return st.state if st is not None else None


def hosts(namer: K8sNamer) -> list[str]:
    return [a["host"] for a in namer.state_json()["names"]["srv/http/sessions"]["addrs"] or ()]


def publish(api: FakeKubeApi, ips: list[str]) -> None:
    api.put("services", service("sessions", [("http", 80, 8080)]))
    api.put("endpoints", endpoints("sessions", ips, ports={"http": 8080}))


async def test_k8s_watch_that_ends_at_once_backs_off_before_the_next_watch() -> None:
    """A watch answered 200 that ends at once with no event (a proxy or load balancer that closes
    every watch; client-go's "very short watch") made no progress: the namer waits a growing
    backoff before each next watch instead of re-watching at once, forever. It is not an error: the
    listed endpoints are as good as they were, so the name stays bound."""
    sleep = RecordingSleep()
    async with open_fake_api(watch_timeout=0.0) as api:  # every watch ends cleanly at once
        publish(api, ["10.244.1.17"])
        async with k8s_namer(ApiServer("127.0.0.1", api.port), sleep=sleep) as namer:
            namer.lookup(Path.read("/srv/http/sessions"))
            await wait_for(lambda: k8s_state(namer) == "bound")
            await wait_for(lambda: api.count("", watch=True) >= 20)
            watches, waits = api.count("", watch=True), len(sleep.calls)
            assert k8s_state(namer) == "bound"
            entry = namer.state_json()["names"]["srv/http/sessions"]
            assert entry["lastError"] is None and entry["watch"]["lastError"] is None
            eps_watch = namer.state_json()["endpoints"]["srv/sessions"]["watch"]
    # Two list/watches (Service, Endpoints); each waits before every watch after its first (and
    # may have one watch in flight): no more watches than waits + 2 per loop.
    assert watches <= waits + 4, f"{watches} watches but only {waits} backoffs between them"
    assert eps_watch["shortWatches"] >= 5
    assert "with no event" in eps_watch["throttle"], eps_watch
    for delays in sleep.per_task():
        assert delays[:3] == STEPS[: len(delays[:3])] and set(delays[3:]) <= {MAX * 0.75}, delays


@pytest.mark.parametrize("legacy_410", [True, False], ids=["http-410", "error-event-410"])
async def test_k8s_410_on_every_watch_backs_off_between_relists(legacy_410: bool) -> None:
    """A watch cache behind the lists (HA API servers behind a load balancer, a cache being
    re-initialised) answers every watch from a fresh list's resourceVersion with 410 Gone. The
    first 410 re-lists at once; 410 after 410 with no event between is throttled with a growing
    backoff, so the outage never becomes a LIST storm (the costliest request an API server serves)."""
    sleep = RecordingSleep()
    async with open_fake_api(legacy_410=legacy_410) as api:
        publish(api, ["10.244.1.17"])
        api.compacted = api.rv + 10**9  # every resourceVersion a list returns is "too old" to watch
        async with k8s_namer(ApiServer("127.0.0.1", api.port), sleep=sleep) as namer:
            namer.lookup(Path.read("/srv/http/sessions"))
            await wait_for(lambda: k8s_state(namer) == "bound")
            await wait_for(lambda: api.count("", watch=False) >= 20)
            lists, waits = api.count("", watch=False), len(sleep.calls)
            assert k8s_state(namer) == "bound"  # still routing on the listed endpoints
            assert namer.state_json()["names"]["srv/http/sessions"]["lastError"] is None
            eps_watch = namer.state_json()["endpoints"]["srv/sessions"]["watch"]
    # Per loop: list, 410, list (at once), 410, wait, list, 410, wait, ... plus one list in flight.
    assert lists <= waits + 6, f"{lists} LISTs but only {waits} backoffs between them"
    assert "410 Gone" in eps_watch["throttle"] and eps_watch["noProgressInARow"] >= 3, eps_watch
    for delays in sleep.per_task():
        assert delays[:3] == STEPS[: len(delays[:3])] and set(delays[3:]) <= {MAX * 0.75}, delays


async def test_k8s_one_410_relists_at_once_and_an_event_ends_the_run() -> None:
    """A single 410 (history compacted) is the expected answer: re-list at once, no backoff; an
    event in between means the next 410 is again the first of its run."""
    sleep = RecordingSleep()
    async with open_fake_api() as api:
        publish(api, ["10.244.1.17"])
        async with k8s_namer(ApiServer("127.0.0.1", api.port), sleep=sleep) as namer:
            namer.lookup(Path.read("/srv/http/sessions"))
            await wait_for(lambda: k8s_state(namer) == "bound" and api.open_watches == 2)
            for round_ in range(3):
                lists, watches = api.count("", watch=False), api.count("", watch=True)
                api.error_to_watches(410)
                await wait_for(lambda n=watches: api.count("", watch=True) >= n + 2)
                assert api.count("", watch=False) == lists + 2
                await wait_for(lambda: api.open_watches == 2)
                ip = f"10.244.1.{20 + round_}"
                api.put("endpoints", endpoints("sessions", [ip], ports={"http": 8080}))
                await wait_for(lambda ip=ip: hosts(namer) == [ip])
            # the Service watch saw no event between its 410s: its second and third 410 waited
            assert len(sleep.calls) == 2, sleep.calls
            assert k8s_state(namer) == "bound"


async def test_k8s_failing_lists_after_a_410_keep_last_good_and_say_why() -> None:
    """410 Gone mid-watch, then the re-list is refused (403: the RBAC binding was removed in the same
    change): the name keeps serving its endpoints, marked stale, and the error names the 403 and the
    fix; when access is restored the name is bound again."""
    async with open_fake_api() as api:
        publish(api, ["10.244.1.17"])
        async with k8s_namer(ApiServer("127.0.0.1", api.port)) as namer:
            namer.lookup(Path.read("/srv/http/sessions"))
            await wait_for(lambda: k8s_state(namer) == "bound" and api.open_watches == 2)
            api.forbid("endpoints", "list")
            api.error_to_watches(410)
            await wait_for(lambda: k8s_state(namer) == "stale")
            entry = namer.state_json()["names"]["srv/http/sessions"]
            assert [a["host"] for a in entry["addrs"]] == ["10.244.1.17"]
            assert "403" in entry["lastError"] and "RBAC" in entry["lastError"], entry["lastError"]
            assert entry["staleAgeSecs"] is not None
            tree = namer.lookup(Path.read("/srv/http/sessions"))
            assert [a.host for a in tree.value.addr.addresses] == ["10.244.1.17"]
            api.forbidden.clear()
            await wait_for(lambda: k8s_state(namer) == "bound")
            assert namer.state_json()["names"]["srv/http/sessions"]["lastError"] is None


async def test_k8s_401_after_token_rotation_retries_at_once_with_the_new_token(tmp_path: FsPath) -> None:
    """The token was rotated in place without changing the file's size or mtime, so the cached
    token goes out and the API server answers 401: the namer re-reads the file and, the token
    having changed, retries at once; no failure is recorded and the name never goes stale."""
    token_path = tmp_path / "token"
    token_path.write_text("token-one")
    async with open_fake_api(tokens={"token-one"}) as api:
        publish(api, ["10.244.1.17"])
        server = ApiServer("127.0.0.1", api.port, token=TokenFile(str(token_path)))
        async with k8s_namer(server) as namer:
            namer.lookup(Path.read("/srv/http/sessions"))
            await wait_for(lambda: k8s_state(namer) == "bound" and api.open_watches == 2)
            st = os.stat(token_path)
            with open(token_path, "r+", encoding="utf-8") as f:  # same inode, same size
                f.write("token-two")
            os.utime(token_path, ns=(st.st_atime_ns, st.st_mtime_ns))
            api.tokens = {"token-two"}
            lists = namer.statistics()["lists"]
            api.error_to_watches(410)
            await wait_for(lambda: namer.statistics()["lists"] >= lists + 2)
            assert api.auth_failures == 2  # one per list/watch, each retried once
            assert namer.statistics()["failures"] == 0
            assert k8s_state(namer) == "bound"
            assert namer.state_json()["names"]["srv/http/sessions"]["lastError"] is None


# == /$/inet: A and AAAA =========================================================================


class ScriptedDns:
    """A minimal DNS responder on a loopback UDP port: per (name, type) it answers records or an
    rcode, as ``script`` says at the time of the query."""

    def __init__(self) -> None:
        self.script: dict[tuple[str, str], Any] = {}
        self.port = 0
        self.queries: list[tuple[str, str]] = []

    async def serve(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        import dns.message
        import dns.rcode
        import dns.rdatatype
        import dns.rrset

        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        await sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        task_status.started()
        with sock:
            while True:
                data, peer = await sock.recvfrom(4096)
                try:
                    q = dns.message.from_wire(data)
                except Exception:
                    continue
                qname = q.question[0].name.to_text(omit_final_dot=True).lower()
                qtype = dns.rdatatype.to_text(q.question[0].rdtype)
                self.queries.append((qname, qtype))
                r = dns.message.make_response(q)
                what = self.script.get((qname, qtype), "NXDOMAIN")
                if isinstance(what, str):
                    r.set_rcode(dns.rcode.from_text(what))
                else:
                    r.answer.append(dns.rrset.from_text_list(qname + ".", 1, "IN", qtype, list(what)))
                await sock.sendto(r.to_wire(), peer)


def since(dns_server: ScriptedDns, n: int, query: tuple[str, str]) -> int:
    return dns_server.queries[n:].count(query)


async def test_inet_aaaa_servfail_keeps_last_good_v6_addresses_stale_with_the_error() -> None:
    """A dual-stack host answered A and AAAA; then AAAA fails (SERVFAIL) while A answers. The A
    answer is not the whole truth: the v6 address is kept, the host is stale and says why, and
    once AAAA answers again it is bound with both and no error."""
    dns_server = ScriptedDns()
    async with trio.open_nursery() as nursery:
        await nursery.start(dns_server.serve)
        dns_server.script[("web.test", "A")] = ["10.0.0.1"]
        dns_server.script[("web.test", "AAAA")] = ["fd00::1"]
        r = InetResolver([f"127.0.0.1:{dns_server.port}"], timeout=1.0, ttl_floor=0.05, retry_base=0.05)
        await nursery.start(r.run)
        r.resolve("web.test", 80)
        await wait_for(lambda: r.table.get("web.test").state == "bound")
        assert sorted(r.table.get("web.test").ips) == ["10.0.0.1", "fd00::1"]

        dns_server.script[("web.test", "A")] = ["10.0.0.2"]  # the family that answers is fresh
        dns_server.script[("web.test", "AAAA")] = "SERVFAIL"
        n = len(dns_server.queries)
        # a second AAAA query means the first resolution after the change has been applied
        await wait_for(lambda: since(dns_server, n, ("web.test", "AAAA")) >= 2)
        body = r.state_json()["names"]["web.test"]
        assert body["state"] == "stale", body
        assert sorted(body["addrs"]) == ["10.0.0.2", "fd00::1"]
        assert "AAAA" in body["lastError"] and "SERVFAIL" in body["lastError"], body["lastError"]
        assert "A:" not in body["lastError"].replace("AAAA:", "")
        assert body["staleAgeSecs"] is not None
        assert sorted(a.host for a in r.resolve("web.test", 80).addresses) == ["10.0.0.2", "fd00::1"]

        dns_server.script[("web.test", "AAAA")] = ["fd00::2"]
        await wait_for(lambda: r.table.get("web.test").state == "bound")
        body = r.state_json()["names"]["web.test"]
        assert sorted(body["addrs"]) == ["10.0.0.2", "fd00::2"] and body["lastError"] is None
        nursery.cancel_scope.cancel()


async def test_inet_nxdomain_after_good_answer_is_negative_but_servfail_is_stale() -> None:
    """The two DNS outcomes the README keeps apart for /$/inet: SERVFAIL keeps the last good
    addresses (stale, with the error), NXDOMAIN is a real answer (negative)."""
    dns_server = ScriptedDns()
    async with trio.open_nursery() as nursery:
        await nursery.start(dns_server.serve)
        dns_server.script[("api.test", "A")] = ["10.0.0.7"]
        dns_server.script[("api.test", "AAAA")] = "NOERROR"
        r = InetResolver([f"127.0.0.1:{dns_server.port}"], timeout=1.0, ttl_floor=0.05, retry_base=0.05)
        await nursery.start(r.run)
        r.resolve("api.test", 80)
        await wait_for(lambda: r.table.get("api.test").state == "bound")
        dns_server.script[("api.test", "A")] = "SERVFAIL"
        dns_server.script[("api.test", "AAAA")] = "SERVFAIL"
        await wait_for(lambda: r.table.get("api.test").state == "stale")
        e = r.table.get("api.test")
        assert e.ips == ("10.0.0.7",) and "api.test" in (e.last_error or "")
        addr = r.resolve("api.test", 80)
        assert [a.host for a in addr.addresses] == ["10.0.0.7"]
        dns_server.script[("api.test", "A")] = "NXDOMAIN"
        dns_server.script[("api.test", "AAAA")] = "NXDOMAIN"
        await wait_for(lambda: r.table.get("api.test").state == "neg")
        nursery.cancel_scope.cancel()


def test_host_table_partial_answer_keeps_only_the_failed_familys_addresses() -> None:
    t = HostTable(clock=lambda: 1000.0, retry_base=0.5)
    t.touch("web.test")
    assert t.apply_answer("web.test", ["10.0.0.1", "fd00::1", "fd00::2"], 30, now=0.0)
    e = t.get("web.test")
    assert e is not None
    assert t.apply_partial("web.test", ["10.0.0.9"], ["AAAA"], "AAAA: SERVFAIL", now=1.0)
    assert (e.state, e.ips, e.last_error, e.stale_since) == (
        "stale",
        ("10.0.0.9", "fd00::1", "fd00::2"),
        "AAAA: SERVFAIL",
        1000.0,
    )
    assert e.next_refresh == 1.5  # retried with backoff, not at the TTL
    version = e.version
    assert not t.apply_partial("web.test", ["10.0.0.9"], ["AAAA"], "AAAA: SERVFAIL", now=2.0)
    assert e.version == version and e.next_refresh == 3.0
    assert t.apply_partial("web.test", ["10.0.0.8"], ["AAAA"], "AAAA: SERVFAIL", now=3.0)
    assert e.ips == ("10.0.0.8", "fd00::1", "fd00::2") and e.version == version + 1
