"""Response classifiers: was this request a success, a failure, or a failure worth retrying?

Theory of operation
-------------------
A classifier is a pure function of what the proxy knows when a response (or an error) comes back:
the request method, the response status (None when no response arrived), the failure `Cause`
(None when a response arrived), and for gRPC the `grpc-status` from headers or trailers. It returns
a `ResponseClass`. The router uses the verdict three ways: retries (only `RETRYABLE_FAILURE`),
failure accrual and success/failure metrics (`FAILURE` and `RETRYABLE_FAILURE` both count as
failures), and the `l5d-success-class` response header (`1.0` or `0.0`).

Two rules apply on top of every HTTP classifier, as in Linkerd:

* a response carrying `l5d-retryable: true` turns a non-retryable failure into a retryable one;
* a chunked (streamed, unbuffered) request is never retryable: its body cannot be replayed.

For the retrying kinds, an error (no response) is retryable only when its cause is a timeout of the
attempt, a failure before the request was written, or a reset connection (`Cause.retryable_exception`)
and the method qualifies. Methods are matched exactly (HTTP methods are case-sensitive, and the request
goes upstream spelled as the client sent it): `get` is not GET and is never retried.

Kinds are registered in `HTTP_CLASSIFIERS` / `GRPC_CLASSIFIERS`; `classifier_from_config` builds one
from a `responseClassifier` mapping.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from hostproxy.causes import Cause

__all__ = [
    "DEFAULT_HTTP_CLASSIFIER",
    "GRPC_CLASSIFIERS",
    "HTTP_CLASSIFIERS",
    "ClassifierConfigError",
    "GrpcClassifier",
    "HttpClassifier",
    "ResponseClass",
    "classifier_from_config",
    "grpc_status_of",
    "retryable_header_value",
    "success_class_header_value",
]


class ClassifierConfigError(ValueError):
    """A responseClassifier config is invalid; the message names the key and the valid kinds."""


class ResponseClass(enum.Enum):
    SUCCESS = "success"
    FAILURE = "failure"
    RETRYABLE_FAILURE = "retryable_failure"

    @property
    def is_success(self) -> bool:
        return self is ResponseClass.SUCCESS

    @property
    def is_retryable(self) -> bool:
        return self is ResponseClass.RETRYABLE_FAILURE


def success_class_header_value(rc: ResponseClass) -> str:
    """The `l5d-success-class` header value for a verdict: `1.0` for success, `0.0` otherwise."""
    return "1.0" if rc is ResponseClass.SUCCESS else "0.0"


def retryable_header_value(cause: Cause) -> str:
    """The `l5d-retryable` value for a proxy-generated error: `true` when the request was never written."""
    return "false" if cause.written else "true"


READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
IDEMPOTENT_METHODS = READ_METHODS | {"PUT", "DELETE"}
ALL_METHODS_5XX = IDEMPOTENT_METHODS | {"POST", "PATCH"}


@dataclass(frozen=True)
class HttpClassifier:
    """An HTTP classifier: 5XX and errors are failures; `retryable_methods` may retry them."""

    kind: str
    retryable_methods: frozenset[str]
    all_successful: bool = False

    def classify(
        self,
        method: str,
        status: int | None,
        error_cause: Cause | None,
        *,
        l5d_retryable: bool = False,
        request_chunked: bool = False,
    ) -> ResponseClass:
        if self.all_successful:
            return ResponseClass.SUCCESS
        responded = status is not None and error_cause in (None, Cause.UPSTREAM_5XX)
        if responded and status is not None and not 500 <= status < 600:
            return ResponseClass.SUCCESS  # only 5XX is a server error (600 and above are not)
        rc = ResponseClass.FAILURE
        # Exactly as spelled: methods are case-sensitive and the request goes upstream as sent, so a
        # `get` is not a GET (a server may well take it for a write).
        if method in self.retryable_methods and (
            responded or (error_cause is not None and error_cause.retryable_exception)
        ):
            rc = ResponseClass.RETRYABLE_FAILURE
        if l5d_retryable:
            rc = ResponseClass.RETRYABLE_FAILURE
        if request_chunked and rc is ResponseClass.RETRYABLE_FAILURE:
            rc = ResponseClass.FAILURE
        return rc


HTTP_CLASSIFIERS: dict[str, HttpClassifier] = {
    "io.l5d.http.nonRetryable5XX": HttpClassifier("io.l5d.http.nonRetryable5XX", frozenset()),
    "io.l5d.http.retryableRead5XX": HttpClassifier("io.l5d.http.retryableRead5XX", READ_METHODS),
    "io.l5d.http.retryableIdempotent5XX": HttpClassifier(
        "io.l5d.http.retryableIdempotent5XX", IDEMPOTENT_METHODS
    ),
    "io.l5d.http.retryableAll5XX": HttpClassifier("io.l5d.http.retryableAll5XX", ALL_METHODS_5XX),
    "io.l5d.http.allSuccessful": HttpClassifier(
        "io.l5d.http.allSuccessful", frozenset(), all_successful=True
    ),
}
# The h2 router's HTTP classifiers behave the same way under their own names.
for _name, _c in list(HTTP_CLASSIFIERS.items()):
    _h2 = _name.replace("io.l5d.http.", "io.l5d.h2.")
    HTTP_CLASSIFIERS[_h2] = HttpClassifier(_h2, _c.retryable_methods, _c.all_successful)

DEFAULT_HTTP_CLASSIFIER = HTTP_CLASSIFIERS["io.l5d.http.nonRetryable5XX"]

GRPC_UNAVAILABLE = 14

_GRPC_STATUS = b"grpc-status"


def grpc_status_of(head: Any, trailers: Any) -> int | None:
    """The ``grpc-status`` of a response (``Headers`` or None each): from its trailers, or from its
    head (a trailers-only response); None when neither has a valid one."""
    for fields in (trailers, head):
        if fields is not None:
            value = fields.get(_GRPC_STATUS)
            if value is not None:
                return int(value) if value.isdigit() else None
    return None


@dataclass(frozen=True)
class GrpcClassifier:
    """A gRPC classifier: any grpc-status outside `success_codes` is a failure.

    `retryable` decides which failing codes may be retried. A response with no grpc-status is judged
    by its HTTP status: one of `retryable_http` is a retryable failure, any other 5XX a non-retryable
    one; an error with no response is a failure, retryable only when `retry_errors` holds and the
    cause is a retryable exception.
    """

    kind: str
    retryable: Callable[[int], bool]
    success_codes: frozenset[int] = frozenset({0})
    retry_errors: bool = False
    retryable_http: frozenset[int] = frozenset()

    def classify(
        self,
        method: str,
        status: int | None,
        error_cause: Cause | None,
        *,
        grpc_status: int | None = None,
        request_chunked: bool = False,
    ) -> ResponseClass:
        if error_cause is not None or status is None:
            if self.retry_errors and error_cause is not None and error_cause.retryable_exception:
                rc = ResponseClass.RETRYABLE_FAILURE
            else:
                rc = ResponseClass.FAILURE
        elif grpc_status is None:
            if status in self.retryable_http:
                rc = ResponseClass.RETRYABLE_FAILURE
            else:
                rc = ResponseClass.FAILURE if 500 <= status < 600 else ResponseClass.SUCCESS
        elif grpc_status in self.success_codes:
            rc = ResponseClass.SUCCESS
        elif self.retryable(grpc_status):
            rc = ResponseClass.RETRYABLE_FAILURE
        else:
            rc = ResponseClass.FAILURE
        if request_chunked and rc is ResponseClass.RETRYABLE_FAILURE:
            rc = ResponseClass.FAILURE
        return rc


def _grpc_default(success: frozenset[int], _params: Mapping[str, Any], _where: str) -> GrpcClassifier:
    return GrpcClassifier(
        "io.l5d.h2.grpc.default", lambda c: c == GRPC_UNAVAILABLE, success, retry_errors=False
    )


# gRPC's HTTP-to-status mapping makes these UNAVAILABLE (doc/http-grpc-status-mapping.md).
GRPC_UNAVAILABLE_HTTP = frozenset({429, 502, 503, 504})


def _grpc_compliant(success: frozenset[int], _params: Mapping[str, Any], _where: str) -> GrpcClassifier:
    # Linkerd's Compliant also retries an RST_STREAM REFUSED_STREAM; here the h2 pool already sends
    # every refused stream again itself, before any classifier sees it, whatever the kind.
    return GrpcClassifier(
        "io.l5d.h2.grpc.compliant",
        lambda c: c == GRPC_UNAVAILABLE,
        success,
        retry_errors=False,
        retryable_http=GRPC_UNAVAILABLE_HTTP,
    )


def _grpc_always(success: frozenset[int], _params: Mapping[str, Any], _where: str) -> GrpcClassifier:
    return GrpcClassifier("io.l5d.h2.grpc.alwaysRetryable", lambda c: True, success, retry_errors=True)


def _grpc_never(success: frozenset[int], _params: Mapping[str, Any], _where: str) -> GrpcClassifier:
    return GrpcClassifier("io.l5d.h2.grpc.neverRetryable", lambda c: False, success, retry_errors=False)


def _grpc_codes(success: frozenset[int], params: Mapping[str, Any], where: str) -> GrpcClassifier:
    if "retryableStatusCodes" not in params:
        raise ClassifierConfigError(
            f"{where}.retryableStatusCodes: required for kind 'io.l5d.h2.grpc.retryableStatusCodes'; "
            "list the grpc-status codes to retry, e.g. [14]"
        )
    codes = _codes(params["retryableStatusCodes"], f"{where}.retryableStatusCodes")
    return GrpcClassifier(
        "io.l5d.h2.grpc.retryableStatusCodes", lambda c: c in codes, success, retry_errors=False
    )


GRPC_CLASSIFIERS: dict[str, Callable[[frozenset[int], Mapping[str, Any], str], GrpcClassifier]] = {
    "io.l5d.h2.grpc.default": _grpc_default,
    "io.l5d.h2.grpc.compliant": _grpc_compliant,
    "io.l5d.h2.grpc.alwaysRetryable": _grpc_always,
    "io.l5d.h2.grpc.neverRetryable": _grpc_never,
    "io.l5d.h2.grpc.retryableStatusCodes": _grpc_codes,
}


def _codes(value: Any, where: str) -> frozenset[int]:
    if not isinstance(value, Iterable) or isinstance(value, str | bytes | Mapping):
        raise ClassifierConfigError(f"{where}: expected a list of grpc-status codes (0..16), got {value!r}")
    out = set()
    for v in value:
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 16:
            raise ClassifierConfigError(f"{where}: {v!r} is not a grpc-status code; use integers 0..16")
        out.add(v)
    return frozenset(out)


def classifier_from_config(
    cfg: Mapping[str, Any] | None, where: str = "responseClassifier"
) -> HttpClassifier | GrpcClassifier:
    """Build the classifier named by `cfg['kind']` (default `io.l5d.http.nonRetryable5XX`)."""
    if not cfg:
        return DEFAULT_HTTP_CLASSIFIER
    kind = cfg.get("kind")
    if kind in HTTP_CLASSIFIERS:
        extra = sorted(set(cfg) - {"kind"})
        if extra:
            raise ClassifierConfigError(
                f"{where}: unknown key {extra[0]!r} for kind {kind!r}; it takes no options"
            )
        return HTTP_CLASSIFIERS[kind]
    if kind in GRPC_CLASSIFIERS:
        allowed = {"kind", "successStatusCodes"}
        if kind == "io.l5d.h2.grpc.retryableStatusCodes":
            allowed.add("retryableStatusCodes")
        extra = sorted(set(cfg) - allowed)
        if extra:
            raise ClassifierConfigError(
                f"{where}: unknown key {extra[0]!r} for kind {kind!r}; allowed keys: "
                + ", ".join(sorted(allowed))
            )
        success = frozenset({0})
        if "successStatusCodes" in cfg:
            success = _codes(cfg["successStatusCodes"], f"{where}.successStatusCodes")
        return GRPC_CLASSIFIERS[kind](success, cfg, where)
    valid = ", ".join(sorted(HTTP_CLASSIFIERS) + sorted(GRPC_CLASSIFIERS))
    raise ClassifierConfigError(
        f"{where}.kind: unknown response classifier {kind!r}; expected one of: {valid}"
    )
