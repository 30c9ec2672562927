"""Retries as Linkerd 1 does them, as a pure policy object; deadlines; replayable request bodies.

Theory of operation
-------------------
A :class:`RetryPolicy` belongs to one service (one logical name, ``service.retries``). It owns the
service's :class:`~hostproxy.budget.RetryBudget`, its backoff policy and its response classifier, and
counts what it decided. For each request the router calls :meth:`RetryPolicy.start`, which deposits into
the budget and returns a :class:`RetryAttempts` — the per-request state. After every failed attempt the
router asks :meth:`RetryAttempts.decide`, which returns a :class:`Decision`:

* **requeue** — the failure happened before the request was written (connect refused, unreachable,
  connect timeout, TLS: ``Cause.written`` is False), so any method is safe to send again. Requeues are
  immediate (no backoff) and spend the *requeue* budget when one was given (``client.requeueBudget``);
  without one the policy leaves requeues to the client and only retries.
* **retry** — the classifier said ``RETRYABLE_FAILURE`` (a ``l5d-retryable: true`` response from a
  downstream hostproxy or Linkerd counts, as in Linkerd). The retry waits for the next backoff delay and
  spends one token of the service's retry budget.
* **give up**, with the reason: not retryable; the body cannot be replayed (chunked, or longer than the
  retry buffer — as Linkerd, such a request is never retried); the per-request limit; the deadline
  would pass before the retry starts; the budget is exhausted.

When the request ends the router calls :meth:`RetryAttempts.finish`, which records how many retries it
took (``retries/per_request``). A caller that knows most requests end after one attempt may split
``start`` into :meth:`RetryPolicy.begin` (the deposit, when the request begins) and
:meth:`RetryPolicy.attempts` (the per-request state, made only when an attempt failed), and record a
request that never needed one with :meth:`RetryPolicy.unretried`: the counts and budget are the same. Counters (``statistics()``): ``total`` (retries sent),
``budget_exhausted``, ``requeues``, ``cannot_retry`` (body not replayable), ``request_limit``,
``deadline``. Metric names follow Linkerd: ``service/<svc>/retries/{total,budget_exhausted,per_request}``.

Deadlines: ``l5d-ctx-deadline`` carries ``"<timestamp_ns> <deadline_ns>"`` (nanoseconds since the
epoch: when it was set, and when it expires). Several values combine to the strictest (latest timestamp,
earliest deadline). :func:`effective_deadline` combines the inbound deadline with the service's
``totalTimeoutMs`` counted from now; the result is what the router enforces and propagates downstream.

:func:`buffer_body_for_retry` is the one async piece: it reads a request body whose ``Content-Length`` is
known and at most ``limit`` bytes, and returns a factory of fresh, identical bodies (the first attempt
uses one too); anything else returns None and the body is streamed once, untouched.
:class:`ReplayableStream` is the h2 router's way for a body with no ``Content-Length`` (gRPC): it keeps
what it streams while that fits ``limit``, so an attempt can be sent again without first reading the
whole body (a client-streaming call may wait for an answer before it ends its stream).
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from hostproxy.backoff import Backoff, backoff_from_config, constant
from hostproxy.budget import BudgetConfig, RetryBudget
from hostproxy.causes import Cause
from hostproxy.classifier import (
    DEFAULT_HTTP_CLASSIFIER,
    GrpcClassifier,
    HttpClassifier,
    ResponseClass,
    classifier_from_config,
)
from hostproxy.http.message import Body

__all__ = [
    "DEFAULT_MAX_RETRIES_PER_REQUEST",
    "DEFAULT_RETRY_BUFFER_BYTES",
    "DEADLINE_HEADER",
    "Deadline",
    "Decision",
    "RetryAttempts",
    "ReplayableStream",
    "RetryPolicy",
    "Verdict",
    "buffer_body_for_retry",
    "deadline_from_headers",
    "effective_deadline",
    "parse_deadline",
    "parse_retryable_header",
]

DEADLINE_HEADER = "l5d-ctx-deadline"
# Largest request body kept so it can be sent again (Linkerd's h2 retryBufferSize.requestBytes).
DEFAULT_RETRY_BUFFER_BYTES = 16383
# A safety net under the budget: no single request is retried more often than this.
DEFAULT_MAX_RETRIES_PER_REQUEST = 25

Classifier = HttpClassifier | GrpcClassifier


# -- deadlines -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Deadline:
    """Finagle's deadline: set at ``timestamp_ns``, expires at ``deadline_ns`` (ns since the epoch)."""

    timestamp_ns: int
    deadline_ns: int

    def combined(self, other: Deadline | None) -> Deadline:
        """The strictest of the two: the later timestamp and the earlier deadline."""
        if other is None:
            return self
        return Deadline(max(self.timestamp_ns, other.timestamp_ns), min(self.deadline_ns, other.deadline_ns))

    def remaining_s(self, now_ns: int) -> float:
        """Seconds left at ``now_ns`` (negative once expired)."""
        return (self.deadline_ns - now_ns) / 1e9

    def expired(self, now_ns: int) -> bool:
        return now_ns >= self.deadline_ns

    def header_value(self) -> str:
        return f"{self.timestamp_ns} {self.deadline_ns}"


def parse_deadline(text: str | bytes) -> Deadline:
    """Parse one ``l5d-ctx-deadline`` value; ValueError says what was wrong."""
    if isinstance(text, bytes):
        text = text.decode("latin-1")
    parts = text.split()
    if len(parts) != 2 or not all(p.isascii() and p.lstrip("-").isdigit() for p in parts):
        raise ValueError(
            f"l5d-ctx-deadline {text!r} is malformed: expected '<timestamp_ns> <deadline_ns>', "
            "two integers (nanoseconds since the epoch)"
        )
    return Deadline(int(parts[0]), int(parts[1]))


def deadline_from_headers(values: Iterable[str | bytes]) -> Deadline | None:
    """The strictest deadline among ``l5d-ctx-deadline`` header values (comma lists allowed).

    Malformed values are ignored: the header is advisory, and one bad hop must not fail the request.
    """
    out: Deadline | None = None
    for value in values:
        raw = value.decode("latin-1") if isinstance(value, bytes) else value
        for item in raw.split(","):
            try:
                d = parse_deadline(item)
            except ValueError:
                continue
            out = d.combined(out)
    return out


def effective_deadline(
    now_ns: int, inbound: Deadline | None, total_timeout_ms: int | None
) -> Deadline | None:
    """The stricter of the inbound deadline and ``totalTimeoutMs`` counted from ``now_ns``."""
    own = None if total_timeout_ms is None else Deadline(now_ns, now_ns + total_timeout_ms * 1_000_000)
    if own is None:
        return inbound
    return own.combined(inbound)


def parse_retryable_header(value: str | bytes | None) -> bool:
    """``l5d-retryable`` as set by a downstream proxy: only ``true`` (any case) means retryable."""
    if value is None:
        return False
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    return value.strip().lower() == "true"


# -- decisions -----------------------------------------------------------------------------------------


class Verdict(enum.Enum):
    REQUEUE = "requeue"
    RETRY = "retry"
    GIVE_UP = "give_up"


@dataclass(frozen=True)
class Decision:
    """What to do after a failed attempt: ``verdict``, the ``delay_s`` before it, and why."""

    verdict: Verdict
    response_class: ResponseClass
    delay_s: float = 0.0
    reason: str = ""

    @property
    def again(self) -> bool:
        return self.verdict is not Verdict.GIVE_UP


def _mapping(cfg: Any) -> Any:
    """A plugin config dataclass as the Linkerd-style mapping the pure cores take."""
    from hostproxy.config.model import plugin_mapping

    return plugin_mapping(cfg)


class RetryPolicy:
    """One service's retry policy and counters (see the module docstring)."""

    def __init__(
        self,
        budget: RetryBudget,
        backoff: Backoff,
        classifier: Classifier = DEFAULT_HTTP_CLASSIFIER,
        *,
        requeue_budget: RetryBudget | None = None,
        max_retries_per_request: int = DEFAULT_MAX_RETRIES_PER_REQUEST,
        buffer_bytes: int = DEFAULT_RETRY_BUFFER_BYTES,
        per_request_sink: Callable[[int], None] | None = None,
    ) -> None:
        self.budget = budget
        self.backoff = backoff
        self.classifier = classifier
        self.requeue_budget = requeue_budget
        self.max_retries_per_request = max_retries_per_request
        self.buffer_bytes = buffer_bytes
        self.per_request_sink = per_request_sink
        self.total = 0
        self.budget_exhausted = 0
        self.requeues = 0
        self.cannot_retry = 0
        self.request_limit = 0
        self.deadline = 0
        self.client_gone = 0  # retries not made: the client had closed its connection
        self.requests = 0
        # Distribution of retries per finished request: {retries: requests}, bounded by the limit.
        self.per_request: dict[int, int] = {}

    @classmethod
    def from_params(
        cls,
        params: Any,
        *,
        clock: Callable[[], float],
        rng: random.Random,
        requeue_budget: RetryBudget | None = None,
        per_request_sink: Callable[[int], None] | None = None,
        buffer_bytes: int | None = None,
    ) -> RetryPolicy:
        """Build from a loaded ``ServiceParams`` (``retries``, ``responseClassifier``; h2 ``retryBufferSize``).
        ``buffer_bytes``: the largest request body kept for a retry when the router sets it (HTTP/1.1:
        from ``streamAfterContentLengthKB``); else h2's ``retryBufferSize.requestBytes`` or the default."""
        b = params.retries.budget
        budget = RetryBudget(BudgetConfig(b.ttl_secs, b.min_retries_per_sec, b.percent_can_retry), clock)
        backoff = backoff_from_config(_mapping(params.retries.backoff), rng, "service.retries.backoff")
        classifier = classifier_from_config(
            _mapping(params.response_classifier), "service.responseClassifier"
        )
        if buffer_bytes is None:
            buffer_size = getattr(params, "retry_buffer_size", None)
            buffer_bytes = (
                buffer_size.request_bytes if buffer_size is not None else DEFAULT_RETRY_BUFFER_BYTES
            )
        return cls(
            budget,
            backoff,
            classifier,
            requeue_budget=requeue_budget,
            buffer_bytes=buffer_bytes,
            per_request_sink=per_request_sink,
        )

    @classmethod
    def default(cls, clock: Callable[[], float]) -> RetryPolicy:
        """Linkerd's defaults: budget 10 s / 10 per s / 20 %, constant 0 ms backoff, nonRetryable5XX."""
        return cls(RetryBudget(BudgetConfig(), clock), constant(0))

    def start(self, method: str, *, replayable: bool, deadline: Deadline | None = None) -> RetryAttempts:
        """A request begins: deposit into the budget(s) and return its per-request state."""
        self.begin()
        return RetryAttempts(self, method, replayable, deadline)

    def begin(self) -> None:
        """A request begins: deposit into the budget(s) (:meth:`start` without its per-request state)."""
        self.requests += 1
        self.budget.deposit()
        if self.requeue_budget is not None:
            self.requeue_budget.deposit()

    def begin_at(self, now: float) -> None:
        """:meth:`begin` with ``now`` just read from the retry budget's clock (the ``clock`` the
        policy was built with); a requeue budget, built elsewhere, reads its own."""
        self.requests += 1
        self.budget.deposit_at(now)
        if self.requeue_budget is not None:
            self.requeue_budget.deposit()

    def attempts(self, method: str, *, replayable: bool, deadline: Deadline | None = None) -> RetryAttempts:
        """The per-request state of a request that :meth:`begin` counted (no second deposit)."""
        return RetryAttempts(self, method, replayable, deadline)

    def unretried(self) -> int:
        """A request that :meth:`begin` counted ended without a :meth:`attempts` state: record it as
        :meth:`RetryAttempts.finish` records a request with no retries; returns 0."""
        self._record(0)
        return 0

    def _record(self, retries: int) -> None:
        self.per_request[retries] = self.per_request.get(retries, 0) + 1
        if self.per_request_sink is not None:
            self.per_request_sink(retries)

    def statistics(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "budget_exhausted": self.budget_exhausted,
            "requeues": self.requeues,
            "cannot_retry": self.cannot_retry,
            "request_limit": self.request_limit,
            "deadline": self.deadline,
            "client_gone": self.client_gone,
            "requests": self.requests,
            "budget": self.budget.balance(),
            "per_request": dict(sorted(self.per_request.items())),
            "backoff": self.backoff.describe(),
            "classifier": self.classifier.kind,
        }

    def __repr__(self) -> str:
        return f"<RetryPolicy total={self.total} budget={self.budget.balance()} exhausted={self.budget_exhausted}>"


class RetryAttempts:
    """The retry state of one request: created by :meth:`RetryPolicy.start`."""

    __slots__ = ("policy", "method", "replayable", "deadline", "retries", "requeues", "_delays", "_finished")

    def __init__(self, policy: RetryPolicy, method: str, replayable: bool, deadline: Deadline | None) -> None:
        self.policy = policy
        self.method = method
        self.replayable = replayable
        self.deadline = deadline
        self.retries = 0
        self.requeues = 0
        self._delays: Iterator[float] | None = None
        self._finished = False

    def classify(
        self,
        status: int | None,
        cause: Cause | None,
        *,
        l5d_retryable: str | bytes | bool | None = None,
        grpc_status: int | None = None,
    ) -> ResponseClass:
        """The classifier's verdict for this attempt (chunked / unbuffered bodies are never retryable)."""
        return self._classify(status, cause, l5d_retryable, grpc_status, chunked=not self.replayable)

    def _classify(
        self,
        status: int | None,
        cause: Cause | None,
        l5d_retryable: str | bytes | bool | None,
        grpc_status: int | None,
        *,
        chunked: bool,
    ) -> ResponseClass:
        c = self.policy.classifier
        if isinstance(c, GrpcClassifier):
            return c.classify(self.method, status, cause, grpc_status=grpc_status, request_chunked=chunked)
        flag = l5d_retryable if isinstance(l5d_retryable, bool) else parse_retryable_header(l5d_retryable)
        return c.classify(self.method, status, cause, l5d_retryable=flag, request_chunked=chunked)

    def decide(
        self,
        status: int | None,
        cause: Cause | None,
        *,
        now_ns: int,
        l5d_retryable: str | bytes | bool | None = None,
        grpc_status: int | None = None,
        client_gone: Callable[[], bool] | None = None,
    ) -> Decision:
        """After an attempt: requeue, retry (after ``delay_s``) or give up. Successes give up at once.
        ``client_gone``: asked before a retry is granted (the budget untouched when it says True):
        no one is waiting for the answer, so another attempt would only load the upstream."""
        p = self.policy
        rc = self.classify(status, cause, l5d_retryable=l5d_retryable, grpc_status=grpc_status)
        if rc is ResponseClass.SUCCESS:
            return Decision(Verdict.GIVE_UP, rc, reason="success")
        if cause is not None and not cause.written and p.requeue_budget is not None:
            if not self.replayable:
                p.cannot_retry += 1
                return Decision(Verdict.GIVE_UP, rc, reason="body_not_replayable")
            if self.deadline is not None and self.deadline.expired(now_ns):
                p.deadline += 1
                return Decision(Verdict.GIVE_UP, rc, reason="deadline")
            if p.requeue_budget.try_withdraw():
                self.requeues += 1
                p.requeues += 1
                return Decision(Verdict.REQUEUE, rc, reason=f"requeue after {cause.value}")
            # No requeue budget left: it may still be retried as an ordinary retry below.
        if not rc.is_retryable:
            if (
                not self.replayable
                and self._classify(status, cause, l5d_retryable, grpc_status, chunked=False).is_retryable
            ):
                # Retryable but for its body, which was streamed and cannot be sent again.
                p.cannot_retry += 1
                return Decision(Verdict.GIVE_UP, rc, reason="body_not_replayable")
            return Decision(Verdict.GIVE_UP, rc, reason="not_retryable")
        if self.retries >= p.max_retries_per_request:
            p.request_limit += 1
            return Decision(Verdict.GIVE_UP, rc, reason="request_limit")
        if self._delays is None:
            self._delays = p.backoff.stream()
        delay = next(self._delays)
        if self.deadline is not None and now_ns + int(delay * 1e9) >= self.deadline.deadline_ns:
            p.deadline += 1
            return Decision(Verdict.GIVE_UP, rc, delay_s=delay, reason="deadline")
        if client_gone is not None and client_gone():
            p.client_gone += 1
            return Decision(Verdict.GIVE_UP, rc, reason="client_gone")
        if not p.budget.try_withdraw():
            p.budget_exhausted += 1
            return Decision(Verdict.GIVE_UP, rc, reason="budget_exhausted")
        self.retries += 1
        p.total += 1
        return Decision(Verdict.RETRY, rc, delay_s=delay, reason="retryable")

    def finish(self) -> int:
        """The request ended: record its retry count (``retries/per_request``) once; returns it."""
        if not self._finished:
            self._finished = True
            self.policy._record(self.retries)
        return self.retries

    def __repr__(self) -> str:
        return f"<RetryAttempts {self.method} retries={self.retries} requeues={self.requeues}>"


# -- replayable bodies -----------------------------------------------------------------------------------


async def buffer_body_for_retry(
    body: Body, limit: int = DEFAULT_RETRY_BUFFER_BYTES
) -> Callable[[], Body] | None:
    """Read a small request body so it can be sent again; None (body untouched) when it cannot be.

    Only a body with a known ``Content-Length`` of at most ``limit`` bytes is buffered; a chunked body
    or a larger one is streamed once and never retried, as in Linkerd. The returned factory makes a
    fresh in-memory body with the same bytes on every call: use one for the first attempt too.
    """
    if body.content_length is None or body.content_length > limit:
        return None
    data = await body.read_all(limit)
    trailers = body.trailers

    def replay() -> Body:
        return Body.from_bytes(data, trailers)

    return replay


class _Superseded(Exception):
    """An older attempt's body read after a newer attempt started: its upstream stream is reset."""


class ReplayableStream:
    """A streamed request body that can be sent again while what was read of it fits ``limit``.

    Each attempt's body (:meth:`next_body`) first replays the chunks kept so far, then goes on with the
    original stream, keeping each chunk it reads. The chunk that takes the total past ``limit`` is still
    kept (so that whichever attempt is current sends it), ``replayable`` turns False, no attempt may
    start after that, and once the current attempt has sent what is kept it reads straight through and
    the kept chunks are let go: the whole body is always sent, nothing is lost. A newer attempt makes an
    older one's body fail its next read, so the older upstream stream is reset rather than ended. The
    original is read by one attempt at a time (a lock); a chunk that an attempt superseded meanwhile
    read is kept, so the newer attempt sends it.

    A caller that grants a retry makes its body (:meth:`next_body`) at once, before it waits for anything
    (the backoff): the failed attempt's upstream may still be taking the body, and what it read on would
    otherwise decide, after the retry was granted, whether the retry may start.

    Closing the current attempt's body before the original ended (the exchange is over, or the upstream
    stopped reading) closes the original, and the stream is no longer replayable: an attempt started
    after that could only send part of the body.
    """

    __slots__ = ("_body", "_limit", "_kept", "_size", "_full", "_generation", "_ended", "_lock", "replayable")

    def __init__(self, body: Body, limit: int = DEFAULT_RETRY_BUFFER_BYTES) -> None:
        import trio  # (the only part of this module that waits)

        self._body = body
        self._limit = limit
        self._kept: list[bytes] = []
        self._size = 0
        self._full = False  # past the limit: nothing more is kept
        self._generation = 0
        self._ended = False
        self._lock = trio.Lock()
        #: Whether another attempt may still send the whole body.
        self.replayable = True

    def next_body(self) -> Body:
        """The body of the next attempt (the first one included)."""
        assert self.replayable, "no attempt may start once the body cannot be replayed"
        self._generation += 1
        return Body(_StreamAttempt(self, self._generation), None)

    @property
    def trailers(self) -> Any:
        return self._body.trailers


class _StreamAttempt:
    """One attempt's view of a :class:`ReplayableStream` (a ``BodySource``)."""

    __slots__ = ("_s", "_gen", "_i", "_passing")

    def __init__(self, stream: ReplayableStream, generation: int) -> None:
        self._s = stream
        self._gen = generation
        self._i = 0  # the next kept chunk to send
        self._passing = False  # every kept chunk sent and nothing more kept: reading straight through

    async def read_chunk(self) -> bytes | None:
        s = self._s
        while True:
            if self._gen != s._generation:
                raise _Superseded("a newer attempt of this request is being sent")
            if self._passing:
                async with s._lock:
                    try:
                        return await s._body.__anext__()
                    except StopAsyncIteration:
                        s._ended = True
                        return None
            if self._i < len(s._kept):
                self._i += 1
                return s._kept[self._i - 1]
            if s._ended:
                return None
            if s._full:
                # No attempt can follow this one (the limit was passed): let the kept chunks go.
                s._kept = []
                self._passing = True
                continue
            async with s._lock:
                if self._i < len(s._kept) or s._ended or s._full:
                    continue  # another attempt read meanwhile: take it from what is kept
                try:
                    chunk = await s._body.__anext__()
                except StopAsyncIteration:
                    s._ended = True
                    continue
                s._kept.append(chunk)
                s._size += len(chunk)
                if s._size > s._limit:
                    s._full = True
                    s.replayable = False

    @property
    def trailers(self) -> Any:
        return self._s._body.trailers

    async def aclose(self) -> None:
        s = self._s
        if self._gen == s._generation and not s._ended:
            s.replayable = False
            s._full = True
            await s._body.aclose()
