"""Types shared by the HTTP/1.1 codec implementations: events, sentinels, errors and limits.

Both implementations (``codec_h11``, the reference on h11, and ``codec_fast``, on llhttp) return
these very objects, so callers compare event types with ``type(event) is Data`` whichever codec is
selected in ``hostproxy.http.codec``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = [
    "NEED_DATA",
    "PAUSED",
    "CodecLimits",
    "ConnectionClosed",
    "Data",
    "EndOfMessage",
    "Event",
    "HeaderList",
    "Informational",
    "LocalProtocolError",
    "ProtocolError",
    "RequestHead",
    "ResponseHead",
]


class _Sentinel:
    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


NEED_DATA: Final = _Sentinel("NEED_DATA")
PAUSED: Final = _Sentinel("PAUSED")

HeaderList = list[tuple[bytes, bytes]]


@dataclass(frozen=True, slots=True)
class RequestHead:
    method: bytes
    target: bytes
    headers: HeaderList
    http_version: bytes


@dataclass(frozen=True, slots=True)
class ResponseHead:
    status: int
    reason: bytes
    headers: HeaderList
    http_version: bytes


@dataclass(frozen=True, slots=True)
class Informational:
    status: int
    headers: HeaderList


@dataclass(frozen=True, slots=True)
class Data:
    data: bytes


@dataclass(frozen=True, slots=True)
class EndOfMessage:
    trailers: HeaderList


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    pass


Event = RequestHead | ResponseHead | Informational | Data | EndOfMessage | ConnectionClosed | _Sentinel


class ProtocolError(Exception):
    """The peer broke HTTP/1.1.  ``status`` is what a server should answer (400, 414, 431)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class LocalProtocolError(Exception):
    """We asked the codec to send something HTTP/1.1 does not allow (a bug in the caller)."""


@dataclass(frozen=True)
class CodecLimits:
    max_initial_line: int = 4 * 1024
    max_headers: int = 8 * 1024
    max_header_count: int = 100
    max_chunk_line: int = 16 * 1024
