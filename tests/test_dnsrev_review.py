"""DNS resolution (/$/inet and io.l5d.dnssrv) against nameservers that behave as real ones do: answers
whose records come back in a new order each time, a dead first nameserver, CNAME chains.

Real components throughout: dnsmasq on loopback, or, where dnsmasq cannot be made to answer that way,
a scripted DNS responder on a loopback UDP port (real DNS messages, read and written by dnspython).
Waits are bounded polls of observable state (counts of queries answered), never timing assertions.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path as FsPath
from typing import Any

import trio

from namers._dtab import AddrBound, Address, Path
from namers.dnssrv import DnsSrvNamer
from namers.inet import HostTable, InetResolver
from tests.daemonutil import curl, running_daemon
from tests.dnsserver import running_dnsmasq
from tests.upstreams import running_upstream


async def wait_for(pred: Callable[[], Any], timeout: float = 15.0) -> Any:
    """Poll ``pred`` until truthy; fail after ``timeout`` seconds (a bound, not a measurement)."""
    with trio.fail_after(timeout):
        while not (v := pred()):
            await trio.sleep(0.005)
        return v


#: An answer: records as (owner name, TTL, type, rdata text) in answer-section order, an rcode name, or
#: (rcode name, authority-section records).
Records = list[tuple[str, int, str, str]]
Answer = Records | str | tuple[str, Records]


class Responder:
    """A DNS responder on a loopback UDP port. ``answer(qname, qtype, n)`` (``n``: how many queries of
    that (name, type) came before) gives the records of the reply, or an rcode, or ``"DROP"`` for no
    reply at all. ``answered`` counts the queries handled per (name, type)."""

    def __init__(self, answer: Callable[[str, str, int], Answer]) -> None:
        self.answer = answer
        self.port = 0
        self.answered: dict[tuple[str, str], int] = {}

    def count(self, name: str, qtype: str) -> int:
        return self.answered.get((name, qtype), 0)

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
                q = dns.message.from_wire(data)
                qname = q.question[0].name.to_text(omit_final_dot=True).lower()
                qtype = dns.rdatatype.to_text(q.question[0].rdtype)
                n = self.answered.get((qname, qtype), 0)
                what = self.answer(qname, qtype, n)
                if what == "DROP":  # (a lost packet)
                    self.answered[(qname, qtype)] = n + 1
                    continue
                r = dns.message.make_response(q)
                if isinstance(what, str):
                    r.set_rcode(dns.rcode.from_text(what))
                elif isinstance(what, tuple):
                    r.set_rcode(dns.rcode.from_text(what[0]))
                    for owner, ttl, rtype, text in what[1]:
                        r.authority.append(dns.rrset.from_text(owner + ".", ttl, "IN", rtype, text))
                else:
                    for owner, ttl, rtype, text in what:
                        r.answer.append(dns.rrset.from_text(owner + ".", ttl, "IN", rtype, text))
                await sock.sendto(r.to_wire(), peer)
                self.answered[(qname, qtype)] = n + 1


def rotated(items: list[str], n: int) -> list[str]:
    """``items`` rotated by ``n`` (what a round-robin nameserver does with a record set)."""
    k = n % len(items)
    return items[k:] + items[:k]


# == answers in a new order ========================================================================


async def test_inet_round_robin_nameserver_reordering_the_same_addresses_is_no_change() -> None:
    """Round-robin nameservers (BIND's cyclic rrset-order, CoreDNS's loadbalance plugin, Route 53
    multivalue) return the same A records in a new order on each query. Each refresh counted as a new
    answer: a new version, an 'inet.resolve.complete' log line, and every router's whole binding
    cache dropped, once per name per TTL. The same set in another order is the same answer."""
    v4 = ["10.0.0.1", "10.0.0.2", "10.0.0.3"]

    def answer(name: str, qtype: str, n: int) -> Answer:
        if name == "rr.test" and qtype == "A":
            return [("rr.test", 1, "A", ip) for ip in rotated(v4, n)]
        return "NOERROR" if name == "rr.test" else "NXDOMAIN"

    server = Responder(answer)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        r = InetResolver([f"127.0.0.1:{server.port}"], timeout=2.0, ttl_floor=0.01)
        seen: list[str] = []
        r.subscribe(lambda _r, host: seen.append(host))
        await nursery.start(r.run)
        r.resolve("rr.test", 80)
        await wait_for(lambda: r.table.get("rr.test").state == "bound")
        assert sorted(r.table.get("rr.test").ips) == v4
        # one query at a time per host: the fifth A query is sent after the fourth answer is applied
        await wait_for(lambda: server.count("rr.test", "A") >= 5)
        e = r.table.get("rr.test")
        assert (e.state, e.version, seen) == ("bound", 1, ["rr.test"])
        assert sorted(e.ips) == v4
        nursery.cancel_scope.cancel()


async def test_dnssrv_nameserver_shuffling_the_srv_records_is_no_change() -> None:
    """Consul and CoreDNS shuffle SRV records on every query. Each refresh (every 5 s by default)
    counted as a change of the name: a new version, an update log line, and the routers' bindings of
    the name dropped and rebound. The same addresses in another order are the same answer."""
    records = ["0 10 8080 a.test.", "0 20 8081 b.test.", "0 30 8082 c.test."]
    ips = {"a.test": "10.0.0.1", "b.test": "10.0.0.2", "c.test": "10.0.0.3"}

    def answer(name: str, qtype: str, n: int) -> Answer:
        if name == "_http._tcp.web.test" and qtype == "SRV":
            return [(name, 5, "SRV", rd) for rd in rotated(records, n)]
        if name in ips:
            return [(name, 5, "A", ips[name])] if qtype == "A" else "NOERROR"
        return "NXDOMAIN"

    server = Responder(answer)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        n = DnsSrvNamer([f"127.0.0.1:{server.port}"], refresh_interval=0.01, timeout=2.0)
        changes: list[Any] = []
        n.subscribe(lambda _n, key: changes.append(key))
        await nursery.start(n.run)
        key = (b"_http._tcp.web.test",)
        n.lookup(Path(key))
        await wait_for(lambda: (s := n.table.get(key)) is not None and s.state == "bound")
        version = n.table.get(key).version
        await wait_for(lambda: server.count("_http._tcp.web.test", "SRV") >= 5)
        st = n.table.get(key)
        assert (st.state, st.version, len(changes)) == ("bound", version, 1)
        assert sorted((a.host, a.port, a.weight) for a in st.addr) == [
            ("10.0.0.1", 8080, 10.0),
            ("10.0.0.2", 8081, 20.0),
            ("10.0.0.3", 8082, 30.0),
        ]
        nursery.cancel_scope.cancel()


# == a dead first nameserver =======================================================================


async def test_inet_dead_first_nameserver_leaves_time_for_the_second(tmp_path: FsPath) -> None:
    """``dns.nameservers: [dead, good]`` (or a resolv.conf whose first server is down): the whole
    query's time went to the first server, so the second was never asked and every /$/inet name
    failed with 'timed out' although a nameserver was answering. Each server now gets its share."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:  # bound, never answers
        silent.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{silent.getsockname()[1]}"
        async with running_dnsmasq(tmp_path, ["host-record=web.test,127.0.0.5"]) as dns:
            r = InetResolver([dead, dns.address])  # the default 2 s query timeout
            async with trio.open_nursery() as nursery:
                await nursery.start(r.run)
                r.resolve("web.test", 80)
                await wait_for(lambda: r.table.get("web.test").state != "pending")
                e = r.table.get("web.test")
                assert (e.state, e.ips, e.last_error) == ("bound", ("127.0.0.5",), None)
                nursery.cancel_scope.cancel()


# == many names ====================================================================================


async def test_inet_made_up_names_during_an_outage_do_not_evict_a_last_good_answer() -> None:
    """The nameserver is down and ``real.test`` is served from its last good answer (stale). Requests
    for made-up host names (a scanner's Host headers through ``/$/inet/<host>``) filled the table, and
    the least recently used host was evicted whatever it held: ``real.test`` lost its last good
    addresses and, with DNS still down, failed. As the other namers do, names without addresses
    evict each other first; a name with addresses goes only when every name has some."""
    down = {"now": False}

    def answer(name: str, qtype: str, n: int) -> Answer:
        if down["now"]:
            return "SERVFAIL"
        if name == "real.test":
            return [("real.test", 1, "A", "10.0.0.1")] if qtype == "A" else "NOERROR"
        return "NXDOMAIN"

    server = Responder(answer)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        r = InetResolver(
            [f"127.0.0.1:{server.port}"], timeout=2.0, max_hosts=3, ttl_floor=0.01, retry_base=0.01
        )
        evicted: list[str] = []
        await nursery.start(r.run)
        r.resolve("real.test", 80)
        await wait_for(lambda: r.table.get("real.test").state == "bound")
        down["now"] = True
        await wait_for(lambda: r.table.get("real.test").state == "stale")
        r.subscribe(lambda _r, host: evicted.append(host) if r.table.get(host) is None else None)
        for i in range(6):
            r.resolve(f"junk{i}.test", 80)
        assert len(r.table) == 3
        assert evicted == ["junk0.test", "junk1.test", "junk2.test", "junk3.test"]
        e = r.table.get("real.test")
        assert e is not None and (e.state, e.ips) == ("stale", ("10.0.0.1",))
        assert [a.host for a in r.resolve("real.test", 80).addresses] == ["10.0.0.1"]
        nursery.cancel_scope.cancel()


def test_host_table_evicts_a_name_with_addresses_only_when_all_have_some() -> None:
    t = HostTable(max_hosts=2)
    t.touch("a")
    t.apply_answer("a", ["10.0.0.1"], 30, now=0.0)
    t.touch("b")
    t.apply_answer("b", ["10.0.0.2"], 30, now=0.0)
    _, created, evicted = t.touch("c")  # every name has addresses: the least recently used goes
    assert created and [e.host for e in evicted] == ["a"]
    t.apply_negative("c", now=0.0)
    t.touch("b")  # (c is now the least recently used, but it has no addresses)
    _, _, evicted = t.touch("d")
    assert [e.host for e in evicted] == ["c"]
    t.apply_answer("d", ["10.0.0.4"], 30, now=0.0)  # d gains addresses: no bare names left
    _, _, evicted = t.touch("e")
    assert [e.host for e in evicted] == ["b"]
    t.apply_answer("e", ["10.0.0.5"], 30, now=0.0)
    t.touch("d")
    t.apply_negative("d", now=0.0)  # d loses its addresses (NXDOMAIN): it goes before e
    _, _, evicted = t.touch("f")
    assert [e.host for e in evicted] == ["d"] and t.evictions == 4


# == negative answers ==============================================================================


def soa(minimum: int, ttl: int = 3600) -> tuple[str, int, str, str]:
    return ("test", ttl, "SOA", f"ns.test. admin.test. 1 3600 600 86400 {minimum}")


async def test_inet_nxdomain_is_asked_again_at_its_negative_ttl_not_every_5_seconds() -> None:
    """A name that does not exist was asked for again every 5 s whatever its zone's negative TTL (the
    SOA's minimum, RFC 2308), and that for every such name in the table (up to 1000 made-up names
    from request headers, 400 queries a second): through a caching resolver the answer cannot change
    sooner, so those queries only loaded the nameserver. A negative answer now lives for its negative
    TTL clamped to [5 s, the 60 s ceiling]; without an SOA, 5 s as before."""

    def answer(name: str, qtype: str, n: int) -> Answer:
        if name == "gone.test":
            return ("NXDOMAIN", [soa(3600)])
        if name == "nodata.test":  # the name exists, with no address records
            return ("NOERROR", [soa(600, ttl=900)]) if qtype == "A" else ("NXDOMAIN", [soa(900)])
        if name == "nosoa.test":
            return "NXDOMAIN"
        if name == "short.test":
            return ("NXDOMAIN", [soa(0)])
        return "REFUSED"

    server = Responder(answer)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        r = InetResolver([f"127.0.0.1:{server.port}"], timeout=2.0, negative_ttl=5.0, ttl_ceiling=60.0)
        await nursery.start(r.run)
        hosts = ["gone.test", "nodata.test", "nosoa.test", "short.test"]
        for h in hosts:
            r.resolve(h, 80)
        await wait_for(lambda: all(r.table.get(h).state == "neg" for h in hosts))
        now = trio.current_time()
        # the time left before each is asked again: (50, 60] s, or at most 5 s
        left = {h: r.table.get(h).next_refresh - now for h in hosts}
        assert {h: 50 < t <= 60 for h, t in left.items()} == {
            "gone.test": True,
            "nodata.test": True,
            "nosoa.test": False,
            "short.test": False,
        }, left
        assert all(t <= 5 for h, t in left.items() if h in ("nosoa.test", "short.test")), left
        nursery.cancel_scope.cancel()


def test_host_table_negative_ttl_is_clamped() -> None:
    t = HostTable(negative_ttl=5.0, ttl_ceiling=60.0)
    for host, ttl, after in (("a", None, 5.0), ("b", 0.0, 5.0), ("c", 30.0, 30.0), ("d", 86400.0, 60.0)):
        t.touch(host)
        t.due(100.0)
        t.apply_negative(host, 100.0, ttl)
        assert t.get(host).next_refresh == 100.0 + after, host


async def test_inet_one_lost_udp_packet_is_asked_again_within_the_lookup() -> None:
    """UDP loses a packet now and then. The lookup sent its query once and waited its whole time (2 s)
    for the answer, so one lost packet failed the name (or marked it stale, and every binding was
    dropped). A lookup now asks again within its time, as the system resolver does."""
    lost: list[tuple[str, str]] = []

    def answer(name: str, qtype: str, n: int) -> Answer:
        if n == 0:
            lost.append((name, qtype))
            return "DROP"  # the first query of each (name, type) never gets an answer
        return [("web.test", 30, "A", "10.0.0.1")] if qtype == "A" else "NOERROR"

    server = Responder(answer)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        r = InetResolver([f"127.0.0.1:{server.port}"])  # the default 2 s lookup time
        await nursery.start(r.run)
        r.resolve("web.test", 80)
        await wait_for(lambda: r.table.get("web.test").state != "pending")
        e = r.table.get("web.test")
        assert (e.state, e.ips, e.version) == ("bound", ("10.0.0.1",), 1)
        assert sorted(lost) == [("web.test", "A"), ("web.test", "AAAA")]
        nursery.cancel_scope.cancel()


# == CNAME chains ==================================================================================


async def test_inet_cname_switch_is_seen_at_the_cnames_ttl_not_the_addresses() -> None:
    """Blue/green by CNAME: ``api.test CNAME green.test`` (TTL 1), ``green.test A`` (TTL 3600). The
    answer was cached for the A record's TTL alone, so moving the CNAME to ``blue.test`` was not seen
    until that ran out (the 60 s ceiling by default; never, here, with a higher ceiling). An answer
    reached through CNAMEs lives as long as the shortest TTL along the chain, as in any resolver."""
    target = {"now": "green.test"}
    ips = {"green.test": "10.0.0.1", "blue.test": "10.0.0.2"}

    def answer(name: str, qtype: str, n: int) -> Answer:
        if name != "api.test":
            return "NXDOMAIN"
        chain = [("api.test", 1, "CNAME", target["now"] + ".")]
        if qtype == "A":
            return [*chain, (target["now"], 3600, "A", ips[target["now"]])]
        return chain

    server = Responder(answer)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        r = InetResolver([f"127.0.0.1:{server.port}"], timeout=2.0, ttl_floor=0.01, ttl_ceiling=3600)
        await nursery.start(r.run)
        r.resolve("api.test", 80)
        await wait_for(lambda: r.table.get("api.test").state == "bound")
        assert r.table.get("api.test").ips == ("10.0.0.1",)
        target["now"] = "blue.test"
        await wait_for(lambda: r.table.get("api.test").ips == ("10.0.0.2",))
        nursery.cancel_scope.cancel()


async def test_dnssrv_target_behind_a_cname_is_refreshed_at_the_cnames_ttl() -> None:
    """With ``refreshFromTtl``, an SRV target that is a CNAME (``a.test CNAME green.test``, TTL 1;
    ``green.test A``, TTL 3600; the SRV record's TTL 3600 too) was refreshed at the A record's TTL, so
    a moved CNAME was not followed. The shortest TTL along the chain counts."""
    target = {"now": "green.test"}
    ips = {"green.test": "10.0.0.1", "blue.test": "10.0.0.2"}
    name = "_http._tcp.web.test"

    def answer(qname: str, qtype: str, n: int) -> Answer:
        if qname == name and qtype == "SRV":
            return [(name, 3600, "SRV", "0 10 8080 a.test.")]
        if qname == "a.test":
            chain = [("a.test", 1, "CNAME", target["now"] + ".")]
            return [*chain, (target["now"], 3600, "A", ips[target["now"]])] if qtype == "A" else chain
        return "NXDOMAIN"

    server = Responder(answer)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        n = DnsSrvNamer(
            [f"127.0.0.1:{server.port}"], refresh_interval=None, ttl_floor=0.01, ttl_ceiling=3600, timeout=2.0
        )
        await nursery.start(n.run)
        key = (name.encode(),)
        n.lookup(Path(key))
        await wait_for(lambda: (s := n.table.get(key)) is not None and s.state == "bound")
        assert [(a.host, a.port) for a in n.table.get(key).addr] == [("10.0.0.1", 8080)]
        target["now"] = "blue.test"
        await wait_for(lambda: [(a.host, a.port) for a in n.table.get(key).addr] == [("10.0.0.2", 8080)])
        assert n.state_json()["names"][name]["ttlSecs"] == 1
        nursery.cancel_scope.cancel()


async def test_inet_cname_loop_says_so_not_that_no_server_answered() -> None:
    """A zone with ``loop1.test CNAME loop2.test`` and ``loop2.test CNAME loop1.test`` served as is (an
    authoritative server answers with both). The nameserver did answer, but the name failed with 'no
    nameserver gave an answer (SERVFAIL, REFUSED or unreachable)', which sends the operator to the
    network. Now it says the CNAME chain loops (or is too long)."""

    def answer(name: str, qtype: str, n: int) -> Answer:
        if name in ("loop1.test", "loop2.test"):
            return [("loop1.test", 30, "CNAME", "loop2.test."), ("loop2.test", 30, "CNAME", "loop1.test.")]
        return "NXDOMAIN"

    server = Responder(answer)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        r = InetResolver([f"127.0.0.1:{server.port}"], timeout=2.0)
        await nursery.start(r.run)
        r.resolve("loop1.test", 80)
        await wait_for(lambda: r.table.get("loop1.test").state != "pending")
        e = r.table.get("loop1.test")
        why = "the answer's CNAME chain loops or is longer than 16 names; fix the name's CNAME records"
        assert (e.state, e.last_error) == (
            "failed",
            f"resolving 'loop1.test' via 127.0.0.1:{server.port} failed: A: {why}; AAAA: {why}",
        )
        nursery.cancel_scope.cancel()


# == forged replies ================================================================================


async def test_inet_replies_with_a_wrong_id_or_from_another_port_are_ignored() -> None:
    """Before each real reply, the 'server' sends a reply with the wrong transaction id and one with
    the right id from another port (what an off-path spoofer tries): both are ignored, and only the
    real reply's address is taken."""
    import dns.message
    import dns.rrset

    def reply(q: dns.message.Message, ip: str | None, qid: int) -> bytes:
        r = dns.message.make_response(q)
        r.id = qid
        if ip is not None and q.question[0].rdtype == 1:  # A
            r.answer.append(dns.rrset.from_text(q.question[0].name, 30, "IN", "A", ip))
        return r.to_wire()

    async def serve(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        other = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        await sock.bind(("127.0.0.1", 0))
        await other.bind(("127.0.0.1", 0))
        task_status.started(sock.getsockname()[1])
        with sock, other:
            while True:
                data, peer = await sock.recvfrom(4096)
                q = dns.message.from_wire(data)
                await sock.sendto(reply(q, "10.6.6.6", (q.id + 1) % 65536), peer)
                await other.sendto(reply(q, "10.6.6.7", q.id), peer)
                await trio.sleep(0.05)  # (the forged ones arrive first)
                await sock.sendto(reply(q, "10.0.0.1", q.id), peer)

    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve)
        r = InetResolver([f"127.0.0.1:{port}"], timeout=5.0)
        await nursery.start(r.run)
        r.resolve("web.test", 80)
        await wait_for(lambda: r.table.get("web.test").state != "pending")
        e = r.table.get("web.test")
        assert (e.state, e.ips) == ("bound", ("10.0.0.1",))
        nursery.cancel_scope.cancel()


# == stale, as clients show it =====================================================================


async def test_inet_host_served_from_its_last_good_answer_is_stale_in_client_state(tmp_path: FsPath) -> None:
    """DNS stops answering; ``web.test`` keeps routing on its last good address and the resolver's
    state says ``stale``, but the client of ``/$/inet/web.test/<port>`` showed ``bound`` and
    ``stale: false``: the address set handed to clients carried no staleness, as the namers' do. Now
    client_state shows it stale, with its age, and bound again once DNS answers."""
    async with running_upstream() as up, running_dnsmasq(tmp_path, ["host-record=web.test,127.0.0.1"]) as dns:
        cfg = f"""
admin: {{ip: 127.0.0.1, port: 0}}
dns: {{nameservers: ["{dns.address}"]}}
routers:
- protocol: http
  label: out
  dtab: /svc/web => /$/inet/web.test/{up.port};
  servers: [{{ip: 127.0.0.1, port: 0}}]
"""
        async with running_daemon(cfg) as d:
            port = d.port("out")
            client_id = f"/$/inet/web.test/{up.port}"

            async def client() -> dict[str, Any]:
                assert (await curl(f"http://127.0.0.1:{port}/", "-H", "Host: web", timeout=10)).status == 200
                body = (await curl(f"{d.admin}/client_state.json")).json()
                assert isinstance(body, dict)
                entry = body[client_id]
                assert isinstance(entry, dict)
                return entry

            assert (await client())["stale"] is False
            dns.stop()
            with trio.fail_after(20):
                while not (entry := await client())["stale"]:
                    await trio.sleep(0.1)
            assert entry["state"] == "bound" and entry["staleAgeSecs"] is not None
            dns.start()
            await dns.ready()
            with trio.fail_after(20):
                while (await client())["stale"]:
                    await trio.sleep(0.1)


async def test_inet_client_follows_a_moved_host_without_waiting_for_a_request(tmp_path: FsPath) -> None:
    """``web.test`` moves from 127.0.0.4 to 127.0.0.5. The client of ``/$/inet/web.test/<port>`` kept
    the old endpoint (and its pooled connections to the old address) until its next request, while
    a namer's clients follow at once. Now it follows at once too: client_state shows the new address
    and the old endpoint, with its pool, is gone before any request is sent."""
    async with running_upstream(host="127.0.0.4") as a:  # noqa: SIM117 (b needs a's port)
        async with (
            running_upstream(host="127.0.0.5", port=a.port),
            running_dnsmasq(tmp_path, ["host-record=web.test,127.0.0.4"]) as dns,
        ):
            cfg = f"""
admin: {{ip: 127.0.0.1, port: 0}}
dns: {{nameservers: ["{dns.address}"]}}
routers:
- protocol: http
  label: out
  dtab: /svc/web => /$/inet/web.test/{a.port};
  servers: [{{ip: 127.0.0.1, port: 0}}]
"""
            async with running_daemon(cfg) as d:
                port = d.port("out")
                assert (await curl(f"http://127.0.0.1:{port}/", "-H", "Host: web")).status == 200
                client_id = f"/$/inet/web.test/{a.port}"

                async def addresses() -> list[str]:
                    body = (await curl(f"{d.admin}/client_state.json")).json()
                    assert isinstance(body, dict)
                    return list(body[client_id]["addresses"])

                assert await addresses() == [f"127.0.0.4:{a.port}"]
                await dns.set_records(["host-record=web.test,127.0.0.5"])
                with trio.fail_after(20):
                    while await addresses() != [f"127.0.0.5:{a.port}"]:
                        await trio.sleep(0.1)
                assert len(a.requests) == 1


def test_inet_current_names_only_the_clients_of_that_host_and_touches_nothing() -> None:
    r = InetResolver(max_hosts=10)
    r.resolve("web.test", 80)
    r.table.apply_answer("web.test", ["10.0.0.1"], 30, now=0.0)
    r.resolve("other.test", 80)
    order = [e.host for e in r.table.entries()]
    want = AddrBound((Address("10.0.0.1", 8080),), {})
    assert r.current("/$/inet/web.test/8080", "web.test") == want
    assert r.current("/$/inet/WEB.test/8080", "web.test") == want
    assert r.current("/$/fixedinet/web.test/8080", "web.test") == want
    assert r.current("/$/io.buoyant.rinet/8080/web.test", "web.test") == want
    assert r.current("/$/inet/web.test/8080", "other.test") is None  # another host
    assert r.current("/$/inet/other.test/8080", "other.test") is None  # no answer yet
    assert r.current("/%/io.l5d.port/9000/$/inet/web.test/8080", "web.test") is None  # transformed
    assert r.current("/#/io.l5d.fs/web.test", "web.test") is None
    assert r.current("/$/inet/gone.test/8080", "gone.test") is None  # not followed
    assert [e.host for e in r.table.entries()] == order and len(r.table) == 2


# == the hosts file ================================================================================


async def test_inet_hosts_file_is_parsed_off_the_event_loop(tmp_path: FsPath, monkeypatch: Any) -> None:
    """An ad-blocking hosts file (150,000 names, 6 MB) took ~0.8 s to parse, in the trio thread, at the
    first lookup and again each time the file changed: every connection of the daemon stalled
    meanwhile. It is parsed in a worker thread now (and still consulted before DNS)."""
    import threading

    import namers.inet

    hosts = tmp_path / "hosts"
    hosts.write_text("10.1.2.3 db-primary\n" + "".join(f"0.0.0.0 ads{i}.example\n" for i in range(1000)))
    parsed_in: list[threading.Thread] = []
    parse = namers.inet._parse_hosts

    def recording_parse(text: str) -> dict[str, list[str]]:
        parsed_in.append(threading.current_thread())
        return parse(text)

    monkeypatch.setattr(namers.inet, "_parse_hosts", recording_parse)
    server = Responder(lambda name, qtype, n: "NXDOMAIN")
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        r = InetResolver([f"127.0.0.1:{server.port}"], timeout=2.0, hosts_file=str(hosts))
        await nursery.start(r.run)
        r.resolve("db-primary", 5432)
        r.resolve("ads7.example", 80)
        await wait_for(lambda: all(r.table.get(h).state != "pending" for h in ("db-primary", "ads7.example")))
        assert (r.table.get("db-primary").ips, r.table.get("ads7.example").ips) == (
            ("10.1.2.3",),
            ("0.0.0.0",),
        )
        assert parsed_in and threading.main_thread() not in parsed_in
        assert r.hosts is not None and r.hosts.reads == 1  # (two lookups, one read)
        assert server.answered == {}
        nursery.cancel_scope.cancel()
