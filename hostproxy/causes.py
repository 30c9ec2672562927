"""Failure causes: the one taxonomy the whole daemon uses.

Theory of operation
-------------------
Every failed request is attributed to exactly one `Cause`. The cause is what appears in metrics
(`…/failures/<cause>`, the `cause` label in Prometheus), in `l5d-err`-bearing responses, and in the
classifier's input. Causes are plain strings (a `StrEnum`) so they can be used directly as metric key
segments and label values; the set is closed, which keeps metric cardinality bounded.

Each cause carries a `level`:

* `connection` — the request could not be delivered to, or was cut off by, the upstream at the
  transport level (refused, unreachable, TLS, reset, connect timeout).
* `application` — the upstream answered, and the answer (or the time it took) is the failure.
* `proxy` — the proxy itself declined the request (identification, naming, overload, bugs).

`written` tells whether the request may have reached the upstream: a cause with `written=False`
failed before any byte of the request was sent, so even a non-idempotent request is safe to requeue
(Linkerd marks such responses `l5d-retryable: true`).
"""

from __future__ import annotations

import enum


class Level(enum.StrEnum):
    CONNECTION = "connection"
    APPLICATION = "application"
    PROXY = "proxy"


class Cause(enum.StrEnum):
    IDENTIFICATION = "identification"
    NAMING_NEG = "naming/neg"
    NAMING_FAILED = "naming/failed"
    NAMING_STALE = "naming/stale"
    CONNECT_REFUSED = "connect/refused"
    CONNECT_TIMEOUT = "connect/timeout"
    CONNECT_UNREACHABLE = "connect/unreachable"
    TLS = "tls"
    UPSTREAM_RESET = "upstream/reset"
    TIMEOUT_REQUEST = "timeout/request"
    TIMEOUT_ATTEMPT = "timeout/attempt"
    UPSTREAM_5XX = "upstream/5xx"
    UPSTREAM_GRPC = "upstream/grpc"
    OVERLOAD = "overload"
    PROXY_INTERNAL = "proxy/internal"

    @property
    def level(self) -> Level:
        return _LEVEL[self]

    @property
    def written(self) -> bool:
        """True when the request may have reached the upstream before this failure."""
        return self not in _NOT_WRITTEN

    @property
    def retryable_exception(self) -> bool:
        """True for transport failures a retrying classifier may retry (timeouts, writes, resets)."""
        return self in _RETRYABLE_EXCEPTIONS

    @property
    def prom_label(self) -> str:
        """The value used for the Prometheus `cause` label (slashes become underscores)."""
        return self.value.replace("/", "_")


_LEVEL: dict[Cause, Level] = {
    Cause.IDENTIFICATION: Level.PROXY,
    Cause.NAMING_NEG: Level.PROXY,
    Cause.NAMING_FAILED: Level.PROXY,
    Cause.NAMING_STALE: Level.PROXY,
    Cause.CONNECT_REFUSED: Level.CONNECTION,
    Cause.CONNECT_TIMEOUT: Level.CONNECTION,
    Cause.CONNECT_UNREACHABLE: Level.CONNECTION,
    Cause.TLS: Level.CONNECTION,
    Cause.UPSTREAM_RESET: Level.CONNECTION,
    Cause.TIMEOUT_REQUEST: Level.APPLICATION,
    Cause.TIMEOUT_ATTEMPT: Level.APPLICATION,
    Cause.UPSTREAM_5XX: Level.APPLICATION,
    Cause.UPSTREAM_GRPC: Level.APPLICATION,
    Cause.OVERLOAD: Level.PROXY,
    Cause.PROXY_INTERNAL: Level.PROXY,
}

# Failures that happen before the request is written: connection establishment, including TLS.
_NOT_WRITTEN = frozenset({Cause.CONNECT_REFUSED, Cause.CONNECT_TIMEOUT, Cause.CONNECT_UNREACHABLE, Cause.TLS})

# What a retrying classifier treats as a retryable exception: write failures (never written),
# channel-closed (reset) and per-attempt timeouts. A total-request timeout is not retryable: the
# budget for the whole request, retries included, is already spent.
_RETRYABLE_EXCEPTIONS = _NOT_WRITTEN | {Cause.UPSTREAM_RESET, Cause.TIMEOUT_ATTEMPT}

ALL_CAUSES: tuple[Cause, ...] = tuple(Cause)


def parse_cause(text: str) -> Cause:
    """The `Cause` spelled `text`; a ValueError listing the valid spellings otherwise."""
    try:
        return Cause(text)
    except ValueError:
        valid = ", ".join(c.value for c in Cause)
        raise ValueError(f"unknown failure cause {text!r}: expected one of {valid}") from None


#: How an endpoint's ``lastFailure`` message (``/client_state.json``) starts when its response body broke
#: after the head had gone on to the caller; ``hostproxy wtf`` tells that case by it.
BODY_CUT_OFF = "response body cut off after its head"
