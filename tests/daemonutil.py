"""Start a real hostproxy daemon inside the test's trio run, and talk to it with real curl.

``running_daemon(yaml_text)`` validates the text exactly as ``hostproxy run`` does, starts the daemon
(ports may be 0: the bound addresses are read back), and stops it on exit.  ``curl(...)`` runs the real
curl binary without blocking the event loop and returns status, headers and body.
"""

from __future__ import annotations

import contextlib
import json
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

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
