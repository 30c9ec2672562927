"""Per-name client and service parameters: prefix patterns, merge order, ``{var}`` substitution.

Theory of operation: a router's ``client`` (keyed by client name, i.e. the bound name, including any
``/%/`` transformer prefix) and ``service`` (keyed by service name, e.g. ``/svc/web``) sections are
lists of :class:`~hostproxy.config.model.ParamsEntry`; ``io.l5d.global`` is one entry with prefix ``/``.
A prefix is a pattern of segments: a literal segment matches itself, ``*`` matches any one segment,
and a segment with ``{var}`` captures (``{service}``, ``{a}-{b}``) matches by regular expression, each
capture greedy (so ``{foo}-{bar}`` against ``a-b-c`` gives ``foo=a-b``, ``bar=c``). A pattern of N
segments matches a name whose first N segments match; the rest of the name is ignored (it is a prefix). A trailing ``/`` is dropped, as Linkerd
drops the empty pieces at the end when it splits a prefix (``/#/io.l5d.fs/`` is ``/#/io.l5d.fs``); ``//``
inside a prefix is refused (Linkerd would keep an empty segment that no name matches).

Resolution (:func:`client_params_for`, :func:`service_params_for`) starts from the defaults and applies
every matching entry in config order, each overriding only the keys it set itself (a key is replaced
whole: a later ``tls`` replaces an earlier ``tls``). Before an entry applies, ``{var}`` in its string
values is replaced by what its prefix captured (``tls.commonName: "{service}"``). Pure functions; the
router caches their results per name.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

_CAPTURE = re.compile(r"\{([^{}]*)\}")
_VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")


class PatternError(ValueError):
    """A prefix pattern that cannot be used."""


@dataclass(frozen=True)
class Pattern:
    text: str
    # per segment: None for '*', a literal string, or (regex, capture names in group order)
    segments: tuple[tuple[re.Pattern[str], tuple[str, ...]] | str | None, ...]
    captures: tuple[str, ...]

    def match(self, labels: list[str]) -> dict[str, str] | None:
        if len(labels) < len(self.segments):
            return None
        out: dict[str, str] = {}
        for seg, label in zip(self.segments, labels, strict=False):
            if seg is None:
                continue
            if isinstance(seg, str):
                if seg != label:
                    return None
                continue
            regex, names = seg
            mt = regex.fullmatch(label)
            if mt is None:
                return None
            out.update(zip(names, mt.groups(), strict=True))
        return out


def parse_pattern(text: str) -> Pattern:
    """Parse a ``prefix`` such as ``/#/io.l5d.fs/{service}`` or ``/svc/*/api``."""
    if not text.startswith("/"):
        raise PatternError(f"a prefix must start with '/', got {text!r}")
    body = text[1:].rstrip("/")
    if body == "":
        return Pattern(text, (), ())
    segments: list[tuple[re.Pattern[str], tuple[str, ...]] | str | None] = []
    captures: list[str] = []
    for seg in body.split("/"):
        if seg == "":
            raise PatternError(f"empty segment in prefix {text!r} (two '/' in a row)")
        if seg == "*":
            segments.append(None)
            continue
        if "{" not in seg and "}" not in seg:
            segments.append(seg)
            continue
        regex = ""
        pos = 0
        names: list[str] = []
        for mt in _CAPTURE.finditer(seg):
            name = mt.group(1)
            if not _VAR_NAME.fullmatch(name):
                raise PatternError(
                    f"invalid capture '{{{name}}}' in prefix {text!r}; use a name such as {{service}}"
                )
            if name in captures:
                raise PatternError(f"capture '{{{name}}}' appears twice in prefix {text!r}")
            captures.append(name)
            names.append(name)
            literal = seg[pos : mt.start()]
            if "{" in literal or "}" in literal:
                raise PatternError(f"unbalanced brace in prefix {text!r}")
            regex += re.escape(literal) + "(.*)"
            pos = mt.end()
        rest = seg[pos:]
        if "{" in rest or "}" in rest:
            raise PatternError(f"unbalanced brace in prefix {text!r}")
        regex += re.escape(rest)
        segments.append((re.compile(regex, re.DOTALL), tuple(names)))
    return Pattern(text, tuple(segments), tuple(captures))


def _labels(name: Any) -> list[str]:
    text = str(name)
    if text in ("", "/"):
        return []
    return text[1:].split("/") if text.startswith("/") else text.split("/")


def match_prefix(prefix: str, name: Any) -> dict[str, str] | None:
    """Captures of ``prefix`` matched against ``name`` (a ``dtab.Path`` or its text), or None."""
    return parse_pattern(prefix).match(_labels(name))


def substitute(obj: Any, captures: dict[str, str]) -> Any:
    """Replace ``{var}`` in every string value of a config object by its captured value."""
    if not captures:
        return obj
    if isinstance(obj, str):
        return _CAPTURE.sub(lambda mt: captures.get(mt.group(1), mt.group(0)), obj)
    if isinstance(obj, tuple):
        return tuple(substitute(x, captures) for x in obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        changes = {}
        for f in dataclasses.fields(obj):
            if f.name == "kind":
                continue
            v = getattr(obj, f.name)
            nv = substitute(v, captures)
            if nv is not v:
                changes[f.name] = nv
        return dataclasses.replace(obj, **changes) if changes else obj
    return obj


def resolve(section: Any, name: Any) -> Any:
    """Merge every entry of a ParamsSection whose prefix matches ``name``, in order."""
    result = section.params_type()
    for entry in section.entries:
        captures = match_prefix(entry.prefix, name)
        if captures is None:
            continue
        params = substitute(entry.params, captures)
        result = dataclasses.replace(result, **{f: getattr(params, f) for f in entry.explicit})
    return result


def client_params_for(router_cfg: Any, client_name: Any) -> Any:
    """The ClientParams for a client (bound) name such as ``/%/io.l5d.port/4141/#/io.l5d.fs/web``."""
    return resolve(router_cfg.client, client_name)


def service_params_for(router_cfg: Any, service_name: Any) -> Any:
    """The ServiceParams for a service name such as ``/svc/web``."""
    return resolve(router_cfg.service, service_name)


def client_tls_sections(router_cfg: Any, index: int) -> list[tuple[str, Any]]:
    """``(config key, tls)`` of every ``client`` entry of router ``index`` that turns TLS on
    explicitly: the client TLS settings the daemon loads at start (and ``hostproxy check`` reads)."""
    section = router_cfg.client
    out: list[tuple[str, Any]] = []
    for j, entry in enumerate(section.entries if section is not None else ()):
        tls = getattr(entry.params, "tls", None)
        if tls is None or "tls" not in entry.explicit or not tls.enabled:
            continue
        static = section.kind == "io.l5d.static"
        out.append((f"routers[{index}].client{f'.configs[{j}]' if static else ''}.tls", tls))
    return out
