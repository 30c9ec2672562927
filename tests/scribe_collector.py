"""A Scribe collector for tests, as Zipkin's (``SCRIBE_ENABLED=true``, port 9410) serves one: thriftpy2's
framed TBinaryProtocol server for ``scribe.Log``, on a loopback port in a thread of its own, keeping every
``LogEntry`` and decoding the ``zipkin`` category's messages as ``zipkinCore`` spans (an independent Thrift
implementation of both, from the IDL in ``tests/data/zipkin``)."""

from __future__ import annotations

import base64
import contextlib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import thriftpy2
from thriftpy2.protocol import TBinaryProtocolFactory
from thriftpy2.rpc import make_server
from thriftpy2.transport import TFramedTransportFactory
from thriftpy2.utils import deserialize

_IDL = Path(__file__).parent / "data" / "zipkin"
scribe_thrift = thriftpy2.load(str(_IDL / "scribe.thrift"), module_name="scribe_thrift")
zipkin_thrift = thriftpy2.load(str(_IDL / "zipkin_core.thrift"), module_name="zipkin_core_thrift")


class Collector:
    """What the collector received; ``answer`` is the ResultCode it gives (OK, or TRY_LATER)."""

    def __init__(self) -> None:
        self.entries: list[Any] = []
        self.answer = scribe_thrift.ResultCode.OK
        self.lock = threading.Lock()
        self.port = 0

    def Log(self, messages: list[Any]) -> int:  # noqa: N802 (the Thrift method's name)
        with self.lock:
            if self.answer == scribe_thrift.ResultCode.OK:
                self.entries.extend(messages)
            return int(self.answer)

    def spans(self) -> list[Any]:
        with self.lock:
            entries = list(self.entries)
        out = []
        for e in entries:
            assert e.category == "zipkin", e.category
            assert e.message.endswith("\n"), e.message
            out.append(
                deserialize(zipkin_thrift.Span(), base64.b64decode(e.message), TBinaryProtocolFactory())
            )
        return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def running_collector() -> Iterator[Collector]:
    collector = Collector()
    collector.port = _free_port()
    server = make_server(
        scribe_thrift.scribe,
        collector,
        "127.0.0.1",
        collector.port,
        proto_factory=TBinaryProtocolFactory(),
        trans_factory=TFramedTransportFactory(),
    )
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    for _ in range(200):  # (listening once a connection is accepted)
        try:
            socket.create_connection(("127.0.0.1", collector.port), timeout=1).close()
            break
        except OSError:
            threading.Event().wait(0.01)
    try:
        yield collector
    finally:
        server.close()
