"""What the README shows, checked against a real daemon on loopback (real curl, the real CLI).

Each test here is a place where a reader following the README got something other than what it says.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import trio

from tests.daemonutil import curl, fs_config, running_daemon
from tests.upstreams import running_upstream


async def wtf_json(admin: str, *args: str) -> tuple[int, dict[str, Any]]:
    proc = await trio.run_process(
        [sys.executable, "-m", "hostproxy", "wtf", "--admin", admin, "--json", *args],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    return proc.returncode, json.loads(proc.stdout)


async def metrics(admin: str) -> dict[str, Any]:
    r = await curl(f"{admin}/admin/metrics.json")
    assert r.status == 200
    doc = r.json()
    assert isinstance(doc, dict)
    return doc


async def test_server_max_concurrent_requests_refusals_are_in_metrics_and_wtf(tmp_path: Path) -> None:
    """README, *Routers, headers and errors*: a request past `maxConcurrentRequests` is a 503 whose cause
    is `overload` in the metrics and in `wtf`. On a server's limit (as opposed to a router's) the 503 was
    sent but counted nowhere but /overload.json, and `wtf` called the router healthy."""
    async with running_upstream() as up:
        disco = tmp_path / "disco"
        disco.mkdir()
        (disco / "slow").write_text(f"127.0.0.1 {up.port}\n")
        cfg = fs_config(disco, server_extra="    maxConcurrentRequests: 1")
        async with running_daemon(cfg) as d:
            port = d.port("out")
            url = f"http://127.0.0.1:{port}"
            first: list[int] = []

            async def hold() -> None:
                first.append((await curl(f"{url}/slow/2000", "-H", "Host: slow")).status)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(hold)
                while not up.requests:  # the first request is in flight at the upstream
                    await trio.sleep(0.01)
                refused = await curl(f"{url}/", "-H", "Host: slow")
                assert refused.status == 503
                assert "maxConcurrentRequests=1" in (refused.l5d_err or "")
            assert first == [200]

            m = await metrics(d.admin)
            assert m[f"rt/out/server/127.0.0.1/{port}/rejected_overload"] == 1

            code, doc = await wtf_json(d.admin)
            assert code == 1
            assert doc["healthy"] is False
            found = [f for f in doc["findings"] if f["cause"] == "overload"]
            assert len(found) == 1, doc["findings"]
            f = found[0]
            assert f["router"] == "out"
            assert f["failures"] == 1
            assert f["requests"] == 2
            assert f"127.0.0.1:{port}" in f["verdict"]
            assert "maxConcurrentRequests" in f["verdict"] + f["next_step"]


async def test_wtf_does_not_blame_a_namer_that_answers_for_a_failed_binding(tmp_path: Path) -> None:
    """README, *Routers, headers and errors*: `naming/failed` is a namer failing with no last good answer,
    a binding timeout, or a binding past 1,000 lookups (an `l5d-dtab` override that fans out). When the
    namer serves the name (bound, no error), `wtf` said "naming /svc/users fails …: namer io.l5d.fs name
    users", sending the reader to a namer that never failed."""
    async with running_upstream() as up:
        disco = tmp_path / "disco"
        disco.mkdir()
        (disco / "users").write_text(f"127.0.0.1 {up.port}\n")
        async with running_daemon(fs_config(disco)) as d:
            url = f"http://127.0.0.1:{d.port('out')}/"
            for _ in range(3):
                assert (await curl(url, "-H", "Host: users")).status == 200
            fan = "".join(f"/a{i}=>1*/a{i + 1} & 1*/a{i + 1};" for i in range(30)) + "/svc/users=>/a0"
            r = await curl(url, "-H", "Host: users", "-H", f"l5d-dtab: {fan}")
            assert r.status == 502
            assert "more than 1000 lookups" in (r.l5d_err or "")

            state = (await curl(f"{d.admin}/namer_state/io.l5d.fs.json")).json()
            assert isinstance(state, dict)
            assert state["names"]["users"]["state"] == "bound"
            assert state["names"]["users"]["lastError"] is None

            code, doc = await wtf_json(d.admin)
            assert code == 1
            found = [f for f in doc["findings"] if f["cause"] == "naming/failed"]
            assert len(found) == 1, doc["findings"]
            f = found[0]
            assert f["service"] == "/svc/users"
            assert f["failures"] == 1
            # The namer is named as answering, not as the failure; what can fail a binding is said.
            assert "fails for 25% of requests: namer io.l5d.fs name users" not in f["verdict"]
            assert "namer io.l5d.fs answers for users" in f["verdict"]
            assert "l5d-dtab" in f["verdict"]
            assert "bindingTimeoutMs" in f["verdict"]
            assert "l5d-err" in f["next_step"]


async def test_fs_dangling_symlink_error_claims_no_addresses_a_name_never_had(tmp_path: Path) -> None:
    """README, *Namers and transformers*: a symlink to a missing file keeps a name's last good addresses,
    stale, with an error naming the link. For a name that never had addresses the error said "keeping
    the last good addresses" all the same, beside state `failed` and no addresses."""
    async with running_upstream() as up:
        disco = tmp_path / "disco"
        disco.mkdir()
        (disco / "web").write_text(f"127.0.0.1 {up.port}\n")
        (disco / "lnk").symlink_to(tmp_path / "nowhere")
        async with running_daemon(fs_config(disco)) as d:
            url = f"http://127.0.0.1:{d.port('out')}/"
            assert (await curl(url, "-H", "Host: web")).status == 200
            assert (await curl(url, "-H", "Host: lnk")).status == 502
            (disco / "web").unlink()
            (disco / "web").symlink_to(tmp_path / "gone")
            with trio.fail_after(10):  # the watcher sees the change within a second
                while True:
                    doc = (await curl(f"{d.admin}/namer_state/io.l5d.fs.json")).json()
                    assert isinstance(doc, dict)
                    names = doc["names"]
                    if names["web"]["state"] != "bound":
                        break
                    await trio.sleep(0.05)

            lnk, web = names["lnk"], names["web"]
            assert (lnk["state"], lnk["addrs"]) == ("failed", None)
            assert "is a symlink to" in lnk["lastError"] and "fix the link or remove it" in lnk["lastError"]
            assert "last good" not in lnk["lastError"]
            assert web["state"] == "stale"
            assert [a["port"] for a in web["addrs"]] == [up.port]
            assert "is a symlink to" in web["lastError"]


async def dtab_cli(*args: str) -> tuple[int, str]:
    proc = await trio.run_process(
        [sys.executable, "-m", "hostproxy", "dtab", *args],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    return proc.returncode, proc.stdout.decode()


async def test_dtab_delegate_text_shows_the_addresses_its_json_and_the_daemon_show() -> None:
    """README, *Working with dtab files*: `delegate` shows how a name is delegated, `--json` gives
    `/delegator.json`. For `/$/inet/127.1/8080` (Linkerd's shorthand) the JSON and the daemon say
    127.0.0.1:8080, the text said 127.1:8080; for a host name the text showed `localhost:8080` as a
    bound address where the JSON has none (this command asks no DNS)."""
    code, text = await dtab_cli("delegate", "--dtab", "/svc => /$/inet/127.1/8080", "/svc/a")
    assert code == 0
    code, doc = await dtab_cli("delegate", "--json", "--dtab", "/svc => /$/inet/127.1/8080", "/svc/a")
    assert code == 0
    assert json.loads(doc)["delegate"]["bound"]["addr"]["addrs"] == [
        {"ip": "127.0.0.1", "port": 8080, "meta": {}}
    ]
    assert text.splitlines()[-1] == "binds to: /$/inet/127.1/8080 (127.0.0.1:8080)"
    assert "127.1:8080" not in text

    code, text = await dtab_cli("delegate", "--dtab", "/svc => /$/inet/localhost/8080", "/svc/a")
    assert code == 0
    code, doc = await dtab_cli("delegate", "--json", "--dtab", "/svc => /$/inet/localhost/8080", "/svc/a")
    assert json.loads(doc)["delegate"]["bound"]["addr"]["addrs"] == []
    assert text.splitlines()[-1] == (
        "binds to: /$/inet/localhost/8080 (localhost:8080: a host name, not resolved here; the daemon asks DNS)"
    )


async def test_control_refusal_quotes_the_via_it_arrived_with(tmp_path: Path) -> None:
    """README, *Admin server*: a control request that came through a proxy is refused (403, with the
    reason). The reason quoted the request's `Via` with the admin server's own entry added: a POST sent
    through one router read "Via: 1.1 hostproxy, 1.1 hostproxy", as if it had crossed two proxies."""
    disco = tmp_path / "disco"
    disco.mkdir()
    async with running_daemon(fs_config(disco)) as d:
        admin_port = d.admin.rsplit(":", 1)[1]
        (disco / "admin").write_text(f"127.0.0.1 {admin_port}\n")
        ready = f"{d.admin}/admin/ready?state=false"
        direct = await curl(ready, "-X", "POST", "-H", "Via: 1.1 lb.example")
        assert direct.status == 403
        assert b"(Via: 1.1 lb.example);" in direct.body
        with trio.fail_after(10):  # the fs namer picks the new file up within a second
            while True:
                routed = await curl(
                    f"http://127.0.0.1:{d.port('out')}/admin/ready?state=false",
                    "-X",
                    "POST",
                    "-H",
                    "Host: admin",
                )
                if routed.status != 502:
                    break
                await trio.sleep(0.05)
        assert routed.status == 403
        assert b"(Via: 1.1 hostproxy);" in routed.body
        assert (await curl(f"{d.admin}/ready")).status == 200  # neither was obeyed
