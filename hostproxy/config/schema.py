"""The vocabulary the config model is written in: one helper to declare a key.

Theory of operation: every config object is a frozen, keyword-only dataclass. Each field is declared
with :func:`key`, which records in the field's metadata everything the validator and the reference
generator need: the YAML name (camelCase, derived from the Python name unless given), a description,
whether the key is required, a human description of the default when it depends on context (the
protocol, the kind), and optional checks. The validator reads the field's *type hint* to know what to
expect (``bool``, ``int``, ``float``, ``str``, ``X | None``, ``tuple[X, ...]``, another dataclass, or a
plugin base class) and the metadata for the rest, so the model is the single source of truth for keys,
types, defaults and docs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

MISSING: Any = dataclasses.MISSING

# A check takes the decoded value and returns an error message, or None when the value is fine.
Check = Callable[[Any], "str | None"]


def camel(name: str) -> str:
    """``max_concurrent_requests`` -> ``maxConcurrentRequests`` (a trailing ``_`` is dropped)."""
    name = name.rstrip("_")
    head, *rest = name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def key(
    default: Any = MISSING,
    doc: str = "",
    *,
    name: str | None = None,
    required: bool = False,
    default_doc: str | None = None,
    check: Check | None = None,
    plugin: str | None = None,
    one_or_many: bool = False,
    dtab: bool = False,
    path: bool = False,
    coerce_str: bool = False,
    extension: bool = False,
    hidden_default: bool = False,
) -> Any:
    """Declare one config key.

    ``plugin`` names the registry category whose ``kind`` selects the value's type; ``one_or_many``
    accepts a single mapping where a list is expected; ``dtab``/``path`` validate a string as a dtab or
    a path; ``coerce_str`` accepts a number where a string is expected (port names such as
    ``incoming`` or ``4141``); ``extension`` marks a hostproxy key that Linkerd does not have.
    """
    meta = {
        "name": name,
        "doc": doc,
        "required": required,
        "default_doc": default_doc,
        "check": check,
        "plugin": plugin,
        "one_or_many": one_or_many,
        "dtab": dtab,
        "path": path,
        "coerce_str": coerce_str,
        "extension": extension,
    }
    if required:
        return dataclasses.field(default=None, metadata=meta)
    if isinstance(default, list | dict | set):
        raise TypeError("config defaults must be immutable (use a tuple)")
    if dataclasses.is_dataclass(default) and not isinstance(default, type):
        return dataclasses.field(default_factory=lambda: default, metadata=meta)
    return dataclasses.field(default=None if default is MISSING else default, metadata=meta)


def yaml_name(f: dataclasses.Field[Any]) -> str:
    return f.metadata.get("name") or camel(f.name)


def config_fields(cls: type) -> list[dataclasses.Field[Any]]:
    return [f for f in dataclasses.fields(cls) if f.metadata.get("name") is not None or "doc" in f.metadata]


# -- common checks -------------------------------------------------------------------------------


def positive(v: Any) -> str | None:
    return None if v is None or v > 0 else f"must be greater than 0, got {v}"


def non_negative(v: Any) -> str | None:
    return None if v is None or v >= 0 else f"must be 0 or more, got {v}"


def port_number(v: Any) -> str | None:
    return None if v is None or 0 <= v <= 65535 else f"must be a port number from 0 to 65535, got {v}"


def between(lo: int, hi: int) -> Check:
    def check(v: Any) -> str | None:
        return None if v is None or lo <= v <= hi else f"must be from {lo} to {hi}, got {v}"

    return check


def fraction(v: Any) -> str | None:
    return None if v is None or 0.0 <= v <= 1.0 else f"must be between 0.0 and 1.0, got {v}"


def one_of(*choices: str) -> Check:
    def check(v: Any) -> str | None:
        if v is None or v in choices:
            return None
        return f"must be one of {', '.join(choices)}; got {v!r}"

    check.choices = choices  # type: ignore[attr-defined]
    return check


def ip_literal(v: Any) -> str | None:
    import ipaddress

    if v is None or v == "localhost":
        return None
    try:
        ipaddress.ip_address(v)
    except ValueError:
        return f"expected an IP address such as 127.0.0.1, 0.0.0.0 or ::1, got {v!r}"
    return None


def regex(v: Any) -> str | None:
    import re

    if v is None:
        return None
    try:
        re.compile(v)
    except re.error as e:
        return f"not a valid regular expression: {e}"
    return None


def header_name(v: Any) -> str | None:
    """A header field name (RFC 9110 token characters; h2's pseudo-headers with their leading ':')."""
    import re

    if v is None:
        return None
    if isinstance(v, str) and re.fullmatch(r":?[!#$%&'*+\-.^_`|~0-9A-Za-z]+", v):
        return None
    return f"must be a header name, e.g. Host or l5d-name (no spaces, ':' only to start a pseudo-header); got {v!r}"


def field_name(v: Any) -> str | None:
    """A header field name an HTTP/1.1 message can carry (RFC 9110 token characters, no pseudo-header)."""
    import re

    if v is None:
        return None
    if isinstance(v, str) and re.fullmatch(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+", v):
        return None
    return f"must be a header name, e.g. X-Request-Start (letters, digits and !#$%&'*+-.^_`|~; no spaces or ':'); got {v!r}"


_OWNED_FIELDS = {
    **dict.fromkeys(
        ("host", "content-length", "transfer-encoding"),
        "frames or routes the request by: a second value breaks every request",
    ),
    **dict.fromkeys(
        ("connection", "keep-alive", "proxy-connection", "te", "trailer", "upgrade"),
        "treats as hop-by-hop: it is about one connection, not the request",
    ),
    "expect": "passes on as an expectation: an upstream answers one it does not know with 417",
    **dict.fromkeys(("via", "forwarded"), "writes itself: a time there reads as one more proxy on the way"),
    "x-forwarded-client-cert": "drops from every request it receives",
}


def timestamp_field_name(v: Any) -> str | None:
    """``timestampHeader``: a header name (:func:`field_name`) of the caller's own, not one whose
    meaning hostproxy or HTTP owns (the value would break, be dropped, or be read as something else)."""
    problem = field_name(v)
    if problem is not None or v is None:
        return problem
    lower = v.lower()
    why = _OWNED_FIELDS.get(lower)
    if why is None and lower.startswith("l5d-"):
        why = "reads, replaces or drops (the l5d-* context headers)"
    if why is None:
        return None
    return f"{v} is a header hostproxy {why}; name a header of your own, e.g. X-Request-Start"


def router_label(v: Any) -> str | None:
    if v is None:
        return None
    if v and not any(c == "/" or c.isspace() or not c.isprintable() for c in v):
        return None
    return (
        "must be a non-empty name without '/', spaces or control characters (it scopes the router's "
        f"metrics, rt/<label>/..., and names it in the admin UI), e.g. outgoing; got {v!r}"
    )


def k8s_label_key(v: Any) -> str | None:
    import re

    # Kubernetes' label key syntax: an optional DNS-subdomain prefix and '/', then a name of up to 63
    # characters (letters, digits, '-', '_', '.'), starting and ending with a letter or digit.
    key = r"([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
    if v is None or re.fullmatch(key, v):
        return None
    return f"{v!r} is not a Kubernetes label key; give the key only, e.g. version (its value comes from the path)"


def tls_version(v: Any) -> str | None:
    """One entry of a ``protocols`` list: TLS 1.2 and 1.3 are what hostproxy speaks."""
    if v is None or v in ("TLSv1.2", "TLSv1.3"):
        return None
    if v in ("TLSv1", "TLSv1.0", "TLSv1.1", "SSLv3", "SSLv2"):
        return f"{v} is insecure and not supported; use TLSv1.2 and/or TLSv1.3"
    return f"unknown TLS version {v!r}; use TLSv1.2 and/or TLSv1.3"


def host_name(v: Any) -> str | None:
    """A host name or an IP address: no scheme, port or path (those have keys of their own)."""
    import ipaddress
    import re

    if v is None:
        return None
    try:
        ipaddress.ip_address(v)
        return None
    except ValueError:
        pass
    if re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?", v):
        # Each dot-separated label is 1 to 63 characters (DNS; the resolver refuses others at once).
        bad = next((label for label in v.split(".") if not 1 <= len(label) <= 63), None)
        if bad is None:
            return None
        what = "an empty label (two dots in a row)" if not bad else f"a label of {len(bad)} characters"
        return f"expected a host name or IP address, got {v!r}: it has {what}; a label is 1 to 63 characters"
    return f"expected a host name or IP address (no scheme, port or path: the port is `port`), got {v!r}"
