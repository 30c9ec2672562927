"""Addresses, address sets and bound names.

Theory of operation: binding ends in :class:`BoundName` leaves. A bound name has an ``id`` (the path the
namer chose to identify the service, e.g. ``/#/io.l5d.fs/web`` or ``/$/inet/127.1/8080``), a ``residual``
(the part of the requested path the namer did not consume) and, optionally, an address set ``addr``:

* :class:`AddrBound` — a tuple of :class:`Address` (host, port, weight, metadata) plus set metadata;
* :class:`AddrNeg` — the name does not exist; :class:`AddrFailed` — resolution failed (``cause``);
* :class:`AddrPending` — not known yet.

Equality of :class:`BoundName` is on ``(id, residual)`` (Linkerd's ``Dst.Bound`` semantics): the
address set is a changing observation and the carried union ``weight`` is a property of the path taken
to the leaf, neither identifies the destination.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from dtab.path import Path

_EMPTY_META: Mapping[str, Any] = MappingProxyType({})


def _freeze(meta: Mapping[str, Any] | None) -> Mapping[str, Any]:
    if not meta:
        return _EMPTY_META
    return MappingProxyType(dict(meta))


@dataclass(frozen=True)
class Address:
    """One endpoint. ``host`` may be a name still to resolve; ``""`` means localhost."""

    host: str
    port: int
    weight: float = 1.0
    meta: Mapping[str, Any] = field(default_factory=lambda: _EMPTY_META, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "meta", _freeze(self.meta))

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"

    def ip(self) -> str | None:
        """The host as a numeric IP string if it is an IP literal (``127.1`` counts), else None."""
        return numeric_ip(self.host)


def numeric_ip(host: str) -> str | None:
    """Normalise an IP literal (including short IPv4 forms like ``127.1``); None for names."""
    if not host:
        return None
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        pass
    if all(c in "0123456789abcdefxABCDEFX." for c in host):
        try:
            return socket.inet_ntoa(socket.inet_aton(host))
        except OSError:
            return None
    return None


@dataclass(frozen=True)
class AddrBound:
    addresses: tuple[Address, ...] = ()
    meta: Mapping[str, Any] = field(default_factory=lambda: _EMPTY_META, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "addresses", tuple(self.addresses))
        object.__setattr__(self, "meta", _freeze(self.meta))


@dataclass(frozen=True)
class AddrNeg:
    pass


@dataclass(frozen=True)
class AddrFailed:
    cause: str


@dataclass(frozen=True)
class AddrPending:
    pass


Addr = AddrBound | AddrNeg | AddrFailed | AddrPending
ADDR_NEG = AddrNeg()
ADDR_PENDING = AddrPending()

#: Address-set metadata key under which binding records the union weight carried to a leaf.
NAMETREE_WEIGHT_KEY = "namer_nametree_weight"


@dataclass(frozen=True)
class BoundName:
    """A resolved leaf. Equality and hash use ``(id, residual)`` only."""

    id: Path
    residual: Path = Path.EMPTY
    addr: Addr | None = field(default=None, compare=False, hash=False)
    weight: float | None = field(default=None, compare=False, hash=False)

    def __str__(self) -> str:
        return str(self.id)

    def with_weight(self, weight: float) -> BoundName:
        """This name with a union weight recorded (also in a bound address set's metadata)."""
        addr = self.addr
        if isinstance(addr, AddrBound):
            addr = AddrBound(addr.addresses, {**addr.meta, NAMETREE_WEIGHT_KEY: weight})
        elif addr is not None:
            return self
        return BoundName(self.id, self.residual, addr, weight)


def addr_json(addr: Addr | None) -> dict[str, Any]:
    """The ``addr`` object of ``/delegator.json`` (only IP addresses are listed)."""
    if isinstance(addr, AddrBound):
        addrs = []
        for a in addr.addresses:
            ip = a.ip()
            if ip is None:
                continue
            addrs.append({"ip": ip, "port": a.port, "meta": dict(a.meta)})
        return {"type": "bound", "addrs": addrs, "meta": dict(addr.meta)}
    if isinstance(addr, AddrFailed):
        return {"type": "failed", "cause": addr.cause}
    if isinstance(addr, AddrNeg):
        return {"type": "neg"}
    return {"type": "pending"}
