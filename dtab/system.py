"""The system namers under ``/$/`` (Finagle's ``Namer.global`` plus Linkerd's ``io.buoyant`` classes).

Theory of operation: :func:`lookup_system` answers a path that neither the dtab nor a configured namer
handled. It checks, in order (spec §5.4):

1. ``/$/inet|fixedinet/<host>/<port>/rest`` then ``/$/inet|fixedinet/<port>/rest`` (empty host =
   localhost), the port parsed like Java's ``Integer.parseInt`` -> a bound leaf whose id is the consumed
   labels and whose residual is ``rest``;
2. ``/$/fail...`` -> ``Fail``; 3. ``/$/nil...`` -> ``Empty``;
4. ``/$/<kind>/rest`` -> the system namer class ``<kind>`` applied to ``rest``; an unknown kind raises
   :class:`~dtab.errors.UnknownNamer` (so ``/$/inet`` with a bad port is an unknown namer ``inet``);
5. anything else -> ``Neg``.

The classes are ``io.buoyant.rinet`` (``/<port>/<host>/rest`` -> bound leaf) and the *rewriting* namers
(``io.buoyant.hostportPfx``, ``porthostPfx`` and the ``io.buoyant.http.*`` family): they answer a new
*path* (a leaf to be looked up again from the top of the dtab) or ``Neg`` when the input does not match.
Labels are decoded as UTF-8 text for pattern matching, as upstream does.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from typing import Any

from dtab.addr import AddrBound, Address, AddrFailed, BoundName
from dtab.errors import NamerError, UnknownNamer
from dtab.path import Path
from dtab.tree import EMPTY, FAIL, NEG, Leaf

_DOLLAR = b"$"
_INET_SCHEMES = (b"inet", b"fixedinet")


def _text(label: bytes) -> str:
    return label.decode("utf-8", errors="replace")


def java_parse_int(s: str) -> int | None:
    """``Integer.parseInt``: optional sign, one or more (Unicode) decimal digits, 32-bit range."""
    if not s:
        return None
    sign = 1
    body = s
    if s[0] in "+-":
        sign = -1 if s[0] == "-" else 1
        body = s[1:]
    if not body:
        return None
    value = 0
    for ch in body:
        if unicodedata.category(ch) != "Nd":
            return None
        value = value * 10 + unicodedata.digit(ch)
    value *= sign
    if not -(2**31) <= value <= 2**31 - 1:
        return None
    return value


def java_split(s: str, sep: str) -> list[str]:
    """Java ``String.split`` on a literal separator: trailing empty strings are removed."""
    if sep not in s:
        return [s]
    parts = s.split(sep)
    while parts and parts[-1] == "":
        parts.pop()
    return parts


def _inet_addr(host: str, port: int) -> AddrBound | AddrFailed:
    if not 0 <= port <= 65535:
        return AddrFailed(f"port out of range: {port}")
    return AddrBound((Address(host, port),))


def _inet(path: Path) -> Any:
    labels = path.labels
    if len(labels) >= 4:
        port = java_parse_int(_text(labels[3]))
        if port is not None:
            return Leaf(BoundName(path.take(4), path.drop(4), _inet_addr(_text(labels[2]), port)))
    if len(labels) >= 3:
        port = java_parse_int(_text(labels[2]))
        if port is not None:
            return Leaf(BoundName(path.take(3), path.drop(3), _inet_addr("", port)))
    return None


# -- io.buoyant classes ---------------------------------------------------------------------------

_PORT_RE = re.compile(r"[a-z0-9][-a-z0-9]*[a-z0-9]?")
_METHOD_RE = re.compile(r"[A-Z]+")
_HOST_RE = re.compile(r"[A-Za-z0-9.:_-]+")


def _path_of(kind: str, *parts: str, rest: Path) -> Any:
    if any(p == "" for p in parts):
        err = NamerError("requirement failed", namer=f"/$/{kind}")
        err.upstream_class = "IllegalArgumentException"
        raise err
    return Leaf(Path.of(*parts) + rest)


def _split_hostport(label: str) -> tuple[str, str] | None:
    parts = java_split(label, ":")
    if len(parts) != 2:
        return None
    host, port = parts
    if len(port) > 63 or not _PORT_RE.fullmatch(port):
        return None
    return host, port


def _hostport_pfx(kind: str, rest: Path, swap: bool) -> Any:
    if len(rest) < 2:
        return NEG
    pfx, hp = _text(rest[0]), _text(rest[1])
    split = _split_hostport(hp)
    if split is None:
        return NEG
    host, port = split
    first, second = (port, host) if swap else (host, port)
    return _path_of(kind, pfx, first, second, rest=rest.drop(2))


def _subdomain(domain: str, host: str) -> str | None:
    if not _HOST_RE.fullmatch(domain) or not _HOST_RE.fullmatch(host):
        return None
    colon = host.find(":")
    bare = host[:colon] if colon > 0 else host
    suffix = "." + domain
    if not bare.endswith(suffix):
        return None
    sub = bare[: -len(suffix)]
    return sub or None


def _rinet(kind: str, rest: Path) -> Any:
    if len(rest) < 2:
        return NEG
    port_s, host = _text(rest[0]), _text(rest[1])
    port = java_parse_int(port_s)
    addr: AddrBound | AddrFailed
    if port is None:
        addr = AddrFailed(f"invalid port {port_s!r} for host {host!r}")
    else:
        addr = _inet_addr(host, port)
    ident = Path((_DOLLAR, kind.encode("utf-8"), rest[0], rest[1]))
    return Leaf(BoundName(ident, rest.drop(2), addr))


def _any_method(kind: str, rest: Path) -> Any:
    if len(rest) < 1 or not _METHOD_RE.fullmatch(_text(rest[0])):
        return NEG
    return Leaf(rest.drop(1))


def _any_method_pfx(kind: str, rest: Path) -> Any:
    if len(rest) < 2 or not _METHOD_RE.fullmatch(_text(rest[1])):
        return NEG
    return _path_of(kind, _text(rest[0]), rest=rest.drop(2))


def _any_host(kind: str, rest: Path) -> Any:
    if len(rest) < 1 or not _HOST_RE.fullmatch(_text(rest[0])):
        return NEG
    return Leaf(rest.drop(1))


def _any_host_pfx(kind: str, rest: Path) -> Any:
    if len(rest) < 2 or not _HOST_RE.fullmatch(_text(rest[1])):
        return NEG
    return _path_of(kind, _text(rest[0]), rest=rest.drop(2))


def _subdomain_of(kind: str, rest: Path) -> Any:
    if len(rest) < 2:
        return NEG
    sub = _subdomain(_text(rest[0]), _text(rest[1]))
    if sub is None:
        return NEG
    return _path_of(kind, sub, rest=rest.drop(2))


def _subdomain_of_pfx(kind: str, rest: Path) -> Any:
    if len(rest) < 3:
        return NEG
    sub = _subdomain(_text(rest[0]), _text(rest[2]))
    if sub is None:
        return NEG
    return _path_of(kind, _text(rest[1]), sub, rest=rest.drop(3))


def _domain_to_path(kind: str, rest: Path) -> Any:
    if len(rest) < 1:
        return NEG
    labels = list(reversed(java_split(_text(rest[0]), ".")))
    if not labels:
        return NEG
    return _path_of(kind, *labels, rest=rest.drop(1))


def _domain_to_path_pfx(kind: str, rest: Path) -> Any:
    if len(rest) < 2:
        return NEG
    labels = list(reversed(java_split(_text(rest[1]), ".")))
    if not labels:
        return NEG
    return _path_of(kind, _text(rest[0]), *labels, rest=rest.drop(2))


#: System namer classes: ``kind -> fn(kind, rest) -> NameTree``.
SYSTEM_NAMERS: dict[str, Callable[[str, Path], Any]] = {
    "io.buoyant.rinet": _rinet,
    "io.buoyant.hostportPfx": lambda k, r: _hostport_pfx(k, r, swap=False),
    "io.buoyant.porthostPfx": lambda k, r: _hostport_pfx(k, r, swap=True),
    "io.buoyant.http.anyMethod": _any_method,
    "io.buoyant.http.anyMethodPfx": _any_method_pfx,
    "io.buoyant.http.anyHost": _any_host,
    "io.buoyant.http.anyHostPfx": _any_host_pfx,
    "io.buoyant.http.subdomainOf": _subdomain_of,
    "io.buoyant.http.subdomainOfPfx": _subdomain_of_pfx,
    "io.buoyant.http.domainToPath": _domain_to_path,
    "io.buoyant.http.domainToPathPfx": _domain_to_path_pfx,
}


def lookup_system(path: Path, *, finagle: bool = False) -> Any:
    """Answer a path with the built-in system namers (spec §5.4); ``Neg`` for non-``/$/`` paths.

    Raises :class:`UnknownNamer` for an unknown ``/$/<kind>`` (``finagle=True`` reports it the way
    Finagle's own interpreter does: a ``ClassNotFoundException`` whose message is the kind).
    """
    labels = path.labels
    if len(labels) < 2 or labels[0] != _DOLLAR:
        return NEG
    kind = labels[1]
    if kind in _INET_SCHEMES:
        r = _inet(path)
        if r is not None:
            return r
    if kind == b"fail":
        return FAIL
    if kind == b"nil":
        return EMPTY
    name = _text(kind)
    fn = SYSTEM_NAMERS.get(name)
    if fn is None:
        raise UnknownNamer(name, path, finagle=finagle)
    return fn(name, path.drop(2))
