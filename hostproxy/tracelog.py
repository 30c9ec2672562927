"""Spans to the log: Linkerd's ``io.l5d.tracelog`` telemeter.

Theory of operation
-------------------
With an ``io.l5d.tracelog`` telemeter, every span hostproxy records (one per forwarded attempt, as for
``io.l5d.zipkin``: :class:`hostproxy.zipkin.AttemptRecorder`) of a sampled request is written to the
log as one structured event, ``trace.span``, on the logger ``io.l5d.tracelog`` at the telemeter's
``level`` (Linkerd's names: ``TRACE``, ``DEBUG``, ``INFO`` (the default), ``WARNING``, ``ERROR``,
``CRITICAL``, ``FATAL``, ``ALL``, ``OFF``). The event holds the ids (16 hex digits, ``traceIdHigh``
for a 128-bit trace), the name, the start and end in microseconds since the epoch, the duration, the
endpoint and the tags. A request that carries a sampling decision is logged as it says; one without,
at ``sampleRate`` (default 1.0), by its trace id, as the Zipkin exporter decides. Like Linkerd's, it
never changes what is forwarded. The logger's level can be changed at run time (``/logging``), which
turns the events off without a restart.
"""

from __future__ import annotations

import logging
import random
import time
from typing import Any

import structlog

from hostproxy.zipkin import SpanRecord, sample_trace

__all__ = ["TRACELOG_LEVELS", "TraceLogSink"]

LOGGER = "io.l5d.tracelog"
#: Linkerd's level names (``com.twitter.logging.Level``) and the Python level each logs at.
TRACELOG_LEVELS = {
    "ALL": logging.DEBUG,
    "TRACE": logging.DEBUG,
    "DEBUG": logging.DEBUG,
    "INFO": logging.INFO,
    "WARNING": logging.WARNING,
    "ERROR": logging.ERROR,
    "CRITICAL": logging.CRITICAL,
    "FATAL": logging.CRITICAL,
    "OFF": logging.CRITICAL + 10,
}


class TraceLogSink:
    """One ``io.l5d.tracelog`` telemeter: logs the spans of the requests it samples."""

    def __init__(self, sample_rate: float, level: str, *, rng: random.Random | None = None) -> None:
        self.sample_rate = min(1.0, max(0.0, sample_rate))
        self.level = TRACELOG_LEVELS[level.upper()]
        self._salt = (rng or random.Random()).getrandbits(64)
        self._log = structlog.get_logger(LOGGER)
        self._std = logging.getLogger(LOGGER)
        #: Spans written to the log.
        self.logged = 0

    def now_us(self) -> int:
        return int(time.time() * 1e6)

    def sampled(self, decision: bool | None, trace_id: int) -> bool:
        if self.level > logging.CRITICAL or not self._std.isEnabledFor(self.level):
            return False  # (OFF, or a level the logger does not log now)
        return sample_trace(decision, trace_id, self.sample_rate, self._salt)

    def record(self, rec: SpanRecord) -> None:
        fields: dict[str, Any] = {
            "traceId": f"{rec.trace_id:016x}",
            "spanId": f"{rec.span_id:016x}",
            "parentId": f"{rec.parent_id:016x}" if rec.parent_id is not None else None,
            "name": rec.name.lower(),
            "service": rec.service_name,
            "startUs": rec.start_us,
            "endUs": rec.end_us,
            "durationUs": max(1, rec.end_us - rec.start_us),
            "endpoint": f"{rec.remote[0]}:{rec.remote[1]}" if rec.remote is not None else None,
            "tags": dict(rec.tags),
        }
        if rec.trace_id_high:
            fields["traceIdHigh"] = f"{rec.trace_id_high:016x}"
        if rec.debug:
            fields["debug"] = True
        self.logged += 1
        self._log.log(self.level, "trace.span", **fields)
