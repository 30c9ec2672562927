"""``io.l5d.k8s.external``: a Service's external load balancer, listed and watched.

Theory of operation
-------------------
``/#/io.l5d.k8s.external/<namespace>/<port>/<service>[/<label value>]/rest...`` names the
external load balancer of one Service, on one of its ports: for routing from outside the cluster to
Services of ``type: LoadBalancer``. It is :class:`~namers.k8s.namer.K8sNamer` with one list/watch
per target instead of two: the Service only (``fieldSelector=metadata.name=<svc>``, narrowed by
``labelSelector`` as there), never its endpoints. Everything about talking to the API server is the
same code: list then watch from the resourceVersion, bookmarks, re-list on 410 and on a timer,
backoff, the bearer token, the refused-watch degraded state, last good addresses on failure.

A name's addresses are the Service's ``status.loadBalancer.ingress`` entries (each entry's
``hostname`` when it has one, else its ``ip``; :func:`~namers.k8s.objects.parse_ingress`), each on
the ``port`` (not the ``targetPort`` nor the ``nodePort``) of the Service port ``<port>`` names: a
port name, or a Service port number (Linkerd 1 took a number through the port's ``targetPort`` and
found an address only when that was the name of a Service port; here the number is the Service port's
``port``, as it is for ``io.l5d.k8s``). A hostname stays a name in the address: the client resolves it
when it connects. The outcomes (``condition`` in the state JSON and in ``statistics()``):

* ``service-missing``: no such Service -> ``neg``; ``port-missing``: it has no such TCP port ->
  ``neg``;
* ``no-ingress``: the Service has no load balancer address (not provisioned yet, or not a
  ``LoadBalancer``) -> ``neg``, as in Linkerd, so a dtab alternate can take over;
* ``ingress``: ``bound`` to the ingress addresses;
* ``unavailable`` and ``malformed``: as for ``io.l5d.k8s`` (last good addresses, ``stale``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from namers._dtab import Address
from namers.base import Key, config_value, key_text
from namers.k8s.namer import (
    K8sNamer,
    Target,
    _Detail,
    api_from_config,
    resync_from_config,
    watch_refused_message,
)
from namers.k8s.objects import K8sObjectError, parse_ingress, parse_service, service_port
from namers.k8s.watch import Collection, ListWatchCore

__all__ = ["KIND", "K8sExternalNamer", "from_config"]

KIND = "io.l5d.k8s.external"

CONDITIONS = ("ingress", "no-ingress", "service-missing", "port-missing", "unavailable", "malformed")


class K8sExternalNamer(K8sNamer):
    """The ``io.l5d.k8s.external`` namer over one API server."""

    kind: ClassVar[str] = KIND
    conditions: ClassVar[tuple[str, ...]] = CONDITIONS

    def __init__(self, api: Any, **kwargs: Any) -> None:
        if kwargs.get("use_endpoint_slices"):
            raise ValueError(f"{KIND} watches Services only; it has no use_endpoint_slices")
        super().__init__(api, **kwargs)

    def _make_target(self, ns: str, svc: str, lv: str | None) -> Target:
        services = Collection("/api/v1", "services", ns, f"metadata.name={svc}", self._selector(lv))
        return Target(ns, svc, lv, ListWatchCore(services, self.clock), None)

    def _resolve_key(self, t: Target, key: Key, detail: _Detail) -> bool:
        _, port, _, _ = self._parts(key)
        detail.ready, detail.not_ready, detail.ports = [], [], {}
        svc_obj = t.svc.objects.get(t.service)
        if svc_obj is None:
            detail.condition = "service-missing"
            return self.table.apply_neg(key)
        try:
            sp = service_port(parse_service(svc_obj), port)
            hosts = parse_ingress(svc_obj)
        except K8sObjectError as e:
            detail.condition = "malformed"
            return self.table.apply_failure(key, str(e))
        if sp is None:
            detail.condition = "port-missing"
            return self.table.apply_neg(key)
        detail.ports = {port: [sp.port]}
        detail.ready = [{"host": h, "port": sp.port} for h in hosts]
        if not hosts:
            detail.condition = "no-ingress"
            return self.table.apply_neg(key)
        detail.condition = "ingress"
        addrs = [Address(h, sp.port) for h in hosts]
        if t.svc.watch_refused is not None:
            return self.table.apply_partial(
                key, addrs, watch_refused_message(t.svc.watch_refused, self.backoff_max)
            )
        return self.table.apply_bound(key, addrs)

    # -- admin -----------------------------------------------------------------------------------
    def state_json(self) -> dict[str, Any]:
        """``names`` (per watched name: state, addresses, ``ingress``, condition, last update and
        error, staleness, its watch) and ``services`` (per watched Service: its watch and, once
        listed, its ports and ingress hosts)."""
        body = super().state_json()
        for st in self.table.states():
            entry = body["names"].get(key_text(st.key))
            if entry is not None:
                entry.pop("notReady", None)
                entry["ingress"] = self._detail.get(st.key, _Detail()).ready
        return body

    def _targets_state_json(self, body: dict[str, Any]) -> None:
        services: dict[str, Any] = {}
        for t in self.targets.values():
            value: dict[str, Any] | None = None
            if t.svc.synced:
                obj = t.svc.objects.get(t.service)
                value = {"nsName": t.namespace, "serviceName": t.service, "exists": obj is not None}
                if obj is not None:
                    try:
                        value["ports"] = {p.name: p.port for p in parse_service(obj)}
                        value["ingress"] = parse_ingress(obj)
                    except K8sObjectError as e:
                        value["error"] = str(e)
            services[self._target_label(t)] = self._target_state_json(t, t.svc, value)
        body["services"] = services
        body["resource"] = "services"


def from_config(cfg: Any, *, environ: Mapping[str, str] | None = None) -> K8sExternalNamer:
    """Build the namer from a ``namers[]`` entry (a mapping or a config dataclass): ``host``,
    ``port``, ``serviceAccountDir`` as for ``io.l5d.k8s`` (:func:`namers.k8s.namer.from_config`),
    ``labelSelector``, ``prefix``, ``transformers`` and ``resyncIntervalSecs``."""
    return K8sExternalNamer(
        api_from_config(cfg, environ, KIND),
        prefix=config_value(cfg, "prefix"),
        label_selector=config_value(cfg, "labelSelector", "label_selector"),
        transformers=config_value(cfg, "transformers") or (),
        **resync_from_config(cfg),
    )
