"""Kubernetes objects -> address sets: pure parsing of Services, Endpoints and EndpointSlices.

Theory of operation
-------------------
The namer keeps the raw JSON objects its watches delivered and, whenever one changes, re-derives
each watched name from them here. Nothing in this module does I/O or keeps state.

* :func:`parse_service` reads a ``v1 Service`` into its :class:`ServicePort` list.
* :func:`parse_endpoints` / :func:`parse_slices` read a ``v1 Endpoints`` object, or the union of a
  Service's ``discovery.k8s.io/v1 EndpointSlice`` objects, into :class:`Group` s: one group per
  Endpoints subset or per slice, each with its own port table (different resolved port numbers live
  in different subsets/slices) and its ready and not-ready endpoints.
* :func:`resolve` answers one ``<port>`` path segment: a *named* port is a Service port name, which
  Endpoints and slices publish under the same name; a *numeric* port is a Service ``port``: its
  ServicePort's name finds the EndpointPort, falling back to a numeric ``targetPort`` (or, as Linkerd 1
  did, to a named ``targetPort`` used as the EndpointPort name).

For ``io.l5d.k8s.external``, :func:`parse_ingress` reads a Service's ``status.loadBalancer.ingress``
(each entry's ``hostname``, else its ``ip``, as Linkerd 1 read it) and :func:`service_port` finds a
Service port by name or number.

Zero endpoints has several wire shapes, all the same here: ``subsets`` absent, ``null`` or ``[]``, a
subset with neither list, a slice with ``endpoints: null``. An object whose shape is wrong raises
:class:`K8sObjectError` naming the object and the field, so only the names derived from that object
fail (and keep their last good addresses). Only TCP ports count (a missing ``protocol`` is TCP); only
``IPv4``/``IPv6`` slices are used. Endpoint ``ready`` follows the slice conventions: nil means ready.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Endpoint",
    "Group",
    "K8sObjectError",
    "Resolved",
    "ServicePort",
    "object_name",
    "parse_endpoints",
    "parse_ingress",
    "parse_service",
    "parse_slices",
    "resolve",
    "service_port",
]


class K8sObjectError(ValueError):
    """An API object this namer cannot read; the message names the object and the field."""


@dataclass(frozen=True)
class ServicePort:
    name: str
    port: int
    target_port: int | str | None
    protocol: str = "TCP"


@dataclass(frozen=True)
class Endpoint:
    ip: str
    ready: bool
    node_name: str | None = None
    zone: str | None = None
    pod: str | None = None

    def meta(self) -> dict[str, Any]:
        m: dict[str, Any] = {}
        if self.node_name is not None:
            m["nodeName"] = self.node_name
        if self.zone is not None:
            m["zone"] = self.zone
        return m

    def to_json(self, port: int | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"ip": self.ip, "ready": self.ready, "nodeName": self.node_name}
        if port is not None:
            body["port"] = port
        if self.zone is not None:
            body["zone"] = self.zone
        if self.pod is not None:
            body["pod"] = self.pod
        return body


@dataclass(frozen=True)
class Group:
    """One Endpoints subset or one EndpointSlice: endpoints that share a port table."""

    ports: dict[str, int] = field(default_factory=dict)
    endpoints: tuple[Endpoint, ...] = ()


@dataclass(frozen=True)
class Resolved:
    """What a ``<port>`` segment resolves to: ready (routed) and not-ready (shown only) addresses."""

    ready: tuple[tuple[Endpoint, int], ...]
    not_ready: tuple[tuple[Endpoint, int], ...]


_HINT = "check it with 'kubectl get -o json'; other names are unaffected"


def object_name(obj: Any) -> str | None:
    """``metadata.name`` of an object, or ``None`` when it has none."""
    if not isinstance(obj, dict):
        return None
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        return None
    name = meta.get("name")
    return name if isinstance(name, str) and name else None


def _where(kind: str, obj: dict[str, Any]) -> str:
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        meta = {}
    return f"{kind} {meta.get('namespace', '?')}/{meta.get('name', '?')}"


def _bad(where: str, fieldpath: str, what: str) -> K8sObjectError:
    return K8sObjectError(f"{where}: {fieldpath} {what}; {_HINT}")


def _list(value: Any, where: str, fieldpath: str) -> list[Any]:
    """A JSON list field where absent and ``null`` mean empty."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise _bad(where, fieldpath, f"is a {type(value).__name__}, expected a list")
    return value


def _dict(value: Any, where: str, fieldpath: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _bad(where, fieldpath, f"is a {type(value).__name__}, expected an object")
    return value


def _opt_str(value: Any, where: str, fieldpath: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise _bad(where, fieldpath, f"is a {type(value).__name__}, expected a string")
    return value


def _port_number(value: Any, where: str, fieldpath: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise _bad(where, fieldpath, f"is {value!r}, expected a port number 1-65535")
    return value


def _is_tcp(protocol: Any) -> bool:
    return protocol is None or protocol == "TCP"


def _port_table(ports: Iterable[Any], where: str, fieldpath: str) -> dict[str, int]:
    table: dict[str, int] = {}
    for i, p in enumerate(ports):
        p = _dict(p, where, f"{fieldpath}[{i}]")
        if not _is_tcp(p.get("protocol")):
            continue
        name = _opt_str(p.get("name"), where, f"{fieldpath}[{i}].name") or ""
        table[name] = _port_number(p.get("port"), where, f"{fieldpath}[{i}].port")
    return table


def _target_pod(ref: Any) -> str | None:
    if isinstance(ref, dict) and isinstance(ref.get("name"), str):
        return str(ref["name"])
    return None


def parse_service(obj: dict[str, Any]) -> list[ServicePort]:
    where = _where("Service", obj)
    spec = _dict(obj.get("spec", {}), where, "spec")
    out: list[ServicePort] = []
    for i, p in enumerate(_list(spec.get("ports"), where, "spec.ports")):
        fp = f"spec.ports[{i}]"
        p = _dict(p, where, fp)
        port = _port_number(p.get("port"), where, f"{fp}.port")
        target = p.get("targetPort")
        if target is not None and not isinstance(target, str):
            target = _port_number(target, where, f"{fp}.targetPort")
        name = _opt_str(p.get("name"), where, f"{fp}.name") or ""
        out.append(ServicePort(name, port, target, str(p.get("protocol") or "TCP")))
    return out


_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$"
)


def parse_ingress(obj: dict[str, Any]) -> list[str]:
    """The hosts of a Service's ``status.loadBalancer.ingress``, in order, each once: an entry's
    ``hostname`` when it has one (a cloud load balancer known by DNS name, e.g. AWS ELB), else its
    ``ip``. ``[]`` when the load balancer is not provisioned (``status``, ``loadBalancer`` or
    ``ingress`` absent, ``null`` or empty)."""
    where = _where("Service", obj)
    status = obj.get("status")
    status = _dict(status, where, "status") if status is not None else {}
    lb = status.get("loadBalancer")
    lb = _dict(lb, where, "status.loadBalancer") if lb is not None else {}
    hosts: list[str] = []
    for i, entry in enumerate(_list(lb.get("ingress"), where, "status.loadBalancer.ingress")):
        fp = f"status.loadBalancer.ingress[{i}]"
        entry = _dict(entry, where, fp)
        hostname = _opt_str(entry.get("hostname"), where, f"{fp}.hostname")
        ip = _opt_str(entry.get("ip"), where, f"{fp}.ip")
        if hostname:
            if not _HOSTNAME.match(hostname.lower()):
                raise _bad(where, f"{fp}.hostname", f"is {hostname!r}, expected a DNS name")
            host = hostname.lower()
        elif ip:
            try:
                host = str(ipaddress.ip_address(ip))
            except ValueError:
                raise _bad(where, f"{fp}.ip", f"is {ip!r}, expected an IP address") from None
        else:
            raise _bad(where, fp, "has neither hostname nor ip")
        if host not in hosts:
            hosts.append(host)
    return hosts


def service_port(service: list[ServicePort], port: str) -> ServicePort | None:
    """The Service's TCP port that ``port`` names: a port name, or (all digits) a Service ``port``
    number; ``None`` when it has none."""
    tcp = (sp for sp in service if _is_tcp(sp.protocol))
    if port.isdigit():
        return next((sp for sp in tcp if sp.port == int(port)), None)
    return next((sp for sp in tcp if sp.name == port), None)


def parse_endpoints(obj: dict[str, Any] | None) -> list[Group]:
    """A ``v1 Endpoints`` object (``None``: no such object, i.e. no endpoints) as groups."""
    if obj is None:
        return []
    where = _where("Endpoints", obj)
    groups: list[Group] = []
    for i, subset in enumerate(_list(obj.get("subsets"), where, "subsets")):
        fp = f"subsets[{i}]"
        subset = _dict(subset, where, fp)
        ports = _port_table(_list(subset.get("ports"), where, f"{fp}.ports"), where, f"{fp}.ports")
        eps: list[Endpoint] = []
        for key, ready in (("addresses", True), ("notReadyAddresses", False)):
            for j, a in enumerate(_list(subset.get(key), where, f"{fp}.{key}")):
                afp = f"{fp}.{key}[{j}]"
                a = _dict(a, where, afp)
                ip = _opt_str(a.get("ip"), where, f"{afp}.ip")
                if not ip:
                    raise _bad(where, f"{afp}.ip", "is missing")
                node = _opt_str(a.get("nodeName"), where, f"{afp}.nodeName")
                eps.append(Endpoint(ip, ready, node, None, _target_pod(a.get("targetRef"))))
        groups.append(Group(ports, tuple(eps)))
    return groups


def parse_slices(objs: Iterable[dict[str, Any]]) -> list[Group]:
    """The EndpointSlices of one Service (any order) as groups; FQDN and unknown types are skipped."""
    groups: list[Group] = []
    for obj in sorted(objs, key=lambda o: object_name(o) or ""):
        where = _where("EndpointSlice", obj)
        if obj.get("addressType") not in ("IPv4", "IPv6"):
            continue
        ports = _port_table(_list(obj.get("ports"), where, "ports"), where, "ports")
        eps: list[Endpoint] = []
        for i, e in enumerate(_list(obj.get("endpoints"), where, "endpoints")):
            fp = f"endpoints[{i}]"
            e = _dict(e, where, fp)
            addrs = _list(e.get("addresses"), where, f"{fp}.addresses")
            if not addrs or not isinstance(addrs[0], str) or not addrs[0]:
                raise _bad(where, f"{fp}.addresses", "has no address")
            cond = e.get("conditions")
            cond = _dict(cond, where, f"{fp}.conditions") if cond is not None else {}
            ready = cond.get("ready")
            node = _opt_str(e.get("nodeName"), where, f"{fp}.nodeName")
            zone = _opt_str(e.get("zone"), where, f"{fp}.zone")
            eps.append(
                Endpoint(
                    addrs[0], ready is None or ready is True, node, zone, _target_pod(e.get("targetRef"))
                )
            )
        groups.append(Group(ports, tuple(eps)))
    return groups


def _endpoint_port(group: Group, name: str, target: int | str | None) -> int | None:
    if name in group.ports:
        return group.ports[name]
    if isinstance(target, int):
        return target
    if isinstance(target, str) and target in group.ports:
        return group.ports[target]
    return None


def resolve(service: list[ServicePort], groups: list[Group], port: str) -> Resolved | None:
    """The addresses of ``port`` (a Service port name, or a Service port number); ``None`` when the
    Service has no such TCP port."""
    tcp = [sp for sp in service if _is_tcp(sp.protocol)]
    if port.isdigit():
        number = int(port)
        sp = next((s for s in tcp if s.port == number), None)
    else:
        sp = next((s for s in tcp if s.name == port), None)
    if sp is None:
        return None
    ready: dict[tuple[str, int], Endpoint] = {}
    not_ready: dict[tuple[str, int], Endpoint] = {}
    for g in groups:
        p = _endpoint_port(g, sp.name, sp.target_port)
        if p is None:
            continue
        for e in g.endpoints:
            if e.ready:
                ready.setdefault((e.ip, p), e)
            else:
                not_ready.setdefault((e.ip, p), e)
    for k in ready:  # an endpoint ready in one slice is ready, even if another slice lags
        not_ready.pop(k, None)
    return Resolved(
        tuple((e, p) for (_, p), e in sorted(ready.items())),
        tuple((e, p) for (_, p), e in sorted(not_ready.items())),
    )
