"""/$/inet resolution: literals, the pure host table, and real DNS through a dnsmasq on loopback."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path as FsPath
from typing import Any

import pytest
import trio
from dnsserver import free_dns_port

from namers._dtab import (
    NEG,
    PENDING,
    AddrBound,
    Address,
    AddrFailed,
    AddrNeg,
    BoundName,
    Leaf,
    NamerError,
    Path,
)
from namers.base import STALE_SINCE
from namers.inet import HostTable, InetResolver, literal_ip, parse_nameserver


@pytest.mark.parametrize(
    ("host", "ip"),
    [
        ("127.1", "127.0.0.1"),
        ("10.1.2", "10.1.0.2"),
        ("127.0.0.1", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("1234", "0.0.4.210"),
        ("", "127.0.0.1"),
        ("localhost", "127.0.0.1"),
        ("::1", "::1"),
        ("[::1]", "::1"),
        ("2001:DB8::0:1", "2001:db8::1"),
        ("web.test", None),
        ("deadbeef", None),
        ("1.2.3.4.5", None),
        ("256.1.1.1", None),
        ("127.1 x", None),
        ("::g", None),
    ],
)
def test_literal_ip(host: str, ip: str | None):
    assert literal_ip(host) == ip


def test_parse_nameserver():
    assert parse_nameserver("10.0.0.2") == ("10.0.0.2", 53)
    assert parse_nameserver("127.0.0.1:5353") == ("127.0.0.1", 5353)
    assert parse_nameserver("::1") == ("::1", 53)
    assert parse_nameserver("[::1]:5353") == ("::1", 5353)
    with pytest.raises(
        ValueError,
        match=r"^nameserver 'dns\.local': 'dns\.local' is not an IP address; give the server's IP$",
    ):
        parse_nameserver("dns.local")
    with pytest.raises(ValueError, match=r"^nameserver '127\.0\.0\.1:0': port '0' is not 1-65535$"):
        parse_nameserver("127.0.0.1:0")


def test_literals_resolve_synchronously_without_state():
    r = InetResolver()
    assert r.resolve("127.1", 8080) == AddrBound((Address("127.0.0.1", 8080),), {})
    assert len(r.table) == 0


def test_system_paths():
    r = InetResolver()
    leaf = r.system(Path.read("/$/inet/127.1/8080/ya"))
    assert leaf == Leaf(BoundName(id=Path.read("/$/inet/127.1/8080"), residual=Path.read("/ya")))
    assert leaf.value.addr == AddrBound((Address("127.0.0.1", 8080),), {})
    leaf = r.system(Path.read("/$/inet/8080/rest"))
    assert (leaf.value.id, leaf.value.residual) == (Path.read("/$/inet/8080"), Path.read("/rest"))
    assert leaf.value.addr == AddrBound((Address("127.0.0.1", 8080),), {})
    # the host/port form is tried first: host 1234, port 5678
    assert r.system(Path.read("/$/inet/1234/5678")).value.addr == AddrBound((Address("0.0.4.210", 5678),), {})
    leaf = r.system(Path.read("/$/io.buoyant.rinet/8080/127.1/x"))
    assert (leaf.value.id, leaf.value.residual) == (
        Path.read("/$/io.buoyant.rinet/8080/127.1"),
        Path.read("/x"),
    )
    assert leaf.value.addr == AddrBound((Address("127.0.0.1", 8080),), {})
    assert r.system(Path.read("/$/fixedinet/127.1/80")).value.id == Path.read("/$/fixedinet/127.1/80")
    assert r.system(Path.read("/$/io.buoyant.rinet/8080")) is NEG
    for other in ("/$/inet/web", "/$/inet", "/$/nil", "/$/fail", "/svc/web", "/$"):
        assert r.system(Path.read(other)) is None
    with pytest.raises(NamerError, match=r"^/\$/inet/web/70000: port 70000 is out of range 1-65535$"):
        r.system(Path.read("/$/inet/web/70000"))
    with pytest.raises(
        NamerError,
        match=r"^/\$/io\.buoyant\.rinet/http/web: port 'http' is not a number; write /\$/io\.buoyant\.rinet/<port>/<host>$",
    ):
        r.system(Path.read("/$/io.buoyant.rinet/http/web"))
    assert r.system(Path.read("/$/inet/web.test/80")) is PENDING
    assert len(r.table) == 1


# -- HostTable (pure) -----------------------------------------------------------------------------
class FakeClock:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


def test_table_ttl_clamped_and_refresh_schedule():
    t = HostTable(clock=FakeClock(), ttl_floor=2, ttl_ceiling=30)
    t.touch("web")
    assert t.due(0.0) == ["web"] and t.due(0.0) == []  # in flight
    assert t.next_deadline() is None
    assert t.apply_answer("web", ["10.0.0.1"], 0, 100.0)
    assert t.get("web").next_refresh == 102.0  # floor
    assert t.due(101.9) == [] and t.due(102.0) == ["web"]
    assert not t.apply_answer("web", ["10.0.0.1"], 3600, 102.0)  # same answer: no change
    assert t.get("web").next_refresh == 132.0  # ceiling
    assert t.get("web").version == 1


def test_table_errors_keep_last_good_and_back_off():
    clock = FakeClock()
    t = HostTable(clock=clock, retry_base=1, retry_max=4)
    t.touch("web")
    t.due(0.0)
    assert t.apply_error("web", "timeout", 0.0)
    assert (t.get("web").state, t.get("web").next_refresh) == ("failed", 1.0)
    t.due(1.0)
    t.apply_answer("web", ["10.0.0.1", "::1"], 10, 1.0)
    for i, expected in enumerate([1.0, 2.0, 4.0, 4.0]):
        t.due(100.0)
        clock.t += 1
        t.apply_error("web", "timeout", 100.0)
        assert t.get("web").next_refresh == 100.0 + expected
        if i == 0:
            stale_since = clock.t
    e = t.get("web")
    assert (e.state, e.ips, e.last_error, e.stale_since) == (
        "stale",
        ("10.0.0.1", "::1"),
        "timeout",
        stale_since,
    )
    assert e.to_json(clock.t + 0.5)["staleAgeSecs"] == 3.5
    t.due(200.0)
    assert t.apply_answer("web", ["10.0.0.2"], 10, 200.0)
    assert (e.state, e.failures, e.stale_since) == ("bound", 0, None)


def test_table_negative_fixed_and_bounded():
    t = HostTable(clock=FakeClock(), max_hosts=2, negative_ttl=5, ttl_floor=1)
    t.touch("nx")
    t.due(0.0)
    assert t.apply_negative("nx", 0.0)
    assert (t.get("nx").state, t.get("nx").next_refresh) == ("neg", 5.0)
    t.touch("fixed", fixed=True)
    t.due(0.0)
    t.apply_answer("fixed", ["10.0.0.1"], 1, 0.0)
    assert t.get("fixed").next_refresh == float("inf")
    _, created, evicted = t.touch("third")
    assert created and [e.host for e in evicted] == ["nx"] and t.evictions == 1


# -- real DNS through dnsmasq -------------------------------------------------------------------------
DNSMASQ = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"


class Dnsmasq:
    def __init__(self, tmp: FsPath, ttl: int) -> None:
        self.hosts = tmp / "hosts"
        self.log = tmp / "dnsmasq.log"
        self.ttl = ttl
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    def write(self, text: str) -> None:
        self.hosts.write_text(text)

    def start(self) -> None:
        if not self.port:  # a restart keeps the port the resolver was given
            self.port = free_dns_port()
        args = [
            DNSMASQ,
            "--no-daemon",
            f"--port={self.port}",
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            "--no-resolv",
            "--no-hosts",
            f"--addn-hosts={self.hosts}",
            "--local=/test/",
            f"--local-ttl={self.ttl}",
            "--log-queries",
            "--pid-file=",
        ]
        if os.geteuid() == 0:
            args.append("--user=root")
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)

    def reload(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    async def ready(self) -> None:
        """Wait until it answers (a query for a name it knows)."""
        import dns.asyncresolver
        import dns.nameserver

        r = dns.asyncresolver.Resolver(configure=False)
        r.nameservers = [dns.nameserver.Do53Nameserver("127.0.0.1", self.port)]
        r.lifetime = 0.5
        with trio.fail_after(10):
            while True:
                assert self.proc is not None and self.proc.poll() is None, self.log.read_text()
                try:
                    await r.resolve("ready.test", "A")
                    return
                except Exception:
                    await trio.sleep(0.05)


@pytest.fixture
async def dnsmasq(tmp_path: FsPath) -> AsyncIterator[Dnsmasq]:
    d = Dnsmasq(tmp_path, ttl=1)
    d.write("127.0.0.9 ready.test\n127.0.0.5 web.test\n::5 web.test\n127.0.0.6 v4only.test\n")
    d.start()
    try:
        await d.ready()
        yield d
    finally:
        d.stop()


async def wait_for(pred: Callable[[], Any], timeout: float = 10.0) -> Any:
    with trio.fail_after(timeout):
        while not (v := pred()):
            await trio.sleep(0.01)
        return v


def resolver_for(d: Dnsmasq, **kw: Any) -> InetResolver:
    kw.setdefault("timeout", 0.5)
    kw.setdefault("ttl_floor", 0.1)
    kw.setdefault("retry_base", 0.1)
    kw.setdefault("retry_max", 0.5)
    return InetResolver([f"127.0.0.1:{d.port}"], **kw)


async def test_names_resolve_asynchronously(dnsmasq: Dnsmasq):
    r = resolver_for(dnsmasq)
    seen: list[str] = []
    r.subscribe(lambda res, host: seen.append(host))
    async with trio.open_nursery() as nursery:
        await nursery.start(r.run)
        assert r.resolve("web.test", 80) is PENDING
        assert r.system(Path.read("/$/inet/v4only.test/81/rest")) is PENDING
        assert r.resolve("missing.test", 80) is PENDING
        await wait_for(lambda: {"web.test", "v4only.test", "missing.test"} <= set(seen))
        assert r.resolve("web.test", 80) == AddrBound((Address("127.0.0.5", 80), Address("::5", 80)), {})
        leaf = r.system(Path.read("/$/inet/v4only.test/81/rest"))
        assert leaf == Leaf(BoundName(id=Path.read("/$/inet/v4only.test/81"), residual=Path.read("/rest")))
        assert leaf.value.addr == AddrBound((Address("127.0.0.6", 81),), {})
        assert r.resolve("missing.test", 80) == AddrNeg()
        assert r.state_json()["names"]["web.test"]["addrs"] == ["127.0.0.5", "::5"]
        assert r.statistics()["states"]["bound"] == 2
        nursery.cancel_scope.cancel()


async def test_ttl_refresh_picks_up_changes(dnsmasq: Dnsmasq):
    r = resolver_for(dnsmasq)
    seen: list[str] = []
    r.subscribe(lambda res, host: seen.append(host))
    async with trio.open_nursery() as nursery:
        await nursery.start(r.run)
        r.resolve("web.test", 80)
        await wait_for(lambda: seen)
        assert r.table.get("web.test").version == 1
        dnsmasq.write("127.0.0.9 ready.test\n127.0.0.7 web.test\n")
        dnsmasq.reload()
        await wait_for(lambda: len(seen) == 2)
        assert r.resolve("web.test", 80) == AddrBound((Address("127.0.0.7", 80),), {})
        assert r.table.get("web.test").version == 2
        nursery.cancel_scope.cancel()


async def test_dns_down_keeps_last_good_as_stale(dnsmasq: Dnsmasq):
    r = resolver_for(dnsmasq)
    async with trio.open_nursery() as nursery:
        await nursery.start(r.run)
        r.resolve("web.test", 80)
        await wait_for(lambda: r.table.get("web.test").state == "bound")
        dnsmasq.stop()
        await wait_for(lambda: r.table.get("web.test").state == "stale")
        e = r.table.get("web.test")
        assert e.last_error == (
            f"resolving 'web.test' via 127.0.0.1:{dnsmasq.port} failed: A: timed out; AAAA: timed out"
        )
        version = e.version
        await trio.sleep(1.5)  # several retries fail the same way: no new versions, no notifications
        assert e.version == version
        # the last good addresses, saying since when they are stale (clients show it)
        assert r.resolve("web.test", 80) == AddrBound(
            (Address("127.0.0.5", 80), Address("::5", 80)), {STALE_SINCE: e.stale_since}
        )
        # a name never resolved fails outright
        r.resolve("other.test", 80)
        await wait_for(lambda: r.table.get("other.test").state == "failed")
        assert isinstance(r.resolve("other.test", 80), AddrFailed)
        # the server comes back: the stale name recovers on its own
        dnsmasq.start()
        await dnsmasq.ready()
        await wait_for(lambda: r.table.get("web.test").state == "bound")
        nursery.cancel_scope.cancel()
