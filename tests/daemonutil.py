"""Start a real hostproxy daemon inside the test's trio run, and talk to it with real curl.

``running_daemon(yaml_text)`` validates the text exactly as ``hostproxy run`` does, starts the daemon
(ports may be 0: the bound addresses are read back), and stops it on exit.  ``curl(...)`` runs the real
curl binary without blocking the event loop and returns status, headers and body.
"""

from __future__ import annotations

import contextlib
import json
import socket
import urllib.parse
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import h11
import trio

from hostproxy.config import load_config
from hostproxy.daemon import Daemon


@dataclass
class Running:
    daemon: Daemon

    def port(self, router: str, i: int = 0) -> int:
        return self.daemon.addresses[router][i][1]

    @property
    def admin(self) -> str:
        assert self.daemon.admin_address is not None
        ip, port = self.daemon.admin_address
        return f"http://{ip}:{port}"


@contextlib.asynccontextmanager
async def running_daemon(yaml_text: str) -> AsyncIterator[Running]:
    config = load_config(yaml_text, source="test.yaml")
    daemon = Daemon(config)
    async with trio.open_nursery() as nursery:
        await nursery.start(daemon.run)
        try:
            yield Running(daemon)
        finally:
            daemon.request_shutdown()


@dataclass
class CurlResult:
    status: int
    headers: dict[str, str]
    body: bytes
    exit_code: int

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    @property
    def l5d_err(self) -> str | None:
        v = self.header("l5d-err")
        return urllib.parse.unquote_plus(v, encoding="iso-8859-1") if v is not None else None

    def json(self) -> object:
        return json.loads(self.body)


async def curl(url: str, *args: str, timeout: float = 20) -> CurlResult:
    """Run real curl; ``-s -i`` is added. Headers of the last response are parsed (lowercased names)."""
    with trio.fail_after(timeout):
        proc = await trio.run_process(
            ["curl", "-s", "-i", "--max-time", str(int(timeout)), *args, url],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    out = proc.stdout
    status, headers, body = 0, {}, b""
    # Skip 100 Continue and similar interim heads.
    while out.startswith(b"HTTP/"):
        head, _, rest = out.partition(b"\r\n\r\n")
        lines = head.decode("iso-8859-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        body = rest
        if status >= 200:
            break
        out = rest
    return CurlResult(status, headers, body, proc.returncode)


def fs_config(
    disco: Path, *, extra_router: str = "", dtab: str = "/svc => /#/io.l5d.fs;", server_extra: str = ""
) -> str:
    """A daemon config: the admin server and one HTTP router ``out`` (``dtab``; more lines indented by 4)
    on free ports, and the fs namer on ``disco``. ``server_extra``: keys of the router's server
    (indented by 4); ``extra_router``: another router entry. Keys of router ``out`` may be appended to
    the text (indented by 2) when there is no ``extra_router``."""
    return f"""
admin: {{ip: 127.0.0.1, port: 0}}
namers:
- kind: io.l5d.fs
  rootDir: {disco}
routers:
- protocol: http
  label: out
  dtab: |
    {dtab}
  servers:
  - ip: 127.0.0.1
    port: 0
{server_extra}
{extra_router}
"""


@dataclass
class Exchange:
    """One request's answer over a raw keep-alive connection (:func:`keepalive_gets`)."""

    status: int
    body: bytes
    close: bool  # the proxy asked to close the connection after it


def keepalive_gets(port: int, hosts: Sequence[str], *, reconnect: bool = False) -> list[Exchange]:
    """``GET /`` for each Host in ``hosts``, one after another over one keep-alive connection to
    127.0.0.1:``port`` (blocking: run it in a thread). When the proxy asks to close, stop there, or with
    ``reconnect`` go on over a new connection."""
    out: list[Exchange] = []
    s: socket.socket | None = None
    conn = h11.Connection(h11.CLIENT)
    try:
        for host in hosts:
            if s is None:
                s = socket.create_connection(("127.0.0.1", port), timeout=10)
                conn = h11.Connection(h11.CLIENT)
            s.sendall(conn.send(h11.Request(method="GET", target="/", headers=[("Host", host)])))
            s.sendall(conn.send(h11.EndOfMessage()))
            status, body, close = 0, b"", False
            while True:
                ev = conn.next_event()
                if ev is h11.NEED_DATA:
                    conn.receive_data(s.recv(65536))
                elif isinstance(ev, h11.Response):
                    status = ev.status_code
                    close = any(n == b"connection" and b"close" in v.lower() for n, v in ev.headers)
                elif isinstance(ev, h11.Data):
                    body += ev.data
                elif isinstance(ev, h11.EndOfMessage):
                    break
            out.append(Exchange(status, body, close))
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                if not reconnect:
                    break
                s.close()
                s = None
            else:
                conn.start_next_cycle()
    finally:
        if s is not None:
            s.close()
    return out
