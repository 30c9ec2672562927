"""``io.l5d.k8s``: Kubernetes Services and their endpoints, listed and watched.

Theory of operation
-------------------
``/#/io.l5d.k8s/<namespace>/<port name or number>/<service>[/<label value>]/rest...`` names the
ready endpoints of one port of one Service. The first three labels (four with ``labelSelector``)
are lowercased and form the name's key; labels that are not valid Kubernetes names are ``NEG``, so
untrusted input never reaches a URL.

Every key belongs to a *target*, ``(namespace, service, label value)``, shared by all its ports.
A target runs two list/watches (:class:`~namers.k8s.watch.ListWatchCore`), each a trio task:

* the Service (``/api/v1/.../services?fieldSelector=metadata.name=<svc>``), which says whether the
  Service exists and maps numeric ports;
* its endpoints: the ``v1 Endpoints`` object (``fieldSelector``), or with ``use_endpoint_slices``
  the Service's ``discovery.k8s.io/v1`` EndpointSlices (``labelSelector=kubernetes.io/service-name``).

With a ``labelSelector`` key configured, ``<key>=<label value>`` narrows both queries.

After any change the target's keys are recomputed from the stored objects (:mod:`namers.k8s.objects`)
and reported to the :class:`~namers.base.NameTable`; the three outcomes Monzo's outage taught us to
keep apart stay apart (``condition`` in the state JSON and in :meth:`K8sNamer.statistics`):

* ``service-missing``: the Service does not exist (or was deleted) -> ``neg`` (a dtab alternate may
  take over); a port the Service does not have is ``port-missing`` -> ``neg``;
* ``no-endpoints``: the Service exists with zero ready endpoints -> ``bound`` with no addresses;
* ``unavailable``: a request to the API server failed -> the last good addresses are kept and the
  name is ``stale`` with its age (``failed`` if there never was an answer); ``malformed``: the
  objects behind this one name cannot be read -> the same, for that name only.

Each watch re-lists on 410, on ERROR events, after every failed request or broken connection, and
every ``resync_interval`` seconds, even while its stream looks healthy: a watch that silently stops
delivering is caught by that periodic re-list. Failed requests back off exponentially
(``backoff_base`` .. ``backoff_max``, jittered by the injected ``rng``, waited with the injected
``sleep``); the backoff starts again from its first step only once a watch streams again, so lists
that succeed between watches that fail (a role granting get and list but not watch) do not reset
it. While watches are refused that way, names are served from those lists and stay ``stale`` with
the refusal (``discovery degraded: the watch was refused ...``): fresh addresses, but changes arrive
only with the next list, at most ``backoff_max`` apart; a name becomes ``bound`` once a watch streams. Cycles that fail without an error also back off, growing while they repeat (the core's
``throttle_steps``): a watch that ends within a second with no event, and a ``410`` after a ``410``
with no event between; so neither a proxy that closes every watch nor a watch cache stuck behind
the lists turns one name into a stream of watches or LISTs. A ``401`` re-reads the token and, when
it changed (rotated under an unchanged file signature), retries once at once; otherwise it is a
failure like any other. A target no longer used by any key (all evicted) has its tasks cancelled.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import structlog
import trio

from namers._dtab import NEG, Address, Path
from namers.base import DEFAULT_MAX_NAMES, Key, Namer, config_value, format_time, key_text
from namers.k8s.client import DEFAULT_SA_DIR, ApiServer, ApiUnavailable, Response, in_cluster
from namers.k8s.objects import K8sObjectError, parse_endpoints, parse_service, parse_slices, resolve
from namers.k8s.watch import Collection, LineBuffer, LineTooLong, ListWatchCore

__all__ = ["KIND", "K8sNamer", "Target", "api_from_config", "from_config", "resync_from_config", "valid_key"]

#: Residuals whose canonical spelling :meth:`K8sNamer.canonical_residual` remembers (then it starts over).
CANONICAL_MEMO_SIZE = 8192

KIND = "io.l5d.k8s"
log = structlog.get_logger("namers.k8s")

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_PORT_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,13}[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([a-z0-9]([-a-z0-9_.]{0,61}[a-z0-9])?)?$")
_LABEL_KEY = re.compile(
    r"^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)

CONDITIONS = ("endpoints", "no-endpoints", "service-missing", "port-missing", "unavailable", "malformed")


def valid_key(ns: str, port: str, svc: str, label_value: str | None) -> bool:
    """Whether the labels can name a Kubernetes object (and are safe to put in a URL)."""
    if not _DNS_LABEL.match(ns) or not _DNS_LABEL.match(svc):
        return False
    if port.isdigit():
        if not 1 <= int(port) <= 65535:
            return False
    elif not _PORT_NAME.match(port) or not re.search("[a-z]", port):
        return False
    return label_value is None or bool(_LABEL_VALUE.match(label_value))


MAX_CONCURRENT_LISTS = 32  # list requests in flight at once (watches themselves are not limited)


def watch_refused_message(refused: str, backoff_max: float) -> str:
    """The error of a name served from lists because its watch was refused (RBAC without ``watch``)."""
    return (
        f"discovery degraded: the watch was refused ({refused}); the addresses are those of the last list, "
        f"and changes arrive with a re-list, at most every {backoff_max:g}s"
    )


@dataclass
class Target:
    """One (namespace, service, label value): its list/watches (the Service's and, but for
    ``io.l5d.k8s.external``, its endpoints') and their tasks."""

    namespace: str
    service: str
    label_value: str | None
    svc: ListWatchCore
    eps: ListWatchCore | None
    cancel: trio.CancelScope = field(default_factory=trio.CancelScope)
    started_at: float | None = None
    stopped_at: float | None = None
    running: bool = False
    keys: list[Any] = field(default_factory=list)  # the watched names this target answers

    @property
    def name(self) -> str:
        return f"{self.namespace}/{self.service}"

    @property
    def cores(self) -> tuple[ListWatchCore, ...]:
        return (self.svc,) if self.eps is None else (self.svc, self.eps)


@dataclass
class _Detail:
    """What the state JSON shows of a name beyond the base :class:`~namers.base.NameState`."""

    condition: str | None = None
    ports: dict[str, list[int]] = field(default_factory=dict)
    ready: list[dict[str, Any]] = field(default_factory=list)
    not_ready: list[dict[str, Any]] = field(default_factory=list)


class K8sNamer(Namer):
    """The ``io.l5d.k8s`` namer over one API server."""

    kind: ClassVar[str] = KIND
    #: The ``condition`` values a name can have (counted in :meth:`statistics`).
    conditions: ClassVar[tuple[str, ...]] = CONDITIONS

    def __init__(
        self,
        api: ApiServer,
        *,
        prefix: str | Path | None = None,
        label_selector: str | None = None,
        use_endpoint_slices: bool = False,
        resync_interval: float = 300.0,
        request_timeout: float = 30.0,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        clock: Callable[[], float] | None = None,
        rng: Callable[[], float] = random.random,
        sleep: Callable[[float], Awaitable[object]] = trio.sleep,
        max_names: int = DEFAULT_MAX_NAMES,
        transformers: Iterable[Any] = (),
    ) -> None:
        kwargs: dict[str, Any] = {"prefix": prefix, "max_names": max_names, "transformers": transformers}
        if clock is not None:
            kwargs["clock"] = clock
        super().__init__(**kwargs)
        if label_selector is not None and not _LABEL_KEY.match(label_selector):
            raise ValueError(
                f"{self.kind} labelSelector {label_selector!r} is not a Kubernetes label key; "
                "give the key only, e.g. 'version' (its value comes from the path)"
            )
        if resync_interval <= 0 or request_timeout <= 0 or backoff_base <= 0 or backoff_max < backoff_base:
            raise ValueError(
                f"{self.kind}: resync_interval, request_timeout and backoff_base must be positive "
                "and backoff_max at least backoff_base"
            )
        self.api = api
        self.label_selector = label_selector
        self.use_endpoint_slices = use_endpoint_slices
        self.resync_interval = resync_interval
        self.request_timeout = request_timeout
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.rng = rng
        self.sleep = sleep
        self.targets: dict[tuple[str, str, str | None], Target] = {}
        self._detail: dict[Key, _Detail] = {}
        self._nursery: trio.Nursery | None = None
        self.recomputes = 0
        self._list_limiter = trio.CapacityLimiter(MAX_CONCURRENT_LISTS)
        self._canonical: dict[Path, Path] = {}

    # -- naming --------------------------------------------------------------------------------
    normalizes_keys = True  # ``split`` lowercases the key, as Linkerd's namer does

    def canonical_residual(self, residual: Path) -> Path:
        """As :meth:`Namer.canonical_residual`, remembered: a change of one name is matched against
        every residual bindings asked this namer for, so each is spelt once, not at every change."""
        memo = self._canonical
        found = memo.get(residual)
        if found is None:
            if len(memo) >= CANONICAL_MEMO_SIZE:
                memo.clear()
            found = memo[residual] = super().canonical_residual(residual)
        return found

    @property
    def key_len(self) -> int:
        return 4 if self.label_selector is not None else 3

    def split(self, residual: Path) -> tuple[Key, Path] | None:
        labels = tuple(residual.labels)
        n = self.key_len
        if len(labels) < n:
            return None
        try:
            parts = [label.decode("ascii").lower() for label in labels[:n]]
        except UnicodeDecodeError:
            return None
        if not valid_key(parts[0], parts[1], parts[2], parts[3] if n == 4 else None):
            return None
        return tuple(p.encode("ascii") for p in parts), Path(labels[n:])

    def lookup(self, residual: Path) -> Any:
        self.lookups += 1
        split = self.split(residual)
        if split is None:
            return NEG
        key, rest = split
        return self.tree_for(self.touch(key), rest)

    @staticmethod
    def _parts(key: Key) -> tuple[str, str, str, str | None]:
        ns, port, svc = (k.decode("ascii") for k in key[:3])
        lv = key[3].decode("ascii") if len(key) > 3 else None
        return ns, port, svc, lv

    def _target_id(self, key: Key) -> tuple[str, str, str | None]:
        ns, _, svc, lv = self._parts(key)
        return ns, svc, lv

    def _selector(self, label_value: str | None, base: str | None = None) -> str | None:
        parts = [
            p for p in (base, f"{self.label_selector}={label_value}" if self.label_selector else None) if p
        ]
        return ",".join(parts) or None

    def _make_target(self, ns: str, svc: str, lv: str | None) -> Target:
        name_sel = f"metadata.name={svc}"
        services = Collection("/api/v1", "services", ns, name_sel, self._selector(lv))
        if self.use_endpoint_slices:
            eps = Collection(
                "/apis/discovery.k8s.io/v1",
                "endpointslices",
                ns,
                None,
                self._selector(lv, f"kubernetes.io/service-name={svc}"),
            )
        else:
            eps = Collection("/api/v1", "endpoints", ns, name_sel, self._selector(lv))
        return Target(ns, svc, lv, ListWatchCore(services, self.clock), ListWatchCore(eps, self.clock))

    # -- the runner ------------------------------------------------------------------------------
    async def run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Watch every looked-up name until cancelled. Reports started at once: names stay pending
        until the API answers, so startup never waits for a sick API server."""
        self._bind_runner()
        log.info("namer.k8s.started", api=self.api.describe(), prefix=str(self.bound_prefix))
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._reconcile()
            task_status.started()
            try:
                while True:
                    await self._wait_for_wake(1.0)
                    self._reconcile()
            finally:
                self._nursery = None
                for t in self.targets.values():
                    t.running = False

    def _reconcile(self) -> None:
        """Start targets that keys need, stop those no key needs, answer new keys from known data."""
        wanted: dict[tuple[str, str, str | None], list[Key]] = {}
        for key in self.table.watched():
            wanted.setdefault(self._target_id(key), []).append(key)
        for tid in list(self.targets):
            if tid not in wanted:
                t = self.targets.pop(tid)
                t.cancel.cancel()
                t.running = False
                t.stopped_at = self.clock()
                log.info("namer.k8s.watch.stopped", name=t.name)
        for gone in set(self._detail) - set(self.table.watched()):
            del self._detail[gone]
        for tid, keys in wanted.items():
            target = self.targets.get(tid)
            if target is None:
                target = self.targets[tid] = self._make_target(*tid)
            target.keys = keys
            if not target.running and self._nursery is not None:
                target.cancel = trio.CancelScope()
                target.running = True
                target.started_at = self.clock()
                self._nursery.start_soon(self._run_target, target)
            for key in keys:
                st = self.table.get(key)
                if st is not None and st.state == "pending":
                    self._recompute_key(target, key)

    async def _run_target(self, t: Target) -> None:
        with t.cancel:
            async with trio.open_nursery() as nursery:
                for core in t.cores:
                    nursery.start_soon(self._run_watch, t, core)

    def _backoff(self, failures: int) -> float:
        base = min(self.backoff_max, self.backoff_base * (2 ** min(failures - 1, 30)))
        return base * (0.5 + 0.5 * self.rng())

    async def _run_watch(self, t: Target, core: ListWatchCore) -> None:
        failures = 0
        next_resync = math.inf
        while True:
            kind, path = core.next_request(timeout_seconds=max(1, math.ceil(self.resync_interval)))
            streams = core.watches
            try:
                if kind == "list":
                    changed = await self._list(core, path)
                    if core.error is None:
                        next_resync = trio.current_time() + self.resync_interval
                else:
                    changed = await self._watch(t, core, path, next_resync)
            except ApiUnavailable as e:
                changed = core.on_transport_error(str(e))
            except Exception as e:  # a bug handling one answer must not stop the namer (or the daemon)
                log.exception(
                    "namer.k8s.watch.internal_error", name=t.name, resource=core.collection.resource
                )
                changed = core.on_transport_error(
                    f"internal error handling the answer ({e!r}); retried with backoff"
                )
            if changed:
                self._recompute(t)
            if core.error is not None or (kind == "watch" and core.watch_refused is not None):
                failures += 1
                if failures == 1:
                    log.warning("namer.k8s.watch.failed", name=t.name, error=core.error or core.watch_refused)
                await self.sleep(self._backoff(failures))
                continue
            if failures and kind == "watch" and core.watches > streams:
                # Recovered only once a watch streams again: a list that succeeds between watches
                # that fail (RBAC without 'watch') must not reset the backoff to its first step.
                log.info("namer.k8s.watch.recovered", name=t.name, resource=core.collection.resource)
                failures = 0
            if core.throttle_steps:
                # No error, but no progress either: wait before the next request all the same.
                if core.throttle_steps == 1:
                    log.warning(
                        "namer.k8s.watch.throttled",
                        name=t.name,
                        resource=core.collection.resource,
                        reason=core.throttle,
                    )
                await self.sleep(self._backoff(core.throttle_steps))

    def _token_sent(self) -> str | None:
        """The token the next request carries (read just before it, as the request reads it)."""
        return self.api.token.get() if self.api.token is not None else None

    def _reread_token(self, sent: str | None) -> bool:
        """After a 401: re-read the token file; whether it differs from the one ``sent`` (then one
        retry at once is worth it; a token rejected as it is waits for the backoff)."""
        token = self.api.token
        if token is None:
            return False
        token.invalidate()
        return token.get() != sent

    async def _list(self, core: ListWatchCore, path: str) -> bool:
        # A bounded number of lists at once: thousands of names looked up together (a restart, a
        # flood of new names) must not open thousands of connections to the API server at once.
        async with self._list_limiter:
            sent = self._token_sent()
            resp = await self._get(path)
            if resp.status == 401 and self._reread_token(sent):
                resp = await self._get(path)
        if resp.status == 401 and self.api.token is not None:
            self.api.token.invalidate()
        return core.on_list(resp.status, resp.body)

    async def _get(self, path: str) -> Response:
        with trio.move_on_after(self.request_timeout):
            return await self.api.get(path)
        raise ApiUnavailable(f"no answer within {self.request_timeout}s")

    async def _watch(self, t: Target, core: ListWatchCore, path: str, resync_at: float) -> bool:
        """Stream one watch until it ends, breaks, asks for a re-list, or the resync time comes."""
        changed_any = False
        sent = self._token_sent()
        with trio.CancelScope(deadline=resync_at) as cs:
            async with self.api.watch(path) as resp:
                if resp.status != 200:
                    body = b""
                    with trio.move_on_after(self.request_timeout):
                        body = await resp.read_body(1024 * 1024)
                    if resp.status == 401 and self._reread_token(sent):
                        # rotated: the next request (at once: no error recorded) carries the new one
                        return False
                    return core.on_watch_status(resp.status, body)
                if core.on_stream_start():  # watches were refused until now: the names are fresh again
                    changed_any = True
                    self._recompute(t)
                started = trio.current_time()
                lines = LineBuffer()
                try:
                    while (data := await resp.next_chunk()) is not None:
                        for line in lines.feed(data):
                            if core.on_line(line):
                                changed_any = True
                                self._recompute(t)
                            if core.wants_relist:
                                break
                        if core.wants_relist:
                            break
                except (ApiUnavailable, LineTooLong) as e:
                    core.on_stream_end(clean=False, reason=str(e), lasted=trio.current_time() - started)
                    log.info("namer.k8s.watch.broken", name=t.name, error=str(e))
                    return changed_any
                core.on_stream_end(clean=not core.wants_relist, lasted=trio.current_time() - started)
        if cs.cancelled_caught:
            core.on_stream_end(clean=True)
            core.request_relist("periodic")
        return changed_any

    # -- from objects to names -------------------------------------------------------------------
    def _recompute(self, t: Target) -> None:
        # Only the names this target answers: an event costs the same whatever else is watched.
        for key in t.keys:
            if key in self.table:
                self._recompute_key(t, key)

    def _recompute_key(self, t: Target, key: Key) -> None:
        self.recomputes += 1
        changed = False
        detail = self._detail.setdefault(key, _Detail())
        error = next((c.error for c in t.cores if c.error is not None), None)
        if not all(c.synced for c in t.cores):
            if error is not None:
                detail.condition = "unavailable"
                changed = self.table.apply_failure(key, f"discovery unavailable: {error}")
        elif error is not None:
            detail.condition = "unavailable"
            changed = self.table.apply_failure(key, f"discovery unavailable: {error}")
        else:
            changed = self._resolve_key(t, key, detail)
        if changed:
            st = self.table.get(key)
            if st is not None:
                log.info(
                    "namer.k8s.update.complete",
                    name=key_text(key),
                    state=st.state,
                    condition=detail.condition,
                    addresses=len(st.addr or ()),
                    error=st.last_error,
                )
            self._notify(key)

    def _resolve_key(self, t: Target, key: Key, detail: _Detail) -> bool:
        _, port, _, _ = self._parts(key)
        assert t.eps is not None
        svc_obj = t.svc.objects.get(t.service)
        if svc_obj is None:
            detail.condition = "service-missing"
            detail.ready, detail.not_ready, detail.ports = [], [], {}
            return self.table.apply_neg(key)
        try:
            service = parse_service(svc_obj)
            if self.use_endpoint_slices:
                groups = parse_slices(t.eps.objects.values())
            else:
                groups = parse_endpoints(t.eps.objects.get(t.service))
            res = resolve(service, groups, port)
        except K8sObjectError as e:
            detail.condition = "malformed"
            return self.table.apply_failure(key, str(e))
        if res is None:
            detail.condition = "port-missing"
            detail.ready, detail.not_ready, detail.ports = [], [], {}
            return self.table.apply_neg(key)
        addrs = [Address(e.ip, p, 1.0, e.meta()) for e, p in res.ready]
        detail.condition = "endpoints" if addrs else "no-endpoints"
        detail.ready = [e.to_json(p) for e, p in res.ready]
        detail.not_ready = [e.to_json(p) for e, p in res.not_ready]
        detail.ports = {port: sorted({p for _, p in res.ready + res.not_ready})}
        refused = t.svc.watch_refused or t.eps.watch_refused
        if refused is not None:
            # The list's addresses, stale until a watch streams: changes come only with re-lists.
            return self.table.apply_partial(key, addrs, watch_refused_message(refused, self.backoff_max))
        return self.table.apply_bound(key, addrs)

    # -- admin -----------------------------------------------------------------------------------
    def _target_state_json(self, t: Target, core: ListWatchCore, value: Any) -> dict[str, Any]:
        return {
            "state": {
                "running": t.running,
                "lastStartedAt": format_time(t.started_at),
                "lastStoppedAt": format_time(t.stopped_at),
                "lastUpdatedAt": format_time(
                    core.last_list_at
                    if core.last_event_at is None
                    else max(core.last_event_at, core.last_list_at or 0.0)
                ),
                "value": value,
            },
            "watch": core.watch_json(format_time),
        }

    def state_source(self) -> dict[str, str]:
        """Saved names are Services of this API server's cluster (and, with a ``labelSelector``,
        keyed by that label): another cluster's pod IPs mean nothing here."""
        source = {"api": self.api.describe()}
        if self.label_selector is not None:
            source["labelSelector"] = self.label_selector
        return source

    def state_json(self) -> dict[str, Any]:
        """Linkerd's ``endpoints``/``portMappings`` shape, plus ``names`` (per watched name: state,
        addresses, not-ready addresses, condition, last update and error, staleness, its watch)."""
        body = super().state_json()
        for st in self.table.states():
            entry = body["names"][key_text(st.key)]
            d = self._detail.get(st.key, _Detail())
            t = self.targets.get(self._target_id(st.key))
            entry["condition"] = d.condition
            entry["notReady"] = d.not_ready
            entry["ports"] = d.ports
            entry["watch"] = self._name_watch_json(t) if t is not None else None
        self._targets_state_json(body)
        body["api"] = self.api.describe()
        return body

    def _name_watch_json(self, t: Target) -> dict[str, Any]:
        """A name's ``watch``: its target's endpoints watch (the Service's when there is none)."""
        cores = t.cores[::-1]
        main = cores[0]
        return {
            "target": self._target_label(t),
            "request": main.last_request,
            "lastEventAt": format_time(main.last_event_at),
            "lastListAt": format_time(main.last_list_at),
            "streaming": all(c.streaming for c in cores),
            "lastError": next((c.error for c in cores if c.error is not None), None)
            or next((c.watch_refused for c in cores if c.watch_refused is not None), None),
        }

    def _targets_state_json(self, body: dict[str, Any]) -> None:
        """Linkerd's ``endpoints`` and ``portMappings`` maps, one entry per target."""
        endpoints: dict[str, Any] = {}
        port_mappings: dict[str, Any] = {}
        for t in self.targets.values():
            assert t.eps is not None
            label = self._target_label(t)
            eps_value = (
                {
                    "nsName": t.namespace,
                    "serviceName": t.service,
                    "objects": sorted(t.eps.objects),
                }
                if t.eps.synced
                else None
            )
            endpoints[label] = self._target_state_json(t, t.eps, eps_value)
            svc_value = None
            if t.svc.synced:
                obj = t.svc.objects.get(t.service)
                try:
                    svc_value = (
                        {
                            str(p.port): (p.target_port if p.target_port is not None else p.port)
                            for p in parse_service(obj)
                        }
                        if obj is not None
                        else {}
                    )
                except K8sObjectError as e:
                    svc_value = {"error": str(e)}
            port_mappings[label] = self._target_state_json(t, t.svc, svc_value)
        body["endpoints"] = endpoints
        body["portMappings"] = port_mappings
        body["resource"] = "endpointslices" if self.use_endpoint_slices else "endpoints"

    def _target_label(self, t: Target) -> str:
        return t.name + (f":{self.label_selector}={t.label_value}" if self.label_selector else "")

    def statistics(self) -> dict[str, Any]:
        stats = super().statistics()
        conditions = {c: 0 for c in self.conditions}
        for key in self.table.watched():
            d = self._detail.get(key)
            if d is not None and d.condition is not None:
                conditions[d.condition] += 1
        relists: dict[str, int] = {}
        totals = {"lists": 0, "watches": 0, "events": 0, "malformed": 0, "failures": 0}
        streaming = 0
        oldest_event: float | None = None
        for t in self.targets.values():
            for core in t.cores:
                for reason, n in core.relists.items():
                    relists[reason] = relists.get(reason, 0) + n
                totals["lists"] += core.lists
                totals["watches"] += core.watches
                totals["events"] += core.events
                totals["malformed"] += core.malformed
                totals["failures"] += core.failures
                streaming += core.streaming
                seen = max(core.last_event_at or 0.0, core.last_list_at or 0.0)
                if seen and (oldest_event is None or seen < oldest_event):
                    oldest_event = seen
        stats.update(
            api=self.api.describe(),
            targets=len(self.targets),
            conditions=conditions,
            relists=relists,
            streaming=streaming,
            watch_age_max_secs=round(self.clock() - oldest_event, 3) if oldest_event is not None else None,
            recomputes=self.recomputes,
            **totals,
        )
        return stats


def from_config(cfg: Any, *, environ: Mapping[str, str] | None = None) -> K8sNamer:
    """Build the namer from a ``namers[]`` entry (a mapping or a config dataclass).

    Keys: ``host``/``port`` (plain HTTP, e.g. ``kubectl proxy``); when ``host`` is absent or null
    and ``KUBERNETES_SERVICE_HOST`` is set, in-cluster TLS with the service account (directory
    ``serviceAccountDir``, default the standard mount); with neither, Linkerd's default
    ``localhost:8001``. Also ``labelSelector``, ``prefix``, ``transformers``, and the hostproxy
    additions ``useEndpointSlices`` (bool) and ``resyncIntervalSecs``.
    """
    return K8sNamer(
        api_from_config(cfg, environ, KIND),
        prefix=config_value(cfg, "prefix"),
        label_selector=config_value(cfg, "labelSelector", "label_selector"),
        use_endpoint_slices=bool(config_value(cfg, "useEndpointSlices", "use_endpoint_slices") or False),
        transformers=config_value(cfg, "transformers") or (),
        **resync_from_config(cfg),
    )


def api_from_config(cfg: Any, environ: Mapping[str, str] | None, kind: str) -> ApiServer:
    """The API server a Kubernetes namer's ``host``/``port``/``serviceAccountDir`` name (see
    :func:`from_config`); ``kind`` starts the in-cluster errors."""
    import os

    env = os.environ if environ is None else environ
    host = config_value(cfg, "host")
    port = config_value(cfg, "port")
    sa_dir = config_value(cfg, "serviceAccountDir", "service_account_dir") or DEFAULT_SA_DIR
    if host in (None, "") and env.get("KUBERNETES_SERVICE_HOST"):
        return in_cluster(env, str(sa_dir), kind=kind)
    return ApiServer(str(host or "localhost"), int(port if port is not None else 8001))


def resync_from_config(cfg: Any) -> dict[str, Any]:
    resync = config_value(cfg, "resyncIntervalSecs", "resync_interval_secs")
    return {} if resync is None else {"resync_interval": float(resync)}
