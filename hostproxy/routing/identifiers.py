"""Identifiers: how a request becomes a service name (``/svc/...``).

Theory of operation: an identifier is a pure function of a request's method, target, HTTP version and
headers. It answers :class:`Identified` (the service name, with the router's ``dstPrefix`` in front,
and for ``io.l5d.path`` with ``consume: true`` the rewritten target to forward) or
:class:`Unidentified` (the reasons, for the 400 / ``l5d-err`` answer). A router's identifiers are
tried in order by :class:`IdentifierChain`; the first success wins, and when all fail every reason is
kept.

Label formation follows Linkerd 1.x exactly:

* ``io.l5d.header.token`` (the HTTP default, on ``Host``): the header value **verbatim** as one label;
  not lowercased, any port kept (``Host: Web:8080`` gives ``/svc/Web:8080``). Absent or empty:
  ``"Host header is absent"``. Labels are the raw header bytes.
* ``io.l5d.methodAndHost``: HTTP/1.1 gives ``/svc/1.1/<METHOD>/<host lowercased>``; HTTP/1.0 gives
  ``/svc/1.0/<METHOD>`` and never looks at ``Host``. With ``httpUriInDst`` the target's path (without
  the query) is parsed as a dtab path and appended; a path that does not parse (a trailing ``/``, a
  character outside the label set) leaves the request unidentified.
* ``io.l5d.path``: the first ``segments`` segments of the target's path, each one label, verbatim (no
  percent-decoding); a target that does not start with ``/`` (``users/42``, ``*``) names nothing. Segments are split the Java way (trailing empty pieces dropped), so ``/a/b/``
  has two segments and ``//a`` has an empty first segment, which cannot be a label. With ``consume``
  the segments are removed from the forwarded target and the query is kept.
* ``io.l5d.header`` (default header ``l5d-name``): the header value parsed as a dtab path.
* ``io.l5d.static``: always the configured path.
* ``io.l5d.header.path`` (h2; default header ``:path``): the path of the header value (query and one
  trailing ``/`` removed) parsed as a dtab path; the first ``segments`` labels, or all of it.

For h2 requests the pseudo-headers ``:authority``, ``:path`` and ``:method`` are read from the request's
``authority``, ``target`` and ``method`` unless the header list carries them itself. For HTTP/1.1 a
repeated header gives its first value (Finagle's ``HeaderMap.get``); the h2 ``io.l5d.header.token``
uses the last value, as Linkerd's h2 router does.

Every identifier is a ``(kind, frozen config dataclass, factory)`` entry of :data:`HTTP_IDENTIFIERS` or
:data:`H2_IDENTIFIERS`, built by :func:`build_identifier` from a YAML mapping.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from dtab import Path
from dtab.errors import DtabSyntaxError

__all__ = [
    "DEFAULT_DST_PREFIX",
    "H2_IDENTIFIERS",
    "HTTP_IDENTIFIERS",
    "HeaderIdentifier",
    "HeaderPathIdentifier",
    "HeaderPathIdentifierConfig",
    "HeaderTokenIdentifier",
    "HeaderTokenIdentifierConfig",
    "HeaderValuePathIdentifierConfig",
    "Identified",
    "Identifier",
    "IdentifierChain",
    "IdentifierConfigError",
    "MethodAndHostIdentifier",
    "MethodAndHostIdentifierConfig",
    "PathIdentifier",
    "PathIdentifierConfig",
    "RequestLike",
    "StaticIdentifier",
    "StaticIdentifierConfig",
    "Unidentified",
    "build_identifier",
    "build_identifiers",
    "unknown_destination_message",
]

DEFAULT_DST_PREFIX = Path.of("svc")


class RequestLike(Protocol):
    """What identifiers read from a request.

    ``headers`` iterates ``(lowercase name bytes, value bytes)`` pairs. Optional attributes read with
    ``getattr``: ``http_version`` (``"1.1"``, ``"1.0"``, ``"2"``; str or bytes; default ``"1.1"``) and
    ``authority`` (h2 ``:authority``).
    """

    method: str
    target: str

    @property
    def headers(self) -> Iterable[tuple[bytes, bytes]]: ...


@dataclass(frozen=True, slots=True)
class Identified:
    """The request is named ``path``. ``target``, when set, replaces the forwarded request target."""

    path: Path
    target: str | None = None

    ok = True


@dataclass(frozen=True, slots=True)
class Unidentified:
    """No name: ``reasons`` in the order the identifiers were tried."""

    reasons: tuple[str, ...]

    ok = False

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)


Identification = Identified | Unidentified


class Identifier(Protocol):
    def identify(self, request: RequestLike) -> Identified | Unidentified: ...


def unknown_destination_message(request: RequestLike, result: Unidentified) -> str:
    """The ``l5d-err`` text for a request no identifier could name (Linkerd's ``UnknownDst``)."""
    return f'Unknown destination: Request("{request.method} {request.target}") / {result.reason}'


# -- request access ------------------------------------------------------------------------------


def _as_bytes(v: str | bytes) -> bytes:
    return v if isinstance(v, bytes) else v.encode("latin-1")


def _header_values(request: RequestLike, name: str) -> list[bytes]:
    key = name.lower().encode("latin-1")
    values = [v for (n, v) in request.headers if n == key]
    if values or not name.startswith(":"):
        return values
    # h2 pseudo-headers that the message model keeps as attributes.
    attr = {":authority": "authority", ":path": "target", ":method": "method"}.get(name.lower())
    if attr is None:
        return []
    v = getattr(request, attr, None)
    return [] if v is None else [_as_bytes(v)]


def _http_version(request: RequestLike) -> str:
    v = getattr(request, "http_version", "1.1")
    if isinstance(v, bytes):
        v = v.decode("latin-1")
    v = str(v)
    return v[5:] if v.upper().startswith("HTTP/") else v


def _split_target(target: str) -> tuple[str, str]:
    """``(path, query)`` where ``query`` keeps its ``?``."""
    i = target.find("?")
    return (target, "") if i < 0 else (target[:i], target[i:])


def _java_split_slash(s: str) -> list[str]:
    """``String.split("/")``: trailing empty pieces are dropped (so ``"/"`` gives ``[]``)."""
    parts = s.split("/")
    while parts and parts[-1] == "":
        parts.pop()
    return parts


def _syntax_reason(what: str, err: DtabSyntaxError) -> str:
    return f"{what} is not a valid path: {err.message} at '{_marked(err)}'"


def _marked(err: DtabSyntaxError) -> str:
    t, i = err.text, err.offset
    return t + "[]" if i >= len(t) else t[:i] + "[" + t[i] + "]" + t[i + 1 :]


# -- identifiers ---------------------------------------------------------------------------------

_NAME_CACHE_SIZE = 1024


@dataclass(frozen=True, slots=True)
class HeaderTokenIdentifier:
    """``io.l5d.header.token``: one header's value, verbatim, as one label."""

    dst_prefix: Path = DEFAULT_DST_PREFIX
    header: str = "Host"
    use_last: bool = False  # h2 uses the last of repeated values
    h2_message: bool = False  # h2 wording of the failure

    # Recent values and their names: a host's requests reuse one Path (its hash and text computed once).
    _names: dict[bytes, Identified] = field(default_factory=dict, init=False, compare=False, repr=False)
    # The header's name as stored in requests (lowercased bytes).
    _key: bytes = field(default=b"", init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_key", self.header.lower().encode("latin-1"))

    def identify(self, request: RequestLike) -> Identified | Unidentified:
        # The first (or last) value of the header, as _header_values would list them.
        key = self._key
        present = False
        value = b""
        for n, v in request.headers:
            if n == key:
                present = True
                value = v
                if not self.use_last:
                    break
        if not present and self.header.startswith(":"):
            values = _header_values(request, self.header)
            value = values[-1] if values else b""
        if not value:
            msg = f"missing header: '{self.header}'" if self.h2_message else f"{self.header} header is absent"
            return Unidentified((msg,))
        names = self._names
        found = names.get(value)
        if found is None:
            if len(names) >= _NAME_CACHE_SIZE:
                names.clear()
            found = names[value] = Identified(Path(self.dst_prefix.labels + (value,)))
        return found


@dataclass(frozen=True, slots=True)
class MethodAndHostIdentifier:
    """``io.l5d.methodAndHost``: ``/1.1/<METHOD>/<host>[/<uri path>]`` or ``/1.0/<METHOD>[/<uri path>]``."""

    dst_prefix: Path = DEFAULT_DST_PREFIX
    uri_in_dst: bool = False

    def identify(self, request: RequestLike) -> Identified | Unidentified:
        version = _http_version(request)
        method = _as_bytes(request.method)
        if version == "1.0":
            labels: tuple[bytes, ...] = (b"1.0", method)
        elif version == "1.1":
            hosts = _header_values(request, "host")
            host = hosts[0] if hosts else b""
            if not host:
                return Unidentified(("HTTP/1.1 request missing hostname",))
            labels = (b"1.1", method, host.lower())
        else:
            return Unidentified((f"Unknown HTTP version HTTP/{version}",))
        path = Path(self.dst_prefix.labels + labels)
        if self.uri_in_dst:
            uri_path, _ = _split_target(request.target)
            try:
                path = path + Path.read(uri_path)
            except DtabSyntaxError as e:
                return Unidentified((_syntax_reason(f"request path {uri_path!r}", e),))
        return Identified(path)


@dataclass(frozen=True, slots=True)
class PathIdentifier:
    """``io.l5d.path``: the first ``segments`` path segments; with ``consume``, removed from the target."""

    dst_prefix: Path = DEFAULT_DST_PREFIX
    segments: int = 1
    consume: bool = False

    def identify(self, request: RequestLike) -> Identified | Unidentified:
        path, query = _split_target(request.target)
        if path and path[0] != "/":
            # Splitting 'users/42' would drop 'users' as if it were the empty piece before a leading
            # '/', naming the request /svc/42: a name it did not ask for.
            return Unidentified(
                (f"request target {request.target!r} is not a path (it must start with '/')",)
            )
        pieces = _java_split_slash(path)[1:]
        if len(pieces) < self.segments:
            return Unidentified(("not enough segments in path",))
        taken = pieces[: self.segments]
        if any(p == "" for p in taken):
            return Unidentified((f"empty segment in path {path!r}",))
        name = Path(self.dst_prefix.labels + tuple(p.encode("utf-8") for p in taken))
        if not self.consume:
            return Identified(name)
        rest = _java_split_slash(path)[self.segments + 1 :]
        if not rest:
            new_target = "/"
        else:
            new_target = "/" + "/".join(rest) + ("/" if path.endswith("/") else "")
        return Identified(name, target=new_target + query)


@dataclass(frozen=True, slots=True)
class HeaderIdentifier:
    """``io.l5d.header``: the header value parsed as a dtab path (``l5d-name: /users/v2``)."""

    dst_prefix: Path = DEFAULT_DST_PREFIX
    header: str = "l5d-name"

    def identify(self, request: RequestLike) -> Identified | Unidentified:
        values = _header_values(request, self.header)
        value = values[0] if values else b""
        if not value:
            return Unidentified((f"{self.header} header is absent",))
        try:
            path = Path.read(value.decode("latin-1"))
        except DtabSyntaxError as e:
            return Unidentified((_syntax_reason(f"{self.header} header", e),))
        return Identified(self.dst_prefix + path)


@dataclass(frozen=True, slots=True)
class StaticIdentifier:
    """``io.l5d.static``: every request gets the same name."""

    dst_prefix: Path = DEFAULT_DST_PREFIX
    path: Path = Path.EMPTY

    def identify(self, request: RequestLike) -> Identified | Unidentified:
        return Identified(self.dst_prefix + self.path)


@dataclass(frozen=True, slots=True)
class HeaderPathIdentifier:
    """``io.l5d.header.path`` (h2): the first ``segments`` labels of a path-valued header (default ``:path``)."""

    dst_prefix: Path = DEFAULT_DST_PREFIX
    header: str = ":path"
    segments: int | None = None

    def __post_init__(self) -> None:
        if self.segments is not None and self.segments < 1:
            raise ValueError(f"segments must be >= 1, not {self.segments}")

    def identify(self, request: RequestLike) -> Identified | Unidentified:
        values = _header_values(request, self.header)
        raw = values[-1].decode("latin-1") if values else ""
        uri_path, _ = _split_target(raw)
        if uri_path.endswith("/"):
            uri_path = uri_path[:-1]
        path = Path.EMPTY
        if uri_path:
            try:
                path = Path.read(uri_path)
            except DtabSyntaxError as e:
                return Unidentified((_syntax_reason(f"{self.header} {uri_path!r}", e),))
        if self.segments is None:
            if not path:
                return Unidentified(("Missing destination path",))
            return Identified(self.dst_prefix + path)
        if len(path) < self.segments:
            return Unidentified((f"Path must have at least {self.segments} segment(s)",))
        return Identified(self.dst_prefix + path.take(self.segments))


@dataclass(frozen=True, slots=True)
class IdentifierChain:
    """Try each identifier in order; the first :class:`Identified` wins; else every reason."""

    identifiers: tuple[Identifier, ...]

    def __post_init__(self) -> None:
        if not self.identifiers:
            raise ValueError("an identifier chain needs at least one identifier")

    def identify(self, request: RequestLike) -> Identified | Unidentified:
        reasons: list[str] = []
        for ident in self.identifiers:
            r = ident.identify(request)
            if isinstance(r, Identified):
                return r
            reasons.extend(r.reasons)
        return Unidentified(tuple(reasons))


# -- configuration ------------------------------------------------------------------------------


class IdentifierConfigError(ValueError):
    """An identifier entry of the config is wrong; the message names the config path and the fix."""


def _check_keys(cfg: Mapping[str, Any], allowed: Iterable[str], where: str, kind: str) -> None:
    allowed = set(allowed) | {"kind"}
    for k in cfg:
        if k not in allowed:
            raise IdentifierConfigError(
                f"{where}.{k}: unknown key for identifier kind {kind}; supported keys: "
                + ", ".join(sorted(allowed))
            )


def _typed(cfg: Mapping[str, Any], key: str, typ: type, where: str, default: Any) -> Any:
    if key not in cfg or cfg[key] is None:
        return default
    v = cfg[key]
    if typ is int and (isinstance(v, bool) or not isinstance(v, int)):
        raise IdentifierConfigError(f"{where}.{key}: expected an integer, got {v!r}")
    if typ is bool and not isinstance(v, bool):
        raise IdentifierConfigError(f"{where}.{key}: expected true or false, got {v!r}")
    if typ is str and not isinstance(v, str):
        raise IdentifierConfigError(f"{where}.{key}: expected a string, got {v!r}")
    return v


def _path_key(cfg: Mapping[str, Any], key: str, where: str) -> Path:
    v = _typed(cfg, key, str, where, None)
    if v is None:
        raise IdentifierConfigError(f"{where}.{key}: required (a path such as /users)")
    try:
        return Path.read(v)
    except DtabSyntaxError as e:
        raise IdentifierConfigError(f"{where}.{key}: {e.message} at '{_marked(e)}'") from e


@dataclass(frozen=True, slots=True)
class HeaderTokenIdentifierConfig:
    header: str | None = None

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any], where: str) -> HeaderTokenIdentifierConfig:
        _check_keys(cfg, ("header",), where, "io.l5d.header.token")
        return cls(header=_typed(cfg, "header", str, where, None))


@dataclass(frozen=True, slots=True)
class MethodAndHostIdentifierConfig:
    httpUriInDst: bool = False  # noqa: N815 - the config key

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any], where: str) -> MethodAndHostIdentifierConfig:
        _check_keys(cfg, ("httpUriInDst",), where, "io.l5d.methodAndHost")
        return cls(httpUriInDst=_typed(cfg, "httpUriInDst", bool, where, False))


@dataclass(frozen=True, slots=True)
class PathIdentifierConfig:
    segments: int = 1
    consume: bool = False

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any], where: str) -> PathIdentifierConfig:
        _check_keys(cfg, ("segments", "consume"), where, "io.l5d.path")
        segments = _typed(cfg, "segments", int, where, 1)
        if segments < 1:
            raise IdentifierConfigError(f"{where}.segments: must be >= 1, got {segments}")
        return cls(segments=segments, consume=_typed(cfg, "consume", bool, where, False))


@dataclass(frozen=True, slots=True)
class HeaderValuePathIdentifierConfig:
    header: str = "l5d-name"

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any], where: str) -> HeaderValuePathIdentifierConfig:
        _check_keys(cfg, ("header",), where, "io.l5d.header")
        return cls(header=_typed(cfg, "header", str, where, "l5d-name"))


@dataclass(frozen=True, slots=True)
class StaticIdentifierConfig:
    path: Path = field(default=Path.EMPTY)

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any], where: str) -> StaticIdentifierConfig:
        _check_keys(cfg, ("path",), where, "io.l5d.static")
        return cls(path=_path_key(cfg, "path", where))


@dataclass(frozen=True, slots=True)
class HeaderPathIdentifierConfig:
    header: str = ":path"
    segments: int | None = None

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any], where: str) -> HeaderPathIdentifierConfig:
        _check_keys(cfg, ("header", "segments"), where, "io.l5d.header.path")
        segments = _typed(cfg, "segments", int, where, None)
        if segments is not None and segments < 1:
            raise IdentifierConfigError(f"{where}.segments: must be >= 1, got {segments}")
        header = _typed(cfg, "header", str, where, ":path").lower()
        return cls(header=header, segments=segments)


@dataclass(frozen=True, slots=True)
class _Kind:
    config: Any  # a config dataclass with from_mapping
    factory: Callable[[Any, Path], Identifier]


HTTP_IDENTIFIERS: dict[str, _Kind] = {
    "io.l5d.header.token": _Kind(
        HeaderTokenIdentifierConfig, lambda c, p: HeaderTokenIdentifier(p, c.header or "Host")
    ),
    "io.l5d.methodAndHost": _Kind(
        MethodAndHostIdentifierConfig, lambda c, p: MethodAndHostIdentifier(p, c.httpUriInDst)
    ),
    "io.l5d.path": _Kind(PathIdentifierConfig, lambda c, p: PathIdentifier(p, c.segments, c.consume)),
    "io.l5d.header": _Kind(HeaderValuePathIdentifierConfig, lambda c, p: HeaderIdentifier(p, c.header)),
    "io.l5d.static": _Kind(StaticIdentifierConfig, lambda c, p: StaticIdentifier(p, c.path)),
}

H2_IDENTIFIERS: dict[str, _Kind] = {
    "io.l5d.header.token": _Kind(
        HeaderTokenIdentifierConfig,
        lambda c, p: HeaderTokenIdentifier(p, c.header or ":authority", use_last=True, h2_message=True),
    ),
    "io.l5d.header.path": _Kind(
        HeaderPathIdentifierConfig, lambda c, p: HeaderPathIdentifier(p, c.header, c.segments)
    ),
    "io.l5d.static": HTTP_IDENTIFIERS["io.l5d.static"],
}


def build_identifier(
    cfg: Mapping[str, Any], *, dst_prefix: Path = DEFAULT_DST_PREFIX, protocol: str = "http", where: str
) -> Identifier:
    """Build one identifier from its config mapping (``{kind: io.l5d.path, segments: 2}``)."""
    registry = H2_IDENTIFIERS if protocol == "h2" else HTTP_IDENTIFIERS
    if not isinstance(cfg, Mapping):
        raise IdentifierConfigError(f"{where}: expected a mapping with a kind, got {cfg!r}")
    kind = cfg.get("kind")
    if kind not in registry:
        raise IdentifierConfigError(
            f"{where}.kind: unknown {protocol} identifier kind {kind!r}; supported kinds: "
            + ", ".join(sorted(registry))
        )
    entry = registry[kind]
    return entry.factory(entry.config.from_mapping(cfg, where), dst_prefix)


def build_identifiers(
    cfg: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None,
    *,
    dst_prefix: Path = DEFAULT_DST_PREFIX,
    protocol: str = "http",
    where: str = "identifier",
) -> Identifier:
    """A router's ``identifier`` key (absent, one mapping, or a list) as one identifier."""
    if cfg is None:
        cfg = {"kind": "io.l5d.header.token"}
    if isinstance(cfg, Mapping):
        return build_identifier(cfg, dst_prefix=dst_prefix, protocol=protocol, where=where)
    if not cfg:
        raise IdentifierConfigError(f"{where}: the identifier list is empty; give at least one identifier")
    built = tuple(
        build_identifier(c, dst_prefix=dst_prefix, protocol=protocol, where=f"{where}[{i}]")
        for i, c in enumerate(cfg)
    )
    return built[0] if len(built) == 1 else IdentifierChain(built)
