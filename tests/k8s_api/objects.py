"""Builders for real-shaped Kubernetes objects (Service, Endpoints, EndpointSlice).

The shapes follow the API server's wire form: Go field order, list items without ``kind``, a
``targetRef`` without ``resourceVersion``, ``nodeName`` on every address, slice ``conditions``.
Names, UIDs and IPs are invented; ``subsets`` can be rendered absent, ``null`` or ``[]``.
"""

from __future__ import annotations

import hashlib
from typing import Any

NS = "srv"
_ABSENT = object()


def uid(*parts: str) -> str:
    h = hashlib.sha256("/".join(parts).encode()).hexdigest()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:32]}"


def _meta(kind: str, name: str, ns: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": ns,
        "uid": uid(kind, ns, name),
        "resourceVersion": "1",
        "creationTimestamp": "2026-11-02T08:14:55Z",
        "labels": dict(sorted((labels or {"app": name}).items())),
    }


def service(
    name: str,
    ports: list[tuple[str, int, int | str | None]],
    ns: str = NS,
    labels: dict[str, str] | None = None,
    ingress: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """``ports`` is ``[(name, port, targetPort)]``; a ``None`` targetPort is left out.

    With ``ingress`` (``[{"ip": ...}]``, ``[{"hostname": ...}]``) the Service is ``type:
    LoadBalancer`` with a ``nodePort`` per port and that ``status.loadBalancer.ingress``, as the
    cloud controller publishes it (an IP entry carries ``ipMode: VIP``); ``[]`` is a LoadBalancer
    Service whose load balancer is not provisioned yet (``status.loadBalancer: {}``)."""
    sp: list[dict[str, Any]] = []
    for i, (pname, port, target) in enumerate(ports):
        p: dict[str, Any] = {"name": pname, "protocol": "TCP", "port": port}
        if target is not None:
            p["targetPort"] = target
        if ingress is not None:
            p["nodePort"] = 31380 + i
        sp.append(p)
    spec: dict[str, Any] = {
        "ports": sp,
        "selector": {"app": name},
        "clusterIP": "10.96.142.27",
        "clusterIPs": ["10.96.142.27"],
        "type": "ClusterIP" if ingress is None else "LoadBalancer",
        "sessionAffinity": "None",
    }
    if ingress is not None:
        spec["externalTrafficPolicy"] = "Cluster"
    spec.update(
        {
            "ipFamilies": ["IPv4"],
            "ipFamilyPolicy": "SingleStack",
            "internalTrafficPolicy": "Cluster",
        }
    )
    if ingress is not None:
        spec["allocateLoadBalancerNodePorts"] = True
    lb: dict[str, Any] = {}
    if ingress:
        lb["ingress"] = [
            {**e, "ipMode": "VIP"} if "ip" in e and "ipMode" not in e else dict(e) for e in ingress
        ]
    return {
        "kind": "Service",
        "apiVersion": "v1",
        "metadata": _meta("Service", name, ns, labels),
        "spec": spec,
        "status": {"loadBalancer": lb},
    }


def _address(ip: str, svc: str, ns: str) -> dict[str, Any]:
    node = f"worker-{int(ip.split('.')[2]) % 3 + 1}"
    pod = f"{svc}-6d4f9c7b8d-{ip.split('.')[-1]}x"
    return {
        "ip": ip,
        "nodeName": node,
        "targetRef": {"kind": "Pod", "namespace": ns, "name": pod, "uid": uid("Pod", ns, pod)},
    }


def endpoints(
    name: str,
    ready: list[str] | None = None,
    not_ready: list[str] | None = None,
    ports: dict[str, int] | None = None,
    ns: str = NS,
    subsets: Any = _ABSENT,
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A ``v1 Endpoints``. With no addresses, ``subsets`` is left out unless given (``None``, ``[]``)."""
    obj: dict[str, Any] = {
        "kind": "Endpoints",
        "apiVersion": "v1",
        "metadata": _meta("Endpoints", name, ns, labels),
    }
    obj["metadata"]["annotations"] = {
        "endpoints.kubernetes.io/last-change-trigger-time": "2026-11-25T09:41:37Z"
    }
    if subsets is not _ABSENT:
        obj["subsets"] = subsets
    elif ready or not_ready:
        subset: dict[str, Any] = {}
        if ready:
            subset["addresses"] = [_address(ip, name, ns) for ip in ready]
        if not_ready:
            subset["notReadyAddresses"] = [_address(ip, name, ns) for ip in not_ready]
        subset["ports"] = [
            {"name": pname, "port": port, "protocol": "TCP"}
            for pname, port in (ports or {"http": 8080, "admin": 9990}).items()
        ]
        obj["subsets"] = [subset]
    return obj


def endpoint_slice(
    svc: str,
    suffix: str,
    endpoints_: list[tuple[str, bool, bool, bool]] | None,
    ports: dict[str, int] | None = None,
    ns: str = NS,
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A ``discovery.k8s.io/v1`` EndpointSlice; ``endpoints_`` is ``[(ip, ready, serving,
    terminating)]`` or ``None`` for a placeholder slice (``endpoints: null, ports: null``)."""
    name = f"{svc}-{suffix}"
    lab = {
        **(labels or {"app": svc}),
        "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
        "kubernetes.io/service-name": svc,
    }
    meta = _meta("EndpointSlice", name, ns, lab)
    meta["generateName"] = f"{svc}-"
    meta["ownerReferences"] = [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "name": svc,
            "uid": uid("Service", ns, svc),
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    eps: list[dict[str, Any]] | None = None
    if endpoints_ is not None:
        eps = []
        for ip, ready, serving, terminating in endpoints_:
            a = _address(ip, svc, ns)
            eps.append(
                {
                    "addresses": [ip],
                    "conditions": {"ready": ready, "serving": serving, "terminating": terminating},
                    "targetRef": a["targetRef"],
                    "nodeName": a["nodeName"],
                    "zone": "zone-" + "abc"[int(ip.split(".")[2]) % 3],
                }
            )
    port_list = (
        None
        if endpoints_ is None
        else [
            {"name": n, "protocol": "TCP", "port": p}
            for n, p in (ports or {"http": 8080, "admin": 9990}).items()
        ]
    )
    return {
        "kind": "EndpointSlice",
        "apiVersion": "discovery.k8s.io/v1",
        "metadata": meta,
        "addressType": "IPv4",
        "endpoints": eps,
        "ports": port_list,
    }
