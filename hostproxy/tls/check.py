"""Static client prefixes that can match no client, typically because a transformer renamed it.

Theory of operation
-------------------
Client parameters (``client: {kind: io.l5d.static, configs: [{prefix: ...}]}``) are matched against
*client names*: bound names after every transformer. A transformer prepends its own prefix
(``io.l5d.port`` makes ``/#/io.l5d.fs/web`` into ``/%/io.l5d.port/4141/#/io.l5d.fs/web``), so a prefix
written as ``/#/io.l5d.fs/{service}`` silently never matches and its ``tls`` never applies: the most
common TLS mistake of Linkerd users. :func:`check_tls_prefixes` finds such entries statically.

For each router it derives the *shapes* client names can have: for every namer, its own
transformers' prefixes (innermost) and then the interpreter's (outermost, the last configured
first), in front of ``/#/<namer prefix>``; the same interpreter chain in front of ``/$`` (system
namers). A transformer prefix segment known only at run time (``io.l5d.k8s.localnode``'s node) is a
wildcard. ``io.l5d.replace``/``io.l5d.const`` replace the name by their configured path; an
``io.l5d.rewrite`` namer yields names that cannot be known statically, so it matches anything. A
prefix pattern (``hostproxy.config.params``) that matches no shape gets a
:class:`~hostproxy.config.errors.ConfigIssue` when the reason is known: it matches the name *before*
transformation (the message shows the transformed prefix to write instead), or its first segment is
not ``#``, ``$`` or ``%`` so it is no bound name at all (``/svc/...``: a service name). A prefix for a
namer that is not configured is left alone. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hostproxy.config.errors import ConfigIssue
from hostproxy.config.params import PatternError, parse_pattern

__all__ = ["check_tls_prefixes", "client_name_shapes"]

WILD = None  # a segment whose value is known only at run time
Shape = tuple[str | None, ...]
ANYTHING: Shape = ("**",)  # names that cannot be known statically


def _path_segments(text: str) -> tuple[str, ...]:
    return tuple(s for s in text.strip("/").split("/") if s)


def _transformer_prefix(t: Any) -> Shape | tuple[str, Shape]:
    """The id prefix a transformer prepends, or ``("replace", path)`` for replace/const."""
    kind = t.kind
    if kind == "io.l5d.port":
        return ("%", kind, str(t.port))
    if kind in ("io.l5d.localhost", "io.l5d.specificHost"):
        return ("%", kind)
    if kind == "io.l5d.k8s.localnode":
        return ("%", kind, WILD)
    if kind == "io.l5d.k8s.daemonset":
        return ("%", kind, str(t.namespace), str(t.port), str(t.service))
    if kind in ("io.l5d.replace", "io.l5d.const"):
        return ("replace", _path_segments(t.path))
    return ("%", kind, WILD)  # an unknown transformer: at least it renames under /%/<kind>


def _apply(shape: Shape, transformers: Sequence[Any]) -> Shape:
    for t in transformers:
        pre = _transformer_prefix(t)
        if pre and pre[0] == "replace":
            shape = pre[1]  # type: ignore[assignment]
        else:
            shape = tuple(pre) + shape  # type: ignore[arg-type,assignment]
    return shape


def _bases(config: Any, router: Any) -> list[tuple[Shape, tuple[Any, ...]]]:
    """Each untransformed client-name shape with the transformers applied to it, innermost first."""
    outer = tuple(router.interpreter.transformers)
    out: list[tuple[Shape, tuple[Any, ...]]] = []
    for n in config.namers:
        if n.kind == "io.l5d.rewrite":
            return [(ANYTHING, ())]
        base: Shape = ("#", *_path_segments(n.prefix or "/" + n.kind))
        out.append((base, (*n.transformers, *outer)))
    out.append((("$",), outer))
    return out


def client_name_shapes(config: Any, router: Any) -> list[Shape]:
    """The shapes (leading segments, ``None`` = any segment) of every client name ``router`` can bind."""
    return [base if base == ANYTHING else _apply(base, chain) for base, chain in _bases(config, router)]


def _can_match(pattern: Any, shape: Shape) -> bool:
    if shape == ANYTHING:
        return True
    for i, seg in enumerate(pattern.segments):
        if i >= len(shape):
            return True  # the rest of a client name can be anything
        have = shape[i]
        if seg is None or have is WILD:
            continue
        if isinstance(seg, str):
            if seg != have:
                return False
            continue
        regex, _names = seg
        if regex.fullmatch(have) is None:
            return False
    return True


def _render(shape: Shape) -> str:
    return "/" + "/".join("*" if s is None else s for s in shape)


def check_tls_prefixes(config: Any, *, file: str = "") -> list[ConfigIssue]:
    """Issues for ``io.l5d.static`` client entries whose prefix can match no client name of its router
    (``config`` is a loaded ``hostproxy.config.model.Config``): those written for a name that a
    transformer renames, and those that are not bound names at all (``/svc/...``). A prefix for a
    namer that is not configured is left to other checks."""
    issues: list[ConfigIssue] = []
    for ri, router in enumerate(config.routers):
        section = router.client
        if section is None or section.kind != "io.l5d.static":
            continue
        if router.interpreter.kind not in ("default", "io.l5d.fs"):
            continue  # names come from elsewhere (namerd): nothing to check against
        bases = _bases(config, router)
        shapes = client_name_shapes(config, router)
        for ei, entry in enumerate(section.entries):
            try:
                pattern = parse_pattern(entry.prefix)
            except PatternError:
                continue  # reported by the validator
            if any(_can_match(pattern, s) for s in shapes):
                continue
            message = _renamed(pattern, entry, bases) or _not_bound(pattern, entry, router, shapes)
            if message is None:
                continue
            issues.append(
                ConfigIssue(
                    file=file,
                    line=entry.line,
                    column=0,
                    path=f"routers[{ri}].client.configs[{ei}].prefix",
                    message=message,
                )
            )
    return issues


def _never(entry: Any) -> str:
    tls = "tls" in entry.explicit and getattr(entry.params, "tls", None) is not None
    return "its tls settings never apply" if tls else "its settings never apply"


def _renamed(pattern: Any, entry: Any, bases: list[tuple[Shape, tuple[Any, ...]]]) -> str | None:
    """The message when ``pattern`` matches a name before its transformers renamed it."""
    for base, chain in bases:
        if not chain or not _can_match(pattern, base):
            continue
        transformed = _apply(base, chain)
        kinds = ", ".join(t.kind for t in chain)
        head = (
            f"client prefix '{entry.prefix}' matches no client, so {_never(entry)}: the transformer(s) "
            f"{kinds} rename clients of {_render(base)} to '{_render(transformed)}/...'"
        )
        if transformed[-len(base) :] == base and len(transformed) > len(base):
            lead = _render(transformed[: len(transformed) - len(base)])
            return f"{head}; write the prefix as '{lead}{entry.prefix}'"
        return f"{head}; match that name instead"
    return None


def _not_bound(pattern: Any, entry: Any, router: Any, shapes: list[Shape]) -> str | None:
    """The message when ``pattern`` cannot be a bound name at all (its first segment is not #, $ or %)."""
    first = pattern.segments[0] if pattern.segments else None
    if not isinstance(first, str) or first in ("#", "$", "%"):
        return None
    names = ", ".join(f"'{_render(s)}/...'" for s in shapes)
    hint = ""
    if _path_segments(router.dst_prefix)[:1] == (first,):
        hint = f"; per-service settings (names like '{router.dst_prefix}/...') go in the 'service' section"
    return (
        f"client prefix '{entry.prefix}' matches no client, so {_never(entry)}: client parameters match "
        f"bound client names, which here look like {names}{hint}"
    )
