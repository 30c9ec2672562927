"""Linkerd 1's per-host topology, end to end: two daemons as two "hosts" on loopback.

Host A (127.0.0.2, node-a) and host B (127.0.0.3, node-b) each run a hostproxy with an outgoing and an
incoming router, both reading service endpoints from the (fake) Kubernetes API. A request sent to A's
outgoing router for ``web`` — whose only pod runs on node-b — goes through the ``io.l5d.k8s.daemonset``
transformer to B's incoming router (the hostproxy on the pod's node), and B's ``io.l5d.k8s.localnode``
transformer delivers it to the local pod only. The daemons run as real processes, each with its own
``NODE_NAME`` from "the downward API".
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
from pathlib import Path

import trio
from k8s_api.objects import endpoints, service
from k8s_api.server import open_fake_api

from tests.daemonutil import curl
from tests.upstreams import running_upstream

HOSTS = {"a": "127.0.0.2", "b": "127.0.0.3"}


def free_port(host: str, taken: set[int]) -> int:
    """A port free on ``host`` now and not among ``taken`` (the ports this test already handed out,
    which are not held until their daemon binds them: the kernel may offer a released one again);
    added to ``taken``."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind((host, 0))
            p = s.getsockname()[1]
        if p not in taken:
            taken.add(p)
            return p
    raise RuntimeError(f"no free port on {host} outside {sorted(taken)}")


def free_on_both(taken: set[int]) -> int:
    """A port number free on both host addresses (the daemonset's incoming port is the same everywhere)."""
    for _ in range(50):
        p = free_port(HOSTS["a"], taken)
        try:
            with socket.socket() as s:
                s.bind((HOSTS["b"], p))
            return p
        except OSError:
            continue
    raise RuntimeError("no port free on both 127.0.0.2 and 127.0.0.3")


def on_node(obj: dict, node: dict[str, str]) -> dict:
    for subset in obj.get("subsets") or []:
        for addr in subset.get("addresses", []):
            addr["nodeName"] = node[addr["ip"]]
    return obj


def host_config(ip: str, api_port: int, out_port: int, in_port: int, admin_port: int) -> str:
    return f"""
admin: {{ip: {ip}, port: {admin_port}}}
namers:
- kind: io.l5d.k8s
  host: 127.0.0.1
  port: {api_port}
routers:
- protocol: http
  label: outgoing
  dtab: /svc => /#/io.l5d.k8s/default/http;
  interpreter:
    kind: default
    transformers:
    - kind: io.l5d.k8s.daemonset
      namespace: default
      port: incoming
      service: l5d
      hostNetwork: true
  servers: [{{ip: {ip}, port: {out_port}}}]
- protocol: http
  label: incoming
  dtab: /svc => /#/io.l5d.k8s/default/http;
  interpreter:
    kind: default
    transformers:
    - kind: io.l5d.k8s.localnode
      hostNetwork: true
  servers: [{{ip: {ip}, port: {in_port}}}]
"""


async def wait_ping(ip: str, port: int, proc: trio.Process) -> None:
    with trio.fail_after(20):
        while True:
            assert proc.returncode is None, f"daemon on {ip} exited with {proc.returncode}"
            r = await curl(f"http://{ip}:{port}/admin/ping", timeout=2)
            if r.status == 200:
                return
            await trio.sleep(0.1)


async def test_outgoing_sends_to_the_peer_hostproxy_which_delivers_locally(tmp_path: Path) -> None:
    async with open_fake_api() as api, running_upstream(host=HOSTS["b"]) as app:
        # Every port chosen once the upstream on 127.0.0.3 holds its own, and each unlike the others.
        taken = {app.port}
        in_port = free_on_both(taken)
        node = {HOSTS["a"]: "node-a", HOSTS["b"]: "node-b"}
        api.put("services", service("web", [("http", 80, "http")], ns="default"))
        api.put(
            "endpoints",
            on_node(endpoints("web", ready=[HOSTS["b"]], ports={"http": app.port}, ns="default"), node),
        )
        api.put("services", service("l5d", [("incoming", in_port, in_port)], ns="default"))
        api.put(
            "endpoints",
            on_node(
                endpoints("l5d", ready=[HOSTS["a"], HOSTS["b"]], ports={"incoming": in_port}, ns="default"),
                node,
            ),
        )
        procs: dict[str, trio.Process] = {}
        ports: dict[str, dict[str, int]] = {}
        logs = contextlib.ExitStack()
        try:
            for name, ip in HOSTS.items():
                ports[name] = {"out": free_port(ip, taken), "admin": free_port(ip, taken)}
                cfg = tmp_path / f"{name}.yaml"
                cfg.write_text(host_config(ip, api.port, ports[name]["out"], in_port, ports[name]["admin"]))
                env = dict(os.environ, NODE_NAME=f"node-{name}", POD_IP=ip)
                procs[name] = await trio.lowlevel.open_process(
                    [sys.executable, "-m", "hostproxy", "run", str(cfg)],
                    env=env,
                    stdout=logs.enter_context(open(tmp_path / f"{name}.log", "wb")),  # noqa: SIM115 (ExitStack closes)
                    stderr=logs.enter_context(open(tmp_path / f"{name}.err", "wb")),  # noqa: SIM115 (ExitStack closes)
                )
            for name, ip in HOSTS.items():
                await wait_ping(ip, ports[name]["admin"], procs[name])

            r = await curl(f"http://{HOSTS['a']}:{ports['a']['out']}/headers", "-H", "Host: web")
            assert r.status == 200, (r, (tmp_path / "a.err").read_text()[-3000:])
            seen = app.requests[-1]
            assert seen.header("l5d-dst-service") == "/svc/web"
            # B's incoming router delivered it: its client is the local-node view of the k8s name.
            assert (
                seen.header("l5d-dst-client")
                == "/%/io.l5d.k8s.localnode/node-b/#/io.l5d.k8s/default/http/web"
            )
            assert (seen.header("via") or "").count("hostproxy") == 2

            a_state = (await curl(f"http://{HOSTS['a']}:{ports['a']['admin']}/client_state.json")).json()
            assert isinstance(a_state, dict)
            ds_client = "/%/io.l5d.k8s.daemonset/default/incoming/l5d/#/io.l5d.k8s/default/http/web"
            assert a_state[ds_client]["addresses"] == [f"{HOSTS['b']}:{in_port}"], json.dumps(a_state)
        finally:
            for p in procs.values():
                if p.returncode is None:
                    p.send_signal(signal.SIGTERM)
            for p in procs.values():
                with trio.move_on_after(15):
                    await p.wait()
                if p.returncode is None:
                    p.kill()
                    await p.wait()
            logs.close()
