"""A real DNS server for tests: dnsmasq on a loopback port, with records from a config file.

Theory of operation: :class:`DnsServer` writes a dnsmasq config file (``srv-host=``, ``host-record=``
and any other dnsmasq lines), picks a free UDP port on 127.0.0.1 once (a restart keeps it, so resolvers
pointed at it keep working), and runs ``dnsmasq --no-daemon`` bound to 127.0.0.1 only, with no upstream
servers and no /etc/hosts: it answers only what the config holds. Names under ``local_domain``
(``test`` by default) that it does not know are NXDOMAIN; ``ready.<local_domain>`` always resolves, so
:meth:`DnsServer.ready` can tell when it answers. dnsmasq re-reads ``srv-host`` only at start, so
:meth:`DnsServer.set_records` rewrites the file and restarts the process. :func:`running_dnsmasq` is
an async context manager that always stops what it started.

Usage::

    async with running_dnsmasq(tmp_path, ["srv-host=_http._tcp.web.test,a.test,8080,0,10",
                                          "host-record=a.test,127.0.0.11"]) as dns:
        resolver_address = dns.address          # "127.0.0.1:<port>"
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import trio

DNSMASQ = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"


def free_dns_port() -> int:
    """A loopback port free for both UDP and TCP (dnsmasq listens on both)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", 0))
            port = u.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                try:
                    t.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no loopback port free for both UDP and TCP")


class DnsServer:
    """One dnsmasq process serving the lines of :attr:`records` on ``127.0.0.1:<port>``."""

    def __init__(
        self, workdir: Path, records: Sequence[str] = (), *, ttl: int = 1, local_domain: str = "test"
    ):
        self.workdir = workdir
        self.conf = workdir / "dnsmasq.conf"
        self.log = workdir / "dnsmasq.log"
        self.ttl = ttl
        self.local_domain = local_domain
        self.records: list[str] = list(records)
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.starts = 0

    @property
    def address(self) -> str:
        """``host:port`` as namers take it in ``dnsHosts``."""
        return f"127.0.0.1:{self.port}"

    def _write(self) -> None:
        lines = [
            f"local=/{self.local_domain}/",
            f"local-ttl={self.ttl}",
            f"host-record=ready.{self.local_domain},127.0.0.9",
            *self.records,
        ]
        self.conf.write_text("\n".join(lines) + "\n")

    def start(self) -> None:
        if self.proc is not None:
            raise RuntimeError("dnsmasq is already running; stop() it first")
        if not self.port:
            self.port = free_dns_port()
        self._write()
        args = [
            DNSMASQ,
            "--no-daemon",
            f"--port={self.port}",
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            "--no-resolv",
            "--no-hosts",
            f"--conf-file={self.conf}",
            "--pid-file=",
            "--log-queries",
        ]
        if os.geteuid() == 0:
            args.append("--user=root")
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        self.starts += 1

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    async def ready(self, timeout: float = 10.0) -> None:
        """Wait until the server answers ``ready.<domain>``; fail with its log if it died."""
        import dns.asyncresolver
        import dns.nameserver

        r = dns.asyncresolver.Resolver(configure=False)
        r.nameservers = [dns.nameserver.Do53Nameserver("127.0.0.1", self.port)]
        r.lifetime = 0.5
        r.cache = None
        with trio.fail_after(timeout):
            while True:
                if self.proc is None or self.proc.poll() is not None:
                    raise RuntimeError(f"dnsmasq is not running; its log:\n{self.log.read_text()}")
                try:
                    await r.resolve(f"ready.{self.local_domain}", "A")
                    return
                except Exception:
                    await trio.sleep(0.05)

    async def set_records(self, records: Sequence[str]) -> None:
        """Replace the records: rewrite the config and restart on the same port."""
        self.records = list(records)
        self.stop()
        self.start()
        await self.ready()


@asynccontextmanager
async def running_dnsmasq(
    workdir: Path, records: Sequence[str] = (), *, ttl: int = 1, local_domain: str = "test"
) -> AsyncIterator[DnsServer]:
    server = DnsServer(workdir, records, ttl=ttl, local_domain=local_domain)
    server.start()
    try:
        await server.ready()
        yield server
    finally:
        server.stop()
