"""A client: one per (router, bound name), balancing requests over that name's endpoints.

Theory of operation
-------------------
The router binds a service name to a bound tree whose leaves are ``BoundName``s; each leaf's id
(``/#/io.l5d.fs/users``, ``/$/inet/127.1/8080``) names one client. A client owns:

* the endpoint set, taken from the leaf's address set (``AddrBound``) each time binding hands it a
  new one (the binder re-binds when a namer reports a change, so a changed address set arrives as a
  new ``addr`` object; comparing identities costs nothing on the hot path);
* a balancer (pure, decide-then-do: ``pick`` chooses, the client performs the request);
* failure accrual (pure, per endpoint: marks endpoints dead after failures and probes them back);
* one ``UpstreamPool`` of keep-alive connections per endpoint, closed when the endpoint leaves the set
  or the client is evicted.

``request`` picks an endpoint, sends the request through that endpoint's pool and returns the
response head with the body still streaming; the body is wrapped so that the balancer and accrual
learn the outcome (latency, success) when the body ends. A request that provably never reached an
upstream (a connect failure: ``retryable``) is requeued on another pick while the requeue budget
allows and some endpoint is available (not every one marked dead: ``retries/not_open`` counts the
others), as Finagle does; nothing else is resent here. This is the only place requeues happen: the
router's retry policy (``hostproxy.retry``) is built without a requeue budget and only retries what
the response classifier calls retryable, so a connect failure is never requeued twice. Whatever its
body — in memory, or streamed (chunked, or larger than the retry buffer) — a requeued request is
whole: a pool raises a ``retryable`` error only before it wrote any of the request or read any of its
body. Before a requeue the caller's ``next_attempt`` (the router's) gives the request a new trace
span (``hostproxy.routing.tracectx``). Refusals by an endpoint's full connection pool (``maxSize``/``maxWaiters``:
``UpstreamError.pool_full``) end the requeues once a request had as many as the client has endpoints
(one endpoint: the first), so a request neither waits for the same full pool again nor spends the
budget on refusals in a loop, and with several endpoints it may still find one with room.

When every endpoint is marked dead, the balancer is asked again ignoring accrual (as Finagle's
balancers do): sending to a possibly-dead endpoint beats failing every request.

A client whose parameters have ``tls`` is given a ``connector`` (``ClientTls.connect`` with the
router's ALPN) that every endpoint pool opens its connections with; the last TLS failure (its
reason word and message) is kept for ``/client_state.json`` so ``hostproxy wtf`` can say why; so
are each endpoint's last failure (``lastFailure``: why failure accrual took it out, requeued connect
failures included) and, per service, the failed answers (5XX, gRPC errors) that carried ``l5d-err`` (made by a proxy
downstream, not by the application: ``downstreamProxyErrors``).
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote, unquote_plus

import structlog
import trio

from dtab.bind import AddrBound, AddrFailed, AddrNeg
from hostproxy.accrual import FailureAccrual, accrual_from_config
from hostproxy.balancer import EndpointInfo, balancer_from_config
from hostproxy.budget import BudgetConfig, RetryBudget
from hostproxy.causes import BODY_CUT_OFF, Cause
from hostproxy.classifier import grpc_status_of
from hostproxy.config.model import plugin_mapping
from hostproxy.http.errors import RequestBodyError, UpstreamError
from hostproxy.http.message import Body, Request, Response
from hostproxy.http.sockopts import socket_options
from hostproxy.http.upstream import PoolParams, UpstreamPool
from hostproxy.metrics import RouterScope
from namers.base import STALE_SINCE

log = structlog.get_logger("hostproxy.client")


# Requeues of one request (connect failures: it never reached an upstream), on top of the budget:
# the budget refills with traffic, so it alone would not bound one request's attempts (Finagle caps
# requeues per request the same way).
MAX_REQUEUES = 25

#: Services whose failed answers a client tells apart (made by a proxy downstream or not).
MAX_FAILED_ANSWER_SERVICES = 64

#: What counts as a success for balancing and failure accrual when it is not "not 5XX": the
#: service's response classifier, asked with the status, the head and the trailers (None until the
#: body ended, or when there are none). Linkerd's accrual follows the request's classifier too.
Judge = Callable[[int, Any, Any], bool]


class NoEndpoints(UpstreamError):
    """The bound name has no endpoints to send to (empty, negative or failed address set)."""

    def __init__(self, message: str, *, endpoint: str = "", cause: str = Cause.NAMING_NEG.value) -> None:
        super().__init__(message, endpoint=endpoint, retryable=False)
        self.cause = cause


class AttemptTimeout(UpstreamError):
    cause = Cause.TIMEOUT_ATTEMPT.value


class _Endpoint:
    __slots__ = ("key", "host", "port", "weight", "meta", "pool", "last_failure")

    def __init__(
        self, key: str, host: str, port: int, weight: float, meta: dict[str, Any], pool: UpstreamPool
    ):
        self.key = key
        self.host = host
        self.port = port
        self.weight = weight
        self.meta = meta
        self.pool = pool
        #: The last error a request to this endpoint failed with (``cause``, ``message``, ``at``),
        #: requeued ones included: why failure accrual may have taken it out.
        self.last_failure: dict[str, Any] | None = None


class _OutcomeBody:
    """A body source that reports the request's outcome when the response body ends: the request
    succeeded if its status did (``ok_status``; with a ``judge``, the judge's verdict on the status,
    head and trailers) and its body ended without an error. A read cancelled because the caller left
    (a downstream reset, a timeout) is an interruption, not a failure of the endpoint."""

    __slots__ = ("_body", "_client", "_bal_ep", "_key", "_t0", "_ok_status", "_judge", "_resp")

    def __init__(
        self,
        body: Body,
        client: Client,
        bal_ep: Any,
        key: str,
        t0: float,
        ok_status: bool,
        judge: Judge | None = None,
        resp: Response | None = None,
    ) -> None:
        self._body = body
        self._client: Client | None = client
        self._bal_ep = bal_ep
        self._key = key
        self._t0 = t0
        self._ok_status = ok_status
        self._judge = judge
        self._resp = resp

    async def read_chunk(self) -> bytes | None:
        try:
            chunk = await self._body.__anext__()
        except StopAsyncIteration:
            judge, resp = self._judge, self._resp
            if judge is not None and resp is not None:
                self._ok_status = judge(resp.status, resp.headers, self._body.trailers)
                if not self._ok_status and self._client is not None:
                    self._client._judged_failure(self._key, resp.headers, self._body.trailers)
            self._finish(True)
            return None
        except trio.Cancelled:
            self._interrupted()
            raise
        except BaseException as exc:
            if isinstance(exc, UpstreamError) and self._client is not None:
                # The head went on (the caller got a truncated answer): the endpoint's last failure,
                # said as such (a cut body is no idle connection closed under a new request).
                status = self._resp.status if self._resp is not None else "?"
                self._client._body_failed(self._key, exc, f"{BODY_CUT_OFF} ({status})")
            self._finish(False)
            raise
        return chunk

    @property
    def trailers(self) -> Any:
        return self._body.trailers

    async def aclose(self) -> None:
        # The consumer stopped early (client went away): not the upstream's fault.
        self._finish(True)
        await self._body.aclose()

    def _finish(self, ok: bool) -> None:
        client, self._client = self._client, None
        if client is not None:
            client._outcome(self._bal_ep, self._key, self._t0, ok and self._ok_status)

    def _interrupted(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client._interrupted(self._bal_ep, self._key, self._t0)


class Client:
    """Requests to one bound name (see the module docstring)."""

    def __init__(
        self,
        router: str,
        client_id: str,
        params: Any,
        scope: RouterScope,
        *,
        nursery: trio.Nursery,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        pool_factory: Callable[..., Any] = UpstreamPool,
        connector: Callable[[str, int, float], Awaitable[Any]] | None = None,
        tls: Any = None,
        max_headers_kb: int = 8,
        max_initial_line_kb: int = 4,
    ) -> None:
        self.router = router
        self._pool_factory = pool_factory
        self._pool_extra: dict[str, Any] = {"connector": connector} if connector is not None else {}
        self.tls = tls  # the ClientTls behind ``connector`` (None: plaintext)
        self.tls_last_error: dict[str, Any] | None = None
        #: The last connect that failed for want of hostproxy's own resources (``OutOfResources``).
        self.resources_last_error: dict[str, Any] | None = None
        #: Per service (a client serves every service bound to it, as a peer hostproxy's does), the
        #: answers the router judged failures (5XX, gRPC errors), how many carried ``l5d-err`` (made
        #: by a proxy downstream, a peer hostproxy or Linkerd, not by the application) and the last
        #: such one. At most ``MAX_FAILED_ANSWER_SERVICES`` services, the least recently failed dropped first.
        self.failed_answers: dict[str, dict[str, Any]] = {}
        self.id = client_id
        #: The router's span recorder when it exports traces (``io.l5d.zipkin``), set by the router.
        self.spans: Any = None
        self.dst_client = client_id.encode("latin-1", "replace")  # the l5d-dst-client value
        self.params = params
        # Whether the forwarded request carries the caller's certificate (x-forwarded-client-cert).
        self.forward_client_cert = bool(getattr(params, "forward_client_cert", False))
        self._nursery = nursery
        self._rng = rng or random.Random()
        self._clock = clock
        where = f"routers[{router}].client"
        self.accrual = FailureAccrual(
            accrual_from_config(plugin_mapping(params.failure_accrual), self._rng, f"{where}.failureAccrual"),
            clock,
        )
        self.balancer = balancer_from_config(
            plugin_mapping(params.load_balancer),
            rng=self._rng,
            now=clock,
            available=self.accrual.available,
            where=f"{where}.loadBalancer",
        )
        budget = params.requeue_budget
        self.requeue_budget = RetryBudget(
            BudgetConfig(budget.ttl_secs, budget.min_retries_per_sec, budget.percent_can_retry), clock
        )
        pool, session = params.host_connection_pool, params.client_session
        sockopts = getattr(params, "socket_options", None)
        read_ms = getattr(sockopts, "read_timeout_ms", None)
        write_ms = getattr(sockopts, "write_timeout_ms", None)
        idle_ms = [ms for ms in (pool.idle_time_ms, session.idle_time_ms) if ms is not None]
        idle_s = min(idle_ms) / 1000 if idle_ms else 30.0
        if read_ms is not None:  # it closes an idle pooled connection too, as Finagle's does
            idle_s = min(idle_s, read_ms / 1000)
        self._pool_params = PoolParams(
            connect_timeout_ms=getattr(params, "connect_timeout_ms", None) or 1000,
            idle_timeout_s=idle_s,
            max_size=pool.max_size,
            max_waiters=pool.max_waiters,
            min_size=pool.min_size,
            life_time_s=session.life_time_ms / 1000 if session.life_time_ms is not None else None,
            max_headers_kb=max_headers_kb,
            max_initial_line_kb=max_initial_line_kb,
            socket_options=socket_options(sockopts),
            read_timeout_s=read_ms / 1000 if read_ms is not None else None,
            write_timeout_s=write_ms / 1000 if write_ms is not None else None,
        )
        self._attempt_timeout = (
            params.request_attempt_timeout_ms / 1000 if params.request_attempt_timeout_ms else None
        )
        self._fail_fast = bool(getattr(params, "fail_fast", False))
        self.endpoints: dict[str, _Endpoint] = {}
        # Pools of endpoints that left the set, still finishing their requests in flight.
        self._retiring: list[Any] = []
        self.addr: Any = None  # the address set last taken (``update_addr``)
        self.addr_state = "pending"
        self.stale_since: float | None = None
        self.stats = scope.client(client_id)
        scope.client_extras(
            client_id,
            balancer=self.balancer,
            accrual=self.accrual,
            requeue_budget=self.requeue_budget,
            pools=_Pools(self),
        )
        self.not_open = 0  # requeues refused because no endpoint was available (``_open_for_requeue``)
        scope.client_counter(
            client_id,
            "retries/not_open",
            lambda: self.not_open,
            "Requests not requeued after a connection failure because every endpoint was marked dead",
        )
        scope.client_gauge(
            client_id,
            "namer/stale_age_secs",
            lambda: self.stale_age() or 0.0,
            "Seconds the namer has served this client's last good addresses",
        )
        self._scope = scope
        self.last_used = clock()
        self.in_flight = 0
        self.closed = False

    # -- the address set --------------------------------------------------------------------------

    def update_addr(self, addr: Any) -> None:
        """Take a new address set from binding (cheap when it is the one we already have)."""
        if addr is self.addr:
            return
        if addr == self.addr:
            # The same set in a new object (a re-bind): nothing changed, and the balancer, accrual
            # and pools are left alone. Staleness is part of the set's metadata, so it is not this.
            self.addr = addr
            return
        self.addr = addr
        if isinstance(addr, AddrBound):
            self.stale_since = (addr.meta or {}).get(STALE_SINCE)
            self.addr_state = "stale" if self.stale_since is not None else "bound"
            self._take_endpoints(addr.addresses)
        elif isinstance(addr, AddrNeg):
            # The name no longer exists: no endpoints (as Finagle treats Addr.Neg), so their pools
            # close, and one that comes back later starts afresh.
            self.stale_since = None
            self._take_endpoints(())
            self.addr_state = "neg"
        elif isinstance(addr, AddrFailed):
            # Last good wins: keep the endpoints we have, if any.
            self.addr_state = "failed" if not self.endpoints else "stale"
        else:
            self.addr_state = "pending"

    def _take_endpoints(self, addresses: Any) -> None:
        """Make the endpoint set ``addresses``: pools of endpoints gone are closed (their requests in
        flight finish), new ones get pools, the balancer and accrual follow."""
        wanted: dict[str, tuple[str, int, float, dict[str, Any]]] = {}
        for a in addresses:
            key = f"[{a.host}]:{a.port}" if ":" in a.host else f"{a.host}:{a.port}"
            wanted[key] = (
                a.host,
                a.port,
                float(getattr(a, "weight", 1.0)),
                dict(getattr(a, "meta", {}) or {}),
            )
        gone = [k for k in self.endpoints if k not in wanted]
        if gone:
            # A removed endpoint's pool counts in the pool metrics until its last connection closes
            # (a scrape lets go of those that did); without scrapes, they are let go here.
            self._retiring = [p for p in self._retiring if _connections(p.statistics())]
        for key in gone:
            ep = self.endpoints.pop(key)
            self._retiring.append(ep.pool)
            self._nursery.start_soon(ep.pool.aclose)
            log.info("client.endpoint_removed", router=self.router, client=self.id, endpoint=key)
        for key, (host, port, weight, meta) in wanted.items():
            known = self.endpoints.get(key)
            if known is None:
                pool = self._pool_factory(
                    host, port, self._pool_params, nursery=self._nursery, **self._pool_extra
                )
                self.endpoints[key] = _Endpoint(key, host, port, weight, meta, pool)
                log.info("client.endpoint_added", router=self.router, client=self.id, endpoint=key)
            else:
                known.weight, known.meta = weight, meta
        self.balancer.update([EndpointInfo(k, e.weight, e.meta) for k, e in self.endpoints.items()])
        self.accrual.retain(list(self.endpoints))

    # -- requests ---------------------------------------------------------------------------------

    def _pick(self) -> Any:
        ep = self.balancer.pick()
        return ep if ep is not None else self._pick_ignoring_accrual()

    def _pick_ignoring_accrual(self) -> Any:
        """Every endpoint is marked dead (or there is none): ask again with accrual ignored."""
        if not self.endpoints:
            return None
        return self.balancer.pick_ignoring_availability()

    def pick_key(self) -> str | None:
        """The endpoint the balancer would choose now (nothing is sent; for diagnostic traces)."""
        ep = self._pick()
        return ep.key if ep is not None else None

    def stale_age(self) -> float | None:
        """Seconds the namer has been serving this client's last good addresses (backend failing)."""
        if self.stale_since is None:
            return None
        return round(max(0.0, time.time() - self.stale_since), 3)

    async def request(
        self,
        req: Request,
        now: float | None = None,
        judge: Judge | None = None,
        next_attempt: Callable[[Request], None] | None = None,
    ) -> tuple[Response, str]:
        """Send ``req`` to one endpoint; returns the response (body streaming) and the endpoint key.
        ``now``: the client's clock, just read by the caller (None: read here); the first attempt
        starts then. ``judge``: what counts as a success (None: any status but 5XX).
        ``next_attempt``: called with ``req`` before each requeue (the router gives it a new span)."""
        clock = self._clock
        balancer = self.balancer
        accrual = self.accrual
        if now is None:
            now = clock()
        self.last_used = t0 = now
        self.requeue_budget.deposit_at(now)  # the budget reads the client's clock
        requeues = 0
        full_refusals = 0  # attempts refused by an endpoint's full connection pool
        spans = self.spans  # (an ``io.l5d.zipkin`` telemeter's recorder, or None)
        while True:
            bal_ep = balancer.pick()
            if bal_ep is None:
                bal_ep = self._pick_ignoring_accrual()
            ep = self.endpoints.get(bal_ep.key) if bal_ep is not None else None
            if ep is None:
                what = {
                    "neg": "is negative",
                    "failed": "failed to resolve",
                    "pending": "has no addresses yet",
                }
                state = what.get(self.addr_state, "has no endpoints")
                raise NoEndpoints(f"client {self.id} {state}: no endpoints available")
            key = ep.key
            balancer.on_start(bal_ep)
            accrual.on_request(key)
            if requeues:
                t0 = clock()
            if spans is not None:
                sent_us = spans.now_us()
            try:
                if self._attempt_timeout is not None:
                    with trio.move_on_after(self._attempt_timeout) as scope:
                        resp = await ep.pool.request(req)
                    if scope.cancelled_caught:
                        raise AttemptTimeout(
                            f"request to {ep.key} exceeded requestAttemptTimeoutMs "
                            f"({int(self._attempt_timeout * 1000)} ms)",
                            endpoint=ep.key,
                        )
                else:
                    resp = await ep.pool.request(req)
            except UpstreamError as e:
                if spans is not None:
                    spans.attempt(req, self.id, key, sent_us, None, e.cause)
                if e.local:
                    # hostproxy's own resources ran out (file descriptors): not the endpoint's
                    # failure, and another endpoint would fare no better (no requeue).
                    self._interrupted(bal_ep, key, t0)
                    self.resources_last_error = {"endpoint": ep.key, "message": str(e), "at": time.time()}
                    log.warning("client.out_of_resources", router=self.router, client=self.id, error=str(e))
                    raise
                balancer.on_finish(bal_ep, clock() - t0, False)
                ep.last_failure = {"cause": e.cause, "message": str(e), "at": time.time()}
                if not bal_ep.removed:  # (a removed endpoint's accrual state is gone: not remade)
                    accrual.on_response(key, False)
                    if self._fail_fast and e.cause.startswith("connect/"):
                        accrual.eject(key)  # ``failFast``: out at once, back through accrual's probing
                if e.cause == "tls":
                    self.tls_last_error = {
                        "endpoint": ep.key,
                        "reason": getattr(e, "reason", "other"),
                        "message": str(e),
                        "at": time.time(),
                    }
                if e.pool_full:
                    full_refusals += 1
                if (
                    e.retryable
                    and requeues < MAX_REQUEUES
                    # A pool at its limits refused it: another endpoint may have room, the same one
                    # not yet (it waited, or was refused at once): as many tries as endpoints.
                    and (not e.pool_full or full_refusals < len(self.endpoints))
                    and self._open_for_requeue()
                    and self.requeue_budget.try_withdraw()
                ):
                    requeues += 1
                    log.debug(
                        "client.requeue", router=self.router, client=self.id, endpoint=ep.key, cause=e.cause
                    )
                    if next_attempt is not None:
                        next_attempt(req)
                    continue
                raise
            except BaseException as exc:
                if spans is not None and isinstance(exc, (Exception, trio.Cancelled)):
                    # Cut short (totalTimeoutMs, the caller gone) or the request body failed.
                    spans.attempt(req, self.id, key, sent_us, None, _abandoned_cause(exc))
                # A failed request body is the client's doing: not a failure of the endpoint.
                balancer.on_finish(bal_ep, clock() - t0, isinstance(exc, RequestBodyError))
                if not bal_ep.removed:
                    accrual.on_interrupted(key)  # (a probe cut off is over: probed again later)
                raise
            if spans is not None:
                spans.attempt(req, self.id, key, sent_us, resp.status, None)
            answered_5xx = 500 <= resp.status < 600
            if answered_5xx:
                self._answered_5xx(resp, ep)
            body = resp.body
            if judge is None:
                ok_status = not answered_5xx  # what the balancer and accrual count as failed
            elif body.in_memory or body.done:
                ok_status = judge(resp.status, resp.headers, body.trailers)
                if not ok_status:
                    self._judged_failure(key, resp.headers, body.trailers)
            else:
                ok_status = True  # judged when the body ends (the trailers may decide)
            if body.in_memory or body.done or resp.upgraded is not None:
                self._outcome(bal_ep, key, t0, ok_status)  # the outcome is known now
            else:
                outcome = _OutcomeBody(body, self, bal_ep, key, t0, ok_status, judge, resp)
                resp.body = Body(outcome, body.content_length)
                if judge is None and ok_status and accrual.probing(key):
                    # The probe's answer is a success by its status (what an HTTP classifier judges,
                    # in Linkerd too) and its body streams (a watch may last hours): the endpoint is
                    # revived now rather than left out of the balancer until the body ends. The body's
                    # end is still recorded, as any response of a live endpoint. (A gRPC verdict is
                    # in the trailers: that probe waits for them.)
                    accrual.on_response(key, True)
            return resp, key

    def _open_for_requeue(self) -> bool:
        """Whether a request that never reached an upstream may be requeued: only while some endpoint is
        available (Finagle requeues only while the client's status is Open, and counts the others in
        ``retries/not_open``). When failure accrual has marked every endpoint dead, a requeue would go to
        a dead endpoint again: the request went on up to 25 times, a connect timeout each time with an
        unreachable endpoint, spending the requeue budget the other requests need."""
        if not self.endpoints or self.balancer.any_available():
            return True  # (none left: the next pick says why, "negative" or "no endpoints")
        self.not_open += 1
        return False

    def _answered_5xx(self, resp: Response, ep: _Endpoint) -> None:
        """A 5XX answer is the endpoint's last failure (why failure accrual may take it out)."""
        err = resp.headers.get(b"l5d-err")
        message = unquote_plus(err.decode("latin-1"), encoding="iso-8859-1") if err is not None else None
        ep.last_failure = {
            "cause": Cause.UPSTREAM_5XX.value,
            "message": f"answered {resp.status}" + (f" with l5d-err: {message}" if message else ""),
            "at": time.time(),
        }

    def _body_failed(self, key: str, exc: UpstreamError, what: str) -> None:
        """A response body from endpoint ``key`` broke after its head was passed on: the endpoint's
        last failure (``what: <the error>``)."""
        ep = self.endpoints.get(key)
        if ep is not None:
            ep.last_failure = {"cause": exc.cause, "message": f"{what}: {exc}", "at": time.time()}

    def _judged_failure(self, key: str, head: Any, trailers: Any) -> None:
        """The classifier judged an answer with a grpc-status a failure: the endpoint's last failure
        (why failure accrual may take it out; a 5XX is noted by ``_answered_5xx``)."""
        ep = self.endpoints.get(key)
        code = grpc_status_of(head, trailers)
        if ep is None or code is None:
            return
        message = None
        for fields in (trailers, head):
            value = fields.get(b"grpc-message") if fields is not None else None
            if value is not None:
                message = unquote(value.decode("latin-1"), encoding="utf-8", errors="replace")[:200]
                break
        ep.last_failure = {
            "cause": Cause.UPSTREAM_GRPC.value,
            "message": f"answered grpc-status {code}" + (f": {message}" if message else ""),
            "at": time.time(),
        }

    def note_failed_answer(self, service: str, resp: Response, endpoint: str) -> None:
        """The router judged ``resp`` (from ``endpoint``) a failure of ``service`` (a 5XX, a gRPC
        error): count it, and keep it when a proxy downstream made it (it carries ``l5d-err``)."""
        err = resp.headers.get(b"l5d-err")
        seen = self.failed_answers.pop(service, None) or {"answered": 0, "proxied": 0, "last": None}
        self.failed_answers[service] = seen  # (now the most recent)
        if len(self.failed_answers) > MAX_FAILED_ANSWER_SERVICES:
            del self.failed_answers[next(iter(self.failed_answers))]
        seen["answered"] += 1
        if err is not None:
            seen["proxied"] += 1
            seen["last"] = {
                "endpoint": endpoint,
                "status": resp.status,
                "message": unquote_plus(err.decode("latin-1"), encoding="iso-8859-1"),
                "at": time.time(),
            }

    def _outcome(self, bal_ep: Any, key: str, t0: float, ok: bool) -> None:
        """A request sent at ``t0`` ended (``ok``: status and body both fine): tell the balancer and
        failure accrual (unless the endpoint left the set meanwhile: its accrual state is gone, and
        one re-added later starts afresh)."""
        self.balancer.on_finish(bal_ep, self._clock() - t0, ok)
        if not bal_ep.removed:
            self.accrual.on_response(key, ok)

    def _interrupted(self, bal_ep: Any, key: str, t0: float) -> None:
        """A request's response was cut off by its caller (cancelled): neither a success nor a
        failure of the endpoint (a probe cut off is probed again later)."""
        self.balancer.on_finish(bal_ep, self._clock() - t0, True)
        if not bal_ep.removed:
            self.accrual.on_interrupted(key)

    # -- state ------------------------------------------------------------------------------------

    def state_json(self) -> dict[str, Any]:
        """This client's entry in ``/client_state.json``.

        Linkerd's keys first (``state``: ``bound``, ``Neg``, ``Pending`` or ``Failed: <message>``;
        ``addresses``: ``host:port`` strings, empty unless bound), then hostproxy's: per-endpoint
        balancer, accrual and pool state, the balancer and accrual summaries, and staleness.
        """
        bal = _safe(self.balancer.state) or {}
        acc = _safe(self.accrual.state) or {}
        bal_eps = {e["key"]: e for e in bal.get("endpoints", ())}
        acc_eps = acc.get("endpoints", {})
        endpoints = {}
        for key, ep in self.endpoints.items():
            b = bal_eps.get(key, {})
            endpoints[key] = {
                "weight": ep.weight,
                "load": b.get("load"),
                "status": b.get("status"),
                "accrual": acc_eps.get(key, {}).get("state", "alive"),
                "pool": ep.pool.statistics(),
                "lastFailure": ep.last_failure,
            }
        if self.endpoints and self.addr_state in ("bound", "stale", "failed"):
            state = "bound"
        elif self.addr_state == "neg":
            state = "Neg"
        elif self.addr_state == "failed":
            cause = getattr(self.addr, "cause", "unknown error")
            state = f"Failed: {cause}"
        elif self.addr_state == "pending":
            state = "Pending"
        else:
            state = "bound"
        out: dict[str, Any] = {
            "state": state,
            "addresses": list(self.endpoints) if state == "bound" else [],
            "stale": self.addr_state == "stale",
            "staleAgeSecs": self.stale_age(),
            "endpoints": endpoints,
            "loadBalancer": {k: v for k, v in bal.items() if k != "endpoints"},
            "failureAccrual": {k: v for k, v in acc.items() if k != "endpoints"},
        }
        tls = getattr(self.params, "tls", None)
        if tls is not None and tls.enabled:
            out["tls"] = {"commonName": tls.common_name, "lastError": self.tls_last_error}
        if self.resources_last_error is not None:
            out["outOfResources"] = self.resources_last_error
        proxied = {svc: dict(v) for svc, v in self.failed_answers.items() if v["proxied"]}
        if proxied:
            out["downstreamProxyErrors"] = proxied
        return out

    async def aclose(self) -> None:
        await self.close_pools()
        self._scope.drop_client(self.id)

    def evict(self, nursery: trio.Nursery) -> None:
        """This client leaves its router's cache: its metrics are dropped now (a client made again
        under the same id may be registering its own in the same step), its pools close in
        ``nursery`` (requests in flight finish)."""
        self.closed = True
        self._scope.drop_client(self.id)
        nursery.start_soon(self.close_pools)

    async def close_pools(self) -> None:
        """Close every endpoint's connections but keep the metrics (a reload replaced this client)."""
        self.closed = True
        for ep in list(self.endpoints.values()):
            await ep.pool.aclose()


class _Pools:
    """A client's endpoint pools as one ``statistics()`` for its metrics: connections open, open
    or opening (``size``), idle and requests waiting, summed over the endpoints — and over the pools
    of endpoints that left the set while their last connections finish their requests."""

    __slots__ = ("_client",)

    def __init__(self, client: Client) -> None:
        self._client = client

    def statistics(self) -> dict[str, int]:
        total = {"open": 0, "size": 0, "idle": 0, "waiters": 0}
        client = self._client
        for ep in client.endpoints.values():
            _add(total, ep.pool.statistics())
        if client._retiring:  # a removed endpoint's pool counts until its last connection closes
            client._retiring = [pool for pool in client._retiring if _add(total, pool.statistics())]
        return total


def _add(total: dict[str, int], st: dict[str, int]) -> int:
    """Add one pool's ``statistics()`` to ``total``; returns its connections open or opening."""
    size = _connections(st)
    total["open"] += st.get("open", 0)
    total["size"] += size
    total["idle"] += st.get("idle", 0)
    total["waiters"] += st.get("waiters", 0)
    return size


def _connections(st: dict[str, int]) -> int:
    """A pool's connections open or opening, from its ``statistics()``."""
    return st.get("open", 0) + st.get("opening", 0)


def _safe(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except Exception:  # admin views must never break on a balancer quirk
        return None


def _abandoned_cause(exc: BaseException) -> str:
    """The ``error`` tag of a span whose attempt ended neither with a response nor an upstream error."""
    if isinstance(exc, trio.Cancelled):
        return "cancelled"  # the request's totalTimeoutMs, or the caller gone
    if isinstance(exc, RequestBodyError):
        return "request/body"
    return Cause.PROXY_INTERNAL.value
