"""Pure header transforms every proxy hop applies: proxy-form targets, ``Via``, call depth, ``Forwarded``.

Theory of operation
-------------------
* ``split_absolute_form`` turns ``http://users:8080/path?q`` into ``("http", "users:8080", "/path?q")``
  so that ``http_proxy=`` clients route exactly like ``Host: users:8080``.
* ``Via`` is the loop counter: each hop appends ``1.1 hostproxy``; ``via_count`` counts the
  comma-separated entries over every ``Via`` field, and a server refuses a request whose count
  exceeds its ``maxCallDepth`` (400, "Please check for proxy loops").
* ``Forwarded`` (RFC 7239) gets one element ``by=<label>;for=<label>`` per hop.  Labels come from
  labelers named as in Linkerd's ``addForwardedHeader`` config: ``ip``, ``ip:port``,
  ``connectionRandom``, ``requestRandom``, ``router`` and ``static``.  Random labels are RFC 7239
  obfuscated identifiers (``_`` + base-32 characters) drawn from an injected ``random.Random``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from hostproxy.http.message import Headers

__all__ = [
    "ForwardedConfig",
    "Labeler",
    "VIA_11",
    "VIA_TOKEN",
    "append_via",
    "forwarded_element",
    "split_absolute_form",
    "via_count",
    "via_field",
]

VIA_TOKEN = b"hostproxy"
_OBF_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"


def split_absolute_form(target: str) -> tuple[str, str, str] | None:
    """``(scheme, authority, origin-form target)`` for an absolute-form target, else ``None``."""
    lower = target[:8].lower()
    if lower.startswith("http://"):
        scheme, rest = "http", target[7:]
    elif lower.startswith("https://"):
        scheme, rest = "https", target[8:]
    else:
        return None
    cut = len(rest)
    for sep in "/?#":
        i = rest.find(sep)
        if i != -1 and i < cut:
            cut = i
    authority, path = rest[:cut], rest[cut:]
    if "@" in authority:  # userinfo is not part of the routing authority
        authority = authority.rsplit("@", 1)[1]
    if "#" in path:
        path = path.split("#", 1)[0]
    if not path or path[0] == "?":
        path = "/" + path
    return scheme, authority, path


def via_count(headers: Headers) -> int:
    """The number of comma-separated entries over all ``Via`` fields."""
    count = 0
    for value in headers.get_all(b"via"):
        count += sum(1 for part in value.split(b",") if part.strip())
    return count


#: The ``Via`` fields of the usual versions, made once.
_VIA_FIELDS = {v: (b"via", b"%s %s" % (v.encode("ascii"), VIA_TOKEN)) for v in ("1.0", "1.1", "2", "2.0")}
#: The field ``append_via(headers, "1.1")`` appends to headers without a ``Via`` field.
VIA_11 = _VIA_FIELDS["1.1"]


def via_field(http_version: str) -> tuple[bytes, bytes]:
    """The ``Via`` field this proxy adds to headers that have none: ``<version> hostproxy``."""
    return _VIA_FIELDS.get(http_version) or (b"via", b"%s %s" % (http_version.encode("ascii"), VIA_TOKEN))


def append_via(headers: Headers, http_version: str) -> None:
    """Append ``<version> hostproxy`` to the ``Via`` field (one field, entries comma-joined)."""
    headers.append_entry(b"via", via_field(http_version)[1])


LABELER_KINDS = ("ip", "ip:port", "connectionRandom", "requestRandom", "router", "static")


@dataclass(frozen=True)
class Labeler:
    """One side (``by`` or ``for``) of a ``Forwarded`` element; ``kind`` as in Linkerd's config."""

    kind: str = "requestRandom"
    label: str | None = None  # for kind "static"

    def __post_init__(self) -> None:
        if self.kind not in LABELER_KINDS:
            raise ValueError(
                f"unknown Forwarded labeler kind {self.kind!r}; expected one of {', '.join(LABELER_KINDS)}"
            )
        if self.kind == "static" and not self.label:
            raise ValueError("Forwarded labeler kind 'static' needs a non-empty 'label'")


@dataclass(frozen=True)
class ForwardedConfig:
    """``servers[].addForwardedHeader``: both labelers default to ``requestRandom``."""

    by: Labeler = Labeler()
    for_: Labeler = Labeler()


def obfuscated(rng: random.Random, length: int = 12) -> str:
    return "_" + "".join(rng.choice(_OBF_ALPHABET) for _ in range(length))


def _node(host: str, port: int | None) -> str:
    if ":" in host:  # IPv6 must be bracketed and the whole node quoted
        node = f"[{host}]" if port is None else f"[{host}]:{port}"
        return f'"{node}"'
    if port is None:
        return host
    return f'"{host}:{port}"'


def _static_label(label: str) -> str:
    # A token is sent bare; anything else as an RFC 7239 quoted-string.
    if all(c.isalnum() or c in "._-" for c in label):
        return label
    return '"' + label.replace("\\", "\\\\").replace('"', '\\"') + '"'


def label_for(
    labeler: Labeler,
    addr: tuple[str, int],
    *,
    connection_label: str,
    router_label: str,
    rng: random.Random,
) -> str:
    kind = labeler.kind
    if kind == "requestRandom":
        return obfuscated(rng)
    if kind == "connectionRandom":
        return connection_label
    if kind == "ip":
        return _node(addr[0], None)
    if kind == "ip:port":
        return _node(addr[0], addr[1])
    if kind == "router":
        return _static_label(router_label)
    assert labeler.label is not None
    return _static_label(labeler.label)


def forwarded_element(
    config: ForwardedConfig,
    *,
    local: tuple[str, int],
    peer: tuple[str, int],
    connection_labels: tuple[str, str],
    router_label: str,
    rng: random.Random,
) -> bytes:
    """``by=...;for=...`` for one hop.  ``connection_labels`` are the per-connection random
    labels for (by, for), drawn once when the connection was accepted."""
    by = label_for(
        config.by, local, connection_label=connection_labels[0], router_label=router_label, rng=rng
    )
    for_ = label_for(
        config.for_, peer, connection_label=connection_labels[1], router_label=router_label, rng=rng
    )
    return f"by={by};for={for_}".encode("latin-1")


def append_forwarded(headers: Headers, element: bytes) -> None:
    headers.append_entry(b"forwarded", element)
