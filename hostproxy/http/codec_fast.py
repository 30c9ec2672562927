"""The fast HTTP/1.1 codec: llhttp (through ``httptools``) for header fields, framing in Python.

Theory of operation
-------------------
Same interface, events, errors and framing decisions as the h11 reference in ``codec_h11``
(differential-tested against it in ``tests/test_http_codec_differential.py``); only the work per
message is smaller.  One cycle is one request and its response.  Each side keeps

* a receive buffer (``bytearray``): bytes not yet turned into events.  Bytes beyond the current
  message (pipelined requests, tunnel data after a ``101``) simply stay in it until the next cycle,
  so a pipelined head goes through every check again;
* the peer's state (``_T_HEAD`` → ``_T_BODY`` → ``_T_DONE`` / ``_T_SWITCHED`` / ``_T_CLOSED``,
  ``_T_ERROR`` after a ``ProtocolError``) and our own (``_O_IDLE`` → ``_O_BODY`` → ``_O_DONE`` /
  ``_O_SWITCHED``, ``_O_ERROR``), plus the keep-alive flag and a pending switch proposal
  (``Upgrade`` or ``CONNECT``), with h11's transitions.

A head is located with ``bytes.find`` (requests: the first CRLFCRLF, after the raw checks below) and
split into start line and field block.  The start line is matched against the h11 grammar with one
regular expression.  A plain field block (every line a token, a colon and a value of allowed bytes;
a short digit ``Content-Length`` and a ``chunked`` ``Transfer-Encoding`` at most once each) is split
here, a line at a time, with lines seen before looked up (``_fields_in``); llhttp would give the
same pairs (property-tested).  Any other block goes to llhttp, which tokenises it in C and rejects
bad field names, control characters in values, lone CRs and malformed ``Content-Length`` values,
naming what is wrong.  llhttp is
fed a fixed dummy start line, so its own method table, URL rules and framing are never relied on;
its leniencies for ``Transfer-Encoding`` and ``Content-Length`` + ``Transfer-Encoding`` are turned
on because those rules are applied here, exactly as h11 applies them:

* ``Transfer-Encoding`` must be exactly ``chunked`` (one header); ``Content-Length`` must be
  digits and agree with any duplicate (llhttp refuses duplicates even when equal: stricter);
* on the server: ``Content-Length`` with ``Transfer-Encoding`` → 400; a 1.1 request needs exactly
  one ``Host``; the raw head checks of the reference codec (414/431 limits, bare CR/LF, NUL,
  obs-fold) run before any parsing;
* on the client: the head limits of its ``CodecLimits`` (the router's ``maxInitialLineKB`` and
  ``maxHeadersKB``, and the field count) on every head, complete or not, remembered or not (a
  remembered head is at most ``_HEAD_CACHED_MAX`` bytes and ``_HEAD_CACHED_FIELDS`` fields, and a
  codec whose limits are lower looks heads up in a map of its own); a reason phrase of HTAB, SP,
  VCHAR and obs-text only; a response framed by the close, or with both ``Content-Length`` and
  ``Transfer-Encoding`` (relayed by its chunks), ends the connection's reuse.

Bodies are framed here (``Content-Length``, chunked with extensions and trailers, or until EOF for
responses), which keeps message boundaries exact without asking llhttp where it stopped; a response
body framed by ``Content-Length`` that arrived whole can be taken in one call
(``ClientCodec.whole_body``: what its ``Data`` and ``EndOfMessage`` events would give).  Writing is
plain byte joins: each field's line comes from a bounded map of lines made from fields that passed
the exact check (``_fields_noted``); a field not there is checked alone, and a block with a field
that fails (or is not a pair of ``bytes``) goes to the uncached checks, a few byte scans of the
whole block and then field by field (``_fields_out_checked``), so no CR, LF or NUL can reach the
wire from a header and every refusal is what it was.  Parsed status lines are remembered (a bounded
map), since an upstream sends few distinct ones; so are request lines and field lines
(``_fields_in``), since a client sends many alike; and so are whole heads that were accepted (their
bytes -> the parsed start line and fields, each event getting a list of its own), since a peer sends
the same head again and again. A remembered response head carries a memo (``ResponseHead.memo``)
where the upstream pool keeps the fields it strips from it. A response's field block is remembered
by the fields' values (``_response_fields_noted``), since the proxy passes an upstream's fields on,
and so is a request's without its last fields when those are the proxy's per-request ``l5d-reqid``
and trace headers (``_request_fields_noted``).

Known, deliberate differences from h11 (all stricter): duplicate equal ``Content-Length`` fields,
control characters (other than HTAB) in field values, bare LF in trailers, and (in requests)
obs-fold in trailers are refused. (The h11 wrapper adds the client-side rules above to h11.)
"""

from __future__ import annotations

import re
from typing import Any, Final

import httptools

from hostproxy.http.codec_base import (
    END_OF_MESSAGE,
    NEED_DATA,
    PAUSED,
    UNASKED_101,
    CodecLimits,
    ConnectionClosed,
    Data,
    EndOfMessage,
    Event,
    HeaderList,
    HeadMemo,
    Informational,
    LocalProtocolError,
    ProtocolError,
    RequestHead,
    ResponseHead,
    check_raw,
    request_head,
    via_loop_hint,
)

__all__ = ["ClientCodec", "ServerCodec"]

_TOKEN = rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+"
_REQUEST_LINE_RE: Final = re.compile(rb"(" + _TOKEN + rb") ([\x21-\x7e]+) HTTP/([0-9]\.[0-9])")
# The reason phrase as RFC 9112 §4 has it: HTAB, SP, VCHAR and obs-text, no other control byte (h11
# lets them through; they would be written to the client as they came).
_STATUS_LINE_RE: Final = re.compile(rb"HTTP/([0-9]\.[0-9]) ([0-9]{3})(?: ([\t\x20-\x7e\x80-\xff]*))?")
_CHUNK_HEADER_RE: Final = re.compile(rb"([0-9A-Fa-f]{1,20})(?:;.*)?[ \t]*\r\n")
_CONTENT_LENGTH_RE: Final = re.compile(rb"[0-9]+")
_BLANK_LINE_RE: Final = re.compile(rb"\n\r?\n")
#: What every response head starts with: a partial head whose first bytes differ is refused at once.
_STATUS_PREFIX: Final = b"HTTP/"
_OBS_FOLD_RE: Final = re.compile(rb"\r\n[ \t]+")
_TOKEN_RE: Final = re.compile(_TOKEN)
_OUT_VALUE_RE: Final = re.compile(rb"(?:[^\x00\s]+(?:[ \t]+[^\x00\s]+)*)?")
_TARGET_RE: Final = re.compile(rb"[\x21-\x7e]+")
# What we write: "name: value" lines, value empty or without leading/trailing whitespace (see
# ``_fields_out``): every byte but NUL, HTAB, CR, LF, VT and FF is plain; names are token bytes.
_OUT_PLAIN: Final = bytes(b for b in range(256) if b not in b"\x00\t\r\n\x0b\x0c")
_OUT_TCHARS: Final = bytes(b for b in range(256) if _TOKEN_RE.fullmatch(bytes([b])))
_CRLF: Final = b"\r\n"

# Peer ("their") states.
_T_IDLE: Final = 0  # client side only: no request sent yet
_T_HEAD: Final = 1
_T_BODY: Final = 2
_T_DONE: Final = 3
_T_SWITCHED: Final = 4
_T_CLOSED: Final = 5
_T_ERROR: Final = 6
# Our states.
_O_IDLE: Final = 0
_O_BODY: Final = 1
_O_DONE: Final = 2
_O_SWITCHED: Final = 3
_O_ERROR: Final = 4
_O_NAMES: Final = ("IDLE", "SEND_BODY", "DONE", "SWITCHED_PROTOCOL", "ERROR")
# Body framing.
_F_LENGTH: Final = 0
_F_CHUNKED: Final = 1
_F_EOF: Final = 2
# Switch proposals.
_P_UPGRADE: Final = 1
_P_CONNECT: Final = 2

_CL_MAX_DIGITS: Final = 20
# Parsed status lines (version, status, reason) by their bytes: a server sends few distinct ones.
# Bounded, so that a peer sending varied reason phrases only fills it so far.
_STATUS_LINES: dict[bytes, tuple[bytes, int, bytes | None]] = {}
_STATUS_LINES_MAX: Final = 256
# Parsed request lines (method, target, version) by their bytes: a client often asks for the same
# few. Bounded in count and length; emptied when full, so that varied targets only cost a miss.
_REQUEST_LINES: dict[bytes, tuple[bytes, ...]] = {}
_REQUEST_LINES_MAX: Final = 1024
# Whole heads parsed and accepted before: the head's bytes (start line and fields) -> the parsed
# start line and a ``_Head`` that ``copy()`` hands out. A peer sends the same head again and again (a
# client library's request to one service; an upstream's response within the second of its
# ``Date``), and one lookup then replaces the line-by-line split. Only heads that passed every check
# are remembered, and what is remembered is a function of the bytes alone (the size limits, which
# differ per server, are applied before the lookup). Bounded in count and length, emptied when full.
_REQUEST_HEADS: dict[bytes, tuple[tuple[bytes, ...], _Head]] = {}
_RESPONSE_HEADS: dict[bytes, tuple[bytes, int, bytes | None, _Head, HeadMemo]] = {}
_HEADS_MAX: Final = 256
_HEAD_CACHED_MAX: Final = 1024
# The most fields a remembered response head has: a client codec whose field cap is lower keeps a map
# of its own (``ClientCodec._heads``).
_HEAD_CACHED_FIELDS: Final = 100
# The longest chunk line or trailer section a client codec buffers.
_CLIENT_MAX_LINE: Final = 64 * 1024
_REQUEST_LINE_CACHED_MAX: Final = 256
_DUMMY_LINE: Final = b"GET / HTTP/1.1\r\n"


class _FieldError(Exception):
    pass


class _FieldParser:
    """llhttp as a field tokeniser: ``parse(block)`` → raw ``(name, value)`` pairs.

    The parser is reused while each block ends a complete (body-less) dummy message; a block that
    leaves it expecting a body (``Content-Length``, chunked) or that failed replaces it.
    """

    __slots__ = ("_fields", "_complete", "_parser")

    def __init__(self) -> None:
        self._fields: HeaderList = []
        self._complete = False
        # Made on the first head: an idle connection (1,000s of them) carries no llhttp parser.
        self._parser: httptools.HttpRequestParser | None = None

    def _new(self) -> httptools.HttpRequestParser:
        parser = httptools.HttpRequestParser(self)
        parser.set_dangerous_leniencies(
            lenient_chunked_length=True, lenient_transfer_encoding=True, lenient_keep_alive=True
        )
        return parser

    def on_header(self, name: bytes, value: bytes) -> None:
        self._fields.append((name, value))

    def on_message_complete(self) -> None:
        self._complete = True

    def parse(self, block: bytes) -> HeaderList:
        fields: HeaderList = []
        self._fields = fields
        self._complete = False
        parser = self._parser
        if parser is None:
            parser = self._parser = self._new()
        try:
            parser.feed_data(_DUMMY_LINE + block + b"\r\n")
        except httptools.HttpParserUpgrade:
            self._complete = False
        except httptools.HttpParserError as exc:
            self._parser = self._new()
            raise _FieldError(_llhttp_message(str(exc))) from None
        if not self._complete:
            self._parser = self._new()
        return fields


def _remember(cache: dict[Any, Any], key: Any, value: Any, max_entries: int) -> None:
    """Put ``key`` in one of the bounded maps of things parsed or made before, emptying the map first
    when it is full (so that one-off keys cannot keep the common ones out for long)."""
    if len(cache) >= max_entries:
        cache.clear()
    cache[key] = value


def _llhttp_message(reason: str) -> str:
    if reason == "Duplicate Content-Length":
        return "conflicting Content-Length headers (duplicates are refused)"
    if "Content-Length" in reason:
        return f"bad Content-Length ({reason})"
    return f"illegal header line ({reason})"


class _Head:
    """What the framing needs to know about a parsed field block."""

    __slots__ = ("headers", "length", "chunked", "close", "hosts", "expect_100", "upgrade")

    def __init__(self) -> None:
        self.headers: HeaderList = []
        self.length: int | None = None
        self.chunked = False
        self.close = False
        self.hosts = 0
        self.expect_100 = False
        self.upgrade = False

    def copy(self) -> _Head:
        """A head like this one with a list of its own (a remembered head is never handed out)."""
        head = _Head.__new__(_Head)
        head.headers = list(self.headers)
        head.length = self.length
        head.chunked = self.chunked
        head.close = self.close
        head.hosts = self.hosts
        head.expect_100 = self.expect_100
        head.upgrade = self.upgrade
        return head


def _tokens(value: bytes) -> list[bytes]:
    return [t for t in (v.strip() for v in value.lower().split(b",")) if t]


def _normalize(raw: HeaderList) -> _Head:
    """Lowercase names, strip values, apply h11's Content-Length / Transfer-Encoding rules."""
    head = _Head()
    out = head.headers
    for name, value in raw:
        name = name.lower()
        value = value.rstrip(b" \t")
        if name in _SPECIAL:  # one set lookup for the fields that need nothing more (most)
            if name == b"content-length":
                if not value.isdigit():  # plain digits (the common case) are their own only value
                    lengths = {v.strip() for v in value.split(b",")}
                    if len(lengths) != 1:
                        raise _FieldError("conflicting Content-Length headers")
                    value = lengths.pop()
                    if not _CONTENT_LENGTH_RE.fullmatch(value):
                        raise _FieldError("bad Content-Length")
                if len(value) > _CL_MAX_DIGITS:
                    raise _FieldError("bad Content-Length")
                if head.length is None:
                    head.length = int(value)
                elif head.length != int(value):  # pragma: no cover - llhttp refuses duplicates first
                    raise _FieldError("conflicting Content-Length headers")
            elif name == b"transfer-encoding":
                if head.chunked:
                    raise _FieldError("multiple Transfer-Encoding headers")
                value = value.lower()
                if value != b"chunked":
                    raise _FieldError("Only Transfer-Encoding: chunked is supported")
                head.chunked = True
            else:
                _special(head, name, value)
        out.append((name, value))
    return head


def _special(head: _Head, name: bytes, value: bytes) -> None:
    """Note a ``Host``, ``Connection``, ``Expect`` or ``Upgrade`` field (none of them can be bad)."""
    if name == b"host":
        head.hosts += 1
    elif name == b"connection":
        if b"close" in value.lower() and b"close" in _tokens(value):
            head.close = True
    elif name == b"expect":
        if b"100-continue" in _tokens(value):
            head.expect_100 = True
    elif _tokens(value):  # upgrade
        head.upgrade = True


_SPECIAL: Final = frozenset(
    [b"content-length", b"transfer-encoding", b"host", b"connection", b"expect", b"upgrade"]
)
# A field line as llhttp accepts it: a token name, then the value (HTAB, SP, VCHAR, obs-text) after
# any leading SP / HTAB, which llhttp drops (``_normalize`` drops the trailing ones).
_FIELD_LINE_RE: Final = re.compile(rb"(" + _TOKEN + rb"):[ \t]*([\t\x20-\x7e\x80-\xff]*)")
# Field lines already split: the line -> its normalized ``(name, value)`` pair (shared: tuples are
# immutable). A peer sends most lines again and again (``Host``, ``User-Agent``, ``Content-Type``...).
# Bounded in count and line length; emptied when full, so that one-off lines (``Date``, request ids)
# cannot keep the common ones out for long.
_FIELD_LINES: dict[bytes, tuple[bytes, bytes]] = {}
_FIELD_LINES_MAX: Final = 2048
_FIELD_LINE_CACHED_MAX: Final = 256
# The longest Content-Length the split here takes: far below llhttp's overflow (2**64 - 1).
_CL_PLAIN_DIGITS: Final = 18


def _fields_in(parser: _FieldParser, block: bytes) -> _Head:
    """The fields of ``block`` (``name: value`` lines, each ending in CRLF), normalized.

    A plain block is split here, a line at a time: a line seen before is looked up, any other is
    matched with ``_FIELD_LINE_RE`` (which also refuses bare CR or LF, NUL and other control
    bytes); a ``Content-Length`` must be short digits and come once, a ``Transfer-Encoding`` must be
    ``chunked`` and come once. llhttp gives exactly these pairs for such a block (property-tested
    in tests/test_codec_fields_in.py). A block with any other line goes to llhttp and
    ``_normalize``, which accept or refuse it, naming what is wrong.
    """
    lines = block.split(b"\r\n")
    if lines.pop():  # the block does not end with CRLF
        return _normalize(parser.parse(block))
    head = _Head()
    out = head.headers
    known = _FIELD_LINES
    for line in lines:
        pair = known.get(line)
        if pair is None:
            match = _FIELD_LINE_RE.fullmatch(line)
            if match is None:
                return _normalize(parser.parse(block))
            raw, value = match.groups()
            pair = (raw.lower(), value.rstrip(b" \t"))
            if len(line) <= _FIELD_LINE_CACHED_MAX:
                _remember(known, line, pair, _FIELD_LINES_MAX)
        name = pair[0]
        if name in _SPECIAL:
            value = pair[1]
            if name == b"host":  # ``_special``'s most common case, inline
                head.hosts += 1
            elif name == b"content-length":
                if head.length is not None or not value.isdigit() or len(value) > _CL_PLAIN_DIGITS:
                    return _normalize(parser.parse(block))
                head.length = int(value)
            elif name == b"transfer-encoding":
                if head.chunked or value.lower() != b"chunked":
                    return _normalize(parser.parse(block))
                pair = (name, b"chunked")
                head.chunked = True
            elif (
                name != b"connection" or value.lower().find(b"close") != -1
            ):  # else ``_special`` does nothing
                _special(head, name, value)
        out.append(pair)
    return head


def _fields_out(headers: HeaderList) -> bytes:
    """Serialise fields (with the blank line); a field that would break the framing is refused.

    Each field is looked up among the lines of fields already found valid (``_fields_noted``): when
    every field is valid, the block is their join and no byte needs a look. Anything else (a field
    that is not valid, or not a pair of ``bytes``) sends the whole block to ``_fields_out_checked``,
    the checks without the cache, so that its verdict, error and message are theirs. A cached line
    is only ever made from a field that passed the exact check, so the cache can never let an
    invalid field out; it changes no output (a line is the same bytes however it was found).
    """
    noted = _fields_noted(headers)
    return noted[0] if noted is not None else _fields_out_checked(headers)


def _fields_noted(headers: HeaderList) -> tuple[bytes, HeaderList] | None:
    """The block of ``headers`` (with the blank line) and, in order, its fields that the writers
    look at (``_WRITER_NAMES``, in any case); ``None`` unless every field is a valid pair of
    ``bytes``. A field's line comes from ``_OUT_LINES`` or ``_OUT_NOTED_LINES`` (the writers' fields)
    when it was found valid before, else from ``_out_line``, which checks it alone, exactly."""
    lines = _OUT_LINES
    noted_lines = _OUT_NOTED_LINES
    parts: list[bytes] = []
    append = parts.append
    noted: HeaderList = []
    try:
        for nv in headers:
            line = lines.get(nv)  # type: ignore[call-overload]
            if line is None:
                line = noted_lines.get(nv)  # type: ignore[call-overload]
                if line is None:
                    line = _out_line(nv)
                    if line is None:
                        return None
                    if nv[0].lower() in _WRITER_NAMES:
                        noted.append(nv)
                else:
                    noted.append(nv)
            append(line)
    except TypeError:  # an unhashable field (a list, a bytearray): not for the cache
        return None
    append(_CRLF)
    return b"".join(parts), noted


def _response_fields_noted(headers: HeaderList) -> tuple[bytes, HeaderList] | None:
    """``_fields_noted(headers)`` for a response, remembered by the fields' values: an upstream's
    responses repeat theirs, and the proxy passes them on as they came (plus ``Via`` and the
    length). The result depends on the values alone; only blocks of ``_OUT_BLOCK_CACHED_MAX`` bytes
    at most are remembered, so no key is larger. A request's fields are not looked up so: the proxy
    adds a new ``l5d-reqid`` to each."""
    try:
        key = tuple(headers)
        known = _OUT_BLOCKS.get(key)
    except TypeError:  # an unhashable field (a list, a bytearray): not for the cache
        return None
    if known is None:
        known = _fields_noted(headers)
        if known is not None and len(known[0]) <= _OUT_BLOCK_CACHED_MAX:
            _remember(_OUT_BLOCKS, key, known, _OUT_BLOCKS_MAX)
    return known


def _request_fields_noted(headers: HeaderList) -> tuple[bytes, HeaderList] | None:
    """``_fields_noted(headers)`` for a request. When the last fields are ones whose values are new
    in every message (``_ONE_OFF_NAMES``: the ``l5d-reqid`` and trace headers the proxy adds) and
    those values are plain letters and digits (or base64, but for the last), the block of the
    fields before them is remembered by their values (as ``_response_fields_noted`` remembers a
    response's) and the one-off lines are added to it; any other request, or a value that needs the
    exact check, takes ``_fields_noted``."""
    try:
        last = headers[-1]
        if type(last) is not tuple or len(last) != 2 or last[0] not in _ONE_OFF_NAMES:
            return _fields_noted(headers)
        value = last[1]
        if type(last[0]) is not bytes or type(value) is not bytes or not value.isalnum():
            return _fields_noted(headers)
        cut = len(headers) - 1
        while cut:  # the one-offs before the last (the trace headers before l5d-reqid)
            field = headers[cut - 1]
            if type(field) is not tuple or len(field) != 2 or field[0] not in _ONE_OFF_NAMES:
                break
            value = field[1]
            if type(field[0]) is not bytes or type(value) is not bytes:
                return _fields_noted(headers)
            if not value.isalnum() and not value.translate(_BASE64_SIGNS_TO_A).isalnum():
                return _fields_noted(headers)
            cut -= 1
        key = tuple(headers[:cut])
        known = _OUT_REQUEST_BLOCKS.get(key)
    except (TypeError, IndexError):  # unhashable fields, no fields: not for the cache
        return _fields_noted(headers)
    if known is None:
        whole = _fields_noted(list(key))
        if whole is None:
            return None  # a field before the one-offs is not valid: neither is the block
        known = (whole[0][:-2], whole[1])  # without the blank line
        if len(known[0]) <= _OUT_BLOCK_CACHED_MAX:
            _remember(_OUT_REQUEST_BLOCKS, key, known, _OUT_BLOCKS_MAX)
    # (No one-off name is one the writers look at: the noted fields are the block's.)
    n = len(headers)
    if cut == n - 1:
        return b"%s%s: %s\r\n\r\n" % (known[0], *last), known[1]
    if cut == n - 2:  # l5d-ctx-trace and l5d-reqid
        return b"%s%s: %s\r\n%s: %s\r\n\r\n" % (known[0], *headers[cut], *last), known[1]
    parts = [known[0]]
    for name, value in headers[cut:]:
        parts += (name, b": ", value, b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts), known[1]


def _out_line(nv: tuple[bytes, bytes]) -> bytes | None:
    """The line of one field not in the caches: checked exactly (a token name; a value without
    NUL or whitespace other than inner SP/HTAB) and remembered; ``None`` when the field is not a
    valid pair of ``bytes``."""
    if type(nv) is not tuple or len(nv) != 2:
        return None
    name, value = nv
    if type(name) is not bytes or type(value) is not bytes:
        return None
    # Byte scans first: a non-empty name of token bytes, and a value without NUL, HTAB, CR, LF, VT
    # or FF that neither starts nor ends with SP is valid (a value that changes per message, such
    # as a request id or a length, is seen here every time). Anything else gets the exact check.
    if not name or name.translate(None, _OUT_TCHARS):
        return None
    if (value.translate(None, _OUT_PLAIN) or value[:1] == b" " or value[-1:] == b" ") and (
        not _OUT_VALUE_RE.fullmatch(value)
    ):
        return None
    line = b"%s: %s\r\n" % nv
    if len(line) <= _OUT_LINE_CACHED_MAX and name not in _ONE_OFF_NAMES:
        cache = _OUT_NOTED_LINES if name.lower() in _WRITER_NAMES else _OUT_LINES
        _remember(cache, nv, line, _OUT_LINES_MAX)
    return line


# Output lines of fields found valid: ``(name, value)`` -> ``b"name: value\r\n"``; the fields the
# writers look at (``_WRITER_NAMES``) in ``_OUT_NOTED_LINES``, the others in ``_OUT_LINES``. The
# proxy writes most fields again and again (``Host``, ``User-Agent``, ``Via``, ``Server``,
# ``l5d-dst-*``...). Bounded in count and line length; emptied when full, so that one-off values
# (request ids, dates) cannot keep the common ones out for long.
_OUT_LINES: dict[tuple[bytes, bytes], bytes] = {}
_OUT_NOTED_LINES: dict[tuple[bytes, bytes], bytes] = {}
_OUT_LINES_MAX: Final = 1024
# Response field blocks made before: the fields (a tuple of pairs) -> ``_fields_noted``'s result,
# whose list of noted fields is only ever read. Bounded in count and block length; emptied when full.
_OUT_BLOCKS: dict[tuple[tuple[bytes, bytes], ...], tuple[bytes, HeaderList]] = {}
_OUT_BLOCKS_MAX: Final = 256
# Request field blocks made before, without their last fields when they are one-offs (see
# ``_request_fields_noted``) and without the blank line: the fields -> that block and the noted fields.
_OUT_REQUEST_BLOCKS: dict[tuple[tuple[bytes, bytes], ...], tuple[bytes, HeaderList]] = {}
_OUT_BLOCK_CACHED_MAX: Final = 1024
_OUT_LINE_CACHED_MAX: Final = 256
# Fields whose value is new in every message by design (the proxy makes a request id and a trace
# span id per request): never cached, so that they do not fill the map and empty it every thousand
# requests.
_ONE_OFF_NAMES: Final = frozenset(
    [b"l5d-reqid", b"l5d-ctx-trace", b"x-b3-traceid", b"x-b3-parentspanid", b"x-b3-spanid"]
)
# Maps base64's signs to a letter: a one-off value that is alphanumeric after it is plain base64.
_BASE64_SIGNS_TO_A: Final = bytes.maketrans(b"+/=", b"AAA")
# The field names (lowercased) whose values ``send_request`` and ``send_response`` act on.
_WRITER_NAMES: Final = frozenset(
    [b"host", b"content-length", b"transfer-encoding", b"connection", b"upgrade"]
)
# Request lines written before: ``(method, target)`` -> ``b"METHOD target HTTP/1.1\r\n"`` (both
# checked). Bounded in count and length; emptied when full.
_OUT_REQUEST_LINES: dict[tuple[bytes, bytes], bytes] = {}
_OUT_REQUEST_LINES_MAX: Final = 1024
_OUT_REQUEST_LINE_CACHED_MAX: Final = 256


def _fields_out_checked(headers: HeaderList) -> bytes:
    """``_fields_out`` without the cache: every field checked.

    The block is checked whole, with byte scans that together are a sufficient condition for every
    field being valid (a token name; a value without NUL or whitespace other than inner SP/HTAB):
    one CRLF per line and no NUL, HTAB, VT or FF anywhere, no ``":  "`` (leading whitespace) or
    ``" \r\n"`` (trailing whitespace), names of token bytes only.  A block that fails a scan (an
    empty value or a HTAB does) is checked field by field, exactly.
    """
    block = b"".join([b"%s: %s\r\n" % nv for nv in headers])
    names = [n for n, _ in headers]
    if (
        block.translate(None, _OUT_PLAIN) != _CRLF * len(headers)
        or block.find(b":  ") != -1
        or block.find(b" \r\n") != -1
        or b"".join(names).translate(None, _OUT_TCHARS)
        or b"" in names
    ):
        for name, value in headers:
            if not _TOKEN_RE.fullmatch(name) or not _OUT_VALUE_RE.fullmatch(value):
                raise LocalProtocolError(f"Illegal header {name!r}: {value!r}")
    return block + b"\r\n"


class _Side:
    """Receive-side framing shared by both roles (the body readers and the end of a message)."""

    __slots__ = (
        "_buf",
        "_eof",
        "_their",
        "_our",
        "_fields",
        "_framing",
        "_remaining",
        "_chunk_crlf",
        "_in_trailer",
        "_keep_alive",
        "_proposal",
        "_max_line",
        "_prefix",
        "_status",
        "_length",
        "_w_framing",
        "_w_remaining",
    )

    def __init__(self, max_line: int, prefix: str, status: int | None) -> None:
        self._buf = bytearray()
        self._eof = False
        self._fields = _FieldParser()
        self._max_line = max_line
        self._prefix = prefix
        self._status = status  # the status of every ProtocolError (None: the error's own)
        self._their = _T_HEAD
        self._our = _O_IDLE
        self._framing = _F_LENGTH
        self._remaining = 0
        self._chunk_crlf = b""
        self._in_trailer = False
        self._keep_alive = True
        self._proposal = 0
        self._length = 0  # the declared Content-Length of the body being read
        self._w_framing = _F_LENGTH
        self._w_remaining = 0

    def _fail(self, message: str, status: int = 400) -> ProtocolError:
        self._their = _T_ERROR
        return ProtocolError(f"{self._prefix}{message}", self._status or status)

    def receive_data(self, data: bytes) -> None:
        if data:
            if self._eof:
                raise ProtocolError("received close, then received more data?", self._status or 400)
            self._buf += data
        else:
            self._eof = True

    # -- body -------------------------------------------------------------------------------------

    def _start_body(self, framing: int, length: int) -> None:
        self._their = _T_BODY
        self._framing = framing
        self._remaining = length
        self._chunk_crlf = b""
        self._in_trailer = False

    def _need_data(self) -> Event:
        buf = self._buf
        if not buf and self._eof:
            if self._framing == _F_LENGTH:
                raise self._fail(
                    "peer closed connection without sending complete message body "
                    f"(received {self._length - self._remaining} bytes, expected {self._length})"
                )
            if self._framing == _F_CHUNKED:
                raise self._fail(
                    "peer closed connection without sending complete message body: incomplete chunked read"
                )
            self._their = _T_DONE
            return self._end()
        if len(buf) > self._max_line:
            raise self._fail("Receive buffer too long", 431)
        if self._eof:
            raise self._fail("peer unexpectedly closed connection")
        return NEED_DATA

    def _read_body(self) -> Event:
        buf = self._buf
        framing = self._framing
        if framing == _F_LENGTH:
            remaining = self._remaining
            if remaining == 0:
                return self._end()
            if not buf:
                return self._need_data()
            if len(buf) <= remaining:
                data = bytes(buf)
                buf.clear()
            else:
                data = bytes(buf[:remaining])
                del buf[:remaining]
            self._remaining = remaining - len(data)
            return self._data(data)
        if framing == _F_EOF:
            if not buf:
                return self._need_data()
            data = bytes(buf)
            buf.clear()
            return self._data(data)
        return self._read_chunked()

    def _read_chunked(self) -> Event:
        buf = self._buf
        if self._in_trailer:
            return self._read_trailer()
        if self._chunk_crlf:
            expected = self._chunk_crlf
            got = bytes(buf[: len(expected)])
            if not got:
                return self._need_data()
            if got != expected[: len(got)]:
                raise self._fail(f"malformed chunk footer: {got!r} (expected {expected!r})")
            del buf[: len(got)]
            self._chunk_crlf = expected[len(got) :]
            if self._chunk_crlf:
                return self._need_data()
        if self._remaining == 0:
            end = buf.find(b"\r\n")
            if end == -1:
                return self._need_data()
            line = bytes(buf[: end + 2])
            match = _CHUNK_HEADER_RE.fullmatch(line)
            if match is None:
                raise self._fail(f"illegal chunk header: {line!r}")
            del buf[: end + 2]
            size = int(match[1], 16)
            if size == 0:
                self._in_trailer = True
                return self._read_trailer()
            self._remaining = size
        if not buf:
            return self._need_data()
        remaining = self._remaining
        if len(buf) <= remaining:
            data = bytes(buf)
            buf.clear()
        else:
            data = bytes(buf[:remaining])
            del buf[:remaining]
        self._remaining = remaining = remaining - len(data)
        if remaining == 0:
            self._chunk_crlf = b"\r\n"
        return self._data(data)

    def _read_trailer(self) -> Event:
        buf = self._buf
        if buf[:2] == b"\r\n":
            del buf[:2]
            return self._end()
        end = buf.find(b"\r\n\r\n")
        if end == -1:
            if buf[:1] == b"\n" or b"\n\n" in buf or b"\n\r\n" in buf:
                raise self._fail("bare LF in trailer section; lines must end with CRLF")
            return self._need_data()
        block = bytes(buf[: end + 2])
        del buf[: end + 4]
        block = self._trailer_block(block)
        try:
            head = _fields_in(self._fields, block)
        except _FieldError as exc:
            raise self._fail(str(exc)) from None
        return self._end(head.headers)

    def _trailer_block(self, block: bytes) -> bytes:
        return block

    def _data(self, data: bytes) -> Event:
        return Data(data)

    def _end(self, trailers: HeaderList | None = None) -> Event:
        self._their = _T_DONE
        return EndOfMessage(trailers) if trailers else END_OF_MESSAGE

    def _after_done(self) -> Event:
        """next_event once the peer's message is complete (h11's DONE / MUST_CLOSE / CLOSED)."""
        if self._their == _T_SWITCHED or (self._their == _T_DONE and self._proposal):
            return PAUSED
        if self._their == _T_ERROR:
            raise ProtocolError(
                f"{self._prefix}Can't receive data when peer state is ERROR", self._status or 400
            )
        buf = self._buf
        if buf:
            if self._their == _T_DONE and self._keep_alive:
                return PAUSED
            raise self._fail("Got data when expecting EOF")
        if self._eof:
            self._their = _T_CLOSED
            return ConnectionClosed()
        return NEED_DATA

    # -- sending ----------------------------------------------------------------------------------

    def _out_length(self, value: bytes, length: int | None) -> int:
        """An outgoing ``Content-Length`` field's value as an int, agreeing with ``length`` (the one
        already seen, if any); a malformed or conflicting one fails the send."""
        if type(value) is bytes and value.isdigit():
            v = value  # plain digits (the common case): the only value, well-formed
        else:
            values = {v.strip() for v in value.split(b",")}
            if len(values) != 1 or not _CONTENT_LENGTH_RE.fullmatch(v := values.pop()):
                self._our = _O_ERROR
                raise LocalProtocolError(f"bad Content-Length {value!r}")
        if length is not None and length != int(v):
            self._our = _O_ERROR
            raise LocalProtocolError("conflicting Content-Length headers")
        return int(v)

    def _send_state_error(self, what: str) -> LocalProtocolError:
        state = _O_NAMES[self._our]
        self._our = _O_ERROR
        return LocalProtocolError(f"can't send {what} when our state is {state}")

    def _start_writer(self, framing: int, length: int) -> None:
        self._our = _O_BODY
        self._w_framing = framing
        self._w_remaining = length

    def send_data(self, data: bytes) -> bytes:
        if self._our != _O_BODY:
            raise self._send_state_error("data")
        framing = self._w_framing
        if framing == _F_CHUNKED:
            if not data:
                return b""
            return b"%x\r\n%s\r\n" % (len(data), data)
        if framing == _F_LENGTH:
            self._w_remaining -= len(data)
            if self._w_remaining < 0:
                self._our = _O_ERROR
                raise LocalProtocolError("Too much data for declared Content-Length")
        return bytes(data)

    def send_end(self, trailers: HeaderList | None = None) -> bytes:
        if self._our != _O_BODY:
            raise self._send_state_error("the end of a message")
        framing = self._w_framing
        if framing == _F_CHUNKED:
            try:
                out = b"0\r\n" + _fields_out(trailers) if trailers else b"0\r\n\r\n"
            except LocalProtocolError:
                self._our = _O_ERROR
                raise
        elif framing == _F_LENGTH:
            if self._w_remaining != 0:
                self._our = _O_ERROR
                raise LocalProtocolError("Too little data for declared Content-Length")
            if trailers:
                self._our = _O_ERROR
                raise LocalProtocolError("Content-Length and trailers don't mix")
            out = b""
        else:
            if trailers:
                self._our = _O_ERROR
                raise LocalProtocolError("can't send trailers to HTTP/1.0 client")
            out = b""
        self._our = _O_DONE
        return out

    def send_failed(self) -> None:
        self._our = _O_ERROR

    @property
    def can_reuse(self) -> bool:
        return self._our == _O_DONE and self._their == _T_DONE and self._keep_alive and not self._proposal


class ServerCodec(_Side):
    """The server side of one HTTP/1.1 connection (parses requests, writes responses)."""

    __slots__ = ("limits", "http_version", "_method", "_waiting_100", "_max_event", "_their_version")

    def __init__(self, limits: CodecLimits | None = None) -> None:
        self.limits = limits = limits or CodecLimits()
        self._max_event = max(limits.max_initial_line + limits.max_headers + 4, limits.max_chunk_line)
        super().__init__(self._max_event, "malformed request: ", None)
        self.http_version: bytes | None = None
        self._method: bytes | None = None
        self._their_version: bytes | None = None
        self._waiting_100 = False

    # -- receiving -------------------------------------------------------------------------------

    @property
    def in_head(self) -> bool:
        """True while no complete request head has been parsed in this cycle."""
        return self._their == _T_HEAD

    @property
    def has_buffered_data(self) -> bool:
        return bool(self._buf)

    @property
    def request_complete(self) -> bool:
        return (self._their == _T_DONE and not self._proposal) or self._their == _T_CLOSED

    def next_event(self) -> Event:
        their = self._their
        if their == _T_BODY:
            if not self._remaining and self._framing == _F_LENGTH:
                # The end of a body framed by length (an empty request body, usually): ``_end``
                # inline, without ``_read_body``.
                self._their = _T_DONE
                self._waiting_100 = False
                return END_OF_MESSAGE
            return self._read_body()
        if their == _T_HEAD:
            if not self._buf:  # as ``_next_head`` answers an empty buffer, without its call
                return ConnectionClosed() if self._eof else NEED_DATA
            return self._next_head()
        return self._after_done()

    def _data(self, data: bytes) -> Event:
        self._waiting_100 = False
        return Data(data)

    def _end(self, trailers: HeaderList | None = None) -> Event:
        self._their = _T_DONE
        self._waiting_100 = False
        return EndOfMessage(trailers) if trailers else END_OF_MESSAGE

    def _trailer_block(self, block: bytes) -> bytes:
        check_raw(block, "trailer section", "trailer field")
        return block

    def _next_head(self) -> Event:
        buf = self._buf
        head = request_head(buf, self.limits, self._eof)
        if not isinstance(head, bytes):
            return head  # NEED_DATA or ConnectionClosed
        del buf[: len(head) + 2]
        known = _REQUEST_HEADS.get(head)
        if known is not None:
            return self._accept(known[0], known[1], list(known[1].headers))
        line_end = head.find(b"\r\n")
        self._their = _T_ERROR  # until the head is accepted
        line = head[:line_end]
        request_line = _REQUEST_LINES.get(line)
        if request_line is None:
            match = _REQUEST_LINE_RE.fullmatch(line)
            if match is None:
                raise ProtocolError(f"malformed request: illegal request line: {line!r}")
            request_line = match.groups()
            if line_end <= _REQUEST_LINE_CACHED_MAX:
                _remember(_REQUEST_LINES, line, request_line, _REQUEST_LINES_MAX)
        version = request_line[2]
        try:
            parsed = _fields_in(self._fields, head[line_end + 2 :])
        except _FieldError as exc:
            raise ProtocolError(f"malformed request: {exc}") from None
        if parsed.hosts != 1 and (parsed.hosts > 1 or version == b"1.1"):
            raise ProtocolError(
                "malformed request: "
                + ("Missing mandatory Host: header" if parsed.hosts == 0 else "Found multiple Host: headers")
            )
        if parsed.chunked and parsed.length is not None:
            raise ProtocolError("request has both Content-Length and Transfer-Encoding; send only one")
        if len(head) <= _HEAD_CACHED_MAX:
            _remember(_REQUEST_HEADS, head, (request_line, parsed.copy()), _HEADS_MAX)
        return self._accept(request_line, parsed, parsed.headers)

    def _accept(self, request_line: tuple[bytes, ...], parsed: _Head, headers: HeaderList) -> RequestHead:
        """The event for an accepted request head, and the state it puts the codec in."""
        method, target, version = request_line
        self.http_version = self._their_version = version
        self._method = method
        if parsed.close or version < b"1.1":
            self._keep_alive = False
        if method == b"CONNECT":
            self._proposal |= _P_CONNECT
        if parsed.upgrade:
            self._proposal |= _P_UPGRADE
        self._waiting_100 = parsed.expect_100 and version >= b"1.1"
        if parsed.chunked:
            self._start_body(_F_CHUNKED, 0)
        else:
            self._length = parsed.length or 0
            self._start_body(_F_LENGTH, self._length)
        self._our = _O_IDLE
        return RequestHead(method, target, headers, version)

    # -- sending ---------------------------------------------------------------------------------

    @property
    def they_are_waiting_for_100_continue(self) -> bool:
        return self._waiting_100

    def send_informational(self, status: int, headers: HeaderList) -> bytes:
        if self._our != _O_IDLE or self._method is None:
            raise self._send_state_error("an informational response")
        if not 100 <= status < 200:
            self._our = _O_ERROR
            raise LocalProtocolError(
                f"InformationalResponse status_code should be in range [100, 200), not {status}"
            )
        if status == 101 and not self._proposal & _P_UPGRADE:
            self._our = _O_ERROR
            raise LocalProtocolError("Received server _SWITCH_UPGRADE event without a pending proposal")
        try:
            fields = _fields_out(headers)
        except LocalProtocolError:
            self._our = _O_ERROR
            raise
        self._waiting_100 = False
        if status == 101:
            self._our = _O_SWITCHED
            if self._their == _T_DONE:
                self._their = _T_SWITCHED
        return b"HTTP/1.1 %d \r\n%s" % (status, fields)

    def send_response(self, status: int, reason: bytes, headers: HeaderList) -> bytes:
        if self._our != _O_IDLE:
            raise self._send_state_error("a response")
        if not 200 <= status < 1000:
            self._our = _O_ERROR
            raise LocalProtocolError(f"Response status_code should be in range [200, 1000), not {status}")
        method = self._method
        length: int | None = None
        chunked = False
        conn_tokens: list[bytes] | None = None
        # With every field valid, only the fields looked at below need the loop (the others do
        # nothing in it); their block is already made.
        noted = _response_fields_noted(headers)
        for name, value in headers if noted is None else noted[1]:
            lname = name.lower()
            if lname == b"content-length":
                if length is None and type(value) is bytes and value.isdigit():
                    length = int(value)  # ``_out_length``'s usual case, inline
                else:
                    length = self._out_length(value, length)
            elif lname == b"transfer-encoding":
                if chunked or value.lower() != b"chunked":
                    self._our = _O_ERROR
                    raise LocalProtocolError("Only Transfer-Encoding: chunked is supported")
                chunked = True
            elif lname == b"connection":
                conn_tokens = (conn_tokens or []) + _tokens(value)
        # Header clean-up as h11 does it: the framing chosen as if a HEAD were a GET.
        out = headers
        need_close = False
        if chunked or (
            length is None and status not in (204, 304) and not (method == b"CONNECT" and status < 300)
        ):
            out = [(n, v) for n, v in out if n.lower() not in (b"content-length", b"transfer-encoding")]
            length = None
            version = self._their_version
            if version is None or version < b"1.1":
                chunked = False
                if method != b"HEAD":
                    need_close = True
            else:
                out.append((b"Transfer-Encoding", b"chunked"))
                chunked = True
        keep_alive = self._keep_alive and not need_close and not (conn_tokens and b"close" in conn_tokens)
        if not self._keep_alive or need_close:
            tokens = set(conn_tokens or ())
            tokens.discard(b"keep-alive")
            tokens.add(b"close")
            out = [(n, v) for n, v in out if n.lower() != b"connection"]
            out.extend((b"Connection", t) for t in sorted(tokens))
        try:
            fields = noted[0] if noted is not None and out is headers else _fields_out(out)
        except LocalProtocolError:
            self._our = _O_ERROR
            raise
        self._keep_alive = keep_alive
        self._waiting_100 = False
        if method == b"CONNECT" and 200 <= status < 300 and self._proposal & _P_CONNECT:
            self._our = _O_SWITCHED
            if self._their == _T_DONE:
                self._their = _T_SWITCHED
        else:
            self._proposal = 0
            if method == b"HEAD" or status in (204, 304) or (method == b"CONNECT" and status < 300):
                self._start_writer(_F_LENGTH, 0)
            elif chunked:
                self._start_writer(_F_CHUNKED, 0)
            elif length is not None:
                self._start_writer(_F_LENGTH, length)
            else:
                self._start_writer(_F_EOF, 0)
        return b"HTTP/1.1 %d %s\r\n%s" % (status, reason, fields)

    @property
    def response_chunked(self) -> bool:
        """True when the response body being sent uses chunked framing (so trailers can be sent)."""
        return self._our in (_O_BODY, _O_DONE) and self._w_framing == _F_CHUNKED

    # -- cycle -----------------------------------------------------------------------------------

    def start_next_cycle(self) -> None:
        """Begin the next request; pipelined bytes already buffered are checked afresh."""
        # ``can_reuse``, inline.
        assert self._our == _O_DONE and self._their == _T_DONE and self._keep_alive and not self._proposal
        self._their = _T_HEAD
        self._our = _O_IDLE
        self._method = None
        self.http_version = self._their_version = None
        self._waiting_100 = False
        self._proposal = 0
        self._keep_alive = True

    def switched_protocol_data(self) -> bytes:
        """After a ``101`` was sent: the bytes the client sent beyond the request (tunnel data)."""
        return bytes(self._buf)


class ClientCodec(_Side):
    """The client side of one HTTP/1.1 connection to an upstream (reused across cycles)."""

    __slots__ = ("_max_status_line", "_max_fields_bytes", "_max_fields", "_max_partial", "_heads", "_method")

    def __init__(self, limits: CodecLimits | None = None) -> None:
        # Chunk lines and trailers are bounded as before this codec took limits; the head by ``limits``
        # (the router's ``maxInitialLineKB`` and ``maxHeadersKB``, and the field count).
        super().__init__(_CLIENT_MAX_LINE, "malformed response: ", 502)
        limits = limits or CodecLimits()
        self._max_status_line = limits.max_initial_line
        self._max_fields_bytes = limits.max_headers
        self._max_fields = limits.max_header_count
        # An incomplete head no longer than this cannot be past either size limit yet.
        self._max_partial = min(limits.max_initial_line, limits.max_headers)
        # The remembered heads this codec looks up: the shared map when its limits are no lower
        # than what every head in it obeys (at most ``_HEAD_CACHED_MAX`` bytes and
        # ``_HEAD_CACHED_FIELDS`` fields), else a map of its own (a head it accepted itself), so
        # that a head remembered under looser limits is never taken without their check.
        self._heads = (
            _RESPONSE_HEADS
            if min(limits.max_initial_line, limits.max_headers) >= _HEAD_CACHED_MAX
            and limits.max_header_count >= _HEAD_CACHED_FIELDS
            else {}
        )
        self._their = _T_IDLE
        self._method: bytes | None = None

    # -- sending ---------------------------------------------------------------------------------

    def send_request(self, method: bytes, target: bytes, headers: HeaderList) -> bytes:
        if self._our != _O_IDLE:
            raise self._send_state_error("a request")
        key = (method, target)
        start = _OUT_REQUEST_LINES.get(key) if type(method) is bytes and type(target) is bytes else None
        if start is None:
            if not _TOKEN_RE.fullmatch(method):
                self._our = _O_ERROR
                raise LocalProtocolError(f"Illegal method {method!r}")
            if not _TARGET_RE.fullmatch(target):
                self._our = _O_ERROR
                raise LocalProtocolError(f"Illegal target characters in {target!r}")
            start = b"%s %s HTTP/1.1\r\n" % key
            if type(method) is bytes and type(target) is bytes and len(start) <= _OUT_REQUEST_LINE_CACHED_MAX:
                _remember(_OUT_REQUEST_LINES, key, start, _OUT_REQUEST_LINES_MAX)
        length: int | None = None
        chunked = False
        hosts = 0
        # With every field valid, only the fields looked at below need the loop (the others do
        # nothing in it); their block is already made.
        noted = _request_fields_noted(headers)
        for name, value in headers if noted is None else noted[1]:
            lname = name.lower()
            if lname == b"host":
                hosts += 1
            elif lname == b"content-length":
                if length is None and type(value) is bytes and value.isdigit():
                    length = int(value)  # ``_out_length``'s usual case, inline
                else:
                    length = self._out_length(value, length)
            elif lname == b"transfer-encoding":
                if chunked or value.lower() != b"chunked":
                    self._our = _O_ERROR
                    raise LocalProtocolError("Only Transfer-Encoding: chunked is supported")
                chunked = True
            elif lname == b"connection":
                if b"close" in value.lower() and b"close" in _tokens(value):
                    self._keep_alive = False
            elif lname == b"upgrade" and _tokens(value):
                self._proposal |= _P_UPGRADE
        if hosts != 1:
            self._our = _O_ERROR
            raise LocalProtocolError(
                "Missing mandatory Host: header" if hosts == 0 else "Found multiple Host: headers"
            )
        try:
            fields = noted[0] if noted is not None else _fields_out_checked(headers)
        except LocalProtocolError:
            self._our = _O_ERROR
            raise
        if method == b"CONNECT":
            self._proposal |= _P_CONNECT
        self._method = method
        if chunked:
            self._start_writer(_F_CHUNKED, 0)
        else:
            self._start_writer(_F_LENGTH, length or 0)
        if self._their == _T_IDLE:
            self._their = _T_HEAD
        return start + fields

    # -- receiving -------------------------------------------------------------------------------

    def next_event(self) -> Event:
        their = self._their
        if their == _T_BODY:
            return self._read_body()
        if their == _T_HEAD:
            if not self._buf and not self._eof:
                return NEED_DATA  # as ``_next_head`` answers an empty buffer, without its call
            return self._next_head()
        if their == _T_IDLE:
            if self._buf:
                raise self._fail("a response arrived before any request was sent")
            return ConnectionClosed() if self._eof else NEED_DATA
        return self._after_done()

    def whole_body(self) -> bytes | None:
        """The rest of a response body framed by ``Content-Length`` when all of it is in the buffer
        (``b""`` when nothing is left), taken and the message ended: what the ``Data`` and
        ``EndOfMessage`` events of ``next_event`` would give, in one call. ``None`` (nothing taken)
        when the body is not framed by length, not all there yet, or the head is not read yet."""
        if self._their != _T_BODY or self._framing != _F_LENGTH:
            return None
        remaining = self._remaining
        buf = self._buf
        size = len(buf)
        if size < remaining:
            return None
        if size == remaining:
            data = bytes(buf)
            buf.clear()
        elif remaining:
            data = bytes(buf[:remaining])
            del buf[:remaining]
        else:
            data = b""
        self._remaining = 0
        self._their = _T_DONE
        return data

    def _next_head(self) -> Event:
        buf = self._buf
        if not buf and not self._eof:
            return NEED_DATA  # as the search below answers an empty buffer
        if buf[:1] == b"\n" or buf[:2] == b"\r\n":
            raise self._fail("no response line received")
        # The usual head has CRLF line ends only: then it ends at the first CRLFCRLF (a byte search,
        # cheaper than the regular expression), since any earlier blank line would hold a bare LF.
        end = buf.find(b"\r\n\r\n") + 4
        if end != 3:
            head = bytes(buf[:end])
            # A remembered head passed this codec's limits when it was remembered (see ``_heads``).
            heads = self._heads
            known = heads.get(head)
            if known is not None:
                del buf[:end]
                parsed = known[3]
                return self._response_event(
                    known[0], known[1], known[2], parsed, list(parsed.headers), known[4]
                )
            if head.count(b"\n") == head.count(b"\r\n"):
                del buf[:end]
                version, status, reason, parsed = self._parse_head(head)
                memo = None
                if end <= _HEAD_CACHED_MAX and len(parsed.headers) <= _HEAD_CACHED_FIELDS:
                    memo = HeadMemo()
                    _remember(heads, head, (version, status, reason, parsed.copy(), memo), _HEADS_MAX)
                return self._response_event(version, status, reason, parsed, parsed.headers, memo)
        match = _BLANK_LINE_RE.search(buf)
        if match is None:
            if buf and buf[0] < 0x21:
                raise self._fail("illegal request line")
            if not _STATUS_PREFIX.startswith(bytes(buf[:5])):
                # Not the start of a status line (an SSH banner, an SMTP greeting, a database's
                # handshake): refused now, not once a blank line comes (which may be never).
                raise self._fail(
                    f"illegal status line: the response starts with {bytes(buf[:20])!r}, not HTTP/ "
                    "(is the endpoint an HTTP/1.1 server?)"
                )
            if len(buf) > self._max_partial:
                self._check_partial_head(buf)
            if self._eof:
                if not buf:
                    raise self._fail(
                        "can't handle event type ConnectionClosed when role=SERVER and state=SEND_RESPONSE"
                    )
                raise self._fail("peer unexpectedly closed connection")
            return NEED_DATA
        end = match.end()
        head = bytes(buf[:end])
        del buf[:end]
        if head.count(b"\n") != head.count(b"\r\n"):
            # Lines ended by a bare LF (accepted in responses, as h11 does): make them CRLF.
            head = b"\r\n".join(line[:-1] if line.endswith(b"\r") else line for line in head.split(b"\n"))
        version, status, reason, parsed = self._parse_head(head)
        return self._response_event(version, status, reason, parsed, parsed.headers, None)

    def _check_partial_head(self, buf: bytearray) -> None:
        """Refuse an incomplete head already past ``maxInitialLineKB`` or ``maxHeadersKB`` (lines
        may end in a bare LF here), so that a head that never ends is not buffered."""
        line_end = buf.find(b"\n")
        line = len(buf) if line_end == -1 else line_end - (buf[line_end - 1 : line_end] == b"\r")
        if line > self._max_status_line:
            raise self._fail(self._status_line_too_long())
        if line_end != -1 and len(buf) - line_end - 1 > self._max_fields_bytes:
            raise self._fail(self._fields_too_long(bytes(buf)))

    def _status_line_too_long(self) -> str:
        return f"status line exceeds {self._max_status_line} bytes (maxInitialLineKB)"

    def _fields_too_long(self, head: bytes) -> str:
        return f"response headers exceed {self._max_fields_bytes} bytes (maxHeadersKB)" + via_loop_hint(head)

    def _parse_head(self, head: bytes) -> tuple[bytes, int, bytes | None, _Head]:
        """Version, status, reason and fields of a complete response head (CRLF line ends, the
        blank line included): what depends on its bytes alone, within this codec's limits."""
        line_end = head.find(b"\r\n")
        if line_end > self._max_status_line:
            raise self._fail(self._status_line_too_long())
        line = head[:line_end]
        block = head[line_end + 2 : -2]
        if len(block) > self._max_fields_bytes:
            raise self._fail(self._fields_too_long(block))
        if block[:1] in (b" ", b"\t"):
            raise self._fail("continuation line at start of headers")
        if block.find(b"\r\n ") != -1 or block.find(b"\r\n\t") != -1:
            block = _OBS_FOLD_RE.sub(b" ", block)
        status_line = _STATUS_LINES.get(line)
        if status_line is None:
            match = _STATUS_LINE_RE.fullmatch(line)
            if match is None:
                raise self._fail(f"illegal status line: {line!r}")
            version, status_s, reason = match.groups()
            status_line = (version, int(status_s), reason)
            if len(_STATUS_LINES) < _STATUS_LINES_MAX:
                _STATUS_LINES[line] = status_line
        try:
            parsed = _fields_in(self._fields, block)
        except _FieldError as exc:
            raise self._fail(str(exc)) from None
        if len(parsed.headers) > self._max_fields:
            raise self._fail(f"response has more than {self._max_fields} header fields")
        return (*status_line, parsed)

    def _response_event(
        self,
        version: bytes,
        status: int,
        reason: bytes | None,
        parsed: _Head,
        headers: HeaderList,
        memo: HeadMemo | None,
    ) -> Event:
        """The event for a parsed response head, and the state it puts the codec in."""
        if status < 200:
            if status < 100:
                raise self._fail(
                    f"InformationalResponse status_code should be in range [100, 200), not {status}"
                )
            if status == 101:
                if not self._proposal & _P_UPGRADE:
                    raise self._fail(UNASKED_101)
                self._their = _T_SWITCHED
                self._our = _O_SWITCHED
            return Informational(status, headers)
        method = self._method
        if parsed.close or version < b"1.1":
            self._keep_alive = False
        if parsed.chunked and parsed.length is not None:
            # RFC 9112 §6.3: Transfer-Encoding overrides Content-Length; never pass both on. The
            # message "ought to be handled as an error": relayed by its chunks, but the connection is
            # not reused (a hop that believed the Content-Length would frame what follows elsewhere).
            headers = [(n, v) for n, v in headers if n != b"content-length"]
            self._keep_alive = False
        if method == b"CONNECT" and status < 300 and self._proposal & _P_CONNECT:
            self._their = _T_SWITCHED
            self._our = _O_SWITCHED
        else:
            self._proposal = 0
            if status in (204, 304) or method == b"HEAD" or (method == b"CONNECT" and status < 300):
                self._length = 0
                self._start_body(_F_LENGTH, 0)
            elif parsed.chunked:
                self._start_body(_F_CHUNKED, 0)
            elif parsed.length is not None:
                self._length = parsed.length
                self._start_body(_F_LENGTH, parsed.length)
            else:
                # Framed by the close: the connection ends with the body and cannot be reused.
                self._keep_alive = False
                self._start_body(_F_EOF, 0)
        return ResponseHead(status, reason or b"", headers, version, memo)

    def _trailer_block(self, block: bytes) -> bytes:
        if b"\r\n " in block or b"\r\n\t" in block:
            if block[:1] in (b" ", b"\t"):
                raise self._fail("continuation line at start of headers")
            block = _OBS_FOLD_RE.sub(b" ", block)
        return block

    # -- state -----------------------------------------------------------------------------------

    @property
    def request_sent(self) -> bool:
        return (self._our == _O_DONE and not self._proposal) or self._our == _O_SWITCHED

    @property
    def response_complete(self) -> bool:
        return self._their in (_T_DONE, _T_CLOSED)

    @property
    def switched(self) -> bool:
        return self._our == _O_SWITCHED

    def start_next_cycle(self) -> None:
        if not (  # ``can_reuse``, inline
            self._our == _O_DONE and self._their == _T_DONE and self._keep_alive and not self._proposal
        ):
            raise LocalProtocolError("not in a reusable state")
        self._their = _T_IDLE
        self._our = _O_IDLE
        self._method = None
        self._proposal = 0
        self._keep_alive = True

    def trailing_data(self) -> bytes:
        return bytes(self._buf)
