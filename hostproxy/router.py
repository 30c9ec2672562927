"""The HTTP router: identify → bind → pick a client → forward, and label every failure.

Theory of operation
-------------------
One ``HttpRouter`` per ``routers[]`` entry; its servers call :meth:`HttpRouter.handle` for every
request. The steps, each observable:

1. **Context.** ``clearContext`` strips inbound ``l5d-*``; ``l5d-ctx-dtab`` and ``l5d-dtab`` become the
   request's local dtab (a bad one → 400, cause ``identification``).
2. **Identification.** The identifier chain names the request (``/svc/users``); failure → 400.
3. **Binding.** The router's ``Binder`` returns the cached bound tree for (local dtab, name), recomputed
   only when a namer it consulted changed. A pending binding waits for namers up to
   ``bindingTimeoutMs``. ``Neg``/``Fail``/``Empty`` → 502 ``naming/neg`` with the dtabs in the body; a
   namer error → 502 ``naming/failed``; an address override refused on a non-loopback server → 400.
4. **Client.** A union picks one branch by weight; the leaf's id names the client, created on first use
   and kept in a bounded cache that closes clients idle for ``bindingCache.idleTtlSecs``.
5. **Forwarding.** ``l5d-dst-*``, ``l5d-ctx-*``, the ``tracePropagator``'s trace headers and ``l5d-reqid``
   are set (:mod:`hostproxy.routing.tracectx`); the client sends the request
   before the request's deadline — the stricter of an inbound ``l5d-ctx-deadline`` and
   ``service.totalTimeoutMs`` from now, which is also what goes downstream as ``l5d-ctx-deadline``;
   connection-level failures map to Linkerd's statuses with an ``l5d-err`` naming the endpoint.
6. **Retries.** Each service has one :class:`~hostproxy.retry.RetryPolicy` (its budget, backoff and
   classifier), built on first use and cached with the service's params. A request body with a known
   length up to the retry buffer is buffered and every attempt sends a fresh copy; a larger body is
   streamed once and never retried, and so is a chunked one on HTTP/1.1. On HTTP/1.1 the retry buffer
   is the router's ``streamAfterContentLengthKB`` (5 KB), as Linkerd buffers such bodies (every body
   with a length when ``streamingEnabled`` is false); on h2 the service's ``retryBufferSize``, and a
   body with no length (gRPC) is kept as it streams (:class:`~hostproxy.retry.ReplayableStream`) and
   can be sent again while what was sent of it fits the buffer. After an attempt the policy decides: a
   response (or error) the classifier calls retryable — ``l5d-retryable: true`` from a downstream
   proxy included — is sent again after the backoff delay while the budget and the deadline allow.
   *Requeues* (connect failures: the request never left) happen one level down, in
   :class:`~hostproxy.client.Client`, with ``client.requeueBudget``; the policy here is built without
   a requeue budget, so nothing is requeued twice. Metrics
   ``service/<svc>/retries/{total,budget_exhausted,per_request,budget}``.

``maxConcurrentRequests`` on the router caps requests in flight over all of its servers (HTTP/1.1 and
HTTP/2 alike; a request is in flight until its response body ended): the excess is answered 503
``overload`` at once, without a queue.

Every request is counted under the server, the service (bound names only; others under ``unbound`` plus
a bounded top-N) and the client, with at most one failure cause. A 5xx that the application returned
passes through unchanged (no ``l5d-err``) and is counted as ``upstream/5xx``.
"""

from __future__ import annotations

import functools
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import structlog
import trio

from dtab import Dtab, Path
from dtab.bind import AddrFailed, AddrPending, BoundName
from dtab.delegate import delegate
from dtab.tree import Leaf, Union, exact_weight, show_tree
from hostproxy.accesslog import STRUCTLOG_TARGETS, AccessLog
from hostproxy.balancer import WeightedChoice
from hostproxy.causes import Cause
from hostproxy.classifier import GrpcClassifier, HttpClassifier, ResponseClass, grpc_status_of
from hostproxy.client import Client, plugin_mapping
from hostproxy.config import client_params_for, service_params_for
from hostproxy.http.compress import Compression, compress_response, no_transform
from hostproxy.http.errors import (
    CAUSE_STATUS,
    RequestBodyError,
    UpstreamError,
    error_response,
    request_body_error_response,
    request_body_timeout_response,
)
from hostproxy.http.message import Body, Headers, NeverIndexedHeaders, Request, Response, never_indexed_of
from hostproxy.http.server import ConnInfo
from hostproxy.metrics import MetricsRegistry, PromId
from hostproxy.metrics.registry import CLIENT_CLOSED
from hostproxy.retry import (
    DEADLINE_HEADER,
    ReplayableStream,
    RetryAttempts,
    RetryPolicy,
    Verdict,
    buffer_body_for_retry,
    deadline_from_headers,
    effective_deadline,
)
from hostproxy.routing import diagtrace
from hostproxy.routing.binder import Binder, BindingCacheConfig, ClientCache
from hostproxy.routing.context import (
    AddressOverridePolicy,
    DtabParseCache,
    RequestDtabError,
    dst_fields,
    forwarded_headers,
    forwarded_plain,
    inbound_scan,
    show_bytes,
)
from hostproxy.routing.identifiers import Unidentified, build_identifiers, unknown_destination_message
from hostproxy.routing.tracectx import propagator_for

if TYPE_CHECKING:  # TLS is imported only when a client uses it
    from hostproxy.tls import ClientTlsCache

log = structlog.get_logger("hostproxy.router")


def _timeout_reason(
    deadline: Any, inbound: Any, total_timeout_ms: int | None, server_timeout_ms: int | None
) -> str:
    """What a request that reached ``deadline`` exceeded: the request's own deadline when it was the
    strictest, else ``totalTimeoutMs`` or the server's ``timeoutMs`` (the shorter one)."""
    if inbound is not None and inbound.deadline_ns <= deadline.deadline_ns:
        return f"exceeded the request's deadline ({DEADLINE_HEADER})"
    if server_timeout_ms is not None and (total_timeout_ms is None or server_timeout_ms < total_timeout_ms):
        return f"exceeded the server's timeoutMs ({server_timeout_ms} ms)"
    return f"exceeded totalTimeoutMs ({total_timeout_ms} ms)"


def _client_left(req: Request, conn: ConnInfo | None) -> bool:
    """Whether a request was cancelled because its client left: it reset its h2 stream, or closed its
    connection (the HTTP/1.1 server's ``check_client``). Asked only once the request failed."""
    return req.client_reset or (conn is not None and conn.client_gone())


def _answer_cause(status: int, grpc_status: int | None) -> Cause | None:
    """The failure cause of an answer taken for a failure (by the classifier, or by a retry): the
    application's 5XX, or a gRPC error; None for another status the classifier refused."""
    if 500 <= status < 600:
        return Cause.UPSTREAM_5XX
    return Cause.UPSTREAM_GRPC if grpc_status is not None else None


def _not_retried_note(
    reason: str, service: Path, body: Body, stream: ReplayableStream | None, policy: RetryPolicy, h2: bool
) -> str | None:
    """Why a failure the classifier would have retried was not, as a last line of its ``l5d-err``;
    None when there is nothing to add (it was not retryable, or the client had gone)."""
    buffer_bytes = policy.buffer_bytes
    if reason == "body_not_replayable":
        where = "service.retryBufferSize.requestBytes" if h2 else "the router's streamAfterContentLengthKB"
        if stream is not None:
            return (
                f"not retried: more of its request body than the {buffer_bytes}-byte retry buffer had been "
                f"sent ({where})"
            )
        if body.content_length is None:
            return (
                "not retried: its request body was chunked (no Content-Length), and a chunked body is never "
                "kept for a retry"
            )
        return (
            f"not retried: its request body ({body.content_length} bytes) was streamed, not kept for a retry "
            f"(bodies up to {buffer_bytes} bytes are: {where})"
        )
    if reason == "budget_exhausted":
        return f"not retried: the retry budget of {service} is spent (service.retries.budget)"
    if reason == "deadline":
        return "not retried: the next attempt would have started after the request's deadline"
    if reason == "request_limit":
        return f"not retried: it was already retried {policy.max_retries_per_request} times"
    return None


def cause_of(e: UpstreamError) -> Cause:
    return Cause(e.cause) if e.cause in Cause._value2member_map_ else Cause.PROXY_INTERNAL


class _IdentReq:
    """What identifiers see: the request with the inbound context already taken out."""

    __slots__ = ("method", "target", "headers", "http_version", "authority")

    def __init__(self, req: Request, headers: list[tuple[bytes, bytes]]) -> None:
        self.method = req.method
        self.target = req.target
        self.headers = headers
        self.http_version = req.http_version
        self.authority = req.authority


_DEADLINE = DEADLINE_HEADER.encode("ascii")
_XFCC = b"x-forwarded-client-cert"
_RETRYABLE = b"l5d-retryable"
_TRACE_BODY_LIMIT = 1 << 20  # a traced response body larger than this is reported, not shown


def _always_ok(_status: int, _head: Any, _trailers: Any) -> bool:
    return True


class _Service:
    """What the router caches per service name: params, retry policy and its counters, the
    service's request stats (what ``scope.service(name, bound=True)`` returns for it, every time),
    and the l5d-dst-* fields last forwarded (printed once per residual and client, not per request)."""

    __slots__ = (
        "params",
        "policy",
        "http_classifier",
        "grpc_classifier",
        "judge",
        "retries_total",
        "budget_exhausted",
        "per_request",
        "per_request_add_at",
        "registry",
        "stats",
        "dst_service",
        "residual",
        "dst_residual",
        "dst_sets",
        "sets_client",
    )

    def __init__(self, service: Path, params: Any, policy: RetryPolicy, svc_stats: Any) -> None:
        self.stats = svc_stats
        self.dst_service = show_bytes(service)  # the l5d-dst-service value
        # The last bound residual and its l5d-dst-residual value (None: there is none to send).
        self.residual: Path | None = None
        self.dst_residual: bytes | None = None
        # The l5d-dst-* fields forwarded for the last residual and the client (its l5d-dst-client
        # value) they were made for (see ``HttpRouter._forward``).
        self.dst_sets: tuple[tuple[bytes, bytes], ...] = ()
        self.sets_client: bytes | None = None
        self.params = params
        self.policy = policy
        # HTTP classifiers never retry a response below 500: those skip the policy entirely.
        classifier = policy.classifier
        self.http_classifier = isinstance(classifier, HttpClassifier)
        self.grpc_classifier: GrpcClassifier | None = (
            classifier if isinstance(classifier, GrpcClassifier) else None
        )
        # What the client's balancer and failure accrual count as a success: "not 5XX" (None: the
        # client's own check, no call per request) unless the classifier says otherwise.
        self.judge: Callable[[int, Any, Any], bool] | None = None
        if self.grpc_classifier is not None:
            grpc = self.grpc_classifier
            self.judge = lambda status, head, trailers: (
                grpc.classify("POST", status, None, grpc_status=grpc_status_of(head, trailers)).is_success
            )
        elif isinstance(classifier, HttpClassifier) and classifier.all_successful:
            self.judge = _always_ok
        reg, prefix = svc_stats._reg, svc_stats.prefix
        self.retries_total = reg.counter(f"{prefix}/retries/total")
        self.budget_exhausted = reg.counter(f"{prefix}/retries/budget_exhausted")
        # Whole retries the budget allows now (Linkerd's service ``retries/budget`` gauge).
        reg.gauge(f"{prefix}/retries/budget", policy.budget.balance)
        self.per_request = reg.stat(f"{prefix}/retries/per_request")
        self.per_request_add_at = self.per_request.hist.add_at
        self.registry = reg


#: Services whose params, retry policy and counters a router keeps (past it, see ``_service_entry``).
MAX_SERVICE_ENTRIES = 10_000
#: Distinct sets of service params whose services past the cap get a retry policy of their own.
MAX_OVERFLOW_POLICIES = 64


def _dtab_lines(d: Dtab) -> str:
    """The dtab in an error body, one dentry a line, weights as written (not rounded to two decimals)."""
    return "\n".join(f"  {e.prefix} => {show_tree(e.dst, exact_weight)}" for e in d) or "  (empty)"


class _Bound:
    __slots__ = ("tree", "consulted")

    def __init__(self, tree: Any, consulted: Any) -> None:
        self.tree = tree
        self.consulted = consulted


#: The system names a ``/$/inet`` host answers: ``/$/inet/<host>/<port>``, ``/$/fixedinet/<host>/<port>``
#: (the host the first label of the residual) and ``/$/io.buoyant.rinet/<port>/<host>`` (the second).
_INET_PREFIXES = (Path.read("/$/inet"), Path.read("/$/fixedinet"), Path.read("/$/io.buoyant.rinet"))
_RINET = _INET_PREFIXES[2]


def _names_host(prefix: Path, residual: Path, host: str) -> bool:
    """Whether a lookup of ``prefix + residual`` asked the resolver for ``host`` (the resolver's key:
    lowercased), whatever the case it was written in."""
    labels = residual.labels
    i = 1 if prefix == _RINET else 0
    if len(labels) <= i:
        return False
    return labels[i].decode("utf-8", "replace").lower() == host


def _transforming_bind(transformers: list[Any]) -> Callable[..., Any]:
    """``dtab.bind`` followed by the router's interpreter transformers (``/%/…`` client ids)."""
    from dtab.bind import bind
    from namers.transformers import apply_transformers

    def bind_fn(dtab: Dtab, path: Path, namers: Any, **kw: Any) -> Any:
        r = bind(dtab, path, namers, **kw)
        return _Bound(apply_transformers(r.tree, transformers), r.consulted)

    return bind_fn


_EMPTY_BODY = Body.empty()  # the server's body of a request without one
_SUCCESS_CLASS = b"l5d-success-class"  # the classifier's verdict on the response, as Linkerd sets it


class _Arrival:
    """What the router knows of the server a request arrived on (its params and local port): its
    request stats, ``clearContext`` and address-override policy. The router keeps the last one: every
    connection of a server shares the server's params object, so a router with one server looks them
    up once."""

    __slots__ = ("params", "port", "stats", "clear_context", "policy")

    def __init__(
        self, params: Any, port: int, stats: Any, clear_context: bool, policy: AddressOverridePolicy | None
    ) -> None:
        self.params = params
        self.port = port
        self.stats = stats
        self.clear_context = clear_context
        self.policy = policy


#: The largest request body an HTTP/1.1 router with ``streamingEnabled: false`` buffers (Linkerd's).
_UNSTREAMED_BODY_LIMIT = 2**31 - 1

#: Services whose settled binding the router remembers at most (``HttpRouter._settled``).
_SETTLED_MAX = 1024


class _Settled:
    """A service's last binding that settled on one leaf (a bound tree that is a single leaf whose
    address set is not pending, so nothing about it waits) and what the request path derives from it:
    the client id and the service's entry. ``Binder.bind`` returns the same outcome object for as long
    as the binding holds (a rebind, a namer update or a new base dtab makes a new one), and an
    outcome never changes, so the same object means the same leaf, client id and service. The router
    keeps one per service (``HttpRouter._settled``), so requests for several services interleaved
    each find theirs."""

    __slots__ = ("outcome", "leaf", "client_id", "entry")

    def __init__(self, outcome: Any, leaf: BoundName, client_id: str, entry: _Service) -> None:
        self.outcome = outcome
        self.leaf = leaf
        self.client_id = client_id
        self.entry = entry


class _Rec:
    """What the access log says of one request (allocated only when the access log is on)."""

    __slots__ = ("method", "path", "service", "client", "endpoint", "linkerd")

    def __init__(self, method: str, path: str) -> None:
        self.method = method
        self.path = path
        self.service: str | None = None
        self.client: str | None = None
        self.endpoint: str | None = None
        #: For Linkerd's line (``httpAccessLogFormat: linkerd``): host, peer, version, referer, user agent.
        self.linkerd: tuple[str | None, str | None, str | None, str | None, str | None] | None = None


def _linkerd_fields(
    req: Request, conn: ConnInfo
) -> tuple[str | None, str | None, str | None, str | None, str | None]:
    """What Linkerd's access line says of a request besides its method and target: the Host (an h2
    request's ``:authority``), the client's address, the HTTP version, Referer and User-Agent."""

    def text(name: bytes) -> str | None:
        v = req.headers.get(name)
        return v.decode("latin-1") if v is not None else None

    return (
        req.authority or text(b"host"),
        conn.peer[0],
        req.http_version,
        text(b"referer"),
        text(b"user-agent"),
    )


class _BodyFailureWatch:
    """A streamed response body that reports an upstream failure after the head was counted: a reset
    mid-body, or (with a gRPC classifier) a ``grpc-status`` in the trailers that the classifier
    calls a failure. A gRPC verdict also goes into the trailers as ``l5d-success-class``, as Linkerd
    puts it there for streamed h2 responses."""

    __slots__ = ("_body", "_stats", "_grpc", "_method", "_status", "_trailers", "_release")

    def __init__(
        self,
        body: Body,
        stats: list[Any],
        grpc: GrpcClassifier | None = None,
        method: str = "POST",
        status: int = 200,
        release: Callable[[], None] | None = None,
    ) -> None:
        self._body = body
        self._stats = stats
        self._release = release  # called once when the body ends, however it ends
        self._grpc = grpc
        self._method = method
        self._status = status
        self._trailers: Headers | None = None

    async def read_chunk(self) -> bytes | None:
        try:
            return await self._body.__anext__()
        except StopAsyncIteration:
            if self._grpc is not None:
                self._judge_trailers()
            self._ended()
            return None
        except UpstreamError:
            for st in self._stats:
                st.late_failure(Cause.UPSTREAM_RESET)
            self._stats = []
            self._ended()
            raise
        except BaseException:
            self._ended()
            raise

    def _ended(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()

    def _judge_trailers(self) -> None:
        grpc, self._grpc = self._grpc, None
        assert grpc is not None
        trailers = self._body.trailers
        code = grpc_status_of(None, trailers)
        rc = grpc.classify(self._method, self._status, None, grpc_status=code)
        ok = rc is ResponseClass.SUCCESS
        if not ok and code is not None:
            for st in self._stats:
                st.late_failure(Cause.UPSTREAM_GRPC)
            self._stats = []
        items = trailers.items() if trailers is not None else []
        secret = never_indexed_of(trailers)  # (fields the upstream sent never-indexed stay so)
        out = NeverIndexedHeaders(items, secret) if secret else Headers(items)
        out.set(_SUCCESS_CLASS, b"1.0" if ok else b"0.0")
        self._trailers = out

    @property
    def trailers(self) -> Any:
        return self._trailers if self._trailers is not None else self._body.trailers

    async def aclose(self) -> None:
        self._ended()
        await self._body.aclose()


def _h2_stall(params: Any) -> dict[str, Any]:
    """An h2 client's stall bound on request bodies: ``client.socketOptions.writeTimeoutMs`` when it
    is shorter than the default (an upstream that keeps its window at zero takes no bytes)."""
    from hostproxy.h2.upstream import H2ClientSettings

    write_ms = params.socket_options.write_timeout_ms
    if write_ms is None or write_ms / 1000 >= H2ClientSettings.stall_timeout_s:
        return {}
    return {"stall_timeout_s": write_ms / 1000}


class HttpRouter:
    """One configured HTTP router (see the module docstring)."""

    def __init__(
        self,
        cfg: Any,
        *,
        namers: list[Any],
        resolver: Any,
        metrics: MetricsRegistry,
        nursery: trio.Nursery,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        pool_factory: Callable[..., Any] | None = None,
        namer_pairs: list[tuple[Path, Callable[[Path], Any]]] | None = None,
        transformers: list[Any] = (),  # type: ignore[assignment]
        base_dtab: Dtab | None = None,
        client_tls: ClientTlsCache | None = None,
        recent: Any = None,
        spans: Any = None,
    ) -> None:
        self.cfg = cfg
        #: The ``io.l5d.zipkin`` telemeters' span recorder (``hostproxy.zipkin.AttemptRecorder``), given
        #: to every client (None: no trace export).
        self.spans = spans
        self._pool_factory = pool_factory
        self._client_tls = client_tls
        self._alpn = ("h2",) if cfg.kind == "h2" else ("http/1.1",)  # as hostproxy.tls.alpn_for_protocol
        self.label: str = cfg.label or cfg.kind
        self._rng = rng or random.Random()
        # ``tracePropagator``: what the forwarded request carries of the trace it arrived with.
        traceprop = getattr(cfg, "trace_propagator", None)
        self.trace_propagator = propagator_for(getattr(traceprop, "kind", None) or "io.l5d.default")
        # Called before each attempt of a request after its first (a requeue or a retry): one bound
        # method, made once.
        self._next_attempt = self._respan
        self._clock = clock
        self._nursery = nursery
        self.identifier = build_identifiers(
            [plugin_mapping(i) for i in cfg.identifier] or None,
            dst_prefix=Path.read(cfg.dst_prefix),
            protocol=cfg.kind,
            where=f"routers[{self.label}].identifier",
        )
        self.namers = list(namers)
        # Linkerd tries the last-configured namer first; namer transformers wrap their lookups.
        self.namer_pairs = (
            list(namer_pairs)
            if namer_pairs is not None
            else [(Path.read("/#") + n.prefix, n.lookup) for n in reversed(self.namers)]
        )
        self.transformers = list(transformers)
        self._system = resolver.system if resolver is not None else None
        bc = cfg.binding_cache
        self.binder = Binder(
            Dtab.read(cfg.dtab) if base_dtab is None else base_dtab,
            self.namer_pairs,
            config=BindingCacheConfig(
                paths=bc.paths,
                trees=bc.trees,
                bounds=bc.bounds,
                clients=bc.clients,
                idle_ttl_s=bc.idle_ttl_secs,
            ),
            clock=clock,
            system=self._system,
            bind_fn=_transforming_bind(self.transformers) if self.transformers else None,
        )
        self._unsubscribe: list[Callable[[], None]] = []
        for n in self.namers:
            prefix = Path.read("/#") + n.prefix
            self._unsubscribe.append(
                n.subscribe(lambda namer, key, prefix=prefix: self._namer_changed(namer, prefix, key))
            )
        if resolver is not None:
            self._unsubscribe.append(resolver.subscribe(self._inet_changed))
        self._changed = trio.Event()
        self._unsubscribe.append(self.binder.on_change(lambda _v: self._changed.set()))
        self.dtab_cache = DtabParseCache(bc.paths)
        self.clients: ClientCache[str, Client] = ClientCache(
            bc.clients,
            idle_ttl_s=bc.idle_ttl_secs,
            clock=clock,
            # Evicted (idle past its TTL, or the cache full): its metrics go at once, before a
            # client made again under the same name registers its own; its pools close behind.
            close=lambda _id, c: c.evict(self._nursery),
        )
        self.scope = metrics.router(label=self.label)
        prefix = "h2" if getattr(cfg, "h2_access_log", None) is not None else "http"
        self.access_log = AccessLog.from_config(
            getattr(cfg, f"{prefix}_access_log", None),
            key=f"{prefix}AccessLog",
            fmt=getattr(cfg, f"{prefix}_access_log_format", "hostproxy"),
            roll_policy=getattr(cfg, f"{prefix}_access_log_roll_policy", None),
            rotate_count=getattr(cfg, f"{prefix}_access_log_rotate_count", -1),
            append=getattr(cfg, f"{prefix}_access_log_append", True),
        )
        self._metrics = metrics
        self.register_metrics()
        #: ``compressionLevel`` (None: 0, off; see :mod:`hostproxy.http.compress`).
        self.compression = Compression.from_level(getattr(cfg, "compression_level", 0))
        self.recent = recent  # the io.l5d.recentRequests telemeter (None: off)
        self.binding_timeout_s = cfg.binding_timeout_ms / 1000
        self.max_err_bytes = getattr(cfg, "max_err_response_kb", 5120) * 1024
        self.max_err_header_bytes = getattr(cfg, "max_headers_kb", 8) * 1024
        # Each server's clearContext and address-override policy, by its configured (ip, port): two
        # servers may share an ip (an edge port with clearContext and an internal one). None: two
        # servers have that key (ephemeral ports), so the connection's own params say (see
        # ``_arrival_of``). A reload builds a new router, so settings apply to open connections too.
        self._server_settings: dict[tuple[Any, Any], tuple[bool, AddressOverridePolicy] | None] = {}
        default_port = getattr(cfg, "DEFAULT_PORT", None)
        for s in cfg.servers:
            key = (s.ip, s.port if s.port is not None else default_port)
            value = (bool(s.clear_context), AddressOverridePolicy.for_server(s.ip, s.allow_address_overrides))
            self._server_settings[key] = None if key in self._server_settings else value
        self._services: dict[Path, _Service] = {}
        #: The retry policies services past ``MAX_SERVICE_ENTRIES`` share, by their params (None: the
        #: one shared once ``MAX_OVERFLOW_POLICIES`` sets of params have their own).
        self._overflow_policies: dict[Any, RetryPolicy] = {}
        # Settled bindings by service (see ``_Settled``): bounded, emptied when full.
        self._settled: dict[Path, _Settled] = {}
        self._stats_clock = metrics.clock  # what the metrics record by (usually the router's clock)
        self._one_clock = self._stats_clock is clock  # (then one reading serves both)
        # h2 routers keep a request body with no Content-Length for retries as it streams (Linkerd's
        # retryBufferSize); HTTP/1.1 ones never retry a chunked request, as Linkerd.
        self._streams_replayable = cfg.kind == "h2"
        # HTTP/1.1 keeps a request body with a Content-Length for retries as Linkerd buffers it: up to
        # ``streamAfterContentLengthKB``, or whatever its length (Linkerd's fixed 2 GB - 1 limit) with
        # ``streamingEnabled: false``; h2 routers use the service's ``retryBufferSize`` instead.
        self._buffer_bytes: int | None = None
        if cfg.kind == "http":
            if not getattr(cfg, "streaming_enabled", True):
                self._buffer_bytes = _UNSTREAMED_BODY_LIMIT
            else:
                kb = getattr(cfg, "stream_after_content_length_kb", None)
                self._buffer_bytes = (kb if kb is not None else 5) * 1024
        self._arrival = _Arrival(None, 0, None, False, None)
        self.max_concurrent: int | None = getattr(cfg, "max_concurrent_requests", None)
        self.in_flight = 0
        self.rejected_overload = 0

    # -- lifecycle ----------------------------------------------------------------------------------

    def _namer_changed(self, namer: Any, prefix: Path, key: Path) -> None:
        """A namer's answer for ``key`` changed: drop the bindings that consulted it, and hand the
        client of that bound name, if there is one, its new address set at once, so that an idle
        client's state, balancer and endpoint pools follow the namer without waiting for a request.
        (A client whose id a transformer rewrote follows at its next request, as before.)"""
        canonical = namer.canonical_residual if getattr(namer, "normalizes_keys", False) else None
        self.binder.invalidate(prefix, key, canonical)
        client = self.clients.peek(str(prefix + key))
        table = getattr(namer, "table", None)
        if client is None or table is None:
            return
        state = table.get(tuple(key.labels))  # (not ``touch``: an evicted name is not watched again)
        if state is not None:
            client.update_addr(state.current_addr())

    def _inet_changed(self, resolver: Any, host: str) -> None:
        """A ``/$/inet`` host's answer changed (or it was evicted): drop the bindings that looked that
        host up (their bound leaves carry its address set, which a request hands its client), and no
        other, and hand the clients of that host their new address set at once, as
        :meth:`_namer_changed` does, so that an idle client's endpoints and pools follow."""
        self.binder.invalidate_matching(_INET_PREFIXES, lambda prefix, r: _names_host(prefix, r, host))
        for client_id, client in self.clients.items():
            addr = resolver.current(client_id, host)
            if addr is not None:
                client.update_addr(addr)

    def set_dtab(self, dtab: Dtab) -> None:
        self.binder.set_base_dtab(dtab)

    def register_metrics(self) -> None:
        """The metrics of this router that read its settings (registered when it is built; again for
        the running router when a reload that built its replacement was rejected)."""
        metrics = self._metrics
        # ``originator: true``: the gauge rt/<label>/originator = 1, which tells the stats of the router
        # that originates requests apart from those of linkers downstream of it.
        originator = f"rt/{self.label}/originator"
        if self.cfg.originator:
            metrics.gauge(
                originator,
                lambda: 1,
                PromId("hostproxy_router_originator", (("router", self.label),), "1: this router originates"),
            )
        else:
            metrics.remove_prefix(originator)
        self._access_log_metrics(metrics)

    def discard(self) -> None:
        """This router was built by a reload that was then rejected: it never served. It stops following
        the namers (which would otherwise keep it, and call it, for ever) and its access log is closed
        (so that the file's settings are the running router's again)."""
        for u in self._unsubscribe:
            u()
        self.access_log.close()

    def _access_log_metrics(self, metrics: Any) -> None:
        """``rt/<label>/access_log/{lines,write_errors,rolls,roll_errors}`` while the router logs to a
        file (rolls: of the file, which routers naming one file share)."""
        scope = f"rt/{self.label}/access_log"
        log = self.access_log
        if not log.enabled or log.path in STRUCTLOG_TARGETS:
            metrics.remove_prefix(scope)
            return
        labels = (("router", self.label),)
        for name, help_text in (
            ("lines", "access log lines written"),
            ("write_errors", "access log lines that could not be written"),
            ("rolls", "times the access log file was rolled"),
            ("roll_errors", "rolls of the access log file that failed (lines went on into the file)"),
        ):
            metrics.counter_fn(
                f"{scope}/{name}",
                lambda name=name: log.statistics().get(name, 0),
                PromId(f"hostproxy_access_log_{name}_total", labels, help_text),
            )

    def expire_idle(self) -> int:
        return self.clients.expire_idle()

    def close(self) -> None:
        for u in self._unsubscribe:
            u()
        self.clients.close_all()

    def retire(self) -> None:
        """This router was replaced by a reload: stop listening to namers, close its connections.

        Metrics stay: the replacement router reports under the same keys. Its access log is closed (a
        file the replacement names stays open through it; one it no longer names is closed).
        """
        for u in self._unsubscribe:
            u()
        self.access_log.close()
        for _cid, c in list(self.clients.items()):
            self._nursery.start_soon(c.close_pools)

    def retry_state(self) -> dict[str, Any]:
        return {str(name): s.policy.statistics() for name, s in self._services.items()}

    # -- admin views --------------------------------------------------------------------------------

    def client_state(self) -> dict[str, Any]:
        return {cid: c.state_json() for cid, c in self.clients.items()}

    # -- the request path ---------------------------------------------------------------------------

    def _respan(self, req: Request) -> None:
        """Give the next attempt of ``req`` a span of its own: a new span id with the same trace id,
        parent and flags (``TracePropagator.next_attempt``)."""
        req.headers = Headers._trusted(self.trace_propagator.next_attempt(req.headers, self._rng))

    def _err(self, status: int, cause: Cause, message: str, retryable: bool | None = None) -> Response:
        return error_response(
            status,
            cause.value,
            message,
            max_header_bytes=self.max_err_header_bytes,
            max_body_bytes=self.max_err_bytes,
            retryable=retryable,
        )

    def _arrival_of(self, conn: ConnInfo) -> _Arrival:
        params, port = conn.params, conn.local[1]
        ip = params.ip
        stats = self.scope.server(ip, port)
        settings = self._server_settings.get((ip, params.port))
        if settings is None:
            # Not one configured server's: the settings the server's params carry.
            allow = bool(getattr(params, "allow_address_overrides", None))
            settings = (
                bool(getattr(params, "clear_context", None)),
                AddressOverridePolicy.for_server(ip, allow),
            )
        arrival = _Arrival(params, port, stats, settings[0], settings[1])
        self._arrival = arrival
        return arrival

    async def handle(self, req: Request, conn: ConnInfo) -> Response:
        """Answer one request: steps 1–4 of the module docstring here, forwarding in :meth:`_forward`;
        the request is counted under its server, its service and (in ``_forward``) its client.

        The steps before forwarding are not a coroutine of their own: every coroutine between the
        server's loop and the pool is resumed when the response arrives. A binding that settled on
        one leaf is remembered with its client id and service entry (:class:`_Settled`), so a
        request bound to it again skips the checks and lookups that gave them.
        """
        clock = self._clock
        t0 = clock()
        arrival = self._arrival
        if arrival.params is not conn.params or arrival.port != conn.local[1]:
            arrival = self._arrival_of(conn)
        server_stats = arrival.stats
        server_stats.start()
        limit = self.max_concurrent
        if limit is not None and self.in_flight >= limit:
            self.rejected_overload += 1
            server_stats.finish(0.0, Cause.OVERLOAD, 503)
            return self._err(
                503, Cause.OVERLOAD, f"router {self.label} is at maxConcurrentRequests={limit}; retry later"
            )
        self.in_flight += 1
        recent = self.recent
        keep = recent is not None and recent.sampled()
        rec = _Rec(req.method, req.target) if self.access_log.enabled or keep else None
        if rec is not None and self.access_log.linkerd:
            rec.linkerd = _linkerd_fields(req, conn)
        resp: Response | None = None
        cause: Cause | None = None
        service_stats: Any = None
        released: float | None = None  # when the client was released (the request's end)
        abandoned = False  # cancelled because the client left: counted as 499 (``abandoned_at``)
        held = False  # the client stays in use, and the request in flight, until the streamed body ends
        try:
            try:
                headers, local, sample, l5d = inbound_scan(
                    req.headers, arrival.clear_context, self.dtab_cache, self.trace_propagator
                )
            except RequestDtabError as e:
                cause = Cause.IDENTIFICATION
                resp = self._err(400, cause, str(e))
                return resp
            ident = self.identifier.identify(_IdentReq(req, headers))
            if isinstance(ident, Unidentified):
                cause = Cause.IDENTIFICATION
                resp = self._err(400, cause, unknown_destination_message(req, ident))
                return resp
            trace: diagtrace.TraceRequest | None = None
            if req.method == "TRACE":
                try:
                    trace = diagtrace.trace_request(req.method, headers)
                except diagtrace.InvalidMaxForwards as e:
                    cause = Cause.IDENTIFICATION
                    resp = self._err(400, cause, str(e))
                    return resp
            if ident.target is not None:
                req.target = ident.target
            service: Path = ident.path
            if rec is not None:
                rec.service = str(service)
            policy = arrival.policy
            outcome = self.binder.bind(service, local, policy=policy, now=t0)  # the binder's clock is ours
            now = t0  # (until something is awaited)
            settled = self._settled.get(service)
            leaf: BoundName | None
            entry: _Service | None
            if settled is not None and outcome is settled.outcome:
                leaf, client_id, entry = settled.leaf, settled.client_id, settled.entry
                svc = entry.stats
            else:
                if self._waiting(outcome):
                    outcome = await self._bind_pending(service, local, policy, outcome)
                    now = clock()
                leaf = None
                if outcome is not None and outcome.refused is None and outcome.error is None:
                    tree = outcome.tree
                    leaf = tree.value if type(tree) is Leaf else self._choose(tree)
                if leaf is None:
                    resp, cause, service_stats = self._unroutable(outcome, service, local)
                    return resp
                client_id = str(leaf.id)
                entry = self._services.get(service)
                if entry is None:
                    svc = self.scope.service(str(service), True)
                else:
                    svc = entry.stats
                    if type(tree) is Leaf and not outcome.pending and not isinstance(leaf.addr, AddrPending):
                        # Not waiting (see ``_waiting``), whatever the clients hold: settled.
                        memo = self._settled
                        if len(memo) >= _SETTLED_MAX and service not in memo:
                            memo.clear()
                        memo[service] = _Settled(outcome, leaf, client_id, entry)
            svc.start()
            service_stats = svc
            client = self.clients.acquire(client_id, self._new_client, now)  # the cache's clock is ours
            try:
                if rec is not None:
                    rec.client = client_id
                t_forward = clock() if trace is not None else 0.0
                resp, cause = await self._forward(
                    req, service, local, leaf, client, headers, svc, entry, rec, conn, trace, l5d, sample
                )
                if trace is not None and trace.add_context and resp.error_cause is None:
                    resp = await self._with_trace_context(
                        resp, trace, service, local, leaf, client, clock() - t_forward
                    )
                body = resp.body
                if not body.in_memory and not body.done:
                    # A reset after the head turns this success into an upstream/reset failure,
                    # everywhere it was counted (and so does a failing grpc-status in the trailers);
                    # an answer counted as a failure at its head (a 5XX) stays that one failure.
                    # The client stays in use (not evicted as idle) until the body ends.
                    watched = [server_stats, svc, client.stats] if cause is None else []
                    served = entry if entry is not None else self._services.get(service)
                    grpc = served.grpc_classifier if served is not None else None
                    if grpc is not None and resp.error_cause is not None:
                        grpc = None
                    clients = self.clients

                    def release() -> None:
                        # The body ended, however it ended: the request is no longer in flight.
                        clients.release(client_id, clock())
                        self.in_flight -= 1

                    watch = _BodyFailureWatch(body, watched, grpc, req.method, resp.status, release=release)
                    resp.body = Body(watch, body.content_length)
                    held = True
                if self.compression is not None and resp.error_cause is None:
                    compress_response(
                        self.compression,
                        req.method,
                        req.http_version,
                        b", ".join(req.headers.get_all(b"accept-encoding")),
                        resp,
                        request_no_transform=no_transform(req.headers),
                    )
                return resp
            finally:
                released = clock()
                if not held:
                    self.clients.release(client_id, released)
        except BaseException:
            resp = None  # counted as a 502, by its server and (once started) its service
            if _client_left(req, conn):
                # No failure of anyone's but the client's: counted as nginx's 499 (client closed request).
                cause, abandoned = None, True
            else:
                cause = Cause.PROXY_INTERNAL
            raise
        finally:
            if not held:  # (a streamed response body is in flight until it ends: see ``release``)
                self.in_flight -= 1
            now = released if released is not None else clock()
            latency = now - t0
            stats_now = now if self._one_clock else self._stats_clock()
            if abandoned:
                status = CLIENT_CLOSED
                server_stats.abandoned_at(stats_now, latency)
                if service_stats is not None:
                    service_stats.abandoned_at(stats_now, latency)
            else:
                status = resp.status if resp is not None else 502
                server_stats.finish_at(stats_now, latency, cause, status)
                if service_stats is not None:
                    service_stats.finish_at(stats_now, latency, cause, status)
            if rec is not None:
                size = resp.body.content_length if resp is not None else None
                self._log_request(rec, keep, status, cause, latency, size)

    def _log_request(
        self, rec: _Rec, keep: bool, status: int, cause: Cause | None, latency: float, size: int | None
    ) -> None:
        """The access log's line and the recent-requests entry (``keep``) of one request; ``size``: the
        response body's length when it is known up front (its Content-Length), as Linkerd logs it."""
        cause_text = cause.value if cause is not None else None
        if self.access_log.enabled:
            host, remote, version, referer, user_agent = rec.linkerd or (None, None, None, None, None)
            self.access_log.log(
                router=self.label,
                method=rec.method,
                path=rec.path,
                service=rec.service,
                client=rec.client,
                endpoint=rec.endpoint,
                status=status,
                cause=cause_text,
                duration_s=latency,
                response_bytes=size,
                host=host,
                remote=remote,
                version=version,
                referer=referer,
                user_agent=user_agent,
            )
        if keep:
            self.recent.ring.append(
                {
                    "timestamp": time.time(),
                    "router": self.label,
                    "method": rec.method,
                    "path": rec.path,
                    "service": rec.service,
                    "client": rec.client,
                    "endpoint": rec.endpoint,
                    "status": status,
                    "cause": cause_text,
                    "durationMs": round(latency * 1000, 3),
                }
            )

    async def _forward(
        self,
        req: Request,
        service: Path,
        local: Dtab,
        leaf: BoundName,
        client: Client,
        headers: list[tuple[bytes, bytes]],
        svc: Any,
        entry: _Service | None,
        rec: _Rec | None = None,
        conn: ConnInfo | None = None,
        trace: diagtrace.TraceRequest | None = None,
        l5d: bool = True,
        sample: float | None = None,
    ) -> tuple[Response, Cause | None]:
        """Steps 5 and 6 of the module docstring: the response (or the proxy's error response) and the
        failure cause it is counted with."""
        client_id = client.id
        addr = leaf.addr
        if addr is not client.addr:
            client.update_addr(addr)
        if isinstance(addr, AddrFailed) and not client.endpoints:
            msg = (
                f"Unable to route request!\nservice name: {service}\nclient name: {client_id}\n"
                f"naming failed: {addr.cause}"
            )
            return self._err(502, Cause.NAMING_FAILED, msg), Cause.NAMING_FAILED
        residual = leaf.residual
        dst_residual: Path | bytes | None = residual
        ctx_deadline: bytes | None
        if entry is not None:  # the residual's l5d-dst-residual value, printed once per residual
            dst_client = client.dst_client
            if residual is not entry.residual or dst_client is not entry.sets_client:
                if residual is not entry.residual:
                    entry.residual = residual
                    entry.dst_residual = (
                        show_bytes(residual) if residual is not None and len(residual) else None
                    )
                entry.sets_client = dst_client
                entry.dst_sets = dst_fields(entry.dst_service, dst_client, entry.dst_residual)
            dst_residual = entry.dst_residual
            propagator = self.trace_propagator
            if not l5d and local is Dtab.EMPTY and trace is None and sample is None:
                # ``headers`` is the list ``inbound_scan`` made for this request alone.
                out, ctx_deadline = forwarded_plain(headers, entry.dst_sets, self._rng, propagator), None
            else:
                out, ctx_deadline = forwarded_headers(
                    entry.dst_service,
                    dst_client,
                    dst_residual,
                    local,
                    headers,
                    self._rng,
                    l5d=l5d,
                    sample=sample,
                    propagator=propagator,
                )
        else:
            out, ctx_deadline = forwarded_headers(
                show_bytes(service),
                client.dst_client,
                residual,
                local,
                headers,
                self._rng,
                l5d=l5d,
                sample=sample,
                propagator=self.trace_propagator,
            )
        req.headers = out_headers = Headers._trusted(out)  # names already lowercased
        # Only this proxy may say which certificate the caller presented: a caller's own value is
        # dropped whether or not this client forwards one (as Linkerd does, linkerd#2085).
        out_headers.remove(_XFCC)
        if client.forward_client_cert:
            tls = conn.tls if conn is not None else None
            if tls is not None:
                value = tls.forwarded_client_cert()
                if value is not None:
                    out_headers.set(_XFCC, value)
        if entry is None:
            entry = self._service_entry(service, svc)
        params = entry.params
        # The only l5d-ctx-deadline left in the forwarded headers is the combined one set above.
        inbound_deadline = deadline_from_headers((ctx_deadline,)) if ctx_deadline is not None else None
        server_timeout_ms = conn.params.request_timeout_ms if conn is not None else None
        if inbound_deadline is None and params.total_timeout_ms is None and server_timeout_ms is None:
            deadline = None
        else:
            now_ns = time.time_ns()
            deadline = effective_deadline(now_ns, inbound_deadline, params.total_timeout_ms)
            if server_timeout_ms is not None:  # ``servers[].timeoutMs``: one more bound, the same way
                deadline = effective_deadline(now_ns, deadline, server_timeout_ms)
        if deadline is not None:
            out_headers.set(_DEADLINE, deadline.header_value())
        if trace is not None:
            if trace.answer_here:
                # Max-Forwards: 0 — this router answers for the destination (with its context if asked).
                picked = client.pick_key()
                trace.selected = picked or ""
                await req.body.aclose()
                return Response(200, b"OK", Headers(), Body.empty()), None
            forwarded = trace.forwarded_max_forwards()
            if forwarded is not None:
                out_headers.set(diagtrace.MAX_FORWARDS, forwarded)
        # Every attempt sends ``factory()``, a fresh copy of the body, when it can be replayed; a body
        # that cannot is sent once, as it is.
        body = req.body
        factory: Callable[[], Body] | None
        stream: ReplayableStream | None = None
        if body is _EMPTY_BODY or (body.content_length == 0 and body.done and body.in_memory):
            # An empty in-memory body read to its end (the server's ``Body.empty()``: the usual GET)
            # reads, closes and frames exactly like a fresh copy, and stays so: every attempt sends it.
            factory = None
            replayable = True
        elif body.content_length == 0 or (body.in_memory and not body.done):
            data = body.peek_memory() if body.in_memory else b""
            trailers = body.trailers
            factory = lambda: Body.from_bytes(data, trailers)  # noqa: E731
            replayable = True
        elif body.content_length is None and self._streams_replayable:
            # h2 with no Content-Length (gRPC): kept as it streams, while it fits the retry buffer.
            stream = ReplayableStream(body, entry.policy.buffer_bytes)
            factory = stream.next_body
            replayable = True
        else:
            # Read before any attempt starts, so within the request's deadline here: a body that
            # trickles in (a slow-body attack) would otherwise hold the request, and an upstream
            # connection after it, for as long as the client likes.
            try:
                left = deadline.remaining_s(time.time_ns()) if deadline is not None else float("inf")
                with trio.move_on_after(max(left, 0.0)) as scope:
                    factory = await buffer_body_for_retry(body, entry.policy.buffer_bytes)
            except RequestBodyError as e:
                return request_body_error_response(e), None  # the client's doing: no failure counted
            if scope.cancelled_caught:
                assert deadline is not None
                why = _timeout_reason(deadline, inbound_deadline, params.total_timeout_ms, server_timeout_ms)
                return request_body_timeout_response(f"the request body did not arrive in time: {why}"), None
            replayable = factory is not None
        # The policy's per-request state is made only when an attempt did not succeed at once (most
        # requests never need it); the deposit is made now, as ``RetryPolicy.start`` makes it.
        policy = entry.policy
        judge = entry.judge
        grpc = entry.grpc_classifier
        t0 = self._clock()
        policy.begin_at(t0)  # the policy's budget reads the router's clock
        attempts: RetryAttempts | None = None
        client_stats = client.stats
        client_stats.start()
        t_attempt = t0  # when the client's current attempt started
        attempting = True  # an attempt is the client's request (none during a retry's backoff)
        abandoned = False  # cancelled because the client left (see ``handle``)
        cause: Cause | None = None
        status = 502
        first: float | None = t0  # when the first attempt starts (the client's clock is ours)
        retry_body: Body | None = None  # the body of a granted retry of a streamed h2 body
        try:
            while True:
                if retry_body is not None:
                    req.body, retry_body = retry_body, None
                else:
                    req.body = factory() if factory is not None else body
                resp: Response | None = None
                err: UpstreamError | None = None
                try:
                    if deadline is not None:
                        remaining = deadline.remaining_s(time.time_ns())
                        with trio.move_on_after(max(remaining, 0.0)) as scope:
                            resp, endpoint = await client.request(req, first, judge, self._next_attempt)
                        if scope.cancelled_caught:
                            cause = Cause.TIMEOUT_REQUEST
                            why = _timeout_reason(
                                deadline, inbound_deadline, params.total_timeout_ms, server_timeout_ms
                            )
                            status = 503  # (counted so by the client too, in ``finally``)
                            return self._err(status, cause, f"{why} for {service} via {client_id}"), cause
                    else:
                        resp, endpoint = await client.request(req, first, judge, self._next_attempt)
                    if rec is not None:
                        rec.endpoint = endpoint
                    if trace is not None:
                        trace.selected = endpoint
                except UpstreamError as e:
                    err = e
                except RequestBodyError as e:
                    status = 400  # the client's doing: answered, counted by status, no failure cause
                    return request_body_error_response(e), None
                first = None
                if resp is not None:
                    status = resp.status
                    if status < 500 and entry.http_classifier:
                        cause = None
                        resp.headers.set(_SUCCESS_CLASS, b"1.0")
                        return resp, None
                if attempts is None:
                    attempts = policy.attempts(req.method, replayable=replayable, deadline=deadline)
                    gone = conn.client_gone if conn is not None else None
                if stream is not None:
                    attempts.replayable = stream.replayable  # (until more of it than the buffer was sent)
                grpc_status: int | None = None
                if resp is not None:
                    if grpc is not None and (resp.body.in_memory or resp.body.done):
                        # A trailers-only answer: its grpc-status is in the head (a streamed one is
                        # judged when its trailers arrive: ``_BodyFailureWatch``).
                        grpc_status = grpc_status_of(resp.headers, resp.body.trailers)
                    decision = attempts.decide(
                        status,
                        None,
                        now_ns=time.time_ns(),
                        l5d_retryable=resp.headers.get(_RETRYABLE),
                        grpc_status=grpc_status,
                        client_gone=gone,
                    )
                else:
                    assert err is not None
                    decision = attempts.decide(None, cause_of(err), now_ns=time.time_ns(), client_gone=gone)
                if decision.verdict is Verdict.RETRY:
                    if stream is not None:
                        # The retry's body now, before anything awaits: the failed attempt's upstream
                        # may still be taking the body, and what it read on during the backoff could
                        # outgrow the buffer the retry was granted on. A newer body stops it at once.
                        retry_body = stream.next_body()
                    entry.retries_total.incr()
                    # Retries are the service's; each attempt is a request of the client (as in
                    # Linkerd, whose client stack sits below its retries): a failure a retry hid
                    # still shows in the client's requests, failures and status counts.
                    tried: Cause | None
                    if resp is not None:
                        tried, tried_status = _answer_cause(status, grpc_status), status
                    else:
                        assert err is not None
                        tried, tried_status = cause_of(err), CAUSE_STATUS.get(err.cause, 502)
                    now = self._clock()
                    attempting = False
                    client_stats.finish_at(
                        now if self._one_clock else self._stats_clock(), now - t_attempt, tried, tried_status
                    )
                    if resp is not None:
                        await resp.body.aclose()
                    log.debug(
                        "router.retry",
                        router=self.label,
                        service=str(service),
                        status=status,
                        cause=err.cause if err is not None else None,
                        delay_s=decision.delay_s,
                    )
                    if decision.delay_s > 0:
                        await trio.sleep(decision.delay_s)
                    # The next attempt starts now: the backoff is no time in flight to the client,
                    # and a request given up during it (its client gone) made no attempt there.
                    client_stats.start()
                    attempting = True
                    t_attempt = self._clock()
                    self._next_attempt(req)  # the same trace, a new span (``routing.tracectx``)
                    continue
                if decision.reason == "budget_exhausted":
                    entry.budget_exhausted.incr()
                if resp is not None:
                    # The configured classifier decides what counts as a failure (allSuccessful: nothing).
                    if grpc is not None:
                        rc = grpc.classify(req.method, status, None, grpc_status=grpc_status)
                    else:
                        rc = policy.classifier.classify(req.method, status, None)
                    ok = rc is ResponseClass.SUCCESS
                    cause = None if ok else _answer_cause(status, grpc_status)
                    if cause is not None:  # (told apart: the application's, or a proxy's downstream)
                        client.note_failed_answer(str(service), resp, endpoint)
                    if entry.http_classifier or grpc_status is not None:
                        resp.headers.set(_SUCCESS_CLASS, b"1.0" if ok else b"0.0")
                    return resp, cause
                assert err is not None
                cause = cause_of(err)
                status = CAUSE_STATUS.get(err.cause, 502)
                note = _not_retried_note(
                    decision.reason, service, body, stream, policy, self._streams_replayable
                )
                return self._upstream_error(err, service, client, note), cause
        except BaseException:
            if _client_left(req, conn):
                cause, abandoned = None, True  # (see ``handle``)
            else:
                cause = Cause.PROXY_INTERNAL if cause is None else cause
            raise
        finally:
            now = self._clock()
            stats_now = now if self._one_clock else self._stats_clock()
            per_request = attempts.finish() if attempts is not None else policy.unretried()
            entry.registry.add_at(entry.per_request_add_at, per_request, stats_now)
            if attempting:  # (given up during a retry's backoff: that attempt was counted already)
                if abandoned:
                    client_stats.abandoned_at(stats_now, now - t_attempt)
                else:
                    client_stats.finish_at(stats_now, now - t_attempt, cause, status)

    async def _with_trace_context(
        self,
        resp: Response,
        trace: diagtrace.TraceRequest,
        service: Path,
        local: Dtab,
        leaf: BoundName,
        client: Client,
        elapsed_s: float,
    ) -> Response:
        """``resp`` with this router's diagnostic context below its body (see ``routing.diagtrace``)."""
        body = resp.body
        content: bytes | None
        if body.in_memory:
            content = body.peek_memory()
            body.consume_memory()
        elif body.content_length is not None:
            try:
                content = await body.read_all(limit=_TRACE_BODY_LIMIT)
            except ValueError:
                content = None  # too large to show: reported like a chunked body
        else:
            await body.aclose()
            content = None
        try:
            tree = delegate(self.binder.base_dtab + local, service, self.namer_pairs, system=self._system)
            if self.transformers and hasattr(tree, "to_json"):
                # As the router binds (and as /delegator.json explains): the interpreter's transformers
                # rewrite the bound leaves, and the client's id is the transformed one.
                from namers.transformers import transform_delegation

                tree = transform_delegation(tree, self.transformers)
        except Exception as e:  # noqa: BLE001 - an explanation failure must not fail the traced request
            log.info("router.trace_delegation_failed", router=self.label, service=str(service), error=str(e))
            tree = None
        context = diagtrace.format_context(
            router=self.label,
            duration_ms=int(elapsed_s * 1000),
            service=str(service),
            client=str(leaf.id),
            addresses=sorted(client.endpoints),
            selected=trace.selected,
            resolution=diagtrace.resolution_lines(tree, leaf.id),
        )
        text = diagtrace.traced_body(
            content, context, status=resp.status, reason=resp.reason, headers=resp.headers.items()
        )
        resp.body = Body.from_bytes(text)
        return resp

    def _service_entry(self, service: Path, svc: Any) -> _Service:
        params = service_params_for(self.cfg, service)
        if len(self._services) < MAX_SERVICE_ENTRIES:
            policy = self._new_policy(params)
            entry = self._services[service] = _Service(service, params, policy, svc)
            return entry
        # Past the cap, services are not kept, and share one retry policy per set of service params:
        # a fresh policy per request would give each request its budget's reserve of retries, so a
        # flood of distinct service names could retry without bound.
        shared = self._overflow_policies.get(params)
        if shared is None:
            shared = self._new_policy(params)
            if len(self._overflow_policies) < MAX_OVERFLOW_POLICIES:
                self._overflow_policies[params] = shared
            else:
                # Past those sets of params, a service keeps its own classifier, backoff and body
                # buffer, and draws on the one retry budget all such services share: another
                # service's classifier would retry what its config says must not be (a POST on 5XX).
                shared.budget = self._overflow_policies.setdefault(None, shared).budget
        return _Service(service, params, shared, svc)

    def _new_policy(self, params: Any) -> RetryPolicy:
        return RetryPolicy.from_params(
            params, clock=self._clock, rng=self._rng, buffer_bytes=self._buffer_bytes
        )

    def _upstream_error(
        self, e: UpstreamError, service: Path, client: Client, note: str | None = None
    ) -> Response:
        """The error response for ``e``; ``note``: a last line for its message (why it was not retried)."""
        cause = cause_of(e)
        status = CAUSE_STATUS.get(e.cause, 502)
        if (
            cause in (Cause.CONNECT_REFUSED, Cause.CONNECT_TIMEOUT, Cause.CONNECT_UNREACHABLE)
            and not e.pool_full
        ):
            # (A full pool's wait is a connect/timeout too, but no connection failed: its own message.)
            msg = (
                f"Unable to establish connection to {e.endpoint}.\n{e}\nservice name: {service}\n"
                f"client name: {client.id}\naddresses: [{', '.join(client.endpoints)}]\n"
                f"selected address: {e.endpoint}"
            )
        else:
            msg = f"{e}\nservice name: {service}\nclient name: {client.id}"
        if note is not None:
            msg = f"{msg}\n{note}"
        return self._err(status, cause, msg, retryable=e.retryable)

    def _unroutable(self, outcome: Any, service: Path, local: Dtab) -> tuple[Response, Cause, Any]:
        """The error response, its cause and the (started) service stats of a request whose binding
        gave no leaf: none within the binding timeout (``outcome`` None), a refused or failed
        binding, or a negative resolution."""
        error: str | None  # what the binding said, for the table of names that never bound
        if outcome is None:
            cause, status = Cause.NAMING_FAILED, 502
            msg = error = (
                f"Exceeded {self.binding_timeout_s:g} seconds binding timeout while resolving name: {service}"
            )
        elif outcome.refused is not None:
            # (Not kept as the name's last error: that is what its binding said, which `wtf` quotes for
            # a name whose naming failed; a refusal has its own finding.)
            cause, status, msg, error = Cause.IDENTIFICATION, 400, str(outcome.refused), None
        elif outcome.error is not None:
            cause, status, error = Cause.NAMING_FAILED, 502, str(outcome.error)
            msg = f"Unable to route request!\nservice name: {service}\nerror: {error}"
        else:
            cause, status, error = Cause.NAMING_NEG, 502, None
            msg = (
                f"Unable to route request!\nservice name: {service}\n"
                f"dtab:\n{_dtab_lines(self.binder.base_dtab + local)}\n"
                f"base dtab:\n{_dtab_lines(self.binder.base_dtab)}\n"
                f"override dtab:\n{_dtab_lines(local)}"
            )
        return self._err(status, cause, msg), cause, self._service_stats(service, False, cause, error)

    def _service_stats(self, service: Path, bound: bool, cause: Cause, error: str | None = None) -> Any:
        self.scope.observe_unbound(str(service), cause, error)
        s = self.scope.service(str(service), bound)
        s.start()
        return s

    def _waiting(self, outcome: Any) -> bool:
        """Binding has not answered yet: a namer is pending, or a bound leaf's address set is (and
        its client has nothing from before to use)."""
        if outcome.pending:
            return True
        if outcome.error is not None or outcome.refused is not None:
            return False
        tree = outcome.tree
        if type(tree) is Leaf and not isinstance(getattr(tree.value, "addr", None), AddrPending):
            return False  # the usual tree: one leaf with its addresses
        todo = [tree]
        while todo:
            t = todo.pop()
            if isinstance(t, Leaf):
                b = t.value
                if isinstance(getattr(b, "addr", None), AddrPending):
                    client = self.clients.peek(str(b.id))
                    if client is None or not client.endpoints:
                        return True
            elif isinstance(t, Union):
                todo.extend(w.tree for w in t.branches)
        return False

    async def _bind_pending(
        self, service: Path, local: Dtab, policy: AddressOverridePolicy | None, outcome: Any
    ) -> Any:
        """Bind again after every binder change until ``outcome`` is no longer :meth:`_waiting`, for
        at most ``bindingTimeoutMs``: the final outcome, or None when the time ran out."""
        with trio.move_on_after(self.binding_timeout_s):
            while self._waiting(outcome):
                if self._changed.is_set():
                    self._changed = trio.Event()
                await self._changed.wait()
                outcome = self.binder.bind(service, local, policy=policy)
            return outcome
        return None

    def _choose(self, tree: Any) -> BoundName | None:
        """One bound leaf of a bound tree: unions choose by weight; Neg/Fail/Empty choose none."""
        while True:
            if isinstance(tree, Leaf):
                return tree.value  # type: ignore[no-any-return]
            if isinstance(tree, Union):
                branches = tree.branches
                i = WeightedChoice([b.weight for b in branches], self._rng).pick()
                tree = branches[i].tree
                continue
            return None

    def _new_client(self, client_id: str) -> Client:
        client = self._make_client(client_id)
        client.spans = self.spans
        return client

    def _make_client(self, client_id: str) -> Client:
        params = client_params_for(self.cfg, client_id)
        extra: dict[str, Any] = {"pool_factory": self._pool_factory} if self._pool_factory is not None else {}
        if self._pool_factory is not None and hasattr(params, "initial_stream_window_bytes"):
            # An h2 router's client: Linkerd's HTTP/2 settings of its upstream connections.
            from hostproxy.h2.upstream import H2ClientSettings

            extra["pool_factory"] = functools.partial(
                self._pool_factory,
                settings=H2ClientSettings(
                    initial_stream_window_bytes=params.initial_stream_window_bytes,
                    max_frame_bytes=params.max_frame_bytes,
                    header_table_bytes=params.header_table_bytes,
                    max_header_list_bytes=params.max_header_list_bytes,
                    **_h2_stall(params),
                ),
            )
        tls = params.tls
        if tls is not None and tls.enabled:
            extra["tls"], extra["connector"] = self._tls_connector(tls, client_id)
        return Client(
            self.label,
            client_id,
            params,
            self.scope,
            nursery=self._nursery,
            rng=self._rng,
            clock=self._clock,
            # The router's head limits apply to responses too (``maxHeadersKB``, ``maxInitialLineKB``).
            max_headers_kb=getattr(self.cfg, "max_headers_kb", 8),
            max_initial_line_kb=getattr(self.cfg, "max_initial_line_kb", 4),
            **extra,
        )

    @property
    def client_tls(self) -> ClientTlsCache:
        """The router's shared client TLS settings (made on first use: plaintext routers never load TLS)."""
        if self._client_tls is None:
            from hostproxy.tls import ClientTlsCache

            self._client_tls = ClientTlsCache()
        return self._client_tls

    def _tls_connector(self, tls: Any, client_id: str) -> tuple[Any, Callable[[str, int, float], Any]]:
        """The shared ClientTls for ``tls`` and a pool connector using it; when the settings cannot be
        loaded (a trust file missing...), a connector that fails every connection with the reason."""
        from hostproxy.tls import TlsConfigError, TlsError

        try:
            ctls = self.client_tls.get(tls, router=self.label, alpn=self._alpn)
        except TlsConfigError as exc:
            problem = str(exc)
            log.error("router.client_tls_failed", router=self.label, client=client_id, error=problem)

            async def refuse(host: str, port: int, timeout_s: float) -> Any:
                endpoint = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
                raise TlsError(
                    f"TLS to {endpoint} is not possible: routers[{self.label}].{problem}",
                    endpoint=endpoint,
                    reason="config",
                )

            return None, refuse
        alpn = self._alpn

        async def connect(host: str, port: int, timeout_s: float) -> Any:
            return await ctls.connect(host, port, connect_timeout=timeout_s, alpn=alpn)

        return ctls, connect
