"""A small Kubernetes API client: GET a list, or stream a watch, over HTTP/1.1 (h11 over trio).

Theory of operation
-------------------
:class:`ApiServer` knows where the API is and how to authenticate: plain HTTP to ``host:port`` (a
``kubectl proxy`` beside the daemon, as Linkerd 1 did), or in cluster (:func:`in_cluster`): TLS to
``$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT`` verified with the service account's
``ca.crt`` (the certificate names that host, often an IP), and ``Authorization: Bearer`` with the
service account ``token``. The token file is projected and rotated by the kubelet, so
:class:`TokenFile` stats it before every request and re-reads it when it changed, and the caller
forces a re-read after a 401.

Every request opens its own connection (the namer makes few: one list per resync, one long-lived
watch). :meth:`ApiServer.get` reads a whole (bounded) response; :meth:`ApiServer.watch` yields the
status and then the body as it arrives. No response-header timeout is applied to watches: through
``kubectl proxy`` the headers of a watch arrive only with its first event; the caller bounds a watch
with its resync deadline instead.

Every foreign failure (``OSError``, TLS, trio stream errors, h11 protocol errors) is translated here,
once, into :class:`ApiUnavailable` with a message that says what failed where.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field

import h11
import trio

__all__ = [
    "DEFAULT_SA_DIR",
    "MAX_BODY",
    "ApiServer",
    "ApiUnavailable",
    "InClusterConfigError",
    "Response",
    "TokenFile",
    "WatchResponse",
    "in_cluster",
]

DEFAULT_SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
#: Largest list body accepted.
MAX_BODY = 64 * 1024 * 1024
_CHUNK = 65536


class ApiUnavailable(Exception):
    """The API server could not be reached or did not answer properly."""


class InClusterConfigError(ValueError):
    """In-cluster configuration is incomplete; the message says which part."""


class TokenFile:
    """A bearer token read from a file, re-read whenever the file changes (or :meth:`invalidate`)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._sig: tuple[int, int, int, int] | None = None
        self._token: str | None = None
        self.reads = 0

    def invalidate(self) -> None:
        self._sig = None

    def get(self) -> str:
        try:
            st = os.stat(self.path)
            sig = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
            if sig != self._sig or self._token is None:
                with open(self.path, encoding="utf-8") as f:
                    token = f.read().strip()
                if not token:
                    raise ApiUnavailable(
                        f"service account token file {self.path} is empty; check the pod's token volume"
                    )
                self._token, self._sig = token, sig
                self.reads += 1
        except OSError as e:
            raise ApiUnavailable(
                f"cannot read the service account token {self.path} ({e.strerror}); check the pod's token volume"
            ) from e
        return self._token


@dataclass
class Response:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


@dataclass
class WatchResponse:
    status: int
    headers: list[tuple[bytes, bytes]]
    _conn: h11.Connection = field(repr=False)
    _stream: trio.abc.Stream = field(repr=False)
    _where: str = field(repr=False)

    async def read_body(self, limit: int = MAX_BODY) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while (data := await self.next_chunk()) is not None:
            size += len(data)
            if size > limit:
                raise ApiUnavailable(f"{self._where}: response body larger than {limit} bytes")
            chunks.append(data)
        return b"".join(chunks)

    async def next_chunk(self) -> bytes | None:
        """The next piece of the body as it arrives; ``None`` at its end (a clean end of a watch)."""
        with _map_errors(self._where):
            while True:
                event = await _next_event(self._conn, self._stream)
                if isinstance(event, h11.Data):
                    if event.data:
                        return bytes(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    return None
                elif isinstance(event, h11.ConnectionClosed):
                    raise ApiUnavailable(f"{self._where}: connection closed before the response ended")


@contextmanager
def _map_errors(where: str) -> Iterator[None]:
    try:
        yield
    except ApiUnavailable:
        raise
    except (OSError, trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError) as e:
        raise ApiUnavailable(f"{where}: {_describe(e)}") from e


def _describe(e: BaseException) -> str:
    """What went wrong, in words, and what to check. trio reports TLS failures as a broken stream
    caused by the ``ssl`` error, so the cause is looked at first."""
    cause = e.__cause__ if isinstance(e, trio.BrokenResourceError) and e.__cause__ is not None else e
    if isinstance(cause, ssl.SSLCertVerificationError):
        return f"TLS certificate not trusted ({cause.verify_message}); check the service account ca.crt"
    if isinstance(cause, ssl.SSLError):
        return f"TLS failed ({cause.reason or cause})"
    if isinstance(e, trio.BrokenResourceError):
        return f"connection broken ({cause})" if cause is not e else "connection broken"
    if isinstance(e, trio.ClosedResourceError):
        return "connection closed"
    if isinstance(e, h11.RemoteProtocolError) and "peer closed" in str(e):
        return "connection closed before the response ended"
    if isinstance(e, h11.ProtocolError):
        return f"bad HTTP from the API server ({e})"
    if _refused(e):
        return "connection refused; is the API server (or kubectl proxy) running?"
    if isinstance(e, OSError):
        return str(e.strerror or e)
    return str(e)


def _refused(e: BaseException | None, depth: int = 0) -> bool:
    """Whether a connect failure (trio wraps one per address tried) was a refusal."""
    if e is None or depth > 4:
        return False
    if isinstance(e, ConnectionRefusedError):
        return True
    if isinstance(e, BaseExceptionGroup):
        return all(_refused(x, depth + 1) for x in e.exceptions)
    return _refused(e.__cause__, depth + 1)


async def _next_event(conn: h11.Connection, stream: trio.abc.Stream) -> object:
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await stream.receive_some(_CHUNK)
            conn.receive_data(bytes(data))
            continue
        return event


class ApiServer:
    """Where the API server is and how to talk to it."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None = None,
        token: TokenFile | None = None,
        connect_timeout: float = 10.0,
        user_agent: str = "hostproxy",
    ) -> None:
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self.token = token
        self.connect_timeout = connect_timeout
        self.user_agent = user_agent
        self.requests = 0

    @property
    def scheme(self) -> str:
        return "https" if self.ssl_context is not None else "http"

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def describe(self) -> str:
        return f"{self.scheme}://{self.authority}"

    def __repr__(self) -> str:
        return f"<ApiServer {self.describe()}{' with token' if self.token else ''}>"

    def _headers(self) -> list[tuple[str, str]]:
        headers = [
            ("Host", self.authority),
            ("Accept", "application/json"),
            ("User-Agent", self.user_agent),
        ]
        if self.token is not None:
            headers.append(("Authorization", f"Bearer {self.token.get()}"))
        return headers

    async def _connect(self, where: str) -> trio.abc.Stream:
        with _map_errors(where):
            with trio.move_on_after(self.connect_timeout) as cs:
                tcp = await trio.open_tcp_stream(self.host, self.port)
                if self.ssl_context is None:
                    return tcp
                tls = trio.SSLStream(tcp, self.ssl_context, server_hostname=self.host)
                try:
                    await tls.do_handshake()
                except BaseException:
                    await trio.aclose_forcefully(tcp)
                    raise
                return tls
            assert cs.cancelled_caught
            raise ApiUnavailable(f"{where}: connect timed out after {self.connect_timeout}s")

    @asynccontextmanager
    async def watch(self, path: str) -> AsyncIterator[WatchResponse]:
        """Send ``GET path`` and yield the response once its head arrived; the body is read through
        the response. The connection is closed on exit."""
        where = f"{self.describe()} GET {path.split('?', 1)[0]}"
        headers = self._headers()
        stream = await self._connect(where)
        self.requests += 1
        try:
            conn = h11.Connection(h11.CLIENT)
            with _map_errors(where):
                await stream.send_all(conn.send(h11.Request(method="GET", target=path, headers=headers)))
                await stream.send_all(conn.send(h11.EndOfMessage()))
                while True:
                    event = await _next_event(conn, stream)
                    if isinstance(event, h11.Response):
                        break
                    if isinstance(event, h11.ConnectionClosed):
                        raise ApiUnavailable(f"{where}: connection closed before a response")
            yield WatchResponse(event.status_code, list(event.headers), conn, stream, where)
        finally:
            await trio.aclose_forcefully(stream)

    async def get(self, path: str, limit: int = MAX_BODY) -> Response:
        """``GET path`` and read the whole response."""
        async with self.watch(path) as resp:
            body = await resp.read_body(limit)
            return Response(resp.status, resp.headers, body)


def in_cluster(
    environ: Mapping[str, str] | None = None,
    sa_dir: str = DEFAULT_SA_DIR,
    connect_timeout: float = 10.0,
    *,
    kind: str = "io.l5d.k8s",
) -> ApiServer:
    """The API server as seen from inside a pod: env host/port, service account CA and token
    (``kind``, the namer's, starts every error)."""
    env = os.environ if environ is None else environ
    host = env.get("KUBERNETES_SERVICE_HOST", "").strip()
    port_text = env.get("KUBERNETES_SERVICE_PORT", "").strip() or env.get("KUBERNETES_SERVICE_PORT_HTTPS", "")
    if not host or not port_text.strip():
        raise InClusterConfigError(
            f"{kind}: no namers[].host is set and KUBERNETES_SERVICE_HOST/KUBERNETES_SERVICE_PORT "
            "are not both set; set host/port (e.g. a kubectl proxy at localhost:8001) or run in a pod"
        )
    try:
        port = int(port_text)
        if not 1 <= port <= 65535:
            raise ValueError
    except ValueError:
        raise InClusterConfigError(
            f"{kind}: KUBERNETES_SERVICE_PORT={port_text!r} is not a port number 1-65535"
        ) from None
    ca = os.path.join(sa_dir, "ca.crt")
    token = os.path.join(sa_dir, "token")
    for what, p in (("CA certificate", ca), ("token", token)):
        if not os.path.isfile(p) or os.path.getsize(p) == 0:
            raise InClusterConfigError(
                f"{kind}: service account {what} {p} is missing or empty; mount the service account "
                "(automountServiceAccountToken) or set namers[].host"
            )
    try:
        ctx = ssl.create_default_context(cafile=ca)
    except (ssl.SSLError, OSError) as e:
        raise InClusterConfigError(f"{kind}: cannot load the CA certificate {ca} ({e})") from e
    return ApiServer(host, port, ssl_context=ctx, token=TokenFile(token), connect_timeout=connect_timeout)
