"""Adversarial review of per-request routing: the dtab language at its edges, per-request overrides,
identifiers, and the delegator agreeing with the router.

End-to-end tests run the real daemon on loopback with real upstreams and real curl; the rest call the
pure code (parser, lookup, binding) directly.
"""

from __future__ import annotations

import gc
import json
import random
import socket
import tracemalloc
import urllib.parse
from collections import Counter
from pathlib import Path as FsPath
from typing import Any

import pytest
import trio

from dtab import Dtab, DtabSyntaxError, Path
from dtab.bind import BindTooLarge, bind
from dtab.delegate import delegate
from dtab.errors import DelegationTooLarge
from hostproxy.balancer import WeightedChoice
from tests.daemonutil import curl, fs_config, running_daemon
from tests.test_lifecycle_helpers import write_disco
from tests.upstreams import running_upstream

P = Path.read


# -- the cost of a lookup ----------------------------------------------------------------------------


def test_lookup_cost_does_not_grow_with_dentries_that_cannot_match() -> None:
    """A lookup used to test every dentry of the dtab: a base dtab of thousands of ``/svc/<name>`` rules,
    or an ``l5d-dtab`` padded with rules that never match, made every one of a binding's up to 1,000
    lookups that much slower (600 padding rules: half a second of event loop per request)."""
    short = Dtab.read("/svc=>/#/io.l5d.fs;/svc/web=>/#/io.l5d.fs/web-v2")
    padding = ";".join(f"/svc/name{i}=>/#/io.l5d.fs/name{i};/pad{i}/*=>/x" for i in range(3000))
    long = Dtab.read(padding + ";" + str(short))
    for name in ("/svc/web", "/svc/other/x", "/nothing"):
        t_short, cost_short = short.lookup_counted(P(name))
        t_long, cost_long = long.lookup_counted(P(name))
        assert t_long == t_short  # the same rules match, in the same order
        assert cost_long <= cost_short + 2, (name, cost_short, cost_long)
    # A per-request dtab appended to that base finds its matches first, through the base's own index.
    local = Dtab.read("/svc/web=>/override;/svc/*=>/wild")
    found, cost = (long + local).matching(P("/svc/web"))
    assert [str(d.dst) for d in found] == ["/wild", "/override", "/#/io.l5d.fs/web-v2", "/#/io.l5d.fs"]
    assert cost <= 12, cost
    # The order of the matches stays positional (last first), wildcards and literal prefixes mixed.
    mixed = Dtab.read("/a=>/1;/*/b=>/2;/a/b=>/3;/=>/4;/a/*=>/5")
    found, _ = mixed.matching(P("/a/b/c"))
    assert [str(d.dst) for d in found] == ["/5", "/4", "/3", "/2", "/1"]


def test_binding_refuses_a_dtab_whose_every_lookup_matches_hundreds_of_rules() -> None:
    """The 1,000-lookup budget did not count what each lookup cost: an override of a few hundred
    ``/n/* => ~`` rules (each lookup an alternative of hundreds of branches) under a 7-level fan-out
    bound after ~0.3 s, 1,300 of them (8 KB) after more than a second, per request."""
    chain = ";".join(f"/n/{i}=>/n/{i + 1}&/n/{i + 1}" for i in range(7)) + ";/n/7=>/$/inet/127.0.0.1/9"
    filler = ";".join("/n/*=>~" for _ in range(300))
    d = Dtab.read(chain + ";" + filler)
    try:
        bind(d, P("/n/0"))
    except BindTooLarge as e:
        assert "dentry tests" in str(e) and "l5d-dtab" in str(e)
    else:
        raise AssertionError("a binding that matches 300 rules at each of 255 lookups was not refused")
    # The same fan-out without the filler binds as before.
    assert bind(Dtab.read(chain), P("/n/0")).tree is not None


def test_delegation_refuses_a_dtab_whose_every_step_matches_hundreds_of_rules() -> None:
    """/delegator.json explains on the event loop that serves requests, and every match is a node of
    the explanation: a 7-level fan-out under 300 ``/n/* => ~`` rules (76,000 matches) took 0.4 s, under
    1,300 of them (8 KB) 1.4 s, bounded by nothing but the 10,000-step limit (and a POST body may
    carry 64 KB of them)."""
    chain = ";".join(f"/n/{i}=>/n/{i + 1}|/n/{i + 1}" for i in range(7)) + ";/n/7=>/$/inet/127.0.0.1/9"
    filler = ";".join("/n/*=>~" for _ in range(300))
    with pytest.raises(DelegationTooLarge) as info:
        delegate(Dtab.read(chain + ";" + filler), P("/n/0"))
    assert "dentry tests" in str(info.value)
    assert delegate(Dtab.read(chain), P("/n/0")) is not None


async def test_override_that_matches_hundreds_of_rules_per_lookup_fails_fast(tmp_path: FsPath) -> None:
    disco = tmp_path / "disco"
    async with running_upstream() as up:
        write_disco(disco, "web", up.port)
        async with running_daemon(fs_config(disco)) as d:
            url = f"http://127.0.0.1:{d.port('out')}/"
            chain = (
                "/svc/web=>/n/0;"
                + ";".join(f"/n/{i}=>/n/{i + 1}&/n/{i + 1}" for i in range(7))
                + f";/n/7=>/$/inet/127.0.0.1/{up.port}"
            )
            filler = ";".join("/n/*=>~" for _ in range(300))
            r = await curl(url, "-H", "Host: web", "-H", f"l5d-dtab: {chain};{filler}")
            assert r.status == 502, r
            assert r.header("l5d-err") is not None and "dentry tests" in (r.l5d_err or ""), r.l5d_err
            assert up.requests == []
            # A large base-style dtab of literal rules is no problem: the index skips what cannot match.
            many = ";".join(f"/svc/name{i}=>/#/io.l5d.fs/name{i}" for i in range(200))
            r = await curl(url, "-H", "Host: web", "-H", f"l5d-dtab: {many}")
            assert r.status == 200, r


# -- weights -----------------------------------------------------------------------------------------

HUGE = "9" * 400  # a weight past the largest double


def test_weight_too_large_for_a_double_is_a_positioned_syntax_error() -> None:
    """Such a weight parsed as infinity: the router's weighted choice then raised (502 proxy/internal
    with a traceback), the override went downstream as ``l5d-ctx-dtab: ...=>Infinity*...``, which no
    parser reads back, and ``/delegator.json`` answered ``"weight":Infinity``, which is not JSON."""
    text = f"/svc/web => {HUGE} * /a & /b"
    with pytest.raises(DtabSyntaxError) as info:
        Dtab.read(text)
    assert info.value.offset == text.index("9")
    assert "weight" in info.value.message and "1.8e308" in info.value.message
    # The largest weights that fit still parse, print and read back.
    big = Dtab.read(f"/svc/web => {'9' * 300} * /a & /b")
    assert Dtab.read(str(big)) == Dtab.read(f"/svc/web => {'1' + '0' * 300} * /a & /b")


def test_union_of_weights_whose_sum_overflows_still_splits() -> None:
    """Two branches of 1.7e308 each: the running sum overflowed to infinity and every draw landed on the
    last branch."""
    choice = WeightedChoice([1.7e308, 1.7e308, 0.0], random.Random(7))
    picks = Counter(choice.pick() for _ in range(400))
    assert picks[0] > 100 and picks[1] > 100 and picks[2] == 0, picks


async def test_override_with_an_infinite_weight_is_a_400_not_a_proxy_error(tmp_path: FsPath) -> None:
    disco = tmp_path / "disco"
    async with running_upstream() as up:
        write_disco(disco, "web", up.port)
        write_disco(disco, "other", up.port)
        async with running_daemon(fs_config(disco)) as d:
            url = f"http://127.0.0.1:{d.port('out')}/"
            for host in ("web", "other"):  # both names resolved, so the union has both branches
                assert (await curl(url, "-H", f"Host: {host}")).status == 200
            override = f"/svc/web => {HUGE} * /#/io.l5d.fs/web & /#/io.l5d.fs/other"
            r = await curl(url, "-H", "Host: web", "-H", f"l5d-dtab: {override}")
            assert r.status == 400, r
            assert (r.l5d_err or "").startswith("Invalid l5d-dtab header: a weight that fits a double"), (
                r.l5d_err
            )
            assert "column 13" in (r.l5d_err or "")
            m = (await curl(f"{d.admin}/admin/metrics.json")).json()
            assert isinstance(m, dict)
            assert not any("proxy/internal" in k and v for k, v in m.items()), m
            # The delegator answers with a parse error too, not with a body that is not JSON.
            r = await curl(
                f"{d.admin}/delegator.json?namespace=out&path=/svc/web&dtab={urllib.parse.quote(override)}"
            )
            assert r.status == 400 and r.body.startswith(b"Invalid dtab:"), r


# -- the delegator agrees with the router ------------------------------------------------------------


def _union_weights(node: dict[str, Any]) -> list[float] | None:
    """The weights of the first union node of a /delegator.json tree (depth first)."""
    if node.get("type") == "union":
        return [b["weight"] for b in node["union"]]
    for key in ("delegate", "tree"):
        if isinstance(node.get(key), dict):
            found = _union_weights(node[key])
            if found is not None:
                return found
    for child in node.get("alt", []):
        found = _union_weights(child)
        if found is not None:
            return found
    return None


async def test_delegator_page_delegates_the_weights_the_router_binds(tmp_path: FsPath) -> None:
    """The dtab playground prefills the router's dtab printed as Finagle prints it, with weights rounded
    to two decimals, and posts that text to /delegator.json: a 40/60 split of 0.004/0.006 was
    explained as 0.00/0.01 (all traffic to one side) while the router split 40/60."""
    disco = tmp_path / "disco"
    async with running_upstream() as up:
        write_disco(disco, "web", up.port)
        write_disco(disco, "web-v2", up.port)
        dtab = (
            "/svc => /#/io.l5d.fs;\n    /svc/web => 0.004 * /#/io.l5d.fs/web & 0.006 * /#/io.l5d.fs/web-v2;"
        )
        async with running_daemon(fs_config(disco, dtab=dtab)) as d:
            url = f"http://127.0.0.1:{d.port('out')}/"
            for name in ("web", "web-v2"):  # both names resolved by the namer
                r = await curl(url, "-H", "Host: web", "-H", f"l5d-dtab: /svc/web => /#/io.l5d.fs/{name}")
                assert r.status == 200, r
            page = (await curl(f"{d.admin}/delegator?router=out")).body.decode()
            embedded = page.split('<script type="application/json" id="routers">', 1)[1].split(
                "</script>", 1
            )[0]
            prefilled = json.loads(embedded)["routers"]["out"]
            # What the page's script posts when the operator asks about /svc/web.
            body = json.dumps({"namespace": "out", "dtab": prefilled, "path": "/svc/web"})
            r = await curl(
                f"{d.admin}/delegator.json", "-X", "POST", "-H", "Content-Type: application/json", "-d", body
            )
            assert r.status == 200, r
            tree = r.json()
            assert isinstance(tree, dict)
            assert _union_weights(tree) == [0.004, 0.006], tree
            # ... which is the router's own dtab, exactly.
            assert Dtab.read(prefilled) == d.daemon.routers["out"].binder.base_dtab


async def test_delegator_waits_for_a_namer_that_has_not_answered_yet(tmp_path: FsPath) -> None:
    """A name no request had asked about yet was explained as ``{"type": "pending"}``, a node type
    /delegator.json does not have, at once; the router, asked the same, waits for the namer (and
    Linkerd's delegator waits up to 2 s). It now waits and explains the bound name."""
    disco = tmp_path / "disco"
    async with running_upstream() as up:
        write_disco(disco, "web", up.port)
        async with running_daemon(fs_config(disco)) as d:
            q = urllib.parse.urlencode({"namespace": "out", "path": "/svc/web", "dtab": "/svc=>/#/io.l5d.fs"})
            r = await curl(f"{d.admin}/delegator.json?{q}")
            assert r.status == 200, r
            tree = r.json()
            assert isinstance(tree, dict)
            leaf = tree["delegate"]
            assert leaf["type"] == "leaf" and leaf["bound"]["id"] == "/#/io.l5d.fs/web", tree
            assert leaf["bound"]["addr"]["addrs"] == [{"ip": "127.0.0.1", "port": up.port, "meta": {}}]


# -- identifiers -------------------------------------------------------------------------------------


async def test_path_identifier_does_not_drop_the_first_segment_of_a_target_without_slash(
    tmp_path: FsPath,
) -> None:
    """``GET other/web`` was named ``/svc/web`` by ``io.l5d.path``: splitting on '/' dropped ``other`` as
    if it were the empty piece before a leading '/', and ``consume`` then forwarded ``/``: the request
    reached a service it did not name. It is now a 400 that says why."""
    disco = tmp_path / "disco"
    async with running_upstream() as up:
        write_disco(disco, "web", up.port)
        write_disco(disco, "other", up.port)
        text = fs_config(disco) + "  identifier: {kind: io.l5d.path, segments: 1, consume: true}\n"
        async with running_daemon(text) as d:
            port = d.port("out")

            def raw(target: str) -> bytes:
                with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                    s.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
                    out = b""
                    while chunk := s.recv(65536):
                        out += chunk
                return out

            ok = await trio.to_thread.run_sync(raw, "/web/page")
            assert ok.startswith(b"HTTP/1.1 200"), ok
            assert up.requests[-1].target == "/page"
            out = await trio.to_thread.run_sync(raw, "other/web")
            assert out.startswith(b"HTTP/1.1 400"), out
            assert b"is not a path" in out and b"other/web" in out, out
            assert len(up.requests) == 1  # nothing forwarded


# -- memory held for per-request dtabs ---------------------------------------------------------------


async def test_distinct_large_overrides_do_not_pile_up_in_the_router_caches(tmp_path: FsPath) -> None:
    """The parse cache and the binding cache were bounded by entries only (1,000 each), and a parsed
    7 KB ``l5d-dtab`` takes about 300 KB: a client sending distinct large overrides made the router
    keep ~300 MB. What they keep now is bounded by the overrides' size too."""
    disco = tmp_path / "disco"
    async with running_upstream() as up:
        write_disco(disco, "web", up.port)
        async with running_daemon(fs_config(disco)) as d:
            url = f"http://127.0.0.1:{d.port('out')}/"
            assert (await curl(url, "-H", "Host: web")).status == 200

            def override(j: int) -> str:
                text = ";".join(f"/pad/o{j}/{i}=>/x" for i in range(2000))[:7000]
                return text[: text.rfind(";")]

            gc.collect()
            tracemalloc.start()
            try:
                before = tracemalloc.get_traced_memory()[0]
                for j in range(60):
                    r = await curl(url, "-H", "Host: web", "-H", f"l5d-dtab: {override(j)}")
                    assert r.status == 200, r
                gc.collect()
                grown = tracemalloc.get_traced_memory()[0] - before
            finally:
                tracemalloc.stop()
            assert grown < 8_000_000, f"60 distinct 7 KB overrides left {grown / 1e6:.1f} MB behind"
            assert len(up.requests) == 61


async def test_trace_context_explains_the_route_through_the_interpreters_transformers() -> None:
    """A diagnostic ``TRACE`` explained the route without the router's interpreter transformers, so no
    leaf of the explanation had the client's (``/%/...``) id and "dtab resolution:" came back empty."""
    async with running_upstream() as up:
        yaml_text = f"""
admin: {{ip: 127.0.0.1, port: 0}}
routers:
- protocol: http
  label: out
  dtab: /svc/web => /$/inet/127.0.0.1/1;
  interpreter:
    kind: default
    transformers:
    - kind: io.l5d.port
      port: {up.port}
  servers:
  - ip: 127.0.0.1
    port: 0
"""
        async with running_daemon(yaml_text) as d:
            r = await curl(
                f"http://127.0.0.1:{d.port('out')}/",
                "-X",
                "TRACE",
                "-H",
                "Host: web",
                "-H",
                "l5d-add-context: true",
                "-H",
                "Max-Forwards: 1",
            )
            assert r.status == 200, r
            text = r.body.decode()
            assert f"client name: /%/io.l5d.port/{up.port}/$/inet/127.0.0.1/1\n" in text, text
            resolution = text.split("dtab resolution:\n", 1)[1].split("\n\n", 1)[0].splitlines()
            assert resolution[0] == "  /svc/web", text
            assert "  /$/inet/127.0.0.1/1 (/svc/web=>/$/inet/127.0.0.1/1)" in resolution, text


async def test_delegator_puts_the_interpreters_dtab_file_first_as_the_router_does(tmp_path: FsPath) -> None:
    """A router with ``interpreter: {kind: io.l5d.fs, dtabFile: ...}`` binds with the file's dtab
    before its own; /delegator.json with that router's namespace explained the given dtab alone, so a
    Linkerd-style call (the router's dtab, as Linkerd's UI sends it) showed ``neg`` for a name the router
    routes."""
    disco = tmp_path / "disco"
    dtab_file = tmp_path / "routes.dtab"
    dtab_file.write_text("/svc => /#/io.l5d.fs;\n")
    async with running_upstream() as up:
        write_disco(disco, "web", up.port)
        write_disco(disco, "web-v2", up.port)
        text = (
            fs_config(disco, dtab="/svc/canary => /#/io.l5d.fs/web-v2;")
            + f"  interpreter:\n    kind: io.l5d.fs\n    dtabFile: {dtab_file}\n"
        )
        async with running_daemon(text) as d:
            r = await curl(f"http://127.0.0.1:{d.port('out')}/", "-H", "Host: web")
            assert r.status == 200 and up.requests[-1].header("l5d-dst-client") == "/#/io.l5d.fs/web", r
            q = urllib.parse.urlencode(
                {"namespace": "out", "path": "/svc/web", "dtab": "/svc/canary => /#/io.l5d.fs/web-v2"}
            )
            r = await curl(f"{d.admin}/delegator.json?{q}")
            assert r.status == 200, r
            tree = r.json()
            assert isinstance(tree, dict)
            assert tree["delegate"]["type"] == "leaf", tree
            assert tree["delegate"]["bound"]["id"] == "/#/io.l5d.fs/web", tree
            # The playground prefills the router's own dtab, and posting it explains the same.
            page = (await curl(f"{d.admin}/delegator?router=out")).body.decode()
            embedded = page.split('<script type="application/json" id="routers">', 1)[1].split(
                "</script>", 1
            )[0]
            prefilled = json.loads(embedded)["routers"]["out"]
            assert prefilled == "/svc/canary=>/#/io.l5d.fs/web-v2;\n"
            body = json.dumps({"namespace": "out", "dtab": prefilled, "path": "/svc/web"})
            r = await curl(
                f"{d.admin}/delegator.json", "-X", "POST", "-H", "Content-Type: application/json", "-d", body
            )
            assert r.json() == tree
            # /admin/routers.json gives the same text, which `hostproxy wtf` posts to /delegator.json.
            routers = (await curl(f"{d.admin}/admin/routers.json")).json()
            assert isinstance(routers, dict) and routers["out"]["dtab"] == prefilled


async def test_no_route_error_lists_the_dtab_with_its_weights_as_written(tmp_path: FsPath) -> None:
    """The 502 body of a name with no route lists the dtab; its weights were rounded to two decimals,
    so a 0.004/0.006 union read as 0.00/0.01 in the one place an operator looks when routing fails."""
    disco = tmp_path / "disco"
    disco.mkdir()
    dtab = "/svc/web => 0.004 * /#/io.l5d.fs/gone & 0.006 * /#/io.l5d.fs/missing;"
    async with running_daemon(fs_config(disco, dtab=dtab)) as d:
        r = await curl(f"http://127.0.0.1:{d.port('out')}/", "-H", "Host: web")
        assert r.status == 502, r
        err = r.l5d_err or ""
        assert "base dtab:\n  /svc/web => 0.004*/#/io.l5d.fs/gone & 0.006*/#/io.l5d.fs/missing\n" in err, err


# -- per-server settings -----------------------------------------------------------------------------


async def test_clear_context_applies_to_its_own_server_when_two_share_an_ip(tmp_path: FsPath) -> None:
    """The router looked up ``clearContext`` (and the address-override policy) by the server's ip alone,
    so of two servers on one ip (an edge port with ``clearContext: true`` and an internal one) the last
    one's settings applied to both: the edge honoured an untrusted caller's ``l5d-dtab``."""
    disco = tmp_path / "disco"
    async with running_upstream() as v1, running_upstream() as v2:
        write_disco(disco, "web", v1.port)
        write_disco(disco, "web-v2", v2.port)
        text = fs_config(disco, server_extra="    clearContext: true\n  - ip: 127.0.0.1\n    port: 0")
        async with running_daemon(text) as d:
            edge, internal = d.port("out", 0), d.port("out", 1)
            override = "l5d-dtab: /svc/web => /#/io.l5d.fs/web-v2"
            r = await curl(f"http://127.0.0.1:{edge}/", "-H", "Host: web", "-H", override)
            assert r.status == 200, r
            assert len(v1.requests) == 1 and v2.requests == [], "the edge server honoured l5d-dtab"
            assert v1.requests[0].header("l5d-ctx-dtab") is None
            r = await curl(f"http://127.0.0.1:{internal}/", "-H", "Host: web", "-H", override)
            assert r.status == 200, r
            assert len(v2.requests) == 1, "the internal server ignored l5d-dtab"
