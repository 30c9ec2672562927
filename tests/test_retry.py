"""Retry policy (pure, injected clock and rng), deadlines, l5d-retryable, replayable bodies."""

from __future__ import annotations

import random

import pytest

from hostproxy.backoff import constant, jittered
from hostproxy.budget import BudgetConfig, RetryBudget
from hostproxy.causes import Cause
from hostproxy.classifier import HTTP_CLASSIFIERS, ResponseClass, classifier_from_config
from hostproxy.config import load_config, service_params_for
from hostproxy.http.message import Body
from hostproxy.retry import (
    Deadline,
    RetryPolicy,
    Verdict,
    buffer_body_for_retry,
    deadline_from_headers,
    effective_deadline,
    parse_deadline,
    parse_retryable_header,
)

READ = HTTP_CLASSIFIERS["io.l5d.http.retryableRead5XX"]
NON = HTTP_CLASSIFIERS["io.l5d.http.nonRetryable5XX"]
NOW = 1_700_000_000_000_000_000


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def budget(clock: Clock, *, min_per_sec: float = 0, pct: float = 0.2) -> RetryBudget:
    return RetryBudget(BudgetConfig(10, min_per_sec, pct), clock)


def policy(clock: Clock, classifier=READ, **kw) -> RetryPolicy:  # type: ignore[no-untyped-def]
    return RetryPolicy(kw.pop("budget", None) or budget(clock, min_per_sec=10), constant(0), classifier, **kw)


# -- decisions -------------------------------------------------------------------------------------


def test_retryable_5xx_is_retried_and_counted() -> None:
    p = policy(Clock())
    a = p.start("GET", replayable=True)
    d = a.decide(503, Cause.UPSTREAM_5XX, now_ns=NOW)
    assert (d.verdict, d.response_class, d.delay_s, d.reason) == (
        Verdict.RETRY,
        ResponseClass.RETRYABLE_FAILURE,
        0.0,
        "retryable",
    )
    assert a.decide(200, None, now_ns=NOW).verdict is Verdict.GIVE_UP
    assert a.finish() == 1
    assert a.finish() == 1  # recorded once
    s = p.statistics()
    assert (s["total"], s["budget_exhausted"], s["per_request"]) == (1, 0, {1: 1})


def test_success_and_non_retryable_give_up() -> None:
    p = policy(Clock())
    a = p.start("POST", replayable=True)
    assert a.decide(200, None, now_ns=NOW).reason == "success"
    d = a.decide(500, Cause.UPSTREAM_5XX, now_ns=NOW)
    assert (d.verdict, d.response_class, d.reason) == (
        Verdict.GIVE_UP,
        ResponseClass.FAILURE,
        "not_retryable",
    )
    assert p.statistics()["total"] == 0


def test_l5d_retryable_header_from_downstream_makes_it_retryable() -> None:
    p = policy(Clock(), classifier=NON)
    a = p.start("POST", replayable=True)
    assert a.decide(502, Cause.UPSTREAM_5XX, now_ns=NOW, l5d_retryable=b"false").verdict is Verdict.GIVE_UP
    d = a.decide(502, Cause.UPSTREAM_5XX, now_ns=NOW, l5d_retryable=b"true")
    assert d.verdict is Verdict.RETRY


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, False),
        ("true", True),
        (b"TRUE", True),
        (" true ", True),
        ("false", False),
        ("1", False),
        ("yes", False),
    ],
)
def test_parse_retryable_header(value: str | bytes | None, expected: bool) -> None:
    assert parse_retryable_header(value) is expected


def test_unreplayable_body_is_never_retried() -> None:
    p = policy(Clock())
    a = p.start("GET", replayable=False)
    d = a.decide(503, Cause.UPSTREAM_5XX, now_ns=NOW)
    assert (d.verdict, d.response_class, d.reason) == (
        Verdict.GIVE_UP,
        ResponseClass.FAILURE,
        "body_not_replayable",
    )
    assert p.statistics()["cannot_retry"] == 1
    # A failure that is not retryable anyway is not counted as cannot_retry.
    p.start("POST", replayable=False).decide(503, Cause.UPSTREAM_5XX, now_ns=NOW)
    assert p.statistics()["cannot_retry"] == 1


def test_budget_exhaustion() -> None:
    clock = Clock()
    p = policy(clock, budget=budget(clock, min_per_sec=0, pct=0.2))
    # Four requests deposit 0.8 tokens: not enough for one retry.
    attempts = [p.start("GET", replayable=True) for _ in range(4)]
    d = attempts[0].decide(503, Cause.UPSTREAM_5XX, now_ns=NOW)
    assert (d.verdict, d.reason) == (Verdict.GIVE_UP, "budget_exhausted")
    # A fifth request makes it one whole token.
    p.start("GET", replayable=True)
    assert attempts[1].decide(503, Cause.UPSTREAM_5XX, now_ns=NOW).verdict is Verdict.RETRY
    assert attempts[2].decide(503, Cause.UPSTREAM_5XX, now_ns=NOW).reason == "budget_exhausted"
    s = p.statistics()
    assert (s["total"], s["budget_exhausted"]) == (1, 2)
    # Deposits age out after ttlSecs.
    clock.t += 11
    for _ in range(5):
        p.start("GET", replayable=True)
    clock.t += 11
    assert attempts[3].decide(503, Cause.UPSTREAM_5XX, now_ns=NOW).reason == "budget_exhausted"


def test_per_request_limit() -> None:
    p = policy(Clock(), max_retries_per_request=2)
    a = p.start("GET", replayable=True)
    verdicts = [a.decide(503, Cause.UPSTREAM_5XX, now_ns=NOW).reason for _ in range(3)]
    assert verdicts == ["retryable", "retryable", "request_limit"]
    assert p.statistics()["request_limit"] == 1


def test_jittered_backoff_delays_are_the_policy_stream() -> None:
    clock = Clock()
    rng = random.Random(7)
    p = RetryPolicy(budget(clock, min_per_sec=10), jittered(10, 1000, rng), READ)
    a = p.start("GET", replayable=True)
    delays = [a.decide(503, Cause.UPSTREAM_5XX, now_ns=NOW).delay_s for _ in range(4)]
    expected = jittered(10, 1000, random.Random(7)).stream()
    assert delays == [next(expected) for _ in range(4)]
    assert delays[0] == 0.01
    # A new request starts its own stream from minMs.
    assert p.start("GET", replayable=True).decide(503, Cause.UPSTREAM_5XX, now_ns=NOW).delay_s == 0.01


def test_deadline_stops_retries_that_would_start_too_late() -> None:
    clock = Clock()
    p = RetryPolicy(budget(clock, min_per_sec=10), constant(100), READ)
    a = p.start("GET", replayable=True, deadline=Deadline(NOW, NOW + 150_000_000))
    assert a.decide(503, Cause.UPSTREAM_5XX, now_ns=NOW).verdict is Verdict.RETRY
    d = a.decide(503, Cause.UPSTREAM_5XX, now_ns=NOW + 100_000_000)
    assert (d.verdict, d.reason) == (Verdict.GIVE_UP, "deadline")
    assert p.statistics()["deadline"] == 1
    # The token was not spent on a retry that could not happen.
    assert p.budget.withdrawals == 1


def test_requeue_of_unwritten_request_uses_requeue_budget_without_backoff() -> None:
    clock = Clock()
    rq = budget(clock, min_per_sec=0, pct=1.0)
    p = RetryPolicy(budget(clock, min_per_sec=10), constant(500), NON, requeue_budget=rq)
    a = p.start("POST", replayable=True)  # deposits one whole requeue token
    d = a.decide(None, Cause.CONNECT_REFUSED, now_ns=NOW)
    assert (d.verdict, d.delay_s) == (Verdict.REQUEUE, 0.0)
    # Requeue budget spent; the non-retrying classifier does not retry a POST either.
    d = a.decide(None, Cause.CONNECT_REFUSED, now_ns=NOW)
    assert (d.verdict, d.reason) == (Verdict.GIVE_UP, "not_retryable")
    # A written failure (reset) is never requeued.
    b = p.start("POST", replayable=True)
    assert b.decide(None, Cause.UPSTREAM_RESET, now_ns=NOW).verdict is Verdict.GIVE_UP
    s = p.statistics()
    assert (s["requeues"], s["total"]) == (1, 0)
    assert a.requeues == 1 and a.retries == 0


def test_without_requeue_budget_connect_failures_follow_the_classifier() -> None:
    p = policy(Clock())  # retryableRead5XX, no requeue budget: requeues are the client's job
    d = p.start("GET", replayable=True).decide(None, Cause.CONNECT_REFUSED, now_ns=NOW)
    assert d.verdict is Verdict.RETRY
    d = p.start("POST", replayable=True).decide(None, Cause.CONNECT_REFUSED, now_ns=NOW)
    assert d.verdict is Verdict.GIVE_UP


def test_grpc_classifier() -> None:
    grpc = classifier_from_config({"kind": "io.l5d.h2.grpc.default"})
    p = policy(Clock(), classifier=grpc)
    a = p.start("POST", replayable=True)
    assert a.decide(200, None, now_ns=NOW, grpc_status=14).verdict is Verdict.RETRY
    assert a.decide(200, None, now_ns=NOW, grpc_status=13).reason == "not_retryable"
    assert a.decide(200, None, now_ns=NOW, grpc_status=0).reason == "success"


def test_per_request_sink_and_distribution() -> None:
    seen: list[int] = []
    p = policy(Clock(), per_request_sink=seen.append)
    p.start("GET", replayable=True).finish()
    a = p.start("GET", replayable=True)
    a.decide(503, Cause.UPSTREAM_5XX, now_ns=NOW)
    a.decide(503, Cause.UPSTREAM_5XX, now_ns=NOW)
    a.finish()
    assert seen == [0, 2]
    assert p.statistics()["per_request"] == {0: 1, 2: 1}


def test_from_params_reads_service_config() -> None:
    cfg = load_config(
        """
routers:
- protocol: http
  dtab: /svc => /$/inet/127.0.0.1/1;
  servers: [{port: 4140}]
  service:
    responseClassifier: {kind: io.l5d.http.retryableIdempotent5XX}
    retries:
      budget: {ttlSecs: 5, minRetriesPerSec: 0, percentCanRetry: 0.5}
      backoff: {kind: jittered, minMs: 20, maxMs: 200}
""",
        source="test.yaml",
    )
    params = service_params_for(cfg.routers[0], "/svc/web")
    clock = Clock()
    p = RetryPolicy.from_params(params, clock=clock, rng=random.Random(1))
    s = p.statistics()
    assert s["classifier"] == "io.l5d.http.retryableIdempotent5XX"
    assert s["backoff"] == {"kind": "jittered", "minMs": 20, "maxMs": 200}
    assert p.budget.config == BudgetConfig(5, 0, 0.5)
    # Linkerd's defaults when nothing is configured.
    d = RetryPolicy.default(clock).statistics()
    assert (d["classifier"], d["backoff"], d["budget"]) == (
        "io.l5d.http.nonRetryable5XX",
        {"kind": "constant", "ms": 0},
        100,
    )


# -- deadlines ---------------------------------------------------------------------------------------


def test_parse_and_format_deadline() -> None:
    d = parse_deadline(b"1700000000000000000 1700000000250000000")
    assert d == Deadline(1_700_000_000_000_000_000, 1_700_000_000_250_000_000)
    assert d.header_value() == "1700000000000000000 1700000000250000000"
    assert d.remaining_s(1_700_000_000_100_000_000) == pytest.approx(0.15)
    assert not d.expired(1_700_000_000_249_999_999) and d.expired(1_700_000_000_250_000_000)


@pytest.mark.parametrize("bad", ["", "12", "1 2 3", "a b", "1.5 2", "١ ٢"])
def test_malformed_deadline_says_what_is_expected(bad: str) -> None:
    with pytest.raises(
        ValueError,
        match=r"^l5d-ctx-deadline .* is malformed: expected '<timestamp_ns> <deadline_ns>', two integers",
    ):
        parse_deadline(bad)


def test_strictest_deadline_wins_and_bad_values_are_ignored() -> None:
    d = deadline_from_headers([b"100 900", "garbage", "200 800, 150 950"])
    assert d == Deadline(200, 800)
    assert deadline_from_headers([]) is None
    assert deadline_from_headers(["nope"]) is None


def test_effective_deadline() -> None:
    inbound = Deadline(NOW - 1000, NOW + 500_000_000)
    # totalTimeoutMs 100 is stricter than the inbound 500 ms.
    assert effective_deadline(NOW, inbound, 100) == Deadline(NOW, NOW + 100_000_000)
    # totalTimeoutMs 1000 is looser: the inbound deadline stands (timestamp: the later one).
    assert effective_deadline(NOW, inbound, 1000) == Deadline(NOW, NOW + 500_000_000)
    assert effective_deadline(NOW, None, 100) == Deadline(NOW, NOW + 100_000_000)
    assert effective_deadline(NOW, inbound, None) == inbound
    assert effective_deadline(NOW, None, None) is None


# -- replayable bodies -----------------------------------------------------------------------------------


class ChunkSource:
    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = list(chunks)
        self.reads = 0
        self.closed = False

    async def read_chunk(self) -> bytes | None:
        self.reads += 1
        return self.chunks.pop(0) if self.chunks else None

    @property
    def trailers(self) -> None:
        return None

    async def aclose(self) -> None:
        self.closed = True


async def test_small_body_with_content_length_is_buffered_and_replayable() -> None:
    src = ChunkSource([b"hello ", b"world"])
    factory = await buffer_body_for_retry(Body(src, 11), limit=16)
    assert factory is not None
    first, second = factory(), factory()
    assert await first.read_all() == b"hello world"
    assert await second.read_all() == b"hello world"
    assert factory().content_length == 11


async def test_chunked_or_large_body_is_not_buffered_or_touched() -> None:
    src = ChunkSource([b"x" * 10])
    assert await buffer_body_for_retry(Body(src, None), limit=16) is None
    big = ChunkSource([b"x" * 17])
    assert await buffer_body_for_retry(Body(big, 17), limit=16) is None
    assert src.reads == 0 and big.reads == 0


async def test_empty_body_is_replayable() -> None:
    factory = await buffer_body_for_retry(Body.empty(), limit=0)
    assert factory is not None and await factory().read_all() == b""
