"""The admin server: ``AdminHandler`` served by the project's HTTP/1.1 server on its own port.

Theory of operation
-------------------
``AdminServer.serve`` runs one ``Http1Server`` (``hostproxy.http.server``) whose handler is an
``AdminHandler``, inside its own nursery, and reports the bound ``(ip, port)`` through
``task_status.started`` (bind port 0 and read the port back).  Cancelling ``serve`` stops the
listener and every admin connection.  The admin server is separate from the routers' servers, so
a slow admin client never holds a routing connection; its own connections are capped
(``max_concurrent_requests``, which the health probes ``/admin/ping``, ``/live`` and ``/ready`` are
exempt from) and time out like any server's (a request body that stalls for
``request_body_timeout_s``, or a response its client has not taken in ``response_write_timeout_s``,
is cut off).  It listens on 127.0.0.1 unless
configured otherwise (``admin.ip``), and its control endpoints answer loopback peers only unless
``allow_remote_control`` (``admin.allowRemoteControl``) is set.
"""

from __future__ import annotations

from typing import Any

import trio

from hostproxy.admin.context import AdminContext
from hostproxy.admin.handlers import DELEGATE_TIMEOUT_S, AdminHandler
from hostproxy.http.server import Http1Server, ServerParams
from hostproxy.http.sockopts import SocketOptions

__all__ = ["AdminServer"]


class AdminServer:
    """Serve the admin endpoints of ``ctx`` on ``ip:port`` (port 0 picks a free port)."""

    def __init__(
        self,
        ctx: AdminContext,
        ip: str = "127.0.0.1",
        port: int = 9990,
        allow_remote_control: bool = False,
        *,
        security: Any = None,
        prometheus: Any = None,
        max_concurrent_requests: int = 64,
        delegate_timeout_s: float = DELEGATE_TIMEOUT_S,
        request_body_timeout_s: float = 10.0,
        response_write_timeout_s: float = 30.0,
        socket_options: SocketOptions | None = None,
        read_timeout_s: float | None = None,
        write_timeout_s: float | None = None,
        tls: Any = None,
        influxdb: bool = False,
    ) -> None:
        self.ctx = ctx
        #: ``admin.tls``'s ServerTls (None: plaintext): every accepted connection is wrapped in it.
        self.tls = tls
        # The HTTP layer appends one ``Via`` entry to every request it hands the handler.
        self.handler = AdminHandler(
            ctx,
            allow_remote_control=allow_remote_control,
            delegate_timeout_s=delegate_timeout_s,
            trusted_via_entries=1,
            security=security,
            prometheus=prometheus,
            influxdb=influxdb,
        )
        self.params = ServerParams(
            ip=ip,
            port=port,
            router_label="admin",
            max_concurrent_requests=max_concurrent_requests,
            idle_timeout_s=60.0 if read_timeout_s is None else min(60.0, read_timeout_s),
            request_head_timeout_s=10.0,
            request_body_timeout_s=(
                request_body_timeout_s
                if read_timeout_s is None
                else min(request_body_timeout_s, read_timeout_s)
            ),
            response_write_timeout_s=response_write_timeout_s,
            max_initial_line_kb=16,
            # Probes get their answer however many slow clients hold the other slots.
            uncapped_paths=frozenset({"/admin/ping", "/live", "/ready"}),
            socket_options=socket_options,
            read_timeout_s=read_timeout_s,
            write_timeout_s=write_timeout_s,
        )
        self.http = Http1Server(self.handler, self.params)
        self.address: tuple[str, int] | None = None

    def statistics(self) -> dict[str, object]:
        return {"address": self.address, **self.http.statistics(), **self.handler.statistics()}

    def __repr__(self) -> str:
        return f"<AdminServer on {self.address} {self.handler!r}>"

    async def serve(
        self, *, task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve until cancelled; reports the first bound ``(ip, port)`` via ``task_status``."""
        async with trio.open_nursery() as nursery:
            listeners = None
            if self.tls is not None:
                from hostproxy.http.server import bind_listeners
                from hostproxy.tls import TlsListener

                p = self.params
                listeners = [
                    TlsListener(lst, self.tls)
                    for lst in bind_listeners(p.ip, p.port, options=p.socket_options)
                ]
            addresses: list[tuple[str, int]] = await nursery.start(self.http.serve, listeners)
            self.address = addresses[0]
            task_status.started(self.address)
