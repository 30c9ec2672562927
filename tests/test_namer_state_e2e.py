"""A daemon restarted while the Kubernetes API is down still routes (namerState.dir; Monzo's third lesson).

The first daemon learns the endpoints from the (fake) API server and saves them; the API server then
goes down and the daemon is restarted: it loads the saved endpoints, serves them as stale, and routes.
"""

from __future__ import annotations

from pathlib import Path

from k8s_api.objects import endpoints, service
from k8s_api.server import open_fake_api

from tests.daemonutil import curl, running_daemon
from tests.upstreams import running_upstream


def config(api_port: int, state_dir: Path) -> str:
    return f"""
admin: {{ip: 127.0.0.1, port: 0}}
namerState: {{dir: {state_dir}}}
namers:
- kind: io.l5d.k8s
  host: 127.0.0.1
  port: {api_port}
routers:
- protocol: http
  label: out
  dtab: /svc => /#/io.l5d.k8s/default/http;
  bindingTimeoutMs: 2000
  servers: [{{ip: 127.0.0.1, port: 0}}]
"""


async def test_restart_with_the_api_down_routes_to_saved_endpoints(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    async with open_fake_api() as api, running_upstream() as app:
        api.put("services", service("web", [("http", 80, "http")], ns="default"))
        api.put("endpoints", endpoints("web", ready=["127.0.0.1"], ports={"http": app.port}, ns="default"))
        async with running_daemon(config(api.port, state_dir)) as d:
            r = await curl(f"http://127.0.0.1:{d.port('out')}/", "-H", "Host: web")
            assert r.status == 200
        # Stopping the daemon saved what it knew.
        assert (state_dir / "io.l5d.k8s.json").exists()

        await api.go_down()
        async with running_daemon(config(api.port, state_dir)) as d:
            r = await curl(f"http://127.0.0.1:{d.port('out')}/", "-H", "Host: web")
            assert r.status == 200, r
            state = (await curl(f"{d.admin}/namer_state/io.l5d.k8s.json")).json()
            assert isinstance(state, dict)
            assert state["names"]["default/http/web"]["state"] == "stale"
        assert len(app.requests) == 2
