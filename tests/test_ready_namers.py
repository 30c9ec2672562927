"""/ready waits for namers' first answers, but only up to a bound: startup never blocks on a backend."""

from __future__ import annotations

import pytest
import trio
from k8s_api.server import open_fake_api

import hostproxy.daemon as daemon_mod
from tests.daemonutil import curl, running_daemon


async def test_ready_waits_for_pending_names_up_to_a_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(daemon_mod, "NAMER_READY_BOUND_S", 3.0)
    async with open_fake_api() as api:
        api.hang = True  # requests are read and never answered: the name stays pending
        cfg = f"""
admin: {{ip: 127.0.0.1, port: 0}}
namers:
- kind: io.l5d.k8s
  host: 127.0.0.1
  port: {api.port}
routers:
- protocol: http
  label: out
  dtab: /svc => /#/io.l5d.k8s/default/http;
  bindingTimeoutMs: 300
  servers: [{{ip: 127.0.0.1, port: 0}}]
"""
        async with running_daemon(cfg) as d:
            r = await curl(f"http://127.0.0.1:{d.port('out')}/", "-H", "Host: web")
            assert r.status == 502 and "binding timeout" in (r.l5d_err or "")
            # Just started, and a name is waiting for its first answer: not ready yet.
            assert (await curl(f"{d.admin}/ready")).status == 503
            with trio.fail_after(10):
                while (await curl(f"{d.admin}/ready")).status != 200:
                    await trio.sleep(0.2)
