"""Helpers for the lifecycle tests: a real ``python -m hostproxy run CFG`` subprocess and a tiny client.

``DaemonProc`` starts the daemon as its own process (signals, exit codes and sd_notify are real), reads
its JSON log lines, and always stops it. ``get`` sends one HTTP/1.1 request with h11 over a fresh or
given connection and says exactly how it ended: a response, a refused connection, or a connection cut
before the response was complete. This module holds no tests.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h11
import trio

ROOT = Path(__file__).resolve().parents[1]


class DaemonProc:
    def __init__(self, proc: subprocess.Popen[bytes], log_path: Path) -> None:
        self.proc = proc
        self.log_path = log_path
        self.started: dict[str, Any] = {}

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        out = []
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return []
        for line in text.splitlines():
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if isinstance(ev, dict) and (name is None or ev.get("event") == name):
                out.append(ev)
        return out

    async def wait_event(
        self,
        name: str,
        *,
        count: int = 1,
        timeout: float = 20,
        where: Callable[[dict[str, Any]], bool] = lambda e: True,
    ) -> dict[str, Any]:
        with trio.fail_after(timeout):
            while True:
                found = [e for e in self.events(name) if where(e)]
                if len(found) >= count:
                    return found[count - 1]
                if self.proc.poll() is not None:
                    raise AssertionError(
                        f"daemon exited ({self.proc.returncode}) before {name}:\n{self.log()}"
                    )
                await trio.sleep(0.05)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def port(self, router: str, i: int = 0) -> int:
        return int(self.started["routers"][router][i][1])

    @property
    def admin(self) -> str:
        ip, port = self.started["admin"]
        return f"http://{ip}:{port}"

    @property
    def admin_port(self) -> int:
        return int(self.started["admin"][1])

    def send(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    async def wait_exit(self, timeout: float = 30) -> int:
        with trio.fail_after(timeout):
            while self.proc.poll() is None:
                await trio.sleep(0.05)
        return self.proc.returncode


@contextlib.asynccontextmanager
async def daemon_proc(
    cfg: Path,
    *,
    env: dict[str, str] | None = None,
    argv_prefix: list[str] | None = None,
    pass_fds: tuple[int, ...] = (),
    wait_started: bool = True,
    name: str = "daemon",
) -> AsyncIterator[DaemonProc]:
    """Run ``python -m hostproxy run cfg``; yields once ``daemon.started`` is logged; always stopped."""
    log_path = cfg.parent / f"{name}.log"
    full_env = {
        k: v for k, v in os.environ.items() if not k.startswith(("NOTIFY_SOCKET", "LISTEN_", "WATCHDOG_"))
    }
    full_env.update(env or {})
    full_env["PYTHONPATH"] = str(ROOT)
    argv = [*(argv_prefix or [sys.executable]), "-m", "hostproxy", "run", str(cfg)]
    with open(log_path, "wb") as logf:
        proc = subprocess.Popen(
            argv, stdout=logf, stderr=logf, cwd=str(ROOT), env=full_env, pass_fds=pass_fds
        )
    d = DaemonProc(proc, log_path)
    try:
        if wait_started:
            d.started = await d.wait_event("daemon.started")
        yield d
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)


# -- a minimal HTTP/1.1 client -------------------------------------------------------------------------


@dataclass
class Result:
    outcome: str  # "ok" (a whole response), "refused", "cut" (connection ended mid-exchange), "timeout"
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    error: str = ""


async def connect(port: int, host: str = "127.0.0.1") -> trio.SocketStream:
    return await trio.open_tcp_stream(host, port)


async def exchange(
    stream: trio.SocketStream,
    path: str,
    *,
    host: str = "web",
    method: str = "GET",
    headers: list[tuple[str, str]] | None = None,
    body: bytes | None = None,
    timeout: float = 15,
) -> tuple[Result, bool]:
    """One request on ``stream``; returns the result and whether the connection may be reused."""
    conn = h11.Connection(h11.CLIENT)
    hdrs = [("host", host), *(headers or [])]
    if body is not None:
        hdrs.append(("content-length", str(len(body))))
    try:
        with trio.fail_after(timeout):
            data = conn.send(h11.Request(method=method, target=path, headers=hdrs))
            if body:
                data += conn.send(h11.Data(data=body))
            data += conn.send(h11.EndOfMessage())
            await stream.send_all(data)
            resp: h11.Response | None = None
            parts: list[bytes] = []
            while True:
                ev = conn.next_event()
                if ev is h11.NEED_DATA:
                    chunk = await stream.receive_some(65536)
                    conn.receive_data(chunk)
                    continue
                if isinstance(ev, h11.Response):
                    resp = ev
                elif isinstance(ev, h11.Data):
                    parts.append(bytes(ev.data))
                elif isinstance(ev, h11.EndOfMessage):
                    break
                elif isinstance(ev, h11.ConnectionClosed):
                    return Result("cut", error="closed before a response"), False
    except trio.TooSlowError:
        return Result("timeout"), False
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError, h11.RemoteProtocolError) as e:
        return Result("cut", error=str(e)), False
    assert resp is not None
    h = {n.decode().lower(): v.decode("latin-1") for n, v in resp.headers}
    reusable = (
        conn.our_state is h11.DONE and conn.their_state is h11.DONE and "close" not in h.get("connection", "")
    )
    return Result("ok", resp.status_code, h, b"".join(parts)), reusable


async def get(port: int, path: str, **kw: Any) -> Result:
    """One request on a fresh connection."""
    try:
        stream = await connect(port)
    except OSError as e:
        return Result("refused", error=str(e))
    try:
        result, _ = await exchange(stream, path, **kw)
        return result
    finally:
        await stream.aclose()


async def admin_post(port: int, path: str) -> Result:
    return await get(port, path, method="POST", host=f"127.0.0.1:{port}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_disco(disco: Path, name: str, *ports: int) -> None:
    disco.mkdir(exist_ok=True)
    tmp = disco / f".{name}.tmp"
    tmp.write_text("".join(f"127.0.0.1 {p}\n" for p in ports))
    tmp.rename(disco / name)


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.rename(path)


def config(
    disco: Path,
    *,
    port: int = 0,
    dtab: str = "/svc => /#/io.l5d.fs;",
    extra_router: str = "",
    interpreter: str = "",
    server_extra: str = "",
    grace_ms: int = 10000,
    top: str = "",
    router_extra: str = "",
) -> str:
    return f"""
admin: {{ip: 127.0.0.1, port: 0, shutdownGraceMs: {grace_ms}}}
namers:
- kind: io.l5d.fs
  rootDir: {disco}
{top}
routers:
- protocol: http
  label: out
  dtab: |
    {dtab}
{interpreter}
{router_extra}
  servers:
  - {{ip: 127.0.0.1, port: {port}{server_extra}}}
{extra_router}
"""
