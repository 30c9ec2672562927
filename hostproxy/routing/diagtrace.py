"""Diagnostic tracing: ``TRACE`` with ``Max-Forwards`` and ``l5d-add-context`` (Linkerd's behaviour).

Theory of operation
-------------------
An operator who wants to know how one request is routed sends it as ``TRACE`` with
``l5d-add-context: true``. Each router on the way appends its own account to the response body —
router label, time spent downstream, service name, client name, the client's addresses and the one chosen,
and the dtab rewrites from the service name to the client — below what came back from further along.
``Max-Forwards`` bounds how far the request goes: a router that receives ``0`` answers itself (200, with its
context when asked) instead of forwarding; one that receives ``N > 0`` forwards with ``N - 1``. A
``Max-Forwards`` that is not an integer is refused with 400. Without either header, or for any other
method, requests are routed as usual. The whole path is: ``curl -X TRACE -H 'l5d-add-context: true'
-H 'Max-Forwards: 1' -H 'Host: users' http://localhost:4140/``.

This module is pure: it reads the request's headers (:func:`trace_request`), formats one router's
account (:func:`format_context`), picks the rewrites that led to the chosen client out of a delegation
explanation (:func:`resolution_lines`) and builds the new response body (:func:`traced_body`). The
router does the I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from http import HTTPStatus

from dtab import Dentry, Path
from dtab.delegate import (
    AltNode,
    DelegatedNode,
    DelegateNode,
    LeafNode,
    TransformationNode,
    UnionNode,
)

__all__ = [
    "ADD_CONTEXT",
    "MAX_FORWARDS",
    "InvalidMaxForwards",
    "TraceRequest",
    "format_context",
    "resolution_lines",
    "trace_request",
    "traced_body",
]

ADD_CONTEXT = b"l5d-add-context"
MAX_FORWARDS = b"max-forwards"

_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1


class InvalidMaxForwards(ValueError):
    """``Max-Forwards`` on a ``TRACE`` is not an integer (answered with 400)."""

    def __init__(self, value: bytes) -> None:
        self.value = value
        super().__init__("Invalid value for Max-Forwards header")


@dataclass
class TraceRequest:
    """A diagnostic trace: ``max_forwards`` as received (None: absent) and whether to add context."""

    max_forwards: int | None
    add_context: bool
    selected: str = ""  # the endpoint the request went to (or would go to), set by the router

    @property
    def answer_here(self) -> bool:
        """``Max-Forwards: 0``: this router answers instead of forwarding."""
        return self.max_forwards == 0

    def forwarded_max_forwards(self) -> bytes | None:
        """The ``Max-Forwards`` value to send on (None: leave the header as it is)."""
        if self.max_forwards is None or self.max_forwards <= 0:
            return None
        return str(self.max_forwards - 1).encode("ascii")


def _java_int(raw: bytes) -> int:
    """``Integer.parseInt``: an optional sign, ASCII digits, 32-bit range; anything else is refused."""
    text = raw.decode("latin-1")
    digits = text[1:] if text[:1] in ("+", "-") else text
    if not digits or not digits.isascii() or not digits.isdigit():
        raise InvalidMaxForwards(raw)
    n = int(text)
    if not _INT_MIN <= n <= _INT_MAX:
        raise InvalidMaxForwards(raw)
    return n


def _truthy(raw: bytes | None) -> bool:
    """Finagle's ``StringUtil.toBoolean``: ``1``, ``t`` or ``true`` in any case."""
    return raw is not None and raw.decode("latin-1").lower() in ("1", "t", "true")


def trace_request(method: str, headers: Iterable[tuple[bytes, bytes]]) -> TraceRequest | None:
    """The trace this request asks for, or None when it is routed as usual.

    Raises :class:`InvalidMaxForwards` for a ``TRACE`` whose ``Max-Forwards`` is not an integer. A
    negative ``Max-Forwards`` leaves the request alone, as in Linkerd.
    """
    if method != "TRACE":
        return None
    max_forwards: bytes | None = None
    add_context: bytes | None = None
    for name, value in headers:
        if name == MAX_FORWARDS and max_forwards is None:
            max_forwards = value
        elif name == ADD_CONTEXT and add_context is None:
            add_context = value
    mf = _java_int(max_forwards) if max_forwards is not None else None
    add = _truthy(add_context)
    if (mf is None and not add) or (mf is not None and mf < 0):
        return None
    return TraceRequest(mf, add)


def _step(node: DelegateNode) -> tuple[Path, str]:
    if isinstance(node, TransformationNode):
        return node.path, node.name
    dentry = node.dentry
    return node.path, "" if dentry.equivalent(Dentry.NOP) else str(dentry)


def _find(node: DelegateNode, client: Path) -> list[tuple[Path, str]] | None:
    """The nodes from ``node`` down to the first leaf bound to ``client`` (depth first), or None."""
    if isinstance(node, LeafNode):
        return [_step(node)] if node.bound is not None and node.bound.id == client else None
    children: list[DelegateNode] = []
    if isinstance(node, DelegatedNode | TransformationNode) and node.child is not None:
        children = [node.child]
    elif isinstance(node, AltNode):
        children = list(node.children)
    elif isinstance(node, UnionNode):
        children = [n for _, n in node.branches]
    for child in children:
        found = _find(child, client)
        if found is not None:
            return [_step(node), *found]
    return None


def resolution_lines(tree: object, client: Path) -> list[str]:
    """The rewrites from the service name to ``client``: ``  <path>`` or ``  <path> (<dentry>)`` each.

    ``tree`` is a delegation explanation (:func:`dtab.delegate.delegate`); anything else (pending, or no
    leaf bound to ``client``) gives no lines.
    """
    if not isinstance(tree, DelegateNode):
        return []
    found = _find(tree, client) or []
    return [f"  {path}" if not why else f"  {path} ({why})" for path, why in found]


def format_context(
    *,
    router: str,
    duration_ms: int,
    service: str,
    client: str,
    addresses: Iterable[str],
    selected: str,
    resolution: list[str],
) -> str:
    """One router's account, as Linkerd writes it."""
    return (
        f"--- Router: {router} ---\n"
        f"request duration: {duration_ms} ms\n"
        f"service name: {service}\n"
        f"client name: {client}\n"
        f"addresses: [{', '.join(addresses)}]\n"
        f"selected address: {selected}\n"
        f"dtab resolution:\n" + "\n".join(resolution) + "\n"
    )


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown Status"


def traced_body(
    content: bytes | None,
    context: str,
    *,
    status: int,
    reason: bytes,
    headers: Iterable[tuple[bytes, bytes]],
) -> bytes:
    """The response body with this router's context below what came back.

    ``content`` is None when the response was chunked (its length unknown): it is replaced by its headers
    and status and a note that the content was discarded, as Linkerd does.
    """
    if content is None:
        lines = [f"{n.decode('latin-1')}: {v.decode('latin-1')}" for n, v in headers]
        phrase = reason.decode("latin-1") or _phrase(status)
        text = (
            "\n".join(lines)
            + f"\nHTTP {status} - {phrase}\n"
            + "Diagnostic trace encountered chunked response. Response content discarded."
        )
    else:
        text = content.decode("utf-8", "replace")
    return (text.strip() + "\n\n" + context).encode("utf-8")
