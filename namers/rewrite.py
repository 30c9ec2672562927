"""``io.l5d.rewrite``: rewrite a path by a pattern with ``{var}`` captures (a rewriting namer).

Theory of operation
-------------------
``/#/<prefix>/<path...>`` is matched against ``pattern`` segment by segment, from the left:

* a literal segment matches a label equal to it (``\\xHH`` escapes allowed, as in dtab paths);
* ``*`` matches any one label;
* a segment with captures matches the label's printed form: ``{ns}`` alone captures the whole
  label, and ``{svc}.{ns}`` splits one, each capture greedy and non-empty (``{a}.{b}`` against
  ``x.y.z`` gives ``a=x.y``, ``b=z``), as a regular expression would, but in time linear in the
  label (:func:`_capture`): labels come from requests, and backtracking over several captures
  takes time growing as a power of the label's length.

When every pattern segment matched, the captures are substituted into ``name`` and the result is
returned as a *path* leaf, which the binder looks up again from the top of the dtab (like the
``/$/io.buoyant.*Pfx`` namers); labels of the input beyond the pattern follow the rewritten path, so
``pattern: /{port}/{ns}/{svc}``, ``name: /k8s/{ns}/{port}/{svc}`` turns ``/http/prod/web/v1`` into
``/k8s/prod/http/web/v1``. (Linkerd 1 drops those extra labels; keeping them keeps the residual, as a
dtab prefix rewrite does, and changes no client id.) An input that does not match, or is shorter than
the pattern, is ``NEG``, so dtab alternates apply.

Captured text is substituted in printed form, so a label holding bytes that need ``\\xHH`` escapes
keeps them. Both templates are checked when the namer is built: a ``name`` that uses a variable the
pattern does not capture, a variable captured twice, or a template that could not form a path is a
configuration error that says which key to fix. A ``/`` at the end of ``pattern`` is dropped, as
Linkerd drops it (``/{svc}/api/`` is ``/{svc}/api``); ``//`` inside it, or at the end of ``name``, is
refused. The namer has no backend and no state to watch.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import trio

from namers._dtab import NEG, Leaf, Path
from namers.base import Namer

__all__ = ["KIND", "PathPattern", "RewriteNamer", "RewriteConfigError", "from_config"]

KIND = "io.l5d.rewrite"

_VAR = re.compile(r"\{([^{}/]*)\}")
_VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")


class RewriteConfigError(ValueError):
    """A ``pattern`` or ``name`` that cannot be used; the message names the key and the fix."""


def _show(label: bytes) -> str:
    """A label's printed form (``\\xHH`` escapes where needed)."""
    return str(Path((label,)))[1:]


def _segments(text: str, key: str, *, trailing_slash: bool = False) -> list[str]:
    """The segments of a template; ``trailing_slash``: a ``/`` at the end is dropped (a pattern, which
    Linkerd splits dropping the empty pieces at the end), else it is refused (a name, which must form a
    path)."""
    if not text.startswith("/"):
        raise RewriteConfigError(f"namers[].{key} {text!r} must start with '/', e.g. '/{{ns}}/{{svc}}'")
    body = text[1:].rstrip("/") if trailing_slash else text[1:]
    if body == "":
        return []
    segs = body.split("/")
    if any(s == "" for s in segs):
        where = "'//'" if trailing_slash else "'//' or a trailing '/'"
        raise RewriteConfigError(f"namers[].{key} {text!r} has an empty segment ({where})")
    return segs


def _literal(seg: str, key: str) -> bytes:
    try:
        p = Path.read("/" + seg)
    except Exception as e:
        raise RewriteConfigError(f"namers[].{key}: segment {seg!r} is not a path label ({e})") from None
    if len(p) != 1:
        raise RewriteConfigError(f"namers[].{key}: segment {seg!r} is not a single path label")
    return p.labels[0]


@dataclass(frozen=True)
class _Seg:
    literal: bytes | None = None  # match this label exactly
    #: the literal text around the captures of a segment (one more piece than captures), matched
    #: against the printed label; ``None`` with ``literal`` ``None``: ``*``
    pieces: tuple[str, ...] | None = None


def _capture(pieces: tuple[str, ...], text: str) -> list[str] | None:
    """``text`` split as ``pieces[0] {c0} pieces[1] {c1} ... pieces[-1]``, each capture non-empty
    and greedy (the leftmost takes the most), or ``None`` when it cannot be.

    This is what a backtracking regular expression ``p0(.+)p1(.+)...`` finds, in time linear in the
    label for each capture: the regex takes time growing as the label's length to the power of the
    number of captures when there is no match, and labels come from requests (a Host header). The
    end of each capture, from the last to the first, is the last place its following piece can start
    while leaving the later captures non-empty; the greedy split takes exactly those ends.
    """
    first, rest = pieces[0], pieces[1:]
    if not text.startswith(first) or not text.endswith(pieces[-1]):
        return None
    n = len(text)
    ends = [0] * len(rest)
    # the last capture ends where the final piece starts (the text must end with it)
    ends[-1] = n - len(rest[-1])
    for i in range(len(rest) - 2, -1, -1):
        # capture i ends where piece i+1 starts, which must end before capture i+1's end
        limit = ends[i + 1] - 1
        ends[i] = text.rfind(rest[i], 0, limit) if limit >= 0 else -1
    out: list[str] = []
    pos = len(first)
    for i, end in enumerate(ends):
        if end <= pos:
            return None
        out.append(text[pos:end])
        pos = end + len(rest[i])
    return out


class PathPattern:
    """A compiled ``pattern``: ``match(path)`` gives the captures and the number of labels consumed."""

    def __init__(self, text: str, key: str = "pattern") -> None:
        self.text = text
        self._segs: list[_Seg] = []
        self.variables: list[str] = []
        for seg in _segments(text, key, trailing_slash=True):
            names = _VAR.findall(seg)
            if seg == "*":
                self._segs.append(_Seg())
            elif not names:
                if "{" in seg or "}" in seg:
                    raise RewriteConfigError(
                        f"namers[].{key}: segment {seg!r} has an unbalanced '{{' or '}}'"
                    )
                self._segs.append(_Seg(literal=_literal(seg, key)))
            else:
                pieces: list[str] = []
                pos = 0
                for m in _VAR.finditer(seg):
                    name = m.group(1)
                    if not _VAR_NAME.fullmatch(name):
                        raise RewriteConfigError(
                            f"namers[].{key}: {{{name}}} is not a variable name; use letters, digits, '_', '.', '-'"
                        )
                    if name in self.variables:
                        raise RewriteConfigError(
                            f"namers[].{key} {text!r} captures {{{name}}} twice; give each capture its own name"
                        )
                    self.variables.append(name)
                    between = seg[pos : m.start()]
                    if "{" in between or "}" in between:
                        raise RewriteConfigError(
                            f"namers[].{key}: segment {seg!r} has an unbalanced '{{' or '}}'"
                        )
                    pieces.append(between)
                    pos = m.end()
                tail = seg[pos:]
                if "{" in tail or "}" in tail:
                    raise RewriteConfigError(
                        f"namers[].{key}: segment {seg!r} has an unbalanced '{{' or '}}'"
                    )
                pieces.append(tail)
                self._segs.append(_Seg(pieces=tuple(pieces)))
        self._first_var: list[int] = []  # per segment: the index of its first variable
        n = 0
        for seg_ in self._segs:
            self._first_var.append(n)
            n += len(seg_.pieces) - 1 if seg_.pieces is not None else 0

    def __len__(self) -> int:
        return len(self._segs)

    def match(self, path: Path) -> dict[str, str] | None:
        """The captures (printed form) when ``path`` starts with a match of the pattern, else ``None``."""
        labels = path.labels
        if len(labels) < len(self._segs):
            return None
        out: dict[str, str] = {}
        for seg, first_var, label in zip(self._segs, self._first_var, labels, strict=False):
            if seg.literal is not None:
                if label != seg.literal:
                    return None
            elif seg.pieces is not None:
                values = _capture(seg.pieces, _show(label))
                if values is None:
                    return None
                for i, value in enumerate(values):
                    out[self.variables[first_var + i]] = value
        return out


class NameTemplate:
    """A compiled ``name``: ``render(captures)`` gives the rewritten path."""

    def __init__(self, text: str, variables: Iterable[str], key: str = "name") -> None:
        self.text = text
        known = set(variables)
        _segments(text, key)
        used = _VAR.findall(text)
        for name in used:
            if name not in known:
                have = ", ".join(f"{{{v}}}" for v in sorted(known)) or "none"
                raise RewriteConfigError(
                    f"namers[].{key} {text!r} uses {{{name}}}, which the pattern does not capture "
                    f"(it captures {have}); capture it in namers[].pattern or remove it"
                )
        self.render({v: "x" for v in known})  # fails now, not per request, if it cannot form a path

    def render(self, captures: Mapping[str, str]) -> Path:
        text = _VAR.sub(lambda m: captures[m.group(1)], self.text)
        try:
            return Path.read(text)
        except Exception as e:
            raise RewriteConfigError(
                f"namers[].name {self.text!r} does not form a path ({e}); write it like '/k8s/{{ns}}/{{svc}}'"
            ) from None


class RewriteNamer(Namer):
    """The ``io.l5d.rewrite`` namer; see the module docstring."""

    kind: ClassVar[str] = KIND

    def __init__(
        self,
        pattern: str,
        name: str,
        *,
        prefix: str | Path | None = None,
        transformers: Iterable[Any] = (),
    ) -> None:
        super().__init__(prefix=prefix, transformers=transformers)
        self.pattern = PathPattern(pattern)
        self.name = NameTemplate(name, self.pattern.variables)
        self.matches = 0

    def rewrite(self, residual: Path) -> Path | None:
        """The rewritten path for ``residual``, or ``None`` when it does not match."""
        captures = self.pattern.match(residual)
        if captures is None:
            return None
        try:
            rewritten = self.name.render(captures)
        except RewriteConfigError:  # a capture split inside a \xHH escape: no path, so no match
            return None
        return rewritten + residual.drop(len(self.pattern))

    def lookup(self, residual: Path) -> Any:
        self.lookups += 1
        out = self.rewrite(residual)
        if out is None:
            return NEG
        self.matches += 1
        return Leaf(out)

    async def run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Nothing to watch: reports started and waits to be cancelled."""
        task_status.started()
        await trio.sleep_forever()

    def state_json(self) -> dict[str, Any]:
        body = super().state_json()
        body["pattern"] = self.pattern.text
        body["name"] = self.name.text
        return body

    def statistics(self) -> dict[str, Any]:
        stats = super().statistics()
        stats.update(pattern=self.pattern.text, name=self.name.text, matches=self.matches)
        return stats


def _cfg_get(cfg: Any, name: str) -> Any:
    if isinstance(cfg, Mapping):
        return cfg.get(name)
    return getattr(cfg, name, None)


def from_config(cfg: Any) -> RewriteNamer:
    """Build the namer from a ``namers[]`` entry (a mapping or config dataclass) with ``pattern``,
    ``name`` and optional ``prefix`` and ``transformers``."""
    pattern, name = _cfg_get(cfg, "pattern"), _cfg_get(cfg, "name")
    for key, value in (("pattern", pattern), ("name", name)):
        if not isinstance(value, str) or not value:
            raise RewriteConfigError(
                f"namers[].{key} is required for kind {KIND}: e.g. pattern: '/{{port}}/{{ns}}/{{svc}}', "
                "name: '/k8s/{ns}/{port}/{svc}'"
            )
    return RewriteNamer(
        pattern, name, prefix=_cfg_get(cfg, "prefix"), transformers=_cfg_get(cfg, "transformers") or ()
    )
