"""Per-request routing context: the ``l5d-*`` headers in, the ``l5d-*`` headers out, and the
address-override policy for per-request dtabs.

Theory of operation. A request's headers pass three steps, all pure functions over
``(lowercase name bytes, value bytes)`` pairs:

1. :func:`strip_inbound` runs first. With the server's ``clearContext: true`` every ``l5d-*`` header
   is dropped before anything reads it, so an untrusted caller can set neither a dtab override, nor a
   deadline, trace, sample rate, request id or ``l5d-name``; with ``io.l5d.zipkin`` the ``x-b3-*``
   headers it reads are dropped too. Without it nothing is dropped here.
2. :func:`read_inbound` consumes the routing context: every value of ``l5d-ctx-dtab`` then every value
   of ``l5d-dtab``, each parsed as a dtab, concatenated ``ctx ++ user`` (so the user's dentries are
   tried first), and removes both headers and ``l5d-sample``. A value that does not parse raises
   :class:`RequestDtabError` (answer 400; the message names the header and shows a caret). The old
   ``dtab-local`` header means nothing and is forwarded untouched, as in Linkerd 1.7. Parsing goes
   through a :class:`DtabParseCache` bounded by entries and by the length of the texts kept, so a
   repeated override text is parsed once and a flood of distinct (or large) texts cannot grow memory.
3. :func:`downstream_headers` computes the edits for the forwarded request: ``l5d-dst-service``,
   ``l5d-dst-client`` (the bound id, transformer prefix ``/%/...`` included), ``l5d-dst-residual``
   (only when non-empty; removed otherwise so a forged one never passes), the trace headers of the
   router's ``tracePropagator`` with ``l5d-reqid`` (:mod:`hostproxy.routing.tracectx`: ``l5d-ctx-trace``,
   or ``x-b3-*``; a child of the trace received, else a new trace), ``l5d-ctx-dtab`` (the printed local
   dtab, only when non-empty) and ``l5d-ctx-deadline`` (the strictest of the values received). Unknown
   ``l5d-ctx-*`` headers pass through.

The router runs steps 1-2 as :func:`inbound_scan` and step 3 with its application as
:func:`forwarded_headers`: the same results, each in one pass over the headers (every request pays
for these). ``inbound_scan`` also says whether any ``l5d-*`` header is left to forward; when none is
(the usual request), ``forwarded_headers(..., l5d=False)`` has nothing to drop or read and only copies
the headers before appending its own; with an empty local dtab too, :func:`forwarded_plain` appends
them to ``inbound_scan``'s list itself, given the :func:`dst_fields` the router keeps per service.

On the way back, :func:`clear_response_context` drops ``l5d-*`` response headers under ``clearContext``
(and says to empty the body of a proxy error), and :func:`encode_l5d_err` writes the ``l5d-err`` value.

Address overrides. A per-request dtab can send a request anywhere the daemon can reach by binding to a
raw address (``/$/inet/10.0.0.1/22``): the open-proxy/SSRF hole of Linkerd 1. The policy here works on
the *bound tree*, after all rewriting, so it cannot be bypassed by how the override is spelled
(wildcards, unions, alternates, the ``io.buoyant.*`` rewriting namers, transformer prefixes): a leaf whose
id contains ``$`` followed by a raw-address namer (:data:`RAW_ADDRESS_NAMERS`) is a raw address. When a
server listens on a non-loopback address and does not set ``allowAddressOverrides: true``, a request
with a non-empty local dtab is refused if its bound tree holds any raw-address id that the router's
dtab alone does not bind for the same service name. Overrides into configured namers (``/#/...``, the
blue/green and rollout use) work everywhere, and a base dtab that itself routes to ``/$/inet`` keeps
working under overrides. The check is conservative: an override that redirects ``/svc/a`` to another
service whose *base* rule is a raw address is refused too (name that target through a ``/#/`` namer or
set ``allowAddressOverrides``). Configured namers that resolve caller-chosen names (DNS SRV, for
instance) are reachable by overrides by design; servers facing untrusted callers set ``clearContext``.
"""

from __future__ import annotations

import ipaddress
import math
import random
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from dtab.errors import DtabSyntaxError
from dtab.path import Path
from dtab.table import Dtab
from dtab.tree import Alt, Leaf, Union
from hostproxy.http.message import Headers
from hostproxy.routing.tracectx import DEFAULT as DEFAULT_PROPAGATOR
from hostproxy.routing.tracectx import TracePropagator

__all__ = [
    "CLEARED_ON_READ",
    "CTX_DEADLINE",
    "CTX_DTAB",
    "CTX_TRACE",
    "DST_CLIENT",
    "DST_RESIDUAL",
    "DST_SERVICE",
    "L5D_PREFIX",
    "RAW_ADDRESS_NAMERS",
    "REQID",
    "SAMPLE",
    "USER_DTAB",
    "AddressOverridePolicy",
    "AddressOverrideRefused",
    "DtabParseCache",
    "HeaderEdits",
    "InboundContext",
    "RequestDtabError",
    "clear_response_context",
    "downstream_headers",
    "dst_fields",
    "encode_l5d_err",
    "forwarded_headers",
    "forwarded_plain",
    "inbound",
    "is_loopback_bind",
    "raw_address_ids",
    "read_inbound",
    "read_request_dtab",
    "show_bytes",
    "strip_inbound",
]

Header = tuple[bytes, bytes]

L5D_PREFIX = b"l5d-"
CTX_DTAB = b"l5d-ctx-dtab"
USER_DTAB = b"l5d-dtab"
CTX_DEADLINE = b"l5d-ctx-deadline"
CTX_TRACE = b"l5d-ctx-trace"  # (the same names as hostproxy.routing.tracectx's)
SAMPLE = b"l5d-sample"
REQID = b"l5d-reqid"
DST_SERVICE = b"l5d-dst-service"
DST_CLIENT = b"l5d-dst-client"
DST_RESIDUAL = b"l5d-dst-residual"

#: Headers consumed by the server: read once, never forwarded as received.
CLEARED_ON_READ = frozenset({CTX_DTAB, USER_DTAB, SAMPLE})

#: ``/$/<name>`` system namers that turn a path into a caller-chosen address.
RAW_ADDRESS_NAMERS = frozenset({b"inet", b"fixedinet", b"io.buoyant.rinet"})


# -- inbound -------------------------------------------------------------------------------------


def strip_inbound(headers: Iterable[Header], clear_context: bool) -> list[Header]:
    """The request headers as the router may read them: with ``clear_context`` no ``l5d-*`` header."""
    if not clear_context:
        return list(headers)
    return [(n, v) for (n, v) in headers if not n.lower().startswith(L5D_PREFIX)]


class RequestDtabError(ValueError):
    """A ``l5d-dtab`` or ``l5d-ctx-dtab`` value does not parse: the client's fault, answer 400."""

    status = 400

    def __init__(self, header: str, value: str, error: DtabSyntaxError) -> None:
        self.header = header
        self.value = value
        self.error = error
        # ``value`` is the header's bytes decoded as ISO-8859-1 (one character per byte): bytes that
        # are not visible ASCII are shown as \xHH escapes, so the message shows what was sent (UTF-8
        # shown as ISO-8859-1 would read "cafÃ©") and stays ASCII, in the body and in l5d-err.
        lines = value.split("\n")
        src = lines[error.line - 1] if error.line - 1 < len(lines) else ""
        caret = " " * len(_escaped(src[: error.column - 1])) + "^"
        note = ""
        if any(not (" " <= c <= "~" or c == "\n") for c in value):
            note = (
                "Bytes that are not visible ASCII are shown as \\xHH; in a dtab, write a character that "
                "is not ASCII as the \\xHH escapes of its UTF-8 bytes.\n"
            )
        super().__init__(
            f"Invalid {header} header: {_escaped(error.message)} at line {error.line} column "
            f"{error.column} (byte {error.shown_offset})\n{_escaped(src)}\n{caret}\n{note}"
            "Fix the dentries ('/prefix => /destination', separated by ';')."
        )


def _escaped(text: str) -> str:
    """``text`` with every character that is not visible ASCII (or a space) as ``\\xHH``."""
    if text.isascii() and text.isprintable():
        return text
    return "".join(c if " " <= c <= "~" else f"\\x{ord(c):02x}" for c in text)


#: Characters of dtab text a :class:`DtabParseCache` keeps in all (a parsed dtab takes ~40 bytes per
#: character of its text: 7 KB of ``l5d-dtab`` parse to ~300 KB).
PARSE_CACHE_MAX_CHARS = 64 * 1024


class DtabParseCache:
    """A bounded LRU from dtab text to parsed :class:`Dtab`; errors are not cached.

    Bounded by entries (``max_entries``) and by the length of the texts kept (``max_chars``): a
    parsed dtab is ~40 times the size of its text, so 1,000 distinct large overrides would otherwise
    hold hundreds of megabytes. A text longer than ``max_chars`` is parsed and not kept."""

    def __init__(self, max_entries: int = 1000, max_chars: int = PARSE_CACHE_MAX_CHARS) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, not {max_entries}")
        if max_chars < 1:
            raise ValueError(f"max_chars must be >= 1, not {max_chars}")
        self.max_entries = max_entries
        self.max_chars = max_chars
        self._entries: OrderedDict[str, Dtab] = OrderedDict()
        self.chars = 0
        self.hits = 0
        self.misses = 0

    def parse(self, text: str) -> Dtab:
        d = self._entries.get(text)
        if d is not None:
            self._entries.move_to_end(text)
            self.hits += 1
            return d
        self.misses += 1
        d = Dtab.read(text)  # raises DtabSyntaxError, not cached
        if len(text) > self.max_chars:
            return d
        self._entries[text] = d
        self.chars += len(text)
        while len(self._entries) > self.max_entries or self.chars > self.max_chars:
            old, _ = self._entries.popitem(last=False)
            self.chars -= len(old)
        return d

    def __len__(self) -> int:
        return len(self._entries)

    def statistics(self) -> dict[str, int]:
        return {"size": len(self._entries), "max": self.max_entries, "hits": self.hits, "misses": self.misses}


def read_request_dtab(headers: Iterable[Header], cache: DtabParseCache | None = None) -> Dtab:
    """``l5d-ctx-dtab`` values then ``l5d-dtab`` values, in order, concatenated (``ctx ++ user``)."""
    ctx: list[str] = []
    user: list[str] = []
    for n, v in headers:
        name = n.lower()
        if name == CTX_DTAB:
            ctx.append(v.decode("latin-1"))
        elif name == USER_DTAB:
            user.append(v.decode("latin-1"))
    return _parse_dtabs(ctx, user, cache)


def _parse_dtabs(ctx: Iterable[str], user: Iterable[str], cache: DtabParseCache | None) -> Dtab:
    """The ``l5d-ctx-dtab`` texts then the ``l5d-dtab`` texts, parsed and concatenated."""
    result = Dtab.EMPTY
    for header, values in (("l5d-ctx-dtab", ctx), ("l5d-dtab", user)):
        for text in values:
            try:
                d = cache.parse(text) if cache is not None else Dtab.read(text)
            except DtabSyntaxError as e:
                raise RequestDtabError(header, text, e) from e
            result = result + d
    return result


@dataclass(frozen=True, slots=True)
class InboundContext:
    """What the server took from a request: the headers left to forward and the local dtab."""

    headers: list[Header]
    local_dtab: Dtab
    sample: float | None = None


def read_inbound(
    headers: Iterable[Header], *, clear_context: bool, cache: DtabParseCache | None = None
) -> InboundContext:
    """Strip (clearContext), read the per-request dtab and sample rate, drop the consumed headers.

    Raises :class:`RequestDtabError` for an unparseable dtab header.
    """
    return InboundContext(*inbound(headers, clear_context, cache))


def inbound(
    headers: Iterable[Header], clear_context: bool, cache: DtabParseCache | None = None
) -> tuple[list[Header], Dtab, float | None]:
    """:func:`read_inbound` as a tuple ``(headers, local dtab, sample)``, in one pass over the headers
    (what :func:`strip_inbound`, :func:`read_request_dtab` and the sample and :data:`CLEARED_ON_READ`
    filters would each compute)."""
    kept, local, sample, _ = inbound_scan(headers, clear_context, cache)
    return kept, local, sample


def inbound_scan(
    headers: Iterable[Header],
    clear_context: bool,
    cache: DtabParseCache | None = None,
    propagator: TracePropagator = DEFAULT_PROPAGATOR,
) -> tuple[list[Header], Dtab, float | None, bool]:
    """:func:`inbound` and whether the headers kept include an ``l5d-*`` header or one the trace
    ``propagator`` reads (the router's per-request form: False lets :func:`forwarded_headers` skip
    its pass). With ``clear_context`` the propagator's headers are dropped too (``x-b3-*`` for
    ``io.l5d.zipkin``), so the forwarded request starts a new trace.

    ``Headers`` hold lowercased names, so a request's are first looked over without lowercasing
    them: with no ``l5d-*`` name among them (the usual request) there is nothing to strip or read,
    and they are kept as they are."""
    prefix = propagator.prefix
    if type(headers) is Headers:
        items = headers.items()  # a list of its own
        for pair in items:
            if pair[0].startswith(L5D_PREFIX) or (prefix is not None and pair[0].startswith(prefix)):
                break
        else:
            return items, Dtab.EMPTY, None, False
    kept: list[Header] = []
    ctx: list[str] = []
    user: list[str] = []
    sample_value: bytes | None = None
    l5d_kept = False
    for pair in headers:
        name = pair[0].lower()
        if name.startswith(L5D_PREFIX):
            if clear_context:
                continue
            if name == CTX_DTAB:
                ctx.append(pair[1].decode("latin-1"))
                continue
            if name == USER_DTAB:
                user.append(pair[1].decode("latin-1"))
                continue
            if name == SAMPLE:
                if sample_value is None:
                    sample_value = pair[1]
                continue
            l5d_kept = True
        elif prefix is not None and name.startswith(prefix) and name in propagator.names:
            if clear_context:
                continue
            l5d_kept = True
        kept.append(pair)
    local = _parse_dtabs(ctx, user, cache) if ctx or user else Dtab.EMPTY
    sample: float | None = None
    if sample_value is not None:
        try:
            rate = float(sample_value.decode("latin-1"))
        except ValueError:
            rate = math.nan
        # Not a rate (nan would clamp to 0, a decision never to sample): no decision at all.
        sample = None if math.isnan(rate) else min(1.0, max(0.0, rate))
    return kept, local, sample, l5d_kept


# -- downstream -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HeaderEdits:
    """Remove every header named in ``remove`` or ``set``, then append ``set`` in order."""

    remove: frozenset[bytes]
    set: tuple[Header, ...]

    def apply(self, headers: Iterable[Header]) -> list[Header]:
        drop = self.remove | {n for n, _ in self.set}
        out = [(n, v) for (n, v) in headers if n.lower() not in drop]
        out.extend(self.set)
        return out

    def value(self, name: bytes) -> bytes | None:
        for n, v in self.set:
            if n == name:
                return v
        return None


def _combined_deadline(values: list[bytes]) -> bytes | None:
    """The strictest of ``"<timestamp_ns> <deadline_ns>"`` values: latest timestamp, earliest deadline."""
    best: tuple[int, int] | None = None
    for v in values:
        parts = v.split(b" ")
        if len(parts) != 2:
            continue
        try:
            ts, dl = int(parts[0]), int(parts[1])
        except ValueError:
            continue
        best = (ts, dl) if best is None else (max(best[0], ts), min(best[1], dl))
    return None if best is None else f"{best[0]} {best[1]}".encode("ascii")


def show_bytes(p: Any) -> bytes:
    """A path (or id) as a header value: its printed form."""
    return str(p).encode("latin-1", "replace")


def downstream_headers(
    *,
    service: Path,
    client: Path | str | None,
    residual: Path | None,
    local_dtab: Dtab,
    headers: Iterable[Header],
    rng: random.Random,
    sample: float | None = None,
    propagator: TracePropagator = DEFAULT_PROPAGATOR,
) -> HeaderEdits:
    """The ``l5d-*`` and trace edits for a forwarded request.

    ``headers`` are the request headers after :func:`read_inbound`; ``sample`` the ``l5d-sample``
    rate it read. ``client`` is the bound client id (``None`` when not yet bound: no
    ``l5d-dst-client``). The trace headers, ``l5d-reqid`` among them, are the ``propagator``'s
    (:mod:`hostproxy.routing.tracectx`): a child of the trace received, or a new trace.
    """
    deadlines: list[bytes] = []
    names = propagator.names
    received: dict[bytes, bytes] = {}
    for n, v in headers:
        name = n.lower()
        if name == CTX_DEADLINE:
            deadlines.append(v)
        elif name in names and name not in received:
            received[name] = v
    shown_client = show_bytes(client) if client is not None else None
    sets, _ = _context_sets(
        show_bytes(service),
        shown_client,
        residual,
        local_dtab,
        deadlines,
        propagator.forward(received, sample, rng),
    )
    return HeaderEdits(_DOWNSTREAM_REMOVE | names, tuple(sets))


def forwarded_headers(
    service: bytes,
    client: bytes,
    residual: Path | bytes | None,
    local_dtab: Dtab,
    headers: Iterable[Header],
    rng: random.Random,
    *,
    l5d: bool = True,
    sample: float | None = None,
    propagator: TracePropagator = DEFAULT_PROPAGATOR,
) -> tuple[list[Header], bytes | None]:
    """``downstream_headers(...).apply(headers)`` in one pass over ``headers`` (the router's
    per-request form), and the ``l5d-ctx-deadline`` value among them (None: there is none).

    ``service`` and ``client`` are given printed, as :func:`show_bytes` prints them (the router keeps
    them with the service and the client); ``residual`` may be too (bytes: the printed form of a
    non-empty residual, which the router keeps with the service). ``l5d=False`` says that ``headers``
    hold no ``l5d-*`` header and none the ``propagator`` reads (as :func:`inbound_scan` reports):
    they are copied without a look at their names."""
    deadlines: list[bytes] = []
    if not l5d:
        kept = list(headers)
        trace_sets = propagator.new_trace(rng) if sample is None else propagator.forward({}, sample, rng)
        sets, _ = _context_sets(service, client, residual, local_dtab, deadlines, trace_sets)
        kept.extend(sets)
        return kept, None
    names = propagator.names
    prefix = propagator.prefix
    received: dict[bytes, bytes] = {}
    kept = []
    for pair in headers:
        name = pair[0].lower()
        if name.startswith(L5D_PREFIX):
            if name in _DOWNSTREAM_DROP:
                if name == CTX_DEADLINE:
                    deadlines.append(pair[1])
                elif name == CTX_TRACE and name in names and name not in received:
                    received[name] = pair[1]
                continue
        elif prefix is not None and name.startswith(prefix) and name in names:
            if name not in received:
                received[name] = pair[1]
            continue
        kept.append(pair)
    trace_sets = propagator.forward(received, sample, rng)
    sets, deadline = _context_sets(service, client, residual, local_dtab, deadlines, trace_sets)
    kept.extend(sets)
    return kept, deadline


def dst_fields(service: bytes, client: bytes | None, residual: Path | bytes | None) -> tuple[Header, ...]:
    """The ``l5d-dst-*`` fields that :func:`forwarded_headers` sets first, in its order: ``service``
    and ``client`` printed (:func:`show_bytes`; ``client`` None: none), ``residual`` printed or a
    path (None or empty: none). They depend on the binding alone, so the router keeps them."""
    if residual is not None and type(residual) is not bytes:
        residual = show_bytes(residual) if residual is not Path.EMPTY and len(residual) > 0 else None
    fields = ((DST_SERVICE, service),) if client is None else ((DST_SERVICE, service), (DST_CLIENT, client))
    return fields if residual is None else (*fields, (DST_RESIDUAL, residual))


def forwarded_plain(
    headers: list[Header],
    dst: tuple[Header, ...],
    rng: random.Random,
    propagator: TracePropagator = DEFAULT_PROPAGATOR,
) -> list[Header]:
    """:func:`forwarded_headers` for a request without ``l5d-*`` headers or headers the
    ``propagator`` reads (``inbound_scan`` said so) and with an empty local dtab, given its
    :func:`dst_fields`: ``headers``, a list of the caller's own (``inbound_scan`` made it for this
    request), extended in place with those and a new trace (``l5d-reqid`` last). There is no
    deadline to report."""
    headers += dst
    headers += propagator.new_trace(rng)
    return headers


# What ``downstream_headers`` removes, and what its edits drop in all: that plus the names it sets,
# which are always l5d-dst-service and the trace headers and otherwise names already removed.
_DOWNSTREAM_REMOVE = CLEARED_ON_READ | {DST_RESIDUAL, DST_CLIENT, CTX_DEADLINE, CTX_TRACE}
_DOWNSTREAM_DROP = _DOWNSTREAM_REMOVE | {DST_SERVICE, REQID}


def _context_sets(
    service: bytes,
    client: bytes | None,
    residual: Path | bytes | None,
    local_dtab: Dtab,
    deadlines: list[bytes],
    trace_sets: list[Header],
) -> tuple[list[Header], bytes | None]:
    """The headers ``downstream_headers`` sets, in order, and the combined deadline among them
    (``service`` and ``client`` printed; ``residual`` may be, when it is not empty)."""
    sets = [*dst_fields(service, client, residual), *trace_sets]
    if local_dtab is not Dtab.EMPTY and len(local_dtab) > 0:
        sets.append((CTX_DTAB, show_bytes(local_dtab)))
    deadline = _combined_deadline(deadlines) if deadlines else None
    if deadline is not None:
        sets.append((CTX_DEADLINE, deadline))
    return sets, deadline


# -- responses ------------------------------------------------------------------------------------


ERR = b"l5d-err"


def clear_response_context(headers: Iterable[Header], clear_context: bool) -> tuple[list[Header], bool]:
    """The response headers to send back to the caller, and whether its body must be emptied.

    With ``clearContext`` every ``l5d-*`` response header is removed, and a response that carried
    ``l5d-err`` (a proxy-generated error, which may name internal hosts) loses its body too.
    """
    hs = list(headers)
    if not clear_context:
        return hs, False
    had_err = any(n.lower() == ERR for n, _ in hs)
    return [(n, v) for (n, v) in hs if not n.lower().startswith(L5D_PREFIX)], had_err


_URL_SAFE = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-*_")


def encode_l5d_err(message: str, max_len: int | None = None) -> bytes:
    """The ``l5d-err`` header value: Java ``URLEncoder`` over ISO-8859-1 (space is ``+``), truncated.

    Characters outside ISO-8859-1 become ``?`` (as Java's encoder does).
    """
    out = bytearray()
    for byte in message.encode("latin-1", "replace"):
        if byte in _URL_SAFE:
            out.append(byte)
        elif byte == 0x20:
            out.append(0x2B)
        else:
            out += b"%%%02X" % byte
    return bytes(out if max_len is None else out[:max_len])


# -- address overrides -------------------------------------------------------------------------


def _id_labels(bound_id: Any) -> tuple[bytes, ...]:
    if isinstance(bound_id, Path):
        return bound_id.labels
    try:
        return Path.read(str(bound_id)).labels
    except DtabSyntaxError:
        return ()


def is_raw_address_id(bound_id: Any) -> bool:
    """True when the id names a raw address: ``$`` followed by a raw-address namer, anywhere in it."""
    labels = _id_labels(bound_id)
    return any(labels[i] == b"$" and labels[i + 1] in RAW_ADDRESS_NAMERS for i in range(len(labels) - 1))


def bound_leaves(tree: Any) -> list[Any]:
    """Every leaf value of a bound tree (alternates and union branches included)."""
    out: list[Any] = []
    stack = [tree]
    while stack:
        t = stack.pop()
        if isinstance(t, Leaf):
            out.append(t.value)
        elif isinstance(t, Alt):
            stack.extend(t.trees)
        elif isinstance(t, Union):
            stack.extend(b.tree for b in t.branches)
    return out


def raw_address_ids(tree: Any) -> frozenset[str]:
    """The printed ids of the raw-address leaves of a bound tree."""
    return frozenset(str(leaf.id) for leaf in bound_leaves(tree) if is_raw_address_id(leaf.id))


def is_loopback_bind(ip: str | None) -> bool:
    """True for a server bound to a loopback address only (``127.0.0.0/8``, ``::1``, ``localhost``).

    ``None`` (unset) means Linkerd's default, loopback. ``0.0.0.0`` and ``::`` are not loopback.
    """
    if ip is None or ip == "localhost":
        return True
    try:
        return ipaddress.ip_address(ip.strip("[]")).is_loopback
    except ValueError:
        return False


class AddressOverrideRefused(Exception):
    """A per-request dtab tried to route to a raw address on a non-loopback server: answer 400."""

    status = 400

    def __init__(self, service: Path, local_dtab: Dtab, ids: Iterable[str], server: str) -> None:
        self.service = service
        self.ids = tuple(sorted(ids))
        super().__init__(
            f"Per-request dtab override refused: it routes {service} to the raw address "
            f"{', '.join(self.ids)}, which the router's dtab does not. This server listens on {server}, "
            "where l5d-dtab/l5d-ctx-dtab overrides may only route to configured namers (/#/...). "
            "Set allowAddressOverrides: true on the server to permit raw-address overrides "
            f"(only on a trusted network), or set clearContext: true to ignore overrides. Override: {local_dtab}"
        )


@dataclass(frozen=True, slots=True)
class AddressOverridePolicy:
    """Whether a server refuses per-request dtabs that bind to raw addresses."""

    refuse_raw_addresses: bool
    server: str = "a non-loopback address"

    @classmethod
    def for_server(cls, ip: str | None, allow_address_overrides: bool) -> AddressOverridePolicy:
        refuse = not allow_address_overrides and not is_loopback_bind(ip)
        return cls(refuse, ip or "127.0.0.1")

    def check(self, service: Path, local_dtab: Dtab, override_tree: Any, base_tree: Any) -> None:
        """Raise :class:`AddressOverrideRefused` if ``override_tree`` adds raw addresses to ``base_tree``.

        ``override_tree`` is bound with ``base ++ local``, ``base_tree`` with the base dtab alone.
        """
        if not self.refuse_raw_addresses or len(local_dtab) == 0:
            return
        added = raw_address_ids(override_tree) - raw_address_ids(base_tree)
        if added:
            raise AddressOverrideRefused(service, local_dtab, added, self.server)
