"""One Kubernetes list/watch as a sans-I/O state machine.

Theory of operation
-------------------
A :class:`Collection` is one query (a resource in a namespace, narrowed by a field and/or label
selector); :class:`ListWatchCore` keeps that query's objects current. The trio shell asks
:meth:`ListWatchCore.next_request` what to send, performs it, and feeds back what happened; the core
never touches a socket or a clock of its own (wall time comes from the injected ``clock``).

The rules, which are what Kubernetes asks of a client and what a stale view cost Monzo in 2017:

* **List, then watch from the list's resourceVersion.** A LIST replaces the whole object set; the
  watch then sends only later changes. resourceVersions are opaque: only stored and sent back,
  never compared. ADDED/MODIFIED carry the full new object; DELETED removes it (its object is the
  *last* state, never applied); BOOKMARK only moves the resourceVersion.
* **Re-list** (``relist_reason`` says why) when there is no resourceVersion yet, on ``410`` in any
  form (an HTTP 410, or an ``ERROR`` event inside a 200 stream, with or without ``code``), on any
  other ``ERROR`` event, on an unreadable event line, after every broken connection or failed
  request (a reconnect never trusts the old resourceVersion), and on the shell's periodic resync
  timer, which is what catches a watch that stays open but silently stops delivering. A watch the
  server ends cleanly (its ``timeoutSeconds``) resumes from the last resourceVersion.
* **No progress is throttled, not retried at once.** A watch that ends (cleanly or not) within
  :data:`SHORT_WATCH_SECS` of its start without one event (client-go's "very short watch": a proxy
  or load balancer that closes every watch, a server that times watches out at once) and a ``410``
  or ``ERROR`` event that follows another with no event between (a watch cache behind the lists:
  every re-list's resourceVersion is too old to watch from) are cycles without progress. They are not
  errors (the objects from the last list are as good as they were), but :attr:`throttle_steps`
  tells the shell to back off before the next request, growing with each cycle in a row; the first
  ``410`` alone is the expected answer and re-lists at once. Any event, or a watch that runs longer,
  ends the run.
* **Errors are state, not exceptions.** A failed request sets :attr:`error` (what failed and what to
  do); the objects from the last good list stay, and the namer marks names built on them stale. The
  next successful LIST clears it. A stream that breaks after it started is not by itself an error.
* **A refused watch is not a failed list.** A watch answered with an error status other than ``410``
  (a role granting get and list but not watch: ``403``) follows a list that succeeded, so the objects
  are as current as that list; it sets :attr:`watch_refused` rather than :attr:`error`, which lists
  that succeed do not clear and only a watch that streams does. The namer then serves names from the
  lists (each refused watch backs off and re-lists) and marks them stale with the refusal, steadily:
  clearing it at every list made each name flip between fresh and stale every cycle.
* **One bad object stays one bad object.** A list item or event object without ``metadata.name`` is
  counted in ``malformed`` and skipped; a body that is not JSON at all (or nested too deeply to
  decode) fails that request only.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote, urlencode

from namers.k8s.objects import object_name

__all__ = [
    "MAX_LINE",
    "SHORT_WATCH_SECS",
    "Collection",
    "LineBuffer",
    "LineTooLong",
    "ListWatchCore",
    "status_message",
]

#: A watch that ends sooner than this after its start, with no event, made no progress.
SHORT_WATCH_SECS = 1.0

#: Longest watch event line accepted (an Endpoints object for 1000 pods is well under this).
MAX_LINE = 16 * 1024 * 1024

RequestKind = Literal["list", "watch"]


@dataclass(frozen=True)
class Collection:
    """One list/watch query, e.g. ``/api/v1/namespaces/srv/endpoints?fieldSelector=metadata.name=x``."""

    group_path: str  # "/api/v1" or "/apis/discovery.k8s.io/v1"
    resource: str  # "endpoints", "services", "endpointslices"
    namespace: str
    field_selector: str | None = None
    label_selector: str | None = None

    def _params(self) -> list[tuple[str, str]]:
        params: list[tuple[str, str]] = []
        if self.field_selector:
            params.append(("fieldSelector", self.field_selector))
        if self.label_selector:
            params.append(("labelSelector", self.label_selector))
        return params

    @property
    def base(self) -> str:
        return f"{self.group_path}/namespaces/{quote(self.namespace, safe='')}/{self.resource}"

    def list_path(self) -> str:
        params = self._params()
        return self.base + ("?" + urlencode(params) if params else "")

    def watch_path(self, resource_version: str, timeout_seconds: int | None = None) -> str:
        params = [("allowWatchBookmarks", "true"), *self._params(), ("resourceVersion", resource_version)]
        if timeout_seconds is not None:
            params.append(("timeoutSeconds", str(timeout_seconds)))
        params.append(("watch", "true"))
        return self.base + "?" + urlencode(params)

    def describe(self) -> str:
        sel = [s for s in (self.field_selector, self.label_selector) if s]
        return f"{self.resource} in {self.namespace}" + (f" ({', '.join(sel)})" if sel else "")


class LineTooLong(ValueError):
    pass


class LineBuffer:
    """Splits a byte stream into ``\\n``-terminated lines, whatever the chunking."""

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self.max_line = max_line
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        scanned = len(self._buf)  # what was pending holds no line end: search only the new bytes
        self._buf += data
        lines: list[bytes] = []
        start = 0
        while True:
            nl = self._buf.find(b"\n", max(start, scanned))
            if nl < 0:
                break
            line = bytes(self._buf[start:nl]).strip()
            if line:
                lines.append(line)
            start = nl + 1
        del self._buf[:start]
        if len(self._buf) > self.max_line:
            raise LineTooLong(f"watch event longer than {self.max_line} bytes")
        return lines

    @property
    def pending(self) -> int:
        return len(self._buf)


def status_message(body: bytes) -> str | None:
    """The ``message`` of a Kubernetes ``Status`` body, if the body is one."""
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if isinstance(obj, dict) and obj.get("kind") == "Status" and isinstance(obj.get("message"), str):
        return str(obj["message"])
    return None


_STATUS_HINTS = {
    401: "the service account token was rejected; it is re-read from its file on the next request",
    403: "grant the service account get, list and watch on this resource (RBAC)",
    404: "check the API group and version this cluster serves",
    429: "the API server is throttling this client (API Priority and Fairness); it is retried with backoff",
}
_SERVER_ERROR_HINT = "the API server (or a proxy in front of it) failed; it is retried with backoff"
_TITLE = re.compile(rb"<title[^>]*>(.*?)</title", re.IGNORECASE | re.DOTALL)


def _compact_status(status: int, body: bytes) -> str:
    """``HTTP <status>: <what the body says>`` on one line: a Status's message, an HTML page's title
    (a proxy's error page), or the start of the body, with every run of whitespace (line breaks
    included) one space, so the error stays one line in logs and ``hostproxy wtf``."""
    msg = status_message(body)
    if msg is None:
        title = _TITLE.search(body[:4096])
        excerpt = title.group(1) if title is not None else body[:200]
        msg = excerpt.decode("utf-8", "replace")
    msg = " ".join(msg.split())[:200] or "(no body)"
    return f"HTTP {status}: {msg}"


class ListWatchCore:
    """The state of one list/watch; see the module docstring for the rules."""

    def __init__(self, collection: Collection, clock: Callable[[], float] = time.time) -> None:
        self.collection = collection
        self.clock = clock
        self.objects: dict[str, dict[str, Any]] = {}
        self.resource_version: str | None = None
        self.synced = False
        self.relist_reason: str | None = "initial"
        self.error: str | None = None
        self.error_since: float | None = None
        #: The last refusal of a watch after a good list, until a watch streams (see the module).
        self.watch_refused: str | None = None
        # observability (wall times)
        self.last_request: str | None = None
        self.last_request_at: float | None = None
        self.last_response: str | None = None
        self.last_response_at: float | None = None
        self.last_list_at: float | None = None
        self.last_event_at: float | None = None
        self.last_event_type: str | None = None
        self.stream_started_at: float | None = None
        self.stream_ended_at: float | None = None
        self.streaming = False
        # cycles without progress (see "No progress is throttled")
        self.no_progress = 0  # in a row: 410s and short watches with no event between
        self.throttle: str | None = None  # why the shell backs off, until the run ends
        self.throttle_steps = 0  # how long: the backoff step (0: no wait)
        self._stream_events = 0  # non-ERROR events in the current stream
        self._stream_gone = False  # the current stream ended with an ERROR event
        # counters
        self.lists = 0
        self.relists: dict[str, int] = {}
        self.watches = 0
        self.events = 0
        self.malformed = 0
        self.failures = 0
        self.short_watches = 0
        self.throttled = 0

    # -- what to do next -------------------------------------------------------------------------
    @property
    def wants_relist(self) -> bool:
        return self.relist_reason is not None or self.resource_version is None

    def next_request(self, timeout_seconds: int | None = None) -> tuple[RequestKind, str]:
        self.throttle_steps = 0
        if self.wants_relist:
            path = self.collection.list_path()
            kind: RequestKind = "list"
        else:
            assert self.resource_version is not None
            path = self.collection.watch_path(self.resource_version, timeout_seconds)
            kind = "watch"
        self.last_request = f"GET {path}"
        self.last_request_at = self.clock()
        return kind, path

    def request_relist(self, reason: str) -> None:
        if self.relist_reason is None:
            self.relist_reason = reason

    def _no_progress(self, why: str, first_waits: bool) -> None:
        """One more cycle without progress; from the first (short watch) or the second (410) in a
        row, the shell backs off before the next request."""
        self.no_progress += 1
        steps = self.no_progress if first_waits else self.no_progress - 1
        if steps > 0:
            self.throttle = f"{why} ({self.no_progress} in a row)"
            self.throttle_steps = steps
            self.throttled += 1

    def _progress(self) -> None:
        self.no_progress = 0
        self.throttle = None

    # -- feedback --------------------------------------------------------------------------------
    def _fail(self, message: str) -> bool:
        self.failures += 1
        was = self.error
        self.error = message
        if self.error_since is None:
            self.error_since = self.clock()
        return was != message

    def _request_error(self, status: int, body: bytes) -> str:
        if status == 400 and b"HTTP request to an HTTPS server" in body[:4096]:
            # Go's answer to plain HTTP on a TLS port: retrying cannot help
            return (
                f"GET {self.collection.describe()}: {_compact_status(status, body)}; namers[].host/port "
                "speak plain HTTP: point them at a kubectl proxy (kubectl proxy -p 8001), or leave host "
                "unset to use the in-cluster API server over TLS with the service account"
            )
        default = (
            _SERVER_ERROR_HINT
            if status >= 500
            else "the API server refused the request; it is retried with backoff"
        )
        hint = _STATUS_HINTS.get(status, default)
        return f"GET {self.collection.describe()}: {_compact_status(status, body)}; {hint}"

    def on_list(self, status: int, body: bytes) -> bool:
        """A LIST response; returns whether the objects or the error changed."""
        self.last_response = f"HTTP {status}"
        self.last_response_at = self.clock()
        if status == 410:
            self.resource_version = None
            self.relist_reason = "410 on list"
            return self._fail(self._request_error(status, body))
        if status != 200:
            self.relist_reason = self.relist_reason or f"HTTP {status}"
            return self._fail(self._request_error(status, body))
        try:
            doc = json.loads(body)
        except (ValueError, RecursionError) as e:
            # RecursionError: nested deeper than the decoder's stack, from a broken or hostile server
            why = "nested too deeply to decode" if isinstance(e, RecursionError) else str(e)
            return self._fail(
                f"GET {self.collection.describe()}: the list is not JSON ({why}); check the API address"
            )
        items = doc.get("items") if isinstance(doc, dict) else None
        meta = doc.get("metadata") if isinstance(doc, dict) else None
        rv = meta.get("resourceVersion") if isinstance(meta, dict) else None
        if not isinstance(rv, str) or not rv or not (items is None or isinstance(items, list)):
            return self._fail(
                f"GET {self.collection.describe()}: the list has no metadata.resourceVersion or items; "
                "check that host/port point at a Kubernetes API server"
            )
        objects: dict[str, dict[str, Any]] = {}
        for item in items or []:
            name = object_name(item)
            if name is None:
                self.malformed += 1
                continue
            objects[name] = item
        changed = objects != self.objects or not self.synced or self.error is not None
        reason = self.relist_reason or "initial"
        if reason != "initial":
            self.relists[reason] = self.relists.get(reason, 0) + 1
        self.objects = objects
        self.resource_version = rv
        self.synced = True
        self.relist_reason = None
        self.error = None
        self.error_since = None
        self.lists += 1
        self.last_list_at = self.clock()
        return changed

    def on_watch_status(self, status: int, body: bytes) -> bool:
        """A watch request answered with something other than 200."""
        self.last_response = f"HTTP {status}"
        self.last_response_at = self.clock()
        if status == 410:
            self.relist_reason = "410 Gone"
            self.resource_version = None
            # Expected once (relist at once); again with no event between, a cycle without progress.
            self._no_progress("watch answered 410 Gone after a fresh list", first_waits=False)
            return False
        self.relist_reason = self.relist_reason or f"watch HTTP {status}"
        message = self._request_error(status, body)
        if not self.synced or self.error is not None:
            return self._fail(message)
        # After a good list: the objects stand; only their updates are refused (see the module).
        self.failures += 1
        was, self.watch_refused = self.watch_refused, message
        return was != message

    def on_stream_start(self) -> bool:
        """A watch answered 200 and streams; returns whether that ended a refusal of watches."""
        self.last_response = "HTTP 200"
        self.last_response_at = self.stream_started_at = self.clock()
        self.streaming = True
        self.watches += 1
        self._stream_events = 0
        self._stream_gone = False
        was, self.watch_refused = self.watch_refused, None
        return was is not None

    def on_line(self, line: bytes) -> bool:
        """One watch event line; returns whether the objects changed."""
        now = self.clock()
        try:
            event = json.loads(line)
        except (ValueError, RecursionError):
            self.malformed += 1
            self.request_relist("unreadable watch event")
            return False
        etype = event.get("type") if isinstance(event, dict) else None
        obj = event.get("object") if isinstance(event, dict) else None
        if not isinstance(etype, str) or not isinstance(obj, dict):
            self.malformed += 1
            self.request_relist("unreadable watch event")
            return False
        self.events += 1
        self.last_event_at = now
        self.last_event_type = etype
        if etype == "ERROR":
            code = obj.get("code")
            msg = obj.get("message") if isinstance(obj.get("message"), str) else "?"
            if code == 410:
                self.resource_version = None
                self.relist_reason = "410 in watch"
            else:
                self.request_relist(f"watch ERROR {code if code is not None else '(no code)'}: {msg}")
            if not self._stream_gone:  # like a 410: the first re-lists at once, the next in a row waits
                self._stream_gone = True
                what = "410 Gone" if code == 410 else code if code is not None else "(no code)"
                self._no_progress(f"watch ERROR {what} after a fresh list", first_waits=False)
            return False
        meta = obj.get("metadata")
        rv = meta.get("resourceVersion") if isinstance(meta, dict) else None
        if isinstance(rv, str) and rv:
            self.resource_version = rv
        self._stream_events += 1
        self._progress()
        if etype == "BOOKMARK":
            return False
        name = object_name(obj)
        if name is None or etype not in ("ADDED", "MODIFIED", "DELETED"):
            self.malformed += 1
            return False
        if etype == "DELETED":
            return self.objects.pop(name, None) is not None
        if self.objects.get(name) == obj:
            return False
        self.objects[name] = obj
        return True

    def on_stream_end(self, clean: bool, reason: str = "stream ended", lasted: float | None = None) -> None:
        """The watch stream ended: cleanly (server timeout: resume from the resourceVersion) or not
        (connection broken: relist). ``lasted``: seconds since it started (``None`` when the shell
        ended it itself, e.g. for the periodic re-list); under :data:`SHORT_WATCH_SECS` with no event
        it made no progress."""
        was_streaming, self.streaming = self.streaming, False
        self.stream_ended_at = self.clock()
        if not clean:
            self.request_relist("reconnect")
        if not was_streaming or self._stream_gone or lasted is None:
            return
        if lasted < SHORT_WATCH_SECS and self._stream_events == 0:
            self.short_watches += 1
            self._no_progress(f"watch ended after {lasted:.3f}s with no event", first_waits=True)
        else:
            self._progress()

    def on_transport_error(self, message: str) -> bool:
        """A request could not be made or answered (connect, TLS, timeout, protocol)."""
        self.streaming = False
        self.request_relist("reconnect")
        return self._fail(f"GET {self.collection.describe()}: {message}")

    # -- admin -----------------------------------------------------------------------------------
    def watch_json(self, fmt: Callable[[float | None], str | None]) -> dict[str, Any]:
        return {
            "request": self.last_request,
            "lastRequestAt": fmt(self.last_request_at),
            "response": self.last_response,
            "lastResponseAt": fmt(self.last_response_at),
            "lastStreamStartAt": fmt(self.stream_started_at),
            "lastStreamDataAt": fmt(self.last_event_at),
            "lastStreamEndAt": fmt(self.stream_ended_at),
            "lastEventAt": fmt(self.last_event_at),
            "lastEventType": self.last_event_type,
            "lastListAt": fmt(self.last_list_at),
            "streaming": self.streaming,
            "resourceVersion": self.resource_version,
            "lastError": self.error or self.watch_refused,
            "errorSince": fmt(self.error_since),
            "watchRefused": self.watch_refused,
            "lists": self.lists,
            "relists": dict(self.relists),
            "watches": self.watches,
            "events": self.events,
            "malformed": self.malformed,
            "shortWatches": self.short_watches,
            "noProgressInARow": self.no_progress,
            "throttle": self.throttle,
        }
