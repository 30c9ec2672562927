"""Response classifiers: HTTP kinds, gRPC kinds, headers, config errors."""

import pytest

from hostproxy.causes import Cause
from hostproxy.classifier import (
    HTTP_CLASSIFIERS,
    ClassifierConfigError,
    GrpcClassifier,
    ResponseClass,
    classifier_from_config,
    retryable_header_value,
    success_class_header_value,
)

S, F, R = ResponseClass.SUCCESS, ResponseClass.FAILURE, ResponseClass.RETRYABLE_FAILURE
METHODS = ["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE", "POST", "PATCH", "CONNECT"]
RETRYABLE = {
    "io.l5d.http.nonRetryable5XX": set(),
    "io.l5d.http.retryableRead5XX": {"GET", "HEAD", "OPTIONS", "TRACE"},
    "io.l5d.http.retryableIdempotent5XX": {"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"},
    "io.l5d.http.retryableAll5XX": {"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE", "POST", "PATCH"},
}


def test_default_is_non_retryable_5xx():
    assert classifier_from_config(None).kind == "io.l5d.http.nonRetryable5XX"


@pytest.mark.parametrize("kind", sorted(RETRYABLE))
@pytest.mark.parametrize("method", METHODS)
def test_http_5xx_kinds(kind, method):
    c = classifier_from_config({"kind": kind})
    retry = method in RETRYABLE[kind]
    assert c.classify(method, 200, None) is S
    assert c.classify(method, 404, None) is S
    assert c.classify(method, 500, None) is (R if retry else F)
    assert c.classify(method, 503, Cause.UPSTREAM_5XX) is (R if retry else F)
    assert c.classify(method.lower(), 502, None) is F  # methods are case-sensitive: `get` is not GET
    # errors: retryable only for retryable exceptions on retryable methods
    assert c.classify(method, None, Cause.CONNECT_REFUSED) is (R if retry else F)
    assert c.classify(method, None, Cause.TIMEOUT_ATTEMPT) is (R if retry else F)
    assert c.classify(method, None, Cause.UPSTREAM_RESET) is (R if retry else F)
    assert c.classify(method, None, Cause.TIMEOUT_REQUEST) is F
    assert c.classify(method, 502, Cause.PROXY_INTERNAL) is F
    # a chunked request is never retryable
    assert c.classify(method, 500, None, request_chunked=True) is F


@pytest.mark.parametrize("kind", sorted(RETRYABLE))
def test_l5d_retryable_header_makes_failure_retryable(kind):
    c = HTTP_CLASSIFIERS[kind]
    assert c.classify("POST", 502, None, l5d_retryable=True) is R
    assert c.classify("POST", 200, None, l5d_retryable=True) is S
    assert c.classify("POST", 502, None, l5d_retryable=True, request_chunked=True) is F


def test_all_successful():
    c = classifier_from_config({"kind": "io.l5d.http.allSuccessful"})
    assert c.classify("GET", 500, None) is S
    assert c.classify("POST", None, Cause.CONNECT_REFUSED) is S


def test_h2_aliases_exist():
    assert classifier_from_config({"kind": "io.l5d.h2.retryableRead5XX"}).classify("GET", 500, None) is R


def test_headers():
    assert success_class_header_value(S) == "1.0"
    assert success_class_header_value(F) == "0.0"
    assert success_class_header_value(R) == "0.0"
    assert retryable_header_value(Cause.CONNECT_REFUSED) == "true"
    assert retryable_header_value(Cause.TLS) == "true"
    assert retryable_header_value(Cause.UPSTREAM_RESET) == "false"
    assert retryable_header_value(Cause.TIMEOUT_REQUEST) == "false"


def grpc(cfg) -> GrpcClassifier:
    c = classifier_from_config(cfg)
    assert isinstance(c, GrpcClassifier)
    return c


@pytest.mark.parametrize("code", range(17))
def test_grpc_default(code):
    c = grpc({"kind": "io.l5d.h2.grpc.default"})
    expected = S if code == 0 else (R if code == 14 else F)
    assert c.classify("POST", 200, None, grpc_status=code) is expected


@pytest.mark.parametrize("code", range(1, 17))
def test_grpc_always_and_never(code):
    assert grpc({"kind": "io.l5d.h2.grpc.alwaysRetryable"}).classify("POST", 200, None, grpc_status=code) is R
    assert grpc({"kind": "io.l5d.h2.grpc.neverRetryable"}).classify("POST", 200, None, grpc_status=code) is F


def test_grpc_retryable_codes_and_success_codes():
    c = grpc(
        {
            "kind": "io.l5d.h2.grpc.retryableStatusCodes",
            "retryableStatusCodes": [4, 14],
            "successStatusCodes": [0, 5],
        }
    )
    assert c.classify("POST", 200, None, grpc_status=4) is R
    assert c.classify("POST", 200, None, grpc_status=14) is R
    assert c.classify("POST", 200, None, grpc_status=5) is S
    assert c.classify("POST", 200, None, grpc_status=2) is F
    assert c.classify("POST", 200, None, grpc_status=14, request_chunked=True) is F


def test_grpc_without_status_and_errors():
    c = grpc({"kind": "io.l5d.h2.grpc.default"})
    assert c.classify("POST", 200, None) is S
    assert c.classify("POST", 503, None) is F
    assert c.classify("POST", None, Cause.UPSTREAM_RESET) is F
    always = grpc({"kind": "io.l5d.h2.grpc.alwaysRetryable"})
    assert always.classify("POST", None, Cause.UPSTREAM_RESET) is R
    assert always.classify("POST", None, Cause.PROXY_INTERNAL) is F


@pytest.mark.parametrize("code", range(17))
def test_grpc_compliant_by_grpc_status(code):
    """Linkerd's Compliant: grpc-status 14 UNAVAILABLE retryable, other non-OK codes failures."""
    c = grpc({"kind": "io.l5d.h2.grpc.compliant"})
    expected = S if code == 0 else (R if code == 14 else F)
    assert c.classify("POST", 200, None, grpc_status=code) is expected


@pytest.mark.parametrize(
    ("status", "expected"),
    [(200, S), (404, S), (429, R), (500, F), (501, F), (502, R), (503, R), (504, R), (505, F)],
)
def test_grpc_compliant_by_http_status_without_grpc_status(status, expected):
    """Without a grpc-status, HTTP 429, 502, 503 and 504 (gRPC's UNAVAILABLE mapping) are retryable;
    other 5XX are failures, the rest succeed (as for the other gRPC kinds)."""
    c = grpc({"kind": "io.l5d.h2.grpc.compliant"})
    assert c.classify("POST", status, None) is expected
    assert c.classify("POST", status, None, request_chunked=True) is (F if expected is R else expected)


def test_grpc_compliant_errors_and_success_codes():
    c = grpc({"kind": "io.l5d.h2.grpc.compliant", "successStatusCodes": [0, 5]})
    assert c.classify("POST", 200, None, grpc_status=5) is S
    assert c.classify("POST", None, Cause.UPSTREAM_RESET) is F
    assert c.classify("POST", None, Cause.CONNECT_REFUSED) is F


def test_success_codes_replace_default():
    c = grpc({"kind": "io.l5d.h2.grpc.default", "successStatusCodes": [5]})
    assert c.classify("POST", 200, None, grpc_status=0) is F


@pytest.mark.parametrize(
    ("cfg", "msg"),
    [
        (
            {"kind": "io.l5d.http.nope"},
            r"^rc\.kind: unknown response classifier 'io\.l5d\.http\.nope'; expected one of: .*io\.l5d\.http\.retryableRead5XX.*$",
        ),
        (
            {"kind": "io.l5d.http.retryableRead5XX", "x": 1},
            r"^rc: unknown key 'x' for kind 'io\.l5d\.http\.retryableRead5XX'; it takes no options$",
        ),
        (
            {"kind": "io.l5d.h2.grpc.retryableStatusCodes"},
            r"^rc\.retryableStatusCodes: required for kind 'io\.l5d\.h2\.grpc\.retryableStatusCodes'; list the grpc-status codes to retry, e\.g\. \[14\]$",
        ),
        (
            {"kind": "io.l5d.h2.grpc.default", "successStatusCodes": [99]},
            r"^rc\.successStatusCodes: 99 is not a grpc-status code; use integers 0\.\.16$",
        ),
        (
            {"kind": "io.l5d.h2.grpc.default", "successStatusCodes": "0"},
            r"^rc\.successStatusCodes: expected a list of grpc-status codes \(0\.\.16\), got '0'$",
        ),
    ],
)
def test_config_errors(cfg, msg):
    with pytest.raises(ClassifierConfigError, match=msg):
        classifier_from_config(cfg, "rc")
