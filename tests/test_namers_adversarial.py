"""The namers against hostile or broken inputs: files as editors and scripts really write them, DNS
answers that are legal but useless, backends that fail in part.

Real components throughout: files in a temporary directory watched by the running fs namer, dnsmasq
(or a scripted DNS responder where dnsmasq cannot fail one record type) on loopback, the in-repo fake
Kubernetes API server. Waits are bounded polls of observable state, never timing assertions.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path as FsPath
from typing import Any

import pytest
import trio
from test_namer_k8s_dns_failures import ScriptedDns

from dtab import Dtab
from dtab.bind import bind
from namers._dtab import PENDING, AddrNeg, Path
from namers.dnssrv import DnsSrvNamer, SrvFailure
from namers.fs import FsNamer
from namers.fsformat import FsFormatError, parse_addresses
from namers.inet import InetResolver
from tests.dnsserver import running_dnsmasq


async def wait_for(pred: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Poll ``pred`` until truthy; fail after ``timeout`` seconds (a bound, not a measurement)."""
    with trio.fail_after(timeout):
        while not (v := pred()):
            await trio.sleep(0.005)
        return v


def hostports(addrs: Any) -> list[tuple[str, int]]:
    return sorted((a.host, a.port) for a in addrs)


# == io.l5d.fs =====================================================================================


async def test_fs_file_saved_with_a_byte_order_mark_binds_its_first_address(tmp_path: FsPath) -> None:
    """Windows Notepad (and PowerShell's Out-File) save UTF-8 with a byte order mark. It is not part
    of the first host: that address was published as '\\ufeff10.0.0.1', a host no resolver knows, so
    the first backend silently got no traffic."""
    (tmp_path / "users").write_bytes(b"\xef\xbb\xbf10.0.0.1 8080\r\n10.0.0.2 8080\r\n")
    n = FsNamer(tmp_path, poll_interval=0.02)
    async with trio.open_nursery() as nursery:
        await nursery.start(n.run)
        n.lookup(Path.read("/users"))
        st = await wait_for(
            lambda: (s := n.table.get((b"users",))) is not None and s.state != "pending" and s
        )
        assert st.state == "bound", st
        assert hostports(st.addr) == [("10.0.0.1", 8080), ("10.0.0.2", 8080)]
        nursery.cancel_scope.cancel()


async def test_fs_ipv6_literal_in_brackets_is_the_address_inside(tmp_path: FsPath) -> None:
    """'[fd00::7] 8080' is how people write an IPv6 endpoint, and Linkerd (Java's InetSocketAddress)
    took it. The host was published with its brackets, which no connect or IP filter understands."""
    (tmp_path / "users").write_text("[fd00::7] 8080\n[::1] 8081 * 2\n::1 8081\n")
    n = FsNamer(tmp_path, poll_interval=0.02)
    async with trio.open_nursery() as nursery:
        await nursery.start(n.run)
        n.lookup(Path.read("/users"))
        st = await wait_for(
            lambda: (s := n.table.get((b"users",))) is not None and s.state != "pending" and s
        )
        assert st.state == "bound", st
        # the bracketed and the bare form of ::1 are one address (the first line wins)
        assert [(a.host, a.port, a.weight) for a in st.addr] == [("fd00::7", 8080, 1.0), ("::1", 8081, 2.0)]
        nursery.cancel_scope.cancel()


async def test_fs_writer_caught_mid_line_does_not_publish_a_truncated_port(tmp_path: FsPath) -> None:
    """A writer that truncates and rewrites in place through a buffered stream (awk, sed, a shell
    loop: 4 KiB per write) can be read between two writes, ending mid-line. '10.0.0.2 8' of
    '10.0.0.2 8080' parses, and was published: traffic went to port 8, an address the file never
    held. A file changed a moment ago whose last line has no line end is now read again until the
    writer ends the line."""
    path = tmp_path / "users"
    path.write_text("10.0.0.1 80\n10.0.0.2 8080\n")
    n = FsNamer(tmp_path, poll_interval=0.02, settle=1000.0)
    key = (b"users",)
    async with trio.open_nursery() as nursery:
        await nursery.start(n.run)
        n.lookup(Path.read("/users"))
        await wait_for(lambda: (s := n.table.get(key)) is not None and s.state == "bound")
        with open(path, "r+b", buffering=0) as f:
            f.truncate(0)
            f.write(b"10.0.0.1 80\n10.0.0.2 8")
            reads = n.core.reads
            await wait_for(lambda: n.core.reads >= reads + 2)  # read (at least) twice as it stands
            st = n.table.get(key)
            assert (st.state, st.version) == ("bound", 1), st
            assert hostports(st.addr) == [("10.0.0.1", 80), ("10.0.0.2", 8080)]
            f.write(b"081\n")  # the writer finishes (with another port, so the change shows)
        await wait_for(lambda: n.table.get(key).version == 2)
        assert hostports(n.table.get(key).addr) == [("10.0.0.1", 80), ("10.0.0.2", 8081)]
        nursery.cancel_scope.cancel()


async def test_fs_file_unlinked_and_recreated_is_not_believed_gone_at_once(tmp_path: FsPath) -> None:
    """git checkout (and rm-then-cp scripts) replace a file by unlinking it and creating a new one.
    A poll in between saw the file missing and made the name negative at once: requests for it
    failed with 'no route' for a moment on every such update. A file with addresses that disappears
    is now believed gone only if it is still gone after the settle delay."""
    path = tmp_path / "users"
    path.write_text("10.0.0.1 80\n")
    n = FsNamer(tmp_path, poll_interval=0.02, settle=1000.0)
    key = (b"users",)
    async with trio.open_nursery() as nursery:
        await nursery.start(n.run)
        n.lookup(Path.read("/users"))
        await wait_for(lambda: (s := n.table.get(key)) is not None and s.state == "bound")
        path.unlink()
        polls = n.polls
        await wait_for(lambda: n.polls >= polls + 3)  # seen missing (at least) twice
        st = n.table.get(key)
        assert (st.state, st.version) == ("bound", 1), st
        path.write_text("10.0.0.2 80\n")  # the writer creates it again
        await wait_for(lambda: n.table.get(key).version == 2)
        assert hostports(n.table.get(key).addr) == [("10.0.0.2", 80)]
        assert n.table.get(key).state == "bound"

        # a file really removed is believed gone once the settle delay has passed
        n.core.settle = 0.05
        path.unlink()
        await wait_for(lambda: n.table.get(key).state == "neg")
        nursery.cancel_scope.cancel()


async def test_fs_root_deleted_and_recreated_empty_keeps_names_until_files_return(tmp_path: FsPath) -> None:
    """'rm -rf disco && mkdir disco && cp new/* disco/': while the root is gone every name keeps its
    addresses (stale), but as soon as the empty directory was back each name was 'missing' and went
    negative before the files were copied in. A file with addresses missing from a re-created root
    now waits for the settle delay like any file that disappears."""
    import shutil

    root = tmp_path / "disco"
    root.mkdir()
    (root / "users").write_text("10.0.0.1 80\n")
    n = FsNamer(root, poll_interval=0.02, settle=1000.0)
    key = (b"users",)
    async with trio.open_nursery() as nursery:
        await nursery.start(n.run)
        n.lookup(Path.read("/users"))
        await wait_for(lambda: (s := n.table.get(key)) is not None and s.state == "bound")
        shutil.rmtree(root)
        await wait_for(lambda: n.table.get(key).state == "stale")
        root.mkdir()
        await wait_for(lambda: n.core.root_error is None)
        polls = n.polls
        await wait_for(lambda: n.polls >= polls + 3)
        st = n.table.get(key)
        assert st.state == "stale" and hostports(st.addr) == [("10.0.0.1", 80)], st
        (root / "users").write_text("10.0.0.2 80\n")
        await wait_for(lambda: n.table.get(key).state == "bound")
        assert hostports(n.table.get(key).addr) == [("10.0.0.2", 80)]
        nursery.cancel_scope.cancel()


async def test_fs_name_too_long_for_a_file_is_negative_so_the_alternate_binds(tmp_path: FsPath) -> None:
    """Names come from requests (/svc/<Host>). A label longer than a file name may be (255 bytes)
    failed its stat with ENAMETOOLONG and the name was 'failed' ('cannot stat (File name too long);
    reading it again'): the request failed instead of falling back to the dtab's alternate. No such
    file can exist: the name is negative, like any other missing file."""
    long_name = "x" * 300
    n = FsNamer(tmp_path, poll_interval=0.02)
    async with trio.open_nursery() as nursery:
        await nursery.start(n.run)
        n.lookup(Path.read("/" + long_name))
        key = (long_name.encode(),)
        await wait_for(lambda: (s := n.table.get(key)) is not None and s.state != "pending")
        assert n.table.get(key).state == "neg", n.table.get(key)
        dtab = Dtab.read("/svc => /#/io.l5d.fs | /$/inet/127.0.0.1/8080")
        tree = bind(
            dtab, Path.read("/svc/" + long_name), [(n.bound_prefix, n.lookup)], system=InetResolver().system
        ).tree
        assert tree.value.id == Path.read("/$/inet/127.0.0.1/8080"), tree
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("host", ["[web.example]", "[fd00::7", "fd00::7]", "[]"])
def test_fs_brackets_around_anything_but_an_ipv6_literal_name_the_line(host: str) -> None:
    with pytest.raises(FsFormatError) as ei:
        parse_addresses(f"10.0.0.1 80\n{host} 8080\n", "disco/users")
    assert ei.value.line == 2
    assert ei.value.problem == f"host {host!r} is not an IPv6 address in brackets"
    assert str(ei.value).startswith(f"disco/users:2: host {host!r} is not an IPv6 address in brackets; ")


# == io.l5d.dnssrv =================================================================================


async def test_dnssrv_record_with_port_0_is_skipped_not_published(tmp_path: FsPath) -> None:
    """An SRV record with port 0 is legal on the wire but names no TCP port. It was published as
    '<ip>:0' (every connect to it fails), and the saved namer state then refused the whole name on
    restore ('port out of range'), so a restart during a DNS outage started that name empty."""
    records = [
        "srv-host=_http._tcp.web.test,a.test,0,0,10",
        "srv-host=_http._tcp.web.test,b.test,8080,0,10",
        "host-record=a.test,127.0.0.11",
        "host-record=b.test,127.0.0.12",
    ]
    async with running_dnsmasq(tmp_path, records) as dns:
        n = DnsSrvNamer([dns.address], refresh_interval=0.2)
        async with trio.open_nursery() as nursery:
            await nursery.start(n.run)
            key = (b"_http._tcp.web.test",)
            n.lookup(Path((key[0],)))
            st = await wait_for(lambda: (s := n.table.get(key)) is not None and s.state != "pending" and s)
            assert st.state == "bound", st
            assert hostports(st.addr) == [("127.0.0.12", 8080)]
            entry = n.state_json()["names"]["_http._tcp.web.test"]
            assert entry["skippedTargets"] == ["a.test (port 0)"]

            # what is saved restores whole after a restart
            saved = n.export_state()
            again = DnsSrvNamer([dns.address])
            assert again.import_state(saved) == 1
            assert hostports(again.table.get(key).addr) == [("127.0.0.12", 8080)]
            nursery.cancel_scope.cancel()


async def test_dnssrv_aaaa_failing_while_a_answers_keeps_the_v6_addresses_stale() -> None:
    """A dual-stack SRV target answered A and AAAA; then its AAAA query fails (SERVFAIL) while A
    answers. The v6 addresses were dropped at once, the name stayed 'bound' and no error was shown:
    a transient DNS failure silently took half the endpoints out. Now, as for /$/inet, the family that
    answered is fresh, the failed one keeps its last good addresses, and the name is stale saying why."""
    dns_server = ScriptedDns()
    async with trio.open_nursery() as nursery:
        await nursery.start(dns_server.serve)
        dns_server.script[("_http._tcp.web.test", "SRV")] = ["0 10 8080 a.test."]
        dns_server.script[("a.test", "A")] = ["10.0.0.1"]
        dns_server.script[("a.test", "AAAA")] = ["fd00::1"]
        n = DnsSrvNamer([f"127.0.0.1:{dns_server.port}"], refresh_interval=0.05, timeout=1.0, retry_base=0.05)
        await nursery.start(n.run)
        key = (b"_http._tcp.web.test",)
        n.lookup(Path((key[0],)))
        await wait_for(lambda: (s := n.table.get(key)) is not None and s.state == "bound")
        assert hostports(n.table.get(key).addr) == [("10.0.0.1", 8080), ("fd00::1", 8080)]

        dns_server.script[("a.test", "A")] = ["10.0.0.2"]  # the family that answers is fresh
        dns_server.script[("a.test", "AAAA")] = "SERVFAIL"
        # (the fresh A address shows that a lookup made wholly after the change has been applied)
        await wait_for(lambda: ("10.0.0.2", 8080) in hostports(n.table.get(key).addr))
        body = n.state_json()["names"]["_http._tcp.web.test"]
        assert body["state"] == "stale", body
        assert sorted((a["host"], a["port"]) for a in body["addrs"]) == [
            ("10.0.0.2", 8080),
            ("fd00::1", 8080),
        ]
        assert "'a.test'" in body["lastError"] and "AAAA" in body["lastError"], body["lastError"]
        assert "SERVFAIL" in body["lastError"], body["lastError"]
        assert body["staleAgeSecs"] is not None
        leaf = n.lookup(Path((key[0],)))
        assert hostports(leaf.value.addr.addresses) == [("10.0.0.2", 8080), ("fd00::1", 8080)]

        dns_server.script[("a.test", "AAAA")] = ["fd00::2"]
        await wait_for(lambda: n.table.get(key).state == "bound")
        body = n.state_json()["names"]["_http._tcp.web.test"]
        assert sorted(a["host"] for a in body["addrs"]) == ["10.0.0.2", "fd00::2"]
        assert body["lastError"] is None
        nursery.cancel_scope.cancel()


async def test_dnssrv_one_target_failing_does_not_hold_back_changes_to_the_others() -> None:
    """The lookups of one SRV target fail (its zone's servers SERVFAIL) while the others answer.
    The whole name was kept at its last good set: a target added to the record, or removed from it,
    was not seen until the broken target recovered, so scaled-down backends kept their traffic. Now
    the answering targets are fresh, the failing one keeps its last good addresses, and the name is
    stale with an error naming it; a failing target dropped from the record is dropped."""
    dns_server = ScriptedDns()
    name = "_http._tcp.web.test"
    async with trio.open_nursery() as nursery:
        await nursery.start(dns_server.serve)
        dns_server.script[(name, "SRV")] = ["0 10 8080 a.test.", "0 10 8080 b.test.", "0 10 8080 old.test."]
        for t, ip in (("a.test", "10.0.0.1"), ("b.test", "10.0.0.2"), ("old.test", "10.0.0.3")):
            dns_server.script[(t, "A")] = [ip]
            dns_server.script[(t, "AAAA")] = "NOERROR"
        n = DnsSrvNamer([f"127.0.0.1:{dns_server.port}"], refresh_interval=0.05, timeout=1.0, retry_base=0.05)
        await nursery.start(n.run)
        key = (name.encode(),)
        n.lookup(Path((key[0],)))
        await wait_for(lambda: (s := n.table.get(key)) is not None and s.state == "bound")
        assert sorted(a.host for a in n.table.get(key).addr) == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]

        # b.test's servers fail; the record drops old.test and gains c.test
        dns_server.script[("b.test", "A")] = "SERVFAIL"
        dns_server.script[("b.test", "AAAA")] = "SERVFAIL"
        dns_server.script[(name, "SRV")] = ["0 10 8080 a.test.", "0 10 8080 b.test.", "0 10 8080 c.test."]
        dns_server.script[("c.test", "A")] = ["10.0.0.4"]
        dns_server.script[("c.test", "AAAA")] = "NOERROR"
        want = ["10.0.0.1", "10.0.0.2", "10.0.0.4"]
        await wait_for(
            lambda: (s := n.table.get(key)).state == "stale" and sorted(a.host for a in s.addr) == want
        )
        body = n.state_json()["names"][name]
        assert sorted(a["host"] for a in body["addrs"]) == want, body
        assert "'b.test'" in body["lastError"] and "SERVFAIL" in body["lastError"], body["lastError"]
        assert "'a.test'" not in body["lastError"] and "'c.test'" not in body["lastError"]
        assert body["skippedTargets"] == []

        # the failing target leaves the record: its kept addresses go with it, and all is well
        dns_server.script[(name, "SRV")] = ["0 10 8080 a.test.", "0 10 8080 c.test."]
        await wait_for(lambda: n.table.get(key).state == "bound")
        assert sorted(a.host for a in n.table.get(key).addr) == ["10.0.0.1", "10.0.0.4"]
        nursery.cancel_scope.cancel()


# == io.l5d.rewrite ================================================================================


def test_rewrite_captures_split_a_label_as_a_greedy_regex_does() -> None:
    """Every label of up to 7 characters over a small alphabet splits exactly as the backtracking
    regular expression the captures stand for (each capture non-empty, the leftmost the longest)."""
    import itertools
    import re

    from namers.rewrite import _capture

    patterns = [
        ("", "."),
        ("", ".", ""),
        ("", "", "", ""),
        ("a.", ".", "x"),
        ("", ".", ".", ""),
        ("x", "", ".", "x"),
        (".", ".", "."),
        ("..", "", ".."),
        ("", "ab", ""),
    ]
    for pieces in patterns:
        regex = re.compile(
            "".join(re.escape(p) + "(.+)" for p in pieces[:-1]) + re.escape(pieces[-1]), re.DOTALL
        )
        for n in range(8):
            for chars in itertools.product("a.xb", repeat=n):
                text = "".join(chars)
                m = regex.fullmatch(text)
                assert _capture(pieces, text) == (list(m.groups()) if m else None), (pieces, text)


def test_rewrite_pattern_with_captures_in_one_label_does_not_hang_on_a_long_label() -> None:
    """A label comes from the request (the Host header, up to the 8 KiB head limit). Matched by a
    backtracking regex, '/{a}.{b}.{c}.{d}.x' against 8000 characters of 'a.' that do not end in
    '.x' takes time growing as the length to the fourth power: one request froze the event loop,
    and so every connection of the daemon, for far longer than any client waits. The lookup runs
    in a child process so that the old behaviour fails this test (at the bound) instead of hanging it."""
    code = (
        "from namers.rewrite import RewriteNamer\n"
        "from namers._dtab import NEG, Path\n"
        "n = RewriteNamer('/{a}.{b}.{c}.{d}.x', '/k8s/{a}/{b}/{c}/{d}')\n"
        "assert n.lookup(Path((b'a.' * 4000,))) is NEG\n"
        "assert str(n.lookup(Path((b'a.' * 4000 + b'x',))).value).startswith('/k8s/a.a.')\n"
        "print('ok')\n"
    )
    run_child(code)


# == transformers ==================================================================================


def run_child(code: str, bound: float = 60.0) -> None:
    """Run ``code`` in a child Python from the repository root; it must print 'ok' within ``bound``
    seconds (a bound that turns a hang of the old behaviour into a failure, not a measurement)."""
    import subprocess
    import sys

    root = FsPath(__file__).resolve().parent.parent
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=bound
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_daemonset_transformer_on_a_large_cluster_is_one_lookup_per_destination() -> None:
    """io.l5d.k8s.daemonset compared every destination with every daemonset pod, building an
    ip_network each time: 2000 pods of a Service and 200 nodes blocked the event loop for seconds on
    every change of either set (pods churn all through a deploy). Here 20000 pods and 2000 nodes, the
    daemonset chosen per /24 and per nodeName as before (in order, duplicates collapsed)."""
    run_child(
        "from namers.transformers import DaemonSetTransformer\n"
        "from namers._dtab import Address, AddrBound\n"
        "gws = tuple(Address(f'10.{i // 250}.{i % 250}.5', 4140, 1.0, {'nodeName': f'n{i}'})"
        " for i in range(2000))\n"
        "dest = tuple(Address(f'10.{i // 250 % 8}.{i % 250}.7', 80, 1.0, {'nodeName': f'n{i % 2000}'})"
        " for i in range(20000))\n"
        "src = lambda: AddrBound(gws, {})\n"
        "for host_network in (False, True):\n"
        "    t = DaemonSetTransformer('ns', 'http', 'l5d', src, host_network=host_network)\n"
        "    out = t.map_addresses(dest)\n"
        "    assert [a.host for a in out] == [g.host for g in gws], host_network\n"
        "t = DaemonSetTransformer('ns', 'http', 'l5d', src)\n"
        "out = t.map_addresses((Address('10.0.7.9', 80), Address('fd00::1', 80), Address('10.0.1.1', 80),"
        " Address('10.0.7.200', 80), Address('web.example', 80)))\n"
        "assert [a.host for a in out] == ['10.0.7.5', '10.0.1.5'], out\n"
        "print('ok')\n"
    )


# == io.l5d.dnssrv: descriptors ====================================================================


def test_dnssrv_answer_with_hundreds_of_targets_looks_them_up_a_few_at_a_time(tmp_path: FsPath) -> None:
    """Targets missing from the additional section were all looked up at once, a socket each: an
    SRV answer of 600 targets needed 600 descriptors at the same moment, and under a limit of 256
    every lookup failed, so the whole name failed (and the daemon's own accepts and connects with
    it). In a child process limited to 256 descriptors, all 600 now resolve."""
    records = [f"srv-host=_http._tcp.web.test,t{i}.test,8080,0,10" for i in range(600)]
    # address= records are not put in the additional section: every target is looked up
    records += [f"address=/t{i}.test/127.0.{i // 250}.{i % 250 + 1}" for i in range(600)]
    (tmp_path / "records").write_text("\n".join(records))
    run_child(
        "import pathlib, resource, trio\n"
        "from tests.dnsserver import running_dnsmasq\n"
        "from namers.dnssrv import DnsSrvNamer, SrvFound\n"
        "async def main():\n"
        f"    d = pathlib.Path({str(tmp_path)!r})\n"
        "    records = (d / 'records').read_text().splitlines()\n"
        "    async with running_dnsmasq(d, records) as dns:\n"
        "        resource.setrlimit(resource.RLIMIT_NOFILE, (256, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))\n"
        "        n = DnsSrvNamer([dns.address], timeout=10.0)\n"
        "        out = await n.query('_http._tcp.web.test')\n"
        "        assert isinstance(out, SrvFound), out\n"
        "        assert len(out.addrs) == 600 and out.skipped == (), out\n"
        "trio.run(main)\n"
        "print('ok')\n",
        bound=120.0,
    )


def test_dns_lookup_without_a_free_descriptor_says_so_not_servfail() -> None:
    """When no socket can be opened (EMFILE), dnspython reports 'all nameservers failed'; that was
    shown as 'no nameserver gave an answer (SERVFAIL, REFUSED or unreachable)', sending the operator
    to a healthy DNS server. The message now names the daemon's descriptor limit."""
    run_child(
        "import os, resource, trio\n"
        "from namers.dnssrv import DnsSrvNamer, SrvFailure\n"
        "async def main():\n"
        "    n = DnsSrvNamer(['127.0.0.1:53'], timeout=1.0)\n"
        "    n._resolver = n._make_resolver()\n"
        "    top = max(int(fd) for fd in os.listdir('/proc/self/fd'))\n"
        "    resource.setrlimit(resource.RLIMIT_NOFILE, (top + 1, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))\n"
        "    held = []\n"
        "    try:\n"
        "        while True:\n"
        "            held.append(os.open('/dev/null', os.O_RDONLY))\n"
        "    except OSError:\n"
        "        pass\n"
        "    out = await n.query('_http._tcp.web.test')\n"
        "    assert isinstance(out, SrvFailure), out\n"
        "    assert 'out of file descriptors' in out.message and 'LimitNOFILE' in out.message, out.message\n"
        "    assert 'SERVFAIL' not in out.message, out.message\n"
        "trio.run(main)\n"
        "print('ok')\n"
    )


# == io.l5d.k8s ====================================================================================

NGINX_502 = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
)


async def serve_fixed(status: int, body: bytes, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """An HTTP server on 127.0.0.1 that answers every request with ``status`` and ``body`` (a proxy
    in front of the API server that has lost it); reports its port when started."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])

    async def handle(stream: trio.SocketStream) -> None:
        async with stream:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    return
                data += chunk
            head = f"HTTP/1.1 {status} X\r\nContent-Type: text/html\r\nContent-Length: {len(body)}\r\n\r\n"
            await stream.send_all(head.encode() + body)

    await trio.serve_listeners(handle, listeners)


@pytest.mark.parametrize(
    ("status", "body", "said", "hint"),
    [
        (502, NGINX_502, "HTTP 502: 502 Bad Gateway", "the API server (or a proxy in front of it) failed"),
        (
            500,
            b"upstream connect error\r\nor disconnect/reset before headers\r\n",
            "HTTP 500: upstream connect error or disconnect/reset before headers",
            "the API server (or a proxy in front of it) failed",
        ),
        (
            400,
            b"Client sent an HTTP request to an HTTPS server.\n",  # Go's answer on a TLS port
            "HTTP 400: Client sent an HTTP request to an HTTPS server.",
            "namers[].host/port speak plain HTTP: point them at a kubectl proxy",
        ),
        (
            429,
            b'{"kind":"Status","message":"Too many requests,\\nplease try again later.","code":429}',
            "HTTP 429: Too many requests, please try again later.",
            "throttling",
        ),
    ],
)
async def test_k8s_error_page_from_a_proxy_is_one_line_that_says_what_failed(
    status: int, body: bytes, said: str, hint: str
) -> None:
    """A proxy in front of the API server answers with its HTML error page. The page went whole
    into the name's error (line breaks and markup: several lines in the log, in /namer_state and in
    'hostproxy wtf'), and a 5xx was called 'the API server refused the request'. Now it is one line:
    the page's title (or the body's start, or the Status message), and a 5xx says the API server or a
    proxy failed, a 429 that the client is throttled, and Go's 400 for plain HTTP sent to a TLS
    port (host/port set to the API server itself) how to connect instead of 'retried with backoff'."""
    from namers.k8s import ApiServer, K8sNamer

    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_fixed, status, body)
        namer = K8sNamer(
            ApiServer("127.0.0.1", port),
            request_timeout=5.0,
            backoff_base=0.02,
            backoff_max=0.1,
            rng=lambda: 0.5,
        )
        await nursery.start(namer.run)
        namer.lookup(Path.read("/srv/http/sessions"))
        st = await wait_for(
            lambda: (s := namer.table.get((b"srv", b"http", b"sessions"))) and s.state == "failed" and s
        )
        err = st.last_error
        assert "\n" not in err and "\r" not in err and "<" not in err, err
        assert said in err, err
        assert hint in err, err
        watch_error = namer.state_json()["names"]["srv/http/sessions"]["watch"]["lastError"]
        assert "\n" not in watch_error and said in watch_error, watch_error
        nursery.cancel_scope.cancel()


# == /$/inet =======================================================================================


@pytest.mark.parametrize("host", ["a..b", "x" * 64 + ".test", ".web.test", ("abcdefgh." * 32) + "test"])
async def test_inet_host_that_cannot_be_a_dns_name_is_negative_and_never_queued(host: str) -> None:
    """A Host header can hold anything. A host with an empty label or a label over 63 octets was
    queued for resolution, 'failed' with dnspython's exception name ('A: EmptyLabel; AAAA:
    EmptyLabel'), took a table slot and was retried with backoff for as long as it was asked for.
    No such host can exist: it is negative at once, exactly as an NXDOMAIN answer is."""
    dns_server = ScriptedDns()
    async with trio.open_nursery() as nursery:
        await nursery.start(dns_server.serve)
        r = InetResolver([f"127.0.0.1:{dns_server.port}"], timeout=1.0)
        await nursery.start(r.run)
        assert r.resolve(host, 80) == AddrNeg()
        leaf = bind(Dtab.read("/svc => /$/inet/" + host + "/80"), Path.read("/svc"), system=r.system).tree
        assert leaf.value.addr == AddrNeg(), leaf
        assert len(r.table) == 0 and r.statistics()["invalid_hosts"] == 2
        # the answer for a name that does not exist is the same
        assert r.resolve("gone.test", 80) is PENDING
        await wait_for(lambda: r.table.get("gone.test").state != "pending")
        assert r.resolve("gone.test", 80) == AddrNeg()
        assert {q[0] for q in dns_server.queries} == {"gone.test"}
        nursery.cancel_scope.cancel()


async def serve_truncated(tcp: str, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """A nameserver whose every UDP answer is truncated (TC: too large for UDP), on a port where TCP
    is ``"refused"`` (nothing listens) or ``"silent"`` (accepted, never answered: a firewall or a
    server that does not serve TCP)."""
    import errno
    import socket

    import dns.flags
    import dns.message

    for _ in range(50):  # a UDP port whose TCP twin is free too (another process may hold it)
        udp = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        await udp.bind(("127.0.0.1", 0))
        port = udp.getsockname()[1]
        if tcp != "silent":
            break
        try:
            listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
            break
        except OSError as e:
            udp.close()
            if e.errno != errno.EADDRINUSE:
                raise
    else:
        raise AssertionError("no UDP port with a free TCP twin in 50 tries")
    async with trio.open_nursery() as nursery:
        if tcp == "silent":

            async def hold(stream: trio.SocketStream) -> None:
                async with stream:
                    await trio.sleep_forever()

            nursery.start_soon(trio.serve_listeners, hold, listeners)
        task_status.started(port)
        with udp:
            while True:
                data, peer = await udp.recvfrom(4096)
                r = dns.message.make_response(dns.message.from_wire(data))
                r.flags |= dns.flags.TC
                await udp.sendto(r.to_wire(), peer)


@pytest.mark.parametrize(("tcp", "why"), [("refused", "Connection refused"), ("silent", "timed out")])
async def test_dnssrv_truncated_answer_with_tcp_blocked_says_to_allow_dns_over_tcp(
    tcp: str, why: str
) -> None:
    """An SRV answer too large for UDP comes back truncated and must be asked again over TCP. When TCP
    to the nameserver is blocked (a firewall allowing only UDP 53, a classic), the name failed with
    'no nameserver gave an answer (SERVFAIL, REFUSED or unreachable)' or 'timed out', which sends the
    operator to the DNS server's records, not the firewall. Now the error says what happened."""
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_truncated, tcp)
        n = DnsSrvNamer([f"127.0.0.1:{port}"], timeout=3.0)  # room for the UDP answer on a busy machine
        out = await n.query("_http._tcp.web.test")
        assert isinstance(out, SrvFailure), out
        assert out.message == (
            f"SRV lookup of '_http._tcp.web.test' via 127.0.0.1:{port} failed: the answer was too large "
            f"for UDP (truncated) and asking again over TCP failed ({why}); let DNS over TCP (port 53) "
            "through to the nameserver"
        )
        nursery.cancel_scope.cancel()


async def serve_by_path(
    answers: dict[str, tuple[int, bytes]], task_status: Any = trio.TASK_STATUS_IGNORED
) -> None:
    """An HTTP server on 127.0.0.1 answering each request with the first ``answers`` entry whose key
    is in the request target (checked in order), read at the time of the request; reports its port."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])

    async def handle(stream: trio.SocketStream) -> None:
        async with stream:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    return
                data += chunk
            target = data.split(b" ", 2)[1].decode()
            status, body = next(v for k, v in answers.items() if k in target)
            head = f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            await stream.send_all(head.encode() + body)

    await trio.serve_listeners(handle, listeners)


def list_body(kind: str, items: list[dict[str, Any]], rv: str = "58211407") -> bytes:
    return json.dumps(
        {"kind": kind, "apiVersion": "v1", "metadata": {"resourceVersion": rv}, "items": items}
    ).encode()


NESTED = b"[" * 100_000 + b"]" * 100_000


async def test_k8s_json_nested_too_deeply_fails_that_request_not_the_daemon() -> None:
    """JSON nested deeper than the decoder's stack raises RecursionError, not ValueError: a list or
    watch event like that from a broken (or hostile) API server or proxy escaped the namer's error
    handling and ended its task, and with it the daemon's nursery: one answer stopped every router.
    Now a list like that fails (the names keep their last good addresses, stale, saying why), an
    event like that is unreadable (a re-list), and the namer goes on."""
    from k8s_api.objects import endpoints, service

    from namers.k8s import ApiServer, K8sNamer

    svc = list_body("ServiceList", [service("web", [("http", 80, "http")])])
    eps = list_body("EndpointsList", [endpoints("web", ready=["10.0.0.1"], ports={"http": 8080})])
    answers = {
        "services?fieldSelector": (200, svc),
        "endpoints?fieldSelector": (200, eps),
        "watch=true": (200, b""),
    }
    key = (b"srv", b"http", b"web")
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_by_path, answers)
        namer = K8sNamer(
            ApiServer("127.0.0.1", port),
            request_timeout=5.0,
            backoff_base=0.01,
            backoff_max=0.05,
            rng=lambda: 0.5,
        )
        await nursery.start(namer.run)
        namer.lookup(Path.read("/srv/http/web"))
        await wait_for(lambda: (s := namer.table.get(key)) is not None and s.state == "bound")

        # every watch event is nested too deeply: unreadable, counted, re-listed; the names stand
        answers["watch=true"] = (200, NESTED + b"\n")
        await wait_for(lambda: namer.statistics()["malformed"] >= 2)
        assert namer.table.get(key).state == "bound"

        # the endpoints list too: that request fails, the name keeps its addresses, stale
        answers["endpoints?fieldSelector"] = (200, NESTED)
        st = await wait_for(lambda: (s := namer.table.get(key)).state == "stale" and s)
        assert [(a.host, a.port) for a in st.addr] == [("10.0.0.1", 8080)]
        assert "the list is not JSON (nested too deeply to decode)" in st.last_error, st.last_error

        # and the namer is still there when the API server is well again
        answers["endpoints?fieldSelector"] = (200, eps.replace(b"10.0.0.1", b"10.0.0.2"))
        answers["watch=true"] = (200, b"")
        await wait_for(lambda: namer.table.get(key).state == "bound")
        assert [(a.host, a.port) for a in namer.table.get(key).addr] == [("10.0.0.2", 8080)]
        nursery.cancel_scope.cancel()


async def test_inet_names_in_the_hosts_file_resolve_as_the_system_resolver_does(tmp_path: FsPath) -> None:
    """dnspython knows no /etc/hosts, so /$/inet/<name>/<port> for a name only the hosts file has
    (Docker's --add-host, Kubernetes hostAliases, the host's own name) was asked of DNS and came
    back negative: Linkerd (the JVM, through the system resolver) routed it. The hosts file is now
    consulted first, re-read when it changes; a name it drops goes to DNS again."""
    hosts = tmp_path / "hosts"
    hosts.write_text(
        "127.0.0.1 localhost\n# pinned\n10.1.2.3  db-primary db  # primary\nfd00::7 db-primary\n"
    )
    dns_server = ScriptedDns()
    async with trio.open_nursery() as nursery:
        await nursery.start(dns_server.serve)
        r = InetResolver(
            [f"127.0.0.1:{dns_server.port}"],
            timeout=1.0,
            hosts_file=str(hosts),
            ttl_floor=0.05,
            ttl_ceiling=0.1,
            negative_ttl=0.05,
        )
        await nursery.start(r.run)
        assert r.resolve("DB-Primary", 5432) is PENDING
        await wait_for(lambda: r.table.get("db-primary").state != "pending")
        addr = r.resolve("db-primary", 5432)
        assert [(a.host, a.port) for a in addr.addresses] == [("10.1.2.3", 5432), ("fd00::7", 5432)]
        assert dns_server.queries == []  # never asked of DNS

        # the file changes (atomically, as Docker and the kubelet write it): the new address is used
        tmp = tmp_path / "hosts.new"
        tmp.write_text("127.0.0.1 localhost\n10.1.2.4 db-primary\n")
        tmp.replace(hosts)
        await wait_for(lambda: r.table.get("db-primary").ips == ("10.1.2.4",))

        # dropped from the file: DNS is asked, and its answer (here: no such name) stands
        tmp.write_text("127.0.0.1 localhost\n")
        tmp.replace(hosts)
        await wait_for(lambda: r.table.get("db-primary").state == "neg")
        assert ("db-primary", "A") in dns_server.queries
        nursery.cancel_scope.cancel()


async def test_k8s_role_without_watch_backs_off_instead_of_listing_twice_a_second() -> None:
    """A Role granting get and list but not watch (a common RBAC slip): every watch is a 403, every
    list between them succeeds. The successful list reset the backoff, so the namer listed and
    watched again after the first backoff step (0.5 s by default) forever: a LIST storm from every
    name. The backoff now restarts only once a watch streams again: the waits grow to the maximum."""
    from k8s_api.server import open_fake_api
    from test_namer_k8s_dns_failures import MAX, STEPS, RecordingSleep, k8s_namer, publish

    from namers.k8s import ApiServer

    sleep = RecordingSleep()
    async with open_fake_api() as api:
        publish(api, ["10.244.1.17"])
        api.forbid("endpoints", "watch")
        async with k8s_namer(ApiServer("127.0.0.1", api.port), sleep=sleep) as namer:
            namer.lookup(Path.read("/srv/http/sessions"))
            await wait_for(lambda: api.count("/endpoints", watch=False) >= 8)
            st = namer.table.get((b"srv", b"http", b"sessions"))
            assert [a.host for a in st.addr] == ["10.244.1.17"]  # still routed on the listed endpoints
            await wait_for(
                lambda: (
                    "cannot watch"
                    in (namer.state_json()["endpoints"]["srv/sessions"]["watch"]["lastError"] or "")
                )
            )
            (eps_waits,) = sleep.per_task()  # only the Endpoints loop fails
    assert eps_waits[:3] == STEPS[:3] and set(eps_waits[3:]) <= {MAX * 0.75}, eps_waits


def test_k8s_watch_line_dribbled_in_small_pieces_is_split_in_linear_time() -> None:
    """A watch event arrives in whatever pieces the connection delivers. Each piece searched the
    whole pending line again for its end: a long event dribbled 100 bytes at a time (a broken proxy,
    a hostile server) cost time growing as the square of its length, all of it on the event loop.
    Only the new bytes are searched now (48 MB in 100-byte pieces; in a child process, bounded)."""
    run_child(
        "from namers.k8s.watch import LineBuffer\n"
        "b = LineBuffer(max_line=64 * 1024 * 1024)\n"
        "piece = b'x' * 100\n"
        "for _ in range(480_000):\n"
        "    assert b.feed(piece) == []\n"
        "assert b.feed(b'\\n{}\\n') == [b'x' * 48_000_000, b'{}']\n"
        "print('ok')\n"
    )
