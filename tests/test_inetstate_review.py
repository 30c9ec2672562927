"""namerState.dir covers the /$/inet resolver: a restart while DNS is down keeps routing DNS names.

The namers' last good answers survive a restart; the system ``/$/inet/<host>/<port>`` names did not,
so a daemon restarted while its nameservers were down failed every route whose host is a DNS name.
Now the resolver's last good answers are saved beside the namers' (``DIR/@inet.json``) and restored,
stale and aged from when DNS last gave them, until a fresh DNS answer (NXDOMAIN included) replaces
them. Real dnsmasq on loopback, the real daemon, real curl and ``hostproxy wtf``; injected clocks for
the file's contents. No timings.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path as FsPath
from typing import Any

import trio
from structlog.testing import capture_logs

from hostproxy.config import load_config
from hostproxy.daemon import Daemon
from hostproxy.namerstate import NamerStateStore
from namers._dtab import AddrBound, AddrNeg
from namers.base import SAVED_STATE_MAX_AGE
from namers.inet import InetResolver
from tests.daemonutil import curl, running_daemon
from tests.dnsserver import running_dnsmasq
from tests.upstreams import running_upstream

STATE_FILE = "@inet.json"


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def config(dns_address: str, state_dir: FsPath, port: int) -> str:
    return f"""
admin: {{ip: 127.0.0.1, port: 0}}
namerState: {{dir: {state_dir}}}
dns: {{nameservers: ["{dns_address}"]}}
routers:
- protocol: http
  label: out
  dtab: /svc/web => /$/inet/web.test/{port};
  bindingTimeoutMs: 2000
  servers: [{{ip: 127.0.0.1, port: 0}}]
"""


async def admin_json(admin: str, path: str) -> dict[str, Any]:
    doc = (await curl(f"{admin}{path}")).json()
    assert isinstance(doc, dict)
    return doc


async def wtf_json(admin: str) -> dict[str, Any]:
    proc = await trio.run_process(
        [sys.executable, "-m", "hostproxy", "wtf", "--admin", admin, "--json"],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    doc = json.loads(proc.stdout)
    assert isinstance(doc, dict)
    return doc


def load_failures(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == "namer_state.load_failed"]


def resolver_with(
    clock: Clock, nameservers: tuple[str, ...] = ("127.0.0.1:5353",), **kw: Any
) -> InetResolver:
    return InetResolver(nameservers, clock=clock, hosts_file=None, **kw)


def answer(r: InetResolver, host: str, *ips: str) -> None:
    """``host`` asked for and answered by DNS with ``ips``."""
    r.resolve(host, 80)
    r.table.apply_answer(host, ips, 30.0, 0.0)


# == the daemon: restart while DNS is down =========================================================


async def test_inet_restart_with_dns_down_routes_to_saved_addresses(tmp_path: FsPath) -> None:
    """The first daemon resolves web.test and saves it at shutdown; DNS then stops and the daemon is
    restarted: the request still reaches the upstream, and the admin API, client_state and wtf all
    say the host is served stale, with its age."""
    state = tmp_path / "state"
    async with running_upstream() as up:
        async with running_dnsmasq(tmp_path, ["host-record=web.test,127.0.0.1"]) as dns:
            async with running_daemon(config(dns.address, state, up.port)) as d:
                r = await curl(f"http://127.0.0.1:{d.port('out')}/", "-H", "Host: web")
                assert r.status == 200
                # Saved while running too (a crash loses no more than the last few seconds): the
                # resolver's change reaches the store, which writes within its interval.
                with trio.fail_after(20):
                    while not (state / STATE_FILE).exists():
                        await trio.sleep(0.1)
                assert d.daemon._namers.state_store is not None
                assert d.daemon._namers.state_store.saves >= 1
            saved = json.loads((state / STATE_FILE).read_text())
            assert saved["kind"] == "inet" and saved["version"] == 1
            assert saved["source"] == {"nameservers": dns.address}
            assert saved["names"]["web.test"]["ips"] == ["127.0.0.1"]
            address = dns.address
        # DNS is down now (dnsmasq stopped; nothing answers on its port).
        async with running_daemon(config(address, state, up.port)) as d:
            assert d.daemon._namers.state_store is not None
            assert d.daemon._namers.state_store.restored == {"/$/inet": 1}
            r = await curl(f"http://127.0.0.1:{d.port('out')}/", "-H", "Host: web")
            assert r.status == 200, r
            entry = (await admin_json(d.admin, "/admin/namer_state.json"))["/$/inet"]["names"]["web.test"]
            assert entry["state"] == "stale"
            assert entry["addrs"] == ["127.0.0.1"]
            assert entry["staleAgeSecs"] is not None and entry["lastConfirmed"] is not None
            client = (await admin_json(d.admin, "/client_state.json"))[f"/$/inet/web.test/{up.port}"]
            assert client["stale"] is True and client["staleAgeSecs"] is not None
            found = {(f["service"], f["cause"]): f for f in (await wtf_json(d.admin))["findings"]}
            f = found[("/svc/web", "naming/stale")]
            assert f["client"] == f"/$/inet/web.test/{up.port}"
            assert "stale for" in f["verdict"] and "web.test" in f["verdict"]
        assert len(up.requests) == 2
        # The restarted daemon, DNS still down, saved the restored answer again (not forgotten).
        assert json.loads((state / STATE_FILE).read_text())["names"]["web.test"]["ips"] == ["127.0.0.1"]


async def test_inet_name_removed_while_the_daemon_was_down_is_not_kept_alive(tmp_path: FsPath) -> None:
    """Restart with DNS up and web.test gone (NXDOMAIN): the fresh negative answer replaces the
    restored address, no request goes there, and the next save drops the name."""
    state = tmp_path / "state"
    async with (
        running_upstream() as up,
        running_dnsmasq(tmp_path, ["host-record=web.test,127.0.0.1"]) as dns,
    ):
        async with running_daemon(config(dns.address, state, up.port)) as d:
            assert (await curl(f"http://127.0.0.1:{d.port('out')}/", "-H", "Host: web")).status == 200
        assert "web.test" in json.loads((state / STATE_FILE).read_text())["names"]
        await dns.set_records([])
        async with running_daemon(config(dns.address, state, up.port)) as d:
            with trio.fail_after(15):
                while True:
                    doc = await admin_json(d.admin, "/admin/namer_state.json")
                    if doc["/$/inet"]["names"]["web.test"]["state"] == "neg":
                        break
                    await trio.sleep(0.05)
            r = await curl(f"http://127.0.0.1:{d.port('out')}/", "-H", "Host: web")
            assert r.status != 200
        assert len(up.requests) == 1
        assert json.loads((state / STATE_FILE).read_text())["names"] == {}


# == what is saved ===================================================================================


async def test_inet_hosts_file_names_and_negative_answers_are_not_saved(tmp_path: FsPath) -> None:
    """Only DNS answers are saved: a hosts-file name is answered from the file after a restart anyway,
    a negative answer has nothing to serve, and a literal IP never needs a lookup."""
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.7 static.test\n")
    async with running_dnsmasq(tmp_path, ["host-record=web.test,127.0.0.3"]) as dns:
        r = InetResolver([dns.address], hosts_file=str(hosts))
        async with trio.open_nursery() as nursery:
            await nursery.start(r.run)
            for host in ("web.test", "static.test", "gone.test", "127.0.0.1"):
                r.resolve(host, 80)
            with trio.fail_after(15):
                while any(e.state == "pending" for e in r.table.entries()):
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    assert r.table.get("static.test").state == "bound"  # type: ignore[union-attr]
    assert r.table.get("gone.test").state == "neg"  # type: ignore[union-attr]
    saved = r.export_state()
    assert list(saved["names"]) == ["web.test"]
    assert saved["names"]["web.test"]["ips"] == ["127.0.0.3"]
    assert saved["prefix"] == "/$/inet"


def test_inet_restored_answer_is_stale_with_its_real_age_until_dns_answers(tmp_path: FsPath) -> None:
    clock = Clock(1_800_000_000.0)
    first = resolver_with(clock)
    answer(first, "web.test", "10.0.0.1", "fd00::1")
    store = NamerStateStore(tmp_path, [first])
    assert store.save(first)
    assert (tmp_path / STATE_FILE).exists()

    clock.t += 3600
    again = resolver_with(clock)
    assert NamerStateStore(tmp_path, [again]).load_all() == {"/$/inet": 1}
    addr = again.resolve("web.test", 8080)
    assert isinstance(addr, AddrBound)
    assert [a.host for a in addr.addresses] == ["10.0.0.1", "fd00::1"]
    assert addr.meta["staleSince"] == clock.t - 3600
    doc = again.state_json()["names"]["web.test"]
    assert doc["state"] == "stale" and doc["staleAgeSecs"] == 3600.0
    assert doc["lastError"] == "restored from saved state; not yet confirmed"
    # due at once: the runner asks DNS for it at start
    assert again.table.due(0.0) == ["web.test"]
    # DNS failing keeps it, still aged from the saved answer
    again.table.apply_error("web.test", "timed out", 1.0)
    assert again.state_json()["names"]["web.test"]["staleAgeSecs"] == 3600.0
    # a fresh answer replaces it
    again.table.apply_answer("web.test", ("10.0.0.2",), 30.0, 2.0)
    addr = again.resolve("web.test", 8080)
    assert isinstance(addr, AddrBound) and [a.host for a in addr.addresses] == ["10.0.0.2"]
    assert "staleSince" not in addr.meta
    assert again.export_state()["names"]["web.test"] == {"ips": ["10.0.0.2"], "lastUpdate": clock.t}


def test_inet_restored_name_answered_nxdomain_is_negative_and_dropped(tmp_path: FsPath) -> None:
    clock = Clock(1_800_000_000.0)
    first = resolver_with(clock)
    answer(first, "web.test", "10.0.0.1")
    NamerStateStore(tmp_path, [first]).save(first)
    again = resolver_with(clock)
    NamerStateStore(tmp_path, [again]).load_all()
    again.table.apply_negative("web.test", 1.0)
    assert isinstance(again.resolve("web.test", 80), AddrNeg)
    assert again.export_state()["names"] == {}


def test_inet_restore_is_bounded_by_the_host_table(tmp_path: FsPath) -> None:
    """A file with more names than the table holds restores the most recently used ones only."""
    clock = Clock(1_800_000_000.0)
    big = resolver_with(clock, max_hosts=10)
    for i in range(10):
        answer(big, f"h{i}.test", f"10.0.0.{i + 1}")
    NamerStateStore(tmp_path, [big]).save(big)
    small = resolver_with(clock, max_hosts=4)
    assert NamerStateStore(tmp_path, [small]).load_all() == {"/$/inet": 4}
    assert [e.host for e in small.table.entries()] == ["h6.test", "h7.test", "h8.test", "h9.test"]
    assert small.table.evictions == 0


def test_inet_unused_restored_answer_expires_from_saved_state(tmp_path: FsPath) -> None:
    clock = Clock(1_800_000_000.0)
    first = resolver_with(clock)
    answer(first, "web.test", "10.0.0.1")
    answer(first, "api.test", "10.0.0.2")
    NamerStateStore(tmp_path, [first]).save(first)
    clock.t += SAVED_STATE_MAX_AGE + 1
    again = resolver_with(clock)
    NamerStateStore(tmp_path, [again]).load_all()
    again.resolve("api.test", 80)  # asked for since the restart: kept however old
    assert list(again.export_state()["names"]) == ["api.test"]


# == the file is input =================================================================================


def test_inet_state_saved_for_other_nameservers_is_not_restored(tmp_path: FsPath) -> None:
    """Other nameservers may give other answers for the same names (another DNS view, split
    horizon): their saved answers are not served. The order of the list does not matter."""
    clock = Clock(1_800_000_000.0)
    first = resolver_with(clock, ("127.0.0.1:5353", "127.0.0.2"))
    answer(first, "web.test", "10.0.0.1")
    NamerStateStore(tmp_path, [first]).save(first)
    other = resolver_with(clock, ("127.0.0.3",))
    with capture_logs() as logs:
        assert NamerStateStore(tmp_path, [other]).load_all() == {}
    assert len(other.table) == 0
    [failed] = load_failures(logs)
    assert failed["path"] == str(tmp_path / STATE_FILE)
    assert failed["error"] == (
        "saved for inet with nameservers=127.0.0.1:5353 127.0.0.2:53, not nameservers=127.0.0.3:53: "
        "its names mean other services here"
    )
    assert "replaced at the next save" in failed["hint"]
    same = resolver_with(clock, ("127.0.0.2:53", "127.0.0.1:5353"))
    assert NamerStateStore(tmp_path, [same]).load_all() == {"/$/inet": 1}


def test_inet_state_of_the_system_resolver_depends_on_its_search_domains(tmp_path: FsPath) -> None:
    """With the system resolver a short name means what resolv.conf's search list makes of it: state
    saved under another search list is not restored; another nameserver address alone (DHCP) is the
    same view."""
    clock = Clock(1_800_000_000.0)
    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 10.9.9.9\nsearch prod.example example\n")
    state = tmp_path / "state"
    first = InetResolver(clock=clock, hosts_file=None, resolv_conf=str(conf))
    answer(first, "web", "10.0.0.1")
    NamerStateStore(state, [first]).save(first)
    assert json.loads((state / STATE_FILE).read_text())["source"] == {
        "nameservers": "system",
        "search": "prod.example example",
    }
    conf.write_text("nameserver 10.9.9.8\nsearch prod.example example\n")
    same = InetResolver(clock=clock, hosts_file=None, resolv_conf=str(conf))
    assert NamerStateStore(state, [same]).load_all() == {"/$/inet": 1}
    conf.write_text("nameserver 10.9.9.8\nsearch staging.example example\n")
    other = InetResolver(clock=clock, hosts_file=None, resolv_conf=str(conf))
    with capture_logs() as logs:
        assert NamerStateStore(state, [other]).load_all() == {}
    [failed] = load_failures(logs)
    assert "search=prod.example example" in failed["error"]
    assert "search=staging.example example" in failed["error"]


def test_inet_corrupt_state_file_is_reported_as_the_namers_are(tmp_path: FsPath) -> None:
    path = tmp_path / STATE_FILE
    r = resolver_with(Clock(1_800_000_000.0))
    for content, error in (
        (b"", "the file is empty (a write cut short, or made by hand)"),
        (b"\x00\xff binary", "not UTF-8 text at byte 1 (a corrupt or binary file)"),
        (b'{"names": {', "not JSON (cut short?): "),
        (
            b'{"version": 2, "kind": "inet", "prefix": "/$/inet", "names": {}}',
            "saved in format version 2; this hostproxy reads version 1 (a newer hostproxy wrote it)",
        ),
        (
            b'{"version": 1, "kind": "io.l5d.fs", "prefix": "/#/io.l5d.fs", "names": {}}',
            "saved namer state is for 'io.l5d.fs' at '/#/io.l5d.fs', not 'inet' at '/$/inet'; "
            "remove the file or fix the prefix",
        ),
    ):
        path.write_bytes(content)
        with capture_logs() as logs:
            assert NamerStateStore(tmp_path, [r]).load_all() == {}
        [failed] = load_failures(logs)
        assert failed["error"].startswith(error), (content, failed)
        assert failed["path"] == str(path)
    assert len(r.table) == 0


def test_inet_bad_saved_names_are_skipped_with_a_warning_naming_them(tmp_path: FsPath) -> None:
    (tmp_path / STATE_FILE).write_text(
        json.dumps(
            {
                "version": 1,
                "kind": "inet",
                "prefix": "/$/inet",
                "names": {
                    "web.test": {"ips": ["10.0.0.1"], "lastUpdate": 1_799_999_000.0},
                    "bad.test": {"ips": ["10.0.0.300"]},
                    "none.test": {"ips": []},
                    "a..b": {"ips": ["10.0.0.2"]},
                    "10.0.0.9": {"ips": ["10.0.0.9"]},
                },
            }
        )
    )
    r = resolver_with(Clock(1_800_000_000.0))
    with capture_logs() as logs:
        assert NamerStateStore(tmp_path, [r]).load_all() == {"/$/inet": 1}
    warned = {e["name"]: e["error"] for e in logs if e["event"] == "namer.state.restore.failed"}
    assert set(warned) == {"bad.test", "none.test", "a..b", "10.0.0.9"}
    assert warned["bad.test"] == "'10.0.0.300' is not an IP address"
    assert warned["a..b"] == "'a..b' is not a host name DNS could answer for"
    assert warned["10.0.0.9"] == "'10.0.0.9' is an IP address, never looked up"
    assert [e.host for e in r.table.entries()] == ["web.test"]


# == the daemon's store =================================================================================


async def test_inet_answers_are_saved_by_the_daemons_store_and_loaded_on_reload(tmp_path: FsPath) -> None:
    """The resolver is one more member of the namers' store: saved after it reports a change (at most
    every interval), at shutdown, and a reload that rebuilds the resolver loads what the running one
    knew (in a worker thread, as for the namers)."""
    state = tmp_path / "state"
    cfg = tmp_path / "hostproxy.yaml"
    cfg.write_text(config("127.0.0.1:5353", state, 8080))
    daemon = Daemon(load_config(cfg.read_text(), source=str(cfg)), config_path=str(cfg))
    store = daemon._namers.state_store
    assert store is not None and daemon.resolver in store.namers
    assert store.path_for(daemon.resolver) == state / STATE_FILE
    answer(daemon.resolver, "web.test", "10.0.0.1")
    async with trio.open_nursery() as nursery:
        await nursery.start(daemon.run)
        disco = tmp_path / "disco"
        disco.mkdir()
        cfg.write_text(
            config("127.0.0.1:5353", state, 8080) + f"namers:\n- kind: io.l5d.fs\n  rootDir: {disco}\n"
        )
        ok, message = await daemon.reload()
        assert ok, message
        entry = daemon.resolver.table.get("web.test")
        assert entry is not None and entry.state == "stale"
        assert [a.host for a in daemon.resolver.resolve("web.test", 80).addresses] == ["10.0.0.1"]
        daemon.request_shutdown()
    assert json.loads((state / STATE_FILE).read_text())["names"]["web.test"]["ips"] == ["10.0.0.1"]
