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
5. **Forwarding.** ``l5d-dst-*``, ``l5d-reqid`` and ``l5d-ctx-*`` are set; the client sends the request
   within ``service.totalTimeoutMs``; connection-level failures map to Linkerd's statuses with an
   ``l5d-err`` naming the endpoint.

Every request is counted under the server, the service (bound names only; others under ``unbound`` plus
a bounded top-N) and the client, with at most one failure cause. A 5xx that the application returned
passes through unchanged (no ``l5d-err``) and is counted as ``upstream/5xx``.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

import structlog
import trio

from dtab import Dtab, Path
from dtab.bind import AddrFailed, BoundName
from dtab.tree import Leaf, Union
from hostproxy.balancer import WeightedChoice
from hostproxy.causes import Cause
from hostproxy.client import Client, plugin_mapping
from hostproxy.config import client_params_for, service_params_for
from hostproxy.http.errors import CAUSE_STATUS, UpstreamError, error_response
from hostproxy.http.message import Headers, Request, Response
from hostproxy.http.server import ConnInfo
from hostproxy.metrics import MetricsRegistry
from hostproxy.routing.binder import BindingCacheConfig, Binder, ClientCache
from hostproxy.routing.context import (
    AddressOverridePolicy,
    DtabParseCache,
    RequestDtabError,
    downstream_headers,
    read_inbound,
)
from hostproxy.routing.identifiers import Unidentified, build_identifiers, unknown_destination_message

log = structlog.get_logger("hostproxy.router")


class _IdentReq:
    """What identifiers see: the request with the inbound context already taken out."""

    __slots__ = ("method", "target", "headers", "http_version", "authority")

    def __init__(self, req: Request, headers: list[tuple[bytes, bytes]]) -> None:
        self.method = req.method
        self.target = req.target
        self.headers = headers
        self.http_version = req.http_version
        self.authority = req.authority


def _dtab_lines(d: Dtab) -> str:
    return "\n".join(f"  {e.prefix} => {e.dst}" for e in d) or "  (empty)"


class _Bound:
    __slots__ = ("tree", "consulted")

    def __init__(self, tree: Any, consulted: Any) -> None:
        self.tree = tree
        self.consulted = consulted


def _transforming_bind(transformers: list[Any]) -> Callable[..., Any]:
    """``dtab.bind`` followed by the router's interpreter transformers (``/%/…`` client ids)."""
    from dtab.bind import bind
    from namers.transformers import apply_transformers

    def bind_fn(dtab: Dtab, path: Path, namers: Any, **kw: Any) -> Any:
        r = bind(dtab, path, namers, **kw)
        return _Bound(apply_transformers(r.tree, transformers), r.consulted)

    return bind_fn


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
    ) -> None:
        self.cfg = cfg
        self._pool_factory = pool_factory
        self.label: str = cfg.label or cfg.kind
        self._rng = rng or random.Random()
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
        self.namer_pairs = list(namer_pairs) if namer_pairs is not None else [
            (Path.read("/#") + n.prefix, n.lookup) for n in reversed(self.namers)
        ]
        self.transformers = list(transformers)
        bc = cfg.binding_cache
        self.binder = Binder(
            Dtab.read(cfg.dtab) if base_dtab is None else base_dtab,
            self.namer_pairs,
            config=BindingCacheConfig(paths=bc.paths, trees=bc.trees, bounds=bc.bounds, clients=bc.clients,
                                      idle_ttl_s=bc.idle_ttl_secs),
            clock=clock,
            system=resolver.system if resolver is not None else None,
            bind_fn=_transforming_bind(self.transformers) if self.transformers else None,
        )
        self._unsubscribe: list[Callable[[], None]] = []
        for n in self.namers:
            prefix = Path.read("/#") + n.prefix
            self._unsubscribe.append(n.subscribe(lambda _n, key, prefix=prefix: self.binder.invalidate(prefix, key)))
        if resolver is not None:
            self._unsubscribe.append(resolver.subscribe(lambda _r, _host: self._rebind_all()))
        self._changed = trio.Event()
        self._unsubscribe.append(self.binder.on_change(lambda _v: self._changed.set()))
        self.dtab_cache = DtabParseCache(bc.paths)
        self.clients: ClientCache[str, Client] = ClientCache(
            bc.clients, idle_ttl_s=bc.idle_ttl_secs, clock=clock,
            close=lambda _id, c: self._nursery.start_soon(c.aclose),
        )
        self.scope = metrics.router(label=self.label)
        self.binding_timeout_s = cfg.binding_timeout_ms / 1000
        self.max_err_bytes = getattr(cfg, "max_err_response_kb", 5120) * 1024
        self.max_err_header_bytes = getattr(cfg, "max_headers_kb", 8) * 1024
        self._policies: dict[str, AddressOverridePolicy] = {
            s.ip: AddressOverridePolicy.for_server(s.ip, s.allow_address_overrides) for s in cfg.servers
        }
        self._clear_context = {s.ip: s.clear_context for s in cfg.servers}
        self._service_params: dict[Path, Any] = {}

    # -- lifecycle ----------------------------------------------------------------------------------

    def _rebind_all(self) -> None:
        self.binder.set_base_dtab(self.binder.base_dtab)

    def set_dtab(self, dtab: Dtab) -> None:
        self.binder.set_base_dtab(dtab)

    def expire_idle(self) -> int:
        return self.clients.expire_idle()

    def close(self) -> None:
        for u in self._unsubscribe:
            u()
        self.clients.close_all()

    # -- admin views --------------------------------------------------------------------------------

    def client_state(self) -> dict[str, Any]:
        return {cid: c.state_json() for cid, c in self.clients.items()}

    # -- the request path ---------------------------------------------------------------------------

    def _err(self, status: int, cause: Cause, message: str, retryable: bool | None = None) -> Response:
        return error_response(status, cause.value, message, max_header_bytes=self.max_err_header_bytes,
                              max_body_bytes=self.max_err_bytes, retryable=retryable)

    async def handle(self, req: Request, conn: ConnInfo) -> Response:
        t0 = self._clock()
        server_stats = self.scope.server(conn.params.ip, conn.local[1])
        server_stats.start()
        cause: Cause | None = None
        status = 502
        try:
            resp, cause, service_stats = await self._route(req, conn)
            status = resp.status
            return resp
        except BaseException:
            cause = Cause.PROXY_INTERNAL
            service_stats = None
            raise
        finally:
            latency = self._clock() - t0
            server_stats.finish(latency, cause, status)
            if service_stats is not None:
                service_stats.finish(latency, cause, status)

    async def _route(self, req: Request, conn: ConnInfo) -> tuple[Response, Cause | None, Any]:
        ip = conn.params.ip
        try:
            inbound = read_inbound(req.headers.items(), clear_context=self._clear_context.get(ip, False),
                                   cache=self.dtab_cache)
        except RequestDtabError as e:
            return self._err(400, Cause.IDENTIFICATION, str(e)), Cause.IDENTIFICATION, None
        ident = self.identifier.identify(_IdentReq(req, inbound.headers))
        if isinstance(ident, Unidentified):
            msg = unknown_destination_message(req, ident)
            return self._err(400, Cause.IDENTIFICATION, msg), Cause.IDENTIFICATION, None
        if ident.target is not None:
            req.target = ident.target
        service: Path = ident.path
        local = inbound.local_dtab
        outcome = await self._bind(service, local, self._policies.get(ip))
        if outcome is None:
            svc = self._service_stats(service, False, Cause.NAMING_FAILED)
            msg = (f"Exceeded {self.binding_timeout_s:g} seconds binding timeout while resolving name: "
                   f"{service}")
            return self._err(502, Cause.NAMING_FAILED, msg), Cause.NAMING_FAILED, svc
        if outcome.refused is not None:
            svc = self._service_stats(service, False, Cause.IDENTIFICATION)
            return self._err(400, Cause.IDENTIFICATION, str(outcome.refused)), Cause.IDENTIFICATION, svc
        if outcome.error is not None:
            svc = self._service_stats(service, False, Cause.NAMING_FAILED)
            msg = f"Unable to route request!\nservice name: {service}\nerror: {outcome.error}"
            return self._err(502, Cause.NAMING_FAILED, msg), Cause.NAMING_FAILED, svc
        leaf = self._choose(outcome.tree)
        if leaf is None:
            svc = self._service_stats(service, False, Cause.NAMING_NEG)
            msg = (f"Unable to route request!\nservice name: {service}\n"
                   f"dtab:\n{_dtab_lines(self.binder.base_dtab + local)}\n"
                   f"base dtab:\n{_dtab_lines(self.binder.base_dtab)}\n"
                   f"override dtab:\n{_dtab_lines(local)}")
            return self._err(502, Cause.NAMING_NEG, msg), Cause.NAMING_NEG, svc
        svc = self.scope.service(str(service), True)
        svc.start()
        client_id = str(leaf.id)
        client = self.clients.acquire(client_id, self._new_client)
        try:
            return await self._forward(req, service, local, leaf, client, inbound.headers, svc)
        finally:
            self.clients.release(client_id)

    async def _forward(self, req: Request, service: Path, local: Dtab, leaf: BoundName, client: Client,
                       headers: list[tuple[bytes, bytes]], svc: Any) -> tuple[Response, Cause | None, Any]:
        client_id = client.id
        client.update_addr(leaf.addr)
        if isinstance(leaf.addr, AddrFailed) and not client.endpoints:
            msg = f"Unable to route request!\nservice name: {service}\nclient name: {client_id}\n" \
                  f"naming failed: {leaf.addr.cause}"
            return self._err(502, Cause.NAMING_FAILED, msg), Cause.NAMING_FAILED, svc
        edits = downstream_headers(service=service, client=leaf.id, residual=leaf.residual, local_dtab=local,
                                   headers=headers, rng=self._rng)
        req.headers = Headers(edits.apply(headers))
        params = self._service_params.get(service)
        if params is None:
            params = service_params_for(self.cfg, service)
            if len(self._service_params) < 10_000:
                self._service_params[service] = params
        client_stats = client.stats
        client_stats.start()
        t0 = self._clock()
        cause: Cause | None = None
        status = 502
        try:
            if params.total_timeout_ms:
                with trio.move_on_after(params.total_timeout_ms / 1000) as scope:
                    resp, endpoint = await client.request(req)
                if scope.cancelled_caught:
                    cause = Cause.TIMEOUT_REQUEST
                    msg = (f"exceeded totalTimeoutMs ({params.total_timeout_ms} ms) for {service} "
                           f"via {client_id}")
                    return self._err(503, cause, msg), cause, svc
            else:
                resp, endpoint = await client.request(req)
            status = resp.status
            if status >= 500:
                cause = Cause.UPSTREAM_5XX
            return resp, cause, svc
        except UpstreamError as e:
            cause = Cause(e.cause) if e.cause in Cause._value2member_map_ else Cause.PROXY_INTERNAL
            status = CAUSE_STATUS.get(e.cause, 502)
            if cause in (Cause.CONNECT_REFUSED, Cause.CONNECT_TIMEOUT, Cause.CONNECT_UNREACHABLE):
                msg = (f"Unable to establish connection to {e.endpoint}.\n{e}\nservice name: {service}\n"
                       f"client name: {client_id}\naddresses: [{', '.join(client.endpoints)}]\n"
                       f"selected address: {e.endpoint}")
            else:
                msg = f"{e}\nservice name: {service}\nclient name: {client_id}"
            return self._err(status, cause, msg, retryable=e.retryable), cause, svc
        finally:
            client_stats.finish(self._clock() - t0, cause, status)

    def _service_stats(self, service: Path, bound: bool, cause: Cause) -> Any:
        self.scope.observe_unbound(str(service), cause)
        s = self.scope.service(str(service), bound)
        s.start()
        return s

    async def _bind(self, service: Path, local: Dtab, policy: AddressOverridePolicy | None) -> Any:
        outcome = self.binder.bind(service, local, policy=policy)
        if not outcome.pending:
            return outcome
        with trio.move_on_after(self.binding_timeout_s):
            while outcome.pending:
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
        params = client_params_for(self.cfg, client_id)
        extra = {"pool_factory": self._pool_factory} if self._pool_factory is not None else {}
        return Client(self.label, client_id, params, self.scope, nursery=self._nursery, rng=self._rng,
                      clock=self._clock, **extra)
