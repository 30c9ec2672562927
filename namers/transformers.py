"""Transformers: rewrite bound name trees after binding (Linkerd 1's ``NameTreeTransformer`` family).

Theory of operation
-------------------
A transformer is a pure function from a bound name tree to a bound name tree (:meth:`Transformer.transform`),
applied to the result of binding: by the router's interpreter (``interpreter.transformers``, see
:func:`apply_transformers`) or to one namer's answers (``namers[].transformers``, see
:func:`transforming_lookup`), always in configuration order. :data:`PENDING` passes through, and the
atoms ``Neg``/``Fail``/``Empty`` are kept (except by ``io.l5d.const``). Everything is computed from the
address sets the tree carries *now*: the binder re-binds, and so re-transforms, whenever a namer that
was consulted changes. The daemonset transformer also reads another namer's live address set through
a :data:`AddrSource` (``() -> Addr``); whoever wires it must re-bind when that source changes.

Address transformers map each bound leaf ``BoundName(id, residual, addr)`` to
``BoundName(prefix ++ id, residual, f(addr))``, so the client id records the transformation and names a
different client than the untransformed one (``/%/io.l5d.port/4141/#/io.l5d.fs/users``); the union
weight carried to the leaf is kept. ``f`` touches only a bound address set (``AddrNeg``, ``AddrFailed``,
``AddrPending`` pass through), keeps its metadata, and an address set left empty by a filter becomes
``AddrNeg`` (as in Linkerd):

=========================  ==========================================  =====================================
kind                       ``f`` on each bound address set             id prefix
=========================  ==========================================  =====================================
``io.l5d.port``            every address gets ``port``; addresses      ``/%/io.l5d.port/<port>``
                           that become equal collapse into one (the
                           largest weight, the first's metadata)
``io.l5d.localhost``       keeps addresses whose IP is one of this     ``/%/io.l5d.localhost``
                           host's interface addresses
``io.l5d.specificHost``    keeps addresses whose IP is ``host``'s      ``/%/io.l5d.specificHost``
                           (resolved once, when built)
``io.l5d.k8s.localnode``   keeps addresses in the /24 of ``$POD_IP``,  ``/%/io.l5d.k8s.localnode/<ip|node>``
                           or, with ``hostNetwork``, whose ``nodeName``
                           metadata is ``$NODE_NAME``
``io.l5d.k8s.daemonset``   replaces each address by the daemonset      ``/%/io.l5d.k8s.daemonset/<ns>/<port>/<svc>``
                           pod(s) on its node: those of the source's
                           addresses in the same /24 (IPv6: /64), or
                           with the same ``nodeName`` with
                           ``hostNetwork``; the result is a set (a
                           node with three target pods is one entry)
=========================  ==========================================  =====================================

Addresses whose host is a name rather than an IP (other than ``localhost``) match no IP filter and no
subnet, so those transformers drop them. For the daemonset transformer a source that is not bound yet
makes the leaf's address set ``AddrPending``; a negative or failed source makes it ``AddrNeg`` or
``AddrFailed`` with a cause naming the daemonset Service: traffic never silently bypasses the
daemonset.

Tree transformers bind a configured path through the system namers (``/$/inet/...``; a
:data:`PathBinder` is injected, by default :func:`dtab.bind.bind` with an empty dtab):
``io.l5d.replace`` replaces every leaf by that bound tree (``Neg`` stays ``Neg``); ``io.l5d.const``
returns it whatever the input (even ``Neg``). Neither adds an id prefix: the ids are the bound path's.

Each factory (:func:`port`, :func:`localhost`, :func:`specific_host`, :func:`localnode`,
:func:`daemonset`, :func:`replace`, :func:`const`) takes a config entry (a mapping or the config
dataclass) plus keyword-only wiring, checks it, and raises :class:`TransformerConfigError` with the
config key and the fix.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import socket
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar

from dtab import Dtab
from dtab.bind import bind as _bind
from dtab.delegate import AltNode, DelegatedNode, LeafNode, TransformationNode, UnionNode
from dtab.delegate import _convert as _delegate_nodes
from dtab.table import Dentry
from namers._dtab import (
    PENDING,
    AddrBound,
    Address,
    AddrFailed,
    AddrNeg,
    AddrPending,
    Alt,
    BoundName,
    Leaf,
    Path,
    Union,
    Weighted,
)

__all__ = [
    "AddrSource",
    "AddressTransformer",
    "ConstTransformer",
    "DaemonSetTransformer",
    "LocalNodeTransformer",
    "LocalhostTransformer",
    "PathBinder",
    "PortTransformer",
    "ReplaceTransformer",
    "SpecificHostTransformer",
    "Transformer",
    "TransformerConfigError",
    "apply_transformers",
    "const",
    "daemonset",
    "localhost",
    "localnode",
    "map_leaves",
    "port",
    "replace",
    "specific_host",
    "system_local_ips",
    "transform_delegation",
    "transforming_lookup",
]

#: The id prefix every transformer's prefix starts with.
TRANSFORMER_ROOT = Path.of("%")
#: Address metadata key with the Kubernetes node of an endpoint (set by the k8s namer).
NODE_NAME_KEY = "nodeName"

#: ``() -> Addr``: the current address set of another name (the daemonset Service's endpoints).
AddrSource = Callable[[], Any]
#: ``(path) -> bound tree | PENDING``: binds a configured path (replace/const).
PathBinder = Callable[[Path], Any]


class TransformerConfigError(ValueError):
    """A transformer config entry that cannot be used; the message names the key and the fix."""


# -- tree walking -----------------------------------------------------------------------------------
def map_leaves(tree: Any, fn: Callable[[Any], Any]) -> Any:
    """Replace every leaf's *tree* by ``fn(leaf.value)`` (which returns a tree), keeping the structure."""
    if isinstance(tree, Leaf):
        return fn(tree.value)
    if isinstance(tree, Alt):
        return Alt(tuple(map_leaves(t, fn) for t in tree.trees))
    if isinstance(tree, Union):
        return Union(tuple(Weighted(b.weight, map_leaves(b.tree, fn)) for b in tree.branches))
    return tree  # Neg, Fail, Empty


class Transformer:
    """Base of every transformer: ``transform(tree) -> tree`` over bound trees."""

    kind: ClassVar[str] = ""
    #: Linkerd's class name, shown as the ``name`` of ``"transformation"`` nodes in the delegator.
    name: ClassVar[str] = ""

    #: Prepended to every bound id this transformer rewrites; ``Path.EMPTY`` when ids are not rewritten.
    prefix: Path = Path.EMPTY

    def transform(self, tree: Any) -> Any:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.kind} {self.prefix}>"


class AddressTransformer(Transformer):
    """Rewrites the address set of every bound leaf and prefixes its id."""

    def map_addr(self, addr: Any) -> Any:
        """The transformed address set (pure; ``addr`` is any ``Addr`` or ``None``)."""
        if isinstance(addr, AddrBound):
            out = self.map_addresses(addr.addresses)
            if isinstance(out, tuple):
                return AddrBound(out, addr.meta) if out else AddrNeg()
            return out
        return addr

    def map_addresses(self, addresses: tuple[Address, ...]) -> Any:
        """A tuple of addresses (empty becomes ``AddrNeg``) or another ``Addr``."""
        raise NotImplementedError

    def map_bound(self, bound: BoundName) -> BoundName:
        return BoundName(self.prefix + bound.id, bound.residual, self.map_addr(bound.addr), bound.weight)

    def transform(self, tree: Any) -> Any:
        if tree is PENDING:
            return PENDING
        return map_leaves(tree, lambda v: Leaf(self.map_bound(v)) if isinstance(v, BoundName) else Leaf(v))


def _host_ip(a: Address) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if a.host in ("", "localhost"):
        return ipaddress.IPv4Address("127.0.0.1")
    ip = a.ip()
    return ipaddress.ip_address(ip) if ip is not None else None


def _dedupe(addresses: Iterable[Address]) -> tuple[Address, ...]:
    """One address per (host, port): the largest weight, the first one's metadata, first-seen order."""
    out: dict[tuple[str, int], Address] = {}
    for a in addresses:
        k = (a.host, a.port)
        prev = out.get(k)
        if prev is None:
            out[k] = a
        elif a.weight > prev.weight:
            out[k] = Address(prev.host, prev.port, a.weight, prev.meta)
    return tuple(out.values())


# -- io.l5d.port ------------------------------------------------------------------------------------------
class PortTransformer(AddressTransformer):
    kind: ClassVar[str] = "io.l5d.port"
    name: ClassVar[str] = "PortTransformer"

    def __init__(self, port: int) -> None:
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise TransformerConfigError(f"io.l5d.port: port must be a number 1-65535, got {port!r}")
        self.port = port
        self.prefix = TRANSFORMER_ROOT + Path.of(self.kind, str(port))

    def map_addresses(self, addresses: tuple[Address, ...]) -> Any:
        return _dedupe(Address(a.host, self.port, a.weight, a.meta) for a in addresses)


# -- IP filters: io.l5d.localhost, io.l5d.specificHost, io.l5d.k8s.localnode ------------------------------
class _IpFilter(AddressTransformer):
    def keep(self, a: Address) -> bool:
        raise NotImplementedError

    def map_addresses(self, addresses: tuple[Address, ...]) -> Any:
        return tuple(a for a in addresses if self.keep(a))


def _normalise_ips(ips: Iterable[str]) -> frozenset[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    out = set()
    for ip in ips:
        try:
            out.add(ipaddress.ip_address(ip.split("%", 1)[0]))
        except ValueError:
            continue
    return frozenset(out)


def system_local_ips() -> list[str]:
    """Every address of this host's interfaces (Linux ``/proc``), plus the loopback addresses."""
    ips = ["127.0.0.1", "::1"]
    try:
        with open("/proc/net/fib_trie", encoding="ascii") as f:
            last: str | None = None
            for line in f:
                s = line.strip()
                if s.startswith("|--"):
                    last = s[3:].strip()
                elif s.startswith("/32 host LOCAL") and last is not None:
                    ips.append(last)
    except OSError:
        pass
    try:
        with open("/proc/net/if_inet6", encoding="ascii") as f:
            for line in f:
                raw = line.split()[0] if line.split() else ""
                if len(raw) == 32:
                    ips.append(str(ipaddress.IPv6Address(int(raw, 16))))
    except (OSError, ValueError):
        pass
    return ips


class LocalhostTransformer(_IpFilter):
    kind: ClassVar[str] = "io.l5d.localhost"
    name: ClassVar[str] = "LocalhostTransformer"

    def __init__(self, local_ips: Iterable[str] | None = None) -> None:
        self.local_ips = _normalise_ips(system_local_ips() if local_ips is None else local_ips)
        self.prefix = TRANSFORMER_ROOT + Path.of(self.kind)

    def keep(self, a: Address) -> bool:
        return _host_ip(a) in self.local_ips


def _resolve_host(host: str) -> list[str]:
    try:
        return [str(ipaddress.ip_address(host.strip("[]")))]
    except ValueError:
        pass
    infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


class SpecificHostTransformer(_IpFilter):
    kind: ClassVar[str] = "io.l5d.specificHost"
    name: ClassVar[str] = "SpecificHostTransformer"

    def __init__(self, host: str, *, resolve: Callable[[str], Sequence[str]] = _resolve_host) -> None:
        if not host:
            raise TransformerConfigError("io.l5d.specificHost: host is required; set it to this host's IP")
        try:
            ips = list(resolve(host))
        except OSError as e:
            raise TransformerConfigError(
                f"io.l5d.specificHost: host {host!r} does not resolve ({e}); give an IP address"
            ) from None
        self.host = host
        self.ips = _normalise_ips(ips)
        if not self.ips:
            raise TransformerConfigError(
                f"io.l5d.specificHost: host {host!r} has no addresses; give an IP address"
            )
        self.prefix = TRANSFORMER_ROOT + Path.of(self.kind)

    def keep(self, a: Address) -> bool:
        return _host_ip(a) in self.ips


def _subnet(ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None) -> tuple[int, int] | None:
    """The /24 (IPv4) or /64 (IPv6) an IP is in, as a comparable key."""
    if ip is None:
        return None
    return ip.version, int(ip) >> (8 if ip.version == 4 else 64)


def _same_subnet(
    a: ipaddress.IPv4Address | ipaddress.IPv6Address | None,
    b: ipaddress.IPv4Address | ipaddress.IPv6Address | None,
) -> bool:
    key = _subnet(a)
    return key is not None and key == _subnet(b)


class LocalNodeTransformer(_IpFilter):
    kind: ClassVar[str] = "io.l5d.k8s.localnode"
    name: ClassVar[str] = "LocalNodeTransformer"

    def __init__(self, *, host_network: bool = False, env: Mapping[str, str] | None = None) -> None:
        environ = os.environ if env is None else env
        self.host_network = host_network
        if host_network:
            node = environ.get("NODE_NAME", "")
            if not node:
                raise TransformerConfigError(
                    "io.l5d.k8s.localnode with hostNetwork: true needs the NODE_NAME environment variable; "
                    "set it from the downward API (fieldRef spec.nodeName)"
                )
            self.node_name: str | None = node
            self.pod_ip = None
            self.prefix = TRANSFORMER_ROOT + Path.of(self.kind, node)
        else:
            raw = environ.get("POD_IP", "")
            try:
                self.pod_ip = ipaddress.ip_address(raw)
            except ValueError:
                raise TransformerConfigError(
                    f"io.l5d.k8s.localnode needs the POD_IP environment variable set to this pod's IP "
                    f"(got {raw!r}); set it from the downward API (fieldRef status.podIP), or use "
                    "hostNetwork: true with NODE_NAME"
                ) from None
            self.node_name = None
            self.prefix = TRANSFORMER_ROOT + Path.of(self.kind, str(self.pod_ip))

    def keep(self, a: Address) -> bool:
        if self.node_name is not None:
            return a.meta.get(NODE_NAME_KEY) == self.node_name
        return _same_subnet(_host_ip(a), self.pod_ip)


# -- io.l5d.k8s.daemonset ------------------------------------------------------------------------------------
class DaemonSetTransformer(AddressTransformer):
    """Sends each destination to the daemonset pod on the destination's node (see the module docstring).

    ``source`` returns the daemonset Service's current address set (``AddrBound`` of the pods at the
    configured port, each with ``nodeName`` metadata when ``host_network``), typically
    ``lambda: k8s_namer.addr(transformer.k8s_residual)``.
    """

    kind: ClassVar[str] = "io.l5d.k8s.daemonset"
    name: ClassVar[str] = "DaemonSetTransformer"

    def __init__(
        self, namespace: str, port: str, service: str, source: AddrSource, *, host_network: bool = False
    ) -> None:
        for key, value in (("namespace", namespace), ("port", port), ("service", service)):
            if not value:
                raise TransformerConfigError(
                    f"io.l5d.k8s.daemonset: {key} is required (the daemonset's Service {key})"
                )
        self.namespace, self.port, self.service = namespace, str(port), service
        self.source = source
        self.host_network = host_network
        self.prefix = TRANSFORMER_ROOT + Path.of(self.kind, namespace, self.port, service)

    @property
    def k8s_residual(self) -> Path:
        """The daemonset Service as an ``io.l5d.k8s`` namer residual: ``/<namespace>/<port>/<service>``."""
        return Path.of(self.namespace, self.port, self.service)

    def _where(self) -> str:
        return f"daemonset Service {self.namespace}/{self.service} port {self.port}"

    def map_addresses(self, addresses: tuple[Address, ...]) -> Any:
        gw = self.source()
        if gw is None or gw is PENDING or isinstance(gw, AddrPending):
            return AddrPending()
        if isinstance(gw, AddrNeg):
            return AddrNeg()
        if isinstance(gw, AddrFailed):
            return AddrFailed(f"{self._where()}: {gw.cause}")
        if not isinstance(gw, AddrBound):
            return AddrFailed(f"{self._where()}: unexpected address set {gw!r}")
        # The gateways by node (or subnet), once: every destination is then one dict lookup, not a
        # scan of every gateway (thousands of pods times hundreds of nodes, on every change).
        by_place: dict[Any, list[Address]] = {}
        for g in gw.addresses:
            place = g.meta.get(NODE_NAME_KEY) if self.host_network else _subnet(_host_ip(g))
            if place is not None:
                by_place.setdefault(place, []).append(g)
        selected: list[Address] = []
        for a in addresses:
            place = a.meta.get(NODE_NAME_KEY) if self.host_network else _subnet(_host_ip(a))
            if place is not None:
                selected.extend(by_place.get(place, ()))
        return _dedupe(selected)


# -- io.l5d.replace, io.l5d.const -------------------------------------------------------------------------------
def system_binder(system: Callable[[Path], Any] | None = None) -> PathBinder:
    """Binds a path with an empty dtab through the system namers (``system`` answers ``/$/inet`` etc.
    first, e.g. :meth:`namers.inet.InetResolver.system`)."""

    def binder(path: Path) -> Any:
        return _bind(Dtab.EMPTY, path, system=system).tree

    return binder


class ReplaceTransformer(Transformer):
    kind: ClassVar[str] = "io.l5d.replace"
    name: ClassVar[str] = "ReplaceTransformer"

    def __init__(self, path: Path, binder: PathBinder | None = None) -> None:
        self.path = path
        self.binder = binder or system_binder()

    def transform(self, tree: Any) -> Any:
        if tree is PENDING:
            return PENDING
        if not _has_leaf(tree):
            return tree
        replacement = self.binder(self.path)
        if replacement is PENDING:
            return PENDING
        return map_leaves(tree, lambda _v: replacement)


def _has_leaf(tree: Any) -> bool:
    if isinstance(tree, Leaf):
        return True
    if isinstance(tree, Alt):
        return any(_has_leaf(t) for t in tree.trees)
    if isinstance(tree, Union):
        return any(_has_leaf(b.tree) for b in tree.branches)
    return False


class ConstTransformer(Transformer):
    kind: ClassVar[str] = "io.l5d.const"
    name: ClassVar[str] = "ConstTransformer"

    def __init__(self, path: Path, binder: PathBinder | None = None) -> None:
        self.path = path
        self.binder = binder or system_binder()

    def transform(self, tree: Any) -> Any:
        return self.binder(self.path)


# -- applying -----------------------------------------------------------------------------------------------
def apply_transformers(tree: Any, transformers: Iterable[Transformer]) -> Any:
    """Apply ``transformers`` in order to a bound tree (or :data:`PENDING`)."""
    for t in transformers:
        if tree is PENDING:
            return PENDING
        tree = t.transform(tree)
    return tree


def transforming_lookup(
    lookup: Callable[[Path], Any], transformers: Sequence[Transformer]
) -> Callable[[Path], Any]:
    """Wrap a namer's ``lookup`` so its answers go through the namer's ``transformers``.

    Only the bound leaves of an answer are the namer's own results; path leaves (a rewriting namer's
    answer) are bound later through other namers, so address transformers leave them as they are.
    """
    if not transformers:
        return lookup

    def wrapped(residual: Path) -> Any:
        return apply_transformers(lookup(residual), transformers)

    return wrapped


# -- factories (registered as "namers.transformers:<name>") ----------------------------------------------------------
def _get(cfg: Any, *names: str) -> Any:
    for n in names:
        if isinstance(cfg, Mapping):
            if n in cfg:
                return cfg[n]
        elif getattr(cfg, n, None) is not None:
            return getattr(cfg, n)
    return None


def _path(cfg: Any, kind: str) -> Path:
    raw = _get(cfg, "path")
    if isinstance(raw, Path):
        return raw
    if not isinstance(raw, str) or not raw.startswith("/"):
        raise TransformerConfigError(f"{kind}: path is required and must be a path like '/$/inet/127.1/4141'")
    try:
        return Path.read(raw)
    except Exception as e:
        raise TransformerConfigError(f"{kind}: path {raw!r} is not a path ({e})") from None


def port(cfg: Any) -> PortTransformer:
    p = _get(cfg, "port")
    if isinstance(p, str) and p.isdigit():
        p = int(p)
    return PortTransformer(p)


def localhost(cfg: Any, *, local_ips: Iterable[str] | None = None) -> LocalhostTransformer:
    return LocalhostTransformer(local_ips)


def specific_host(
    cfg: Any, *, resolve: Callable[[str], Sequence[str]] = _resolve_host
) -> SpecificHostTransformer:
    return SpecificHostTransformer(str(_get(cfg, "host") or ""), resolve=resolve)


def localnode(cfg: Any, *, env: Mapping[str, str] | None = None) -> LocalNodeTransformer:
    return LocalNodeTransformer(host_network=bool(_get(cfg, "hostNetwork", "host_network")), env=env)


def daemonset(cfg: Any, *, source: AddrSource | None = None) -> DaemonSetTransformer:
    """``source`` is required: the live address set of the daemonset Service (see
    :attr:`DaemonSetTransformer.k8s_residual` for the ``io.l5d.k8s`` name to watch)."""
    ns, svc, prt = _get(cfg, "namespace"), _get(cfg, "service"), _get(cfg, "port")
    if source is None:
        raise TransformerConfigError(
            f"io.l5d.k8s.daemonset: no source for the endpoints of Service {ns}/{svc} port {prt}; "
            "configure an io.l5d.k8s namer so the daemonset's pods can be watched"
        )
    return DaemonSetTransformer(
        str(ns or ""),
        str(prt or ""),
        str(svc or ""),
        source,
        host_network=bool(_get(cfg, "hostNetwork", "host_network")),
    )


def replace(cfg: Any, *, system: Callable[[Path], Any] | None = None) -> ReplaceTransformer:
    return ReplaceTransformer(_path(cfg, "io.l5d.replace"), system_binder(system))


def const(cfg: Any, *, system: Callable[[Path], Any] | None = None) -> ConstTransformer:
    return ConstTransformer(_path(cfg, "io.l5d.const"), system_binder(system))


# -- delegation explanations -------------------------------------------------------------------------------
def transform_delegation(node: Any, transformers: Sequence[Transformer]) -> Any:
    """A ``/delegator.json`` explanation (a :class:`dtab.delegate.DelegateNode`) as the router binds it
    with its interpreter ``transformers`` (Linkerd's ``DelegatingNameTreeTransformer.transformDelegate``):
    each transformer in order wraps every bound leaf in a ``transformation`` node (its ``name`` and the
    bound name it was given) whose tree is what it made of the leaf (a leaf with the ``/%/…`` id the
    router's client uses, or a ``neg`` when it filtered every address out). :data:`PENDING` when a
    transformer is still waiting for its own data."""
    for t in transformers:
        node = _transform_node(node, t)
        if node is PENDING:
            return PENDING
    return node


class _PendingTransform(Exception):
    pass


def _transform_node(node: Any, t: Transformer) -> Any:
    def walk(n: Any) -> Any:
        if isinstance(n, LeafNode) and n.bound is not None:
            out = t.transform(Leaf(n.bound))
            if out is PENDING:
                raise _PendingTransform
            return TransformationNode(
                n.path, Dentry.NOP, name=t.name, bound=n.bound, child=_delegate_nodes(out, n.path, n.dentry)
            )
        if isinstance(n, DelegatedNode | TransformationNode) and n.child is not None:
            return dataclasses.replace(n, child=walk(n.child))
        if isinstance(n, AltNode):
            return dataclasses.replace(n, children=tuple(walk(c) for c in n.children))
        if isinstance(n, UnionNode):
            return dataclasses.replace(n, branches=tuple((w, walk(c)) for w, c in n.branches))
        return n

    try:
        return walk(node)
    except _PendingTransform:
        return PENDING
