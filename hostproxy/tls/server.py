"""Server-side TLS: the live context of one server (reloadable) and a listener that applies it.

Theory of operation
-------------------
:class:`ServerTls` owns the current generation (:class:`~hostproxy.tls.context.Loaded`) built from a
``servers[].tls`` section. :meth:`ServerTls.maybe_reload` compares the files' stat signature with the
one the generation was built from; on a change it builds a new context and swaps it in, or — when
the new files do not load (a key that does not match, a half-written file) — logs
``tls.reload.failed``, keeps the old generation (so does a new certificate that has already expired
while the one in use has not), and remembers the failed signature so it retries
only after the files change again. A connection takes the context current when it is accepted, and
keeps its TLS session for its whole life: a reload never touches established connections.

:class:`TlsListener` wraps any trio listener (``trio.SocketListener``): ``accept()`` returns at once
with a :class:`~hostproxy.tls.stream.TlsStream` whose handshake happens on the connection's first
read or write, in the connection's own task, so a slow or hostile handshake never blocks the accept
loop. A failed handshake closes only that connection and is counted by reason in
``ServerTls.statistics()["handshake_failures"]``. The listener exposes ``socket`` like
``trio.SocketListener``, so the servers' address reporting and ``stop_accepting`` work unchanged;
:meth:`TlsListener.wrap` wraps a stream accepted elsewhere (the servers' backlog drain).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import structlog
import trio

from hostproxy.config import model as m
from hostproxy.tls.context import (
    Loaded,
    TlsConfigError,
    build_server_context,
    check_not_expired,
    file_signature,
)
from hostproxy.tls.inspect import CertInfo
from hostproxy.tls.stream import REASONS, TlsStream

__all__ = ["DEFAULT_HANDSHAKE_TIMEOUT_S", "ServerTls", "TlsListener"]

log = structlog.get_logger("hostproxy.tls")

DEFAULT_HANDSHAKE_TIMEOUT_S = 10.0


class ServerTls:
    """The TLS settings of one server, loaded now (raises :class:`TlsConfigError`) and reloadable."""

    def __init__(
        self,
        config: m.ServerTls,
        *,
        alpn: Sequence[str] = (),
        router: str = "",
        key: str = "tls",
        handshake_timeout_s: float | None = DEFAULT_HANDSHAKE_TIMEOUT_S,
    ) -> None:
        self.config = config
        self.alpn = tuple(alpn)
        self.router = router
        self.key = key
        self.handshake_timeout_s = handshake_timeout_s
        self._loaded: Loaded = build_server_context(config, alpn=self.alpn, router=router, key=key)
        self._failed_signature: Any = None
        self.generation = 1
        self.last_reload_error: str | None = None
        self._stats = {"handshakes": 0, "reloads": 0, "reload_failures": 0}
        self._failures: dict[str, int] = {}

    # -- state ---------------------------------------------------------------------------------------

    @property
    def context(self) -> Any:
        """The ``ssl.SSLContext`` new connections use."""
        return self._loaded.context

    def certificates(self) -> list[CertInfo]:
        """The certificates of the generation in use (for ``/admin/tls.json``)."""
        return list(self._loaded.certificates)

    def statistics(self) -> dict[str, Any]:
        return {
            **self._stats,
            "generation": self.generation,
            "handshake_failures": dict(self._failures),
            "last_reload_error": self.last_reload_error,
        }

    def __repr__(self) -> str:
        return (
            f"<ServerTls {self.router} {self.config.cert_path} generation={self.generation} "
            f"handshakes={self._stats['handshakes']}>"
        )

    # -- reload --------------------------------------------------------------------------------------

    def maybe_reload(self) -> bool:
        """Rebuild the context if the files changed; True when a new generation is in use."""
        sig = file_signature([p for p, *_ in self._loaded.signature])
        if sig == self._loaded.signature or sig == self._failed_signature:
            return False
        try:
            loaded = build_server_context(self.config, alpn=self.alpn, router=self.router, key=self.key)
            check_not_expired(self._loaded, loaded, "server", f"{self.key}.certPath")
        except TlsConfigError as exc:
            self._failed_signature = sig
            self._stats["reload_failures"] += 1
            self.last_reload_error = str(exc)
            log.warning(
                "tls.reload.failed",
                router=self.router,
                role="server",
                error=str(exc),
                kept_generation=self.generation,
            )
            return False
        self._loaded = loaded
        self._failed_signature = None
        self.generation += 1
        self._stats["reloads"] += 1
        self.last_reload_error = None
        log.info(
            "tls.reload.complete",
            router=self.router,
            role="server",
            generation=self.generation,
            certificates=[c.subject for c in loaded.certificates if c.role == "server"],
        )
        return True

    # -- connections ---------------------------------------------------------------------------------

    def wrap(self, transport: trio.abc.Stream) -> TlsStream:
        """A server-side TLS stream over ``transport`` with the current context (handshake deferred)."""
        ssl_stream = trio.SSLStream(transport, self.context, server_side=True, https_compatible=True)
        return TlsStream(
            ssl_stream,
            handshake_timeout_s=self.handshake_timeout_s,
            on_failure=self._handshake_failed,
            on_success=self._handshake_done,
        )

    def _handshake_done(self, stream: TlsStream) -> None:
        self._stats["handshakes"] += 1

    def _handshake_failed(self, reason: str, exc: BaseException | None) -> None:
        assert reason in REASONS, reason
        self._failures[reason] = self._failures.get(reason, 0) + 1
        log.debug(
            "tls.handshake.failed",
            router=self.router,
            reason=reason,
            error=repr(exc.__cause__ or exc) if exc is not None else "timeout",
        )


class TlsListener(trio.abc.Listener[TlsStream]):
    """Accepts connections from ``transport_listener`` and wraps each in TLS with ``tls``'s current
    context; the handshake runs on the connection's first I/O."""

    def __init__(self, transport_listener: Any, tls: ServerTls) -> None:
        self.transport_listener = transport_listener
        self.tls = tls

    @property
    def socket(self) -> Any:
        """The listening socket (as ``trio.SocketListener.socket``)."""
        return self.transport_listener.socket

    async def accept(self) -> TlsStream:
        return self.tls.wrap(await self.transport_listener.accept())

    def wrap(self, stream: trio.abc.Stream) -> TlsStream:
        return self.tls.wrap(stream)

    async def aclose(self) -> None:
        await self.transport_listener.aclose()

    def __repr__(self) -> str:
        return f"<TlsListener {self.transport_listener!r} {self.tls!r}>"
