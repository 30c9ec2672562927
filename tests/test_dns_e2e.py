"""DNS through the real daemon: a real dnsmasq changes its records while traffic flows, then stops.

The proxy follows each change without a restart, and once DNS is gone it keeps routing to the last good
addresses, marked stale in the namer state.
"""

from __future__ import annotations

from pathlib import Path

import trio

from tests.daemonutil import curl, running_daemon
from tests.dnsserver import running_dnsmasq
from tests.upstreams import running_upstream


async def send(port: int, host: str) -> int:
    return (await curl(f"http://127.0.0.1:{port}/", "-H", f"Host: {host}", timeout=10)).status


async def until(pred, timeout: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    with trio.fail_after(timeout):
        while not await pred():
            await trio.sleep(0.1)


async def test_dnssrv_follows_record_changes_and_keeps_last_good_when_dns_stops(tmp_path: Path) -> None:
    async with running_upstream() as a, running_upstream() as b:
        records = [f"srv-host=_http._tcp.web.test,a.test,{a.port},0,10", "host-record=a.test,127.0.0.1"]
        async with running_dnsmasq(tmp_path, records) as dns:
            cfg = f"""
admin: {{ip: 127.0.0.1, port: 0}}
namers:
- kind: io.l5d.dnssrv
  experimental: true
  dnsHosts: ["{dns.address}"]
  refreshIntervalSeconds: 1
routers:
- protocol: http
  label: out
  dtab: /svc/web => /#/io.l5d.dnssrv/_http._tcp.web.test;
  servers: [{{ip: 127.0.0.1, port: 0}}]
"""
            async with running_daemon(cfg) as d:
                port = d.port("out")
                assert await send(port, "web") == 200 and len(a.requests) == 1

                # The record moves to b while requests keep coming: the proxy follows, nothing fails.
                await dns.set_records(
                    [f"srv-host=_http._tcp.web.test,b.test,{b.port},0,10", "host-record=b.test,127.0.0.1"]
                )
                statuses: list[int] = []

                async def moved() -> bool:
                    statuses.append(await send(port, "web"))
                    return bool(b.requests)

                await until(moved)
                assert set(statuses) == {200}

                # DNS goes away: the last good addresses keep serving, and the name says it is stale.
                dns.stop()

                async def stale() -> bool:
                    statuses.append(await send(port, "web"))
                    state = (await curl(f"{d.admin}/namer_state/io.l5d.dnssrv.json")).json()
                    assert isinstance(state, dict)
                    return state["names"]["_http._tcp.web.test"]["state"] == "stale"

                await until(stale)
                before = len(b.requests)
                assert await send(port, "web") == 200 and len(b.requests) == before + 1
                assert set(statuses) == {200}
                clients = (await curl(f"{d.admin}/client_state.json")).json()
                assert isinstance(clients, dict)
                entry = clients["/#/io.l5d.dnssrv/_http._tcp.web.test"]
                assert entry["state"] == "bound" and entry["stale"] is True
                assert entry["staleAgeSecs"] is not None


async def test_inet_names_follow_dns_changes_without_restart(tmp_path: Path) -> None:
    # Two upstreams on the same port at two loopback addresses; the dtab names the host, DNS picks one.
    async with running_upstream(host="127.0.0.4") as a:  # noqa: SIM117 (b needs a's port)
        async with running_upstream(host="127.0.0.5", port=a.port) as b:
            async with running_dnsmasq(tmp_path, ["host-record=web.test,127.0.0.4"]) as dns:
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
                    assert await send(port, "web") == 200 and len(a.requests) == 1
                    await dns.set_records(["host-record=web.test,127.0.0.5"])
                    statuses: list[int] = []

                    async def moved() -> bool:
                        statuses.append(await send(port, "web"))
                        return bool(b.requests)

                    await until(moved, timeout=30)
                    assert set(statuses) == {200}
