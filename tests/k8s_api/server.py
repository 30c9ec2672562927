"""A fake kube-apiserver for tests: list and watch over HTTP/1.1 (h11 on trio), plain or TLS.

Theory of operation
-------------------
:class:`FakeKubeApi` holds objects of three collections (``endpoints`` and ``services`` under
``/api/v1``, ``endpointslices`` under ``/apis/discovery.k8s.io/v1``) and one cluster-wide
resourceVersion counter. Every change (:meth:`~FakeKubeApi.put`, :meth:`~FakeKubeApi.delete`)
bumps the counter, is appended to the history, and is pushed to each open watch whose selectors
it concerns: starting to match is ``ADDED``, ceasing to match or deletion is ``DELETED`` carrying
the last state with the new resourceVersion, as the real watch cache does.

The wire protocol is the real one:

* ``GET .../<resource>[?fieldSelector=metadata.name=x][&labelSelector=k=v,...]``: a ``<Kind>List``
  with ``metadata.resourceVersion`` and items without ``kind``/``apiVersion``; ``GET
  .../<resource>/<name>``: the object or a 404 ``Status``.
* ``?watch=true|1`` (or the legacy ``/watch/`` paths): ``200``, ``Content-Type:
  application/json``, chunked, one compact JSON event plus ``\\n`` per event. Without
  ``resourceVersion``: synthetic ``ADDED`` for every match first. With one older than the compaction
  floor (:meth:`~FakeKubeApi.compact`): one ``ERROR`` 410 ``Expired`` event and a clean end (or an
  HTTP 410 with ``legacy_410``). The stream ends cleanly after ``timeoutSeconds``. ``BOOKMARK``
  events are sent by :meth:`~FakeKubeApi.bookmark` to watches that allowed them.
* With ``tokens`` set, a missing or unknown bearer token is a 401 ``Status``; ``forbid`` makes a
  verb on a resource a 403 ``Status`` in the API server's wording.

Test controls: :meth:`~FakeKubeApi.error_to_watches` (an ERROR event mid-stream),
:meth:`~FakeKubeApi.drop_connections` (abrupt TCP close), :meth:`~FakeKubeApi.stall` /
:meth:`~FakeKubeApi.resume` (open watches stop receiving events but stay open: the 2017 failure),
``hang`` (requests are read and never answered), :meth:`~FakeKubeApi.go_down` /
:meth:`~FakeKubeApi.come_up` (the listener and every connection go
away; it comes back on the same port). ``requests`` records every request target.
"""

from __future__ import annotations

import copy
import json
import re
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import h11
import trio

__all__ = ["FakeKubeApi", "open_fake_api"]

RESOURCES: dict[str, tuple[str, str, str]] = {
    # resource: (group path, kind, apiVersion)
    "endpoints": ("/api/v1", "Endpoints", "v1"),
    "services": ("/api/v1", "Service", "v1"),
    "endpointslices": ("/apis/discovery.k8s.io/v1", "EndpointSlice", "discovery.k8s.io/v1"),
}
_PATH = re.compile(
    r"^(?P<group>/api/v1|/apis/discovery\.k8s\.io/v1)(?P<watch>/watch)?/namespaces/(?P<ns>[^/]+)/"
    r"(?P<resource>endpoints|services|endpointslices)(?:/(?P<name>[^/]+))?$"
)
START_RV = 58211407


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def status_body(
    code: int, reason: str, message: str, details: dict[str, Any] | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
    }
    if details is not None:
        body["details"] = details
    body["code"] = code
    return body


def parse_label_selector(text: str) -> list[tuple[str, str, str | None]]:
    """``a=b,c!=d,e`` as ``[(key, op, value)]``."""
    out: list[tuple[str, str, str | None]] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        for op in ("!=", "==", "="):
            if op in part:
                k, v = part.split(op, 1)
                out.append((k.strip(), "!=" if op == "!=" else "=", v.strip()))
                break
        else:
            out.append((part, "exists", None))
    return out


@dataclass
class Selector:
    name: str | None = None
    labels: list[tuple[str, str, str | None]] = field(default_factory=list)

    def matches(self, obj: dict[str, Any] | None) -> bool:
        if obj is None:
            return False
        meta = obj.get("metadata") or {}
        if self.name is not None and meta.get("name") != self.name:
            return False
        labels = meta.get("labels") or {}
        for k, op, v in self.labels:
            if op == "exists" and k not in labels:
                return False
            if op == "=" and labels.get(k) != v:
                return False
            if op == "!=" and labels.get(k) == v:
                return False
        return True


@dataclass
class Change:
    rv: int
    resource: str
    ns: str
    old: dict[str, Any] | None
    new: dict[str, Any] | None  # None: deleted (then ``last`` is the final state)
    last: dict[str, Any]


@dataclass(eq=False)
class _Watch:
    resource: str
    ns: str
    selector: Selector
    bookmarks: bool
    send: trio.MemorySendChannel[Any]
    receive: trio.MemoryReceiveChannel[Any]


def event_for(change: Change, selector: Selector) -> dict[str, Any] | None:
    was, now = selector.matches(change.old), selector.matches(change.new)
    if now and not was:
        return {"type": "ADDED", "object": change.new}
    if now and was:
        return {"type": "MODIFIED", "object": change.new}
    if was:
        return {"type": "DELETED", "object": change.last}
    return None


class FakeKubeApi:
    """See the module docstring. Start it with :func:`open_fake_api`."""

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext | None = None,
        tokens: set[str] | None = None,
        legacy_410: bool = False,
        watch_timeout: float = 3600.0,
    ) -> None:
        self.ssl_context = ssl_context
        self.tokens = tokens
        self.legacy_410 = legacy_410
        self.watch_timeout = watch_timeout
        self.rv = START_RV
        self.compacted = START_RV
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.history: list[Change] = []
        self.forbidden: set[tuple[str, str]] = set()
        self.requests: list[str] = []
        self.auth_failures = 0
        self.rejected: list[str] = []
        self.stalled = False
        self.hang = False
        self.port = 0
        self.host = "127.0.0.1"
        self._watches: set[_Watch] = set()
        self._conn_scopes: set[trio.CancelScope] = set()
        self._listen_scope: trio.CancelScope | None = None
        self._nursery: trio.Nursery | None = None

    # -- state -----------------------------------------------------------------------------------
    def _bump(self) -> int:
        self.rv += 1
        return self.rv

    def put(self, resource: str, obj: dict[str, Any]) -> str:
        """Create or replace an object (ADDED or MODIFIED to watches); returns its resourceVersion.
        The object is stored as given, so a test can store deliberately malformed shapes."""
        _, kind, api_version = RESOURCES[resource]
        obj = copy.deepcopy(obj)
        obj.setdefault("kind", kind)
        obj.setdefault("apiVersion", api_version)
        meta = obj.setdefault("metadata", {})
        ns, name = meta["namespace"], meta["name"]
        rv = self._bump()
        meta["resourceVersion"] = str(rv)
        old = self.objects.get((resource, ns, name))
        self.objects[(resource, ns, name)] = obj
        self._record(Change(rv, resource, ns, old, obj, obj))
        return str(rv)

    def delete(self, resource: str, ns: str, name: str) -> str:
        old = self.objects.pop((resource, ns, name))
        rv = self._bump()
        last = copy.deepcopy(old)
        last["metadata"]["resourceVersion"] = str(rv)
        self._record(Change(rv, resource, ns, old, None, last))
        return str(rv)

    def get(self, resource: str, ns: str, name: str) -> dict[str, Any] | None:
        return self.objects.get((resource, ns, name))

    def _record(self, change: Change) -> None:
        self.history.append(change)
        if self.stalled:
            return
        for w in list(self._watches):
            if w.resource == change.resource and w.ns == change.ns:
                ev = event_for(change, w.selector)
                if ev is not None:
                    self._push(w, ("event", ev))

    def _push(self, w: _Watch, item: Any) -> None:
        try:
            w.send.send_nowait(item)
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            pass

    # -- controls --------------------------------------------------------------------------------
    def compact(self) -> None:
        """Forget history: a watch from any resourceVersion older than the current one gets 410."""
        self.compacted = self.rv

    def forbid(self, resource: str, verb: str) -> None:
        self.forbidden.add((resource, verb))

    def bookmark(self) -> None:
        for w in list(self._watches):
            if w.bookmarks:
                _, kind, api_version = RESOURCES[w.resource]
                obj = {
                    "kind": kind,
                    "apiVersion": api_version,
                    "metadata": {"resourceVersion": str(self.rv), "creationTimestamp": None},
                }
                self._push(w, ("event", {"type": "BOOKMARK", "object": obj}))

    def error_to_watches(
        self, code: int | None = 410, reason: str = "Expired", message: str | None = None
    ) -> None:
        """Send every open watch an ERROR event, then end it cleanly (as the watch cache does)."""
        msg = message or f"too old resource version: {self.rv - 5} ({self.rv})"
        body = status_body(code or 0, reason, msg)
        if code is None:
            del body["code"]
        for w in list(self._watches):
            self._push(w, ("error", body))

    def end_watches(self) -> None:
        """End every open watch cleanly, as a server-side timeout does."""
        for w in list(self._watches):
            self._push(w, ("end", None))

    def drop_connections(self) -> None:
        """Close every open connection abruptly (no chunked terminator)."""
        for cs in list(self._conn_scopes):
            cs.cancel()

    def stall(self) -> None:
        """Open watches stop receiving events (and stay open); lists still answer."""
        self.stalled = True

    def resume(self) -> None:
        self.stalled = False

    @property
    def open_watches(self) -> int:
        return len(self._watches)

    def count(self, fragment: str, *, watch: bool | None = None) -> int:
        """How many requests contained ``fragment`` (and were, or were not, watches)."""

        def is_watch(t: str) -> bool:
            return "watch=" in t or "/watch/" in t

        return sum(1 for t in self.requests if fragment in t and (watch is None or is_watch(t) == watch))

    async def go_down(self) -> None:
        if self._listen_scope is not None:
            self._listen_scope.cancel()
            self._listen_scope = None
        self.drop_connections()
        await trio.sleep(0)

    async def come_up(self) -> None:
        assert self._nursery is not None
        await self._nursery.start(self._listen)

    # -- serving ---------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"{'https' if self.ssl_context else 'http'}://{self.host}:{self.port}"

    async def _listen(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(self.port, host=self.host)
        listener = listeners[0]
        self.port = listener.socket.getsockname()[1]
        with trio.CancelScope() as cs:
            self._listen_scope = cs
            task_status.started()
            async with listener:
                while True:
                    stream = await listener.accept()
                    assert self._nursery is not None
                    self._nursery.start_soon(self._connection, stream)
        await listener.aclose()

    async def _connection(self, tcp: trio.SocketStream) -> None:
        stream: trio.abc.Stream = tcp
        with trio.CancelScope() as cs:
            self._conn_scopes.add(cs)
            try:
                if self.ssl_context is not None:
                    stream = trio.SSLStream(tcp, self.ssl_context, server_side=True)
                    await stream.do_handshake()
                await self._serve(stream)
            except* (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError, OSError):
                # The client went away (or spoke nonsense). A disconnect while a watch writes its
                # end arrives wrapped in an ExceptionGroup from the watch's nursery; ``except*``
                # takes both shapes, so one closed client never stops the fake.
                pass
            finally:
                self._conn_scopes.discard(cs)
                await trio.aclose_forcefully(stream)

    async def _serve(self, stream: trio.abc.Stream) -> None:
        conn = h11.Connection(h11.SERVER)
        while True:
            req = await self._next(conn, stream)
            if not isinstance(req, h11.Request):
                return
            while not isinstance(await self._next(conn, stream), h11.EndOfMessage):
                pass
            keep = await self._respond(conn, stream, req)
            if not keep or conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()

    async def _next(self, conn: h11.Connection, stream: trio.abc.Stream) -> Any:
        while True:
            ev = conn.next_event()
            if ev is h11.NEED_DATA:
                conn.receive_data(bytes(await stream.receive_some(65536)))
                continue
            return ev

    async def _send_json(self, conn: h11.Connection, stream: trio.abc.Stream, code: int, body: Any) -> None:
        data = _dumps(body) + b"\n"
        headers = [
            ("Audit-Id", "754b68c6-0949-4076-abd7-603a349c8c7b"),
            ("Cache-Control", "no-cache, private"),
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(data))),
        ]
        await stream.send_all(conn.send(h11.Response(status_code=code, headers=headers)))
        await stream.send_all(conn.send(h11.Data(data=data)))
        await stream.send_all(conn.send(h11.EndOfMessage()))

    async def _respond(self, conn: h11.Connection, stream: trio.abc.Stream, req: h11.Request) -> bool:
        target = req.target.decode()
        self.requests.append(target)
        if self.hang:  # accepted, read, never answered: a wedged API server
            await trio.sleep_forever()
        if self.tokens is not None:
            auth = dict(req.headers).get(b"authorization", b"").decode()
            if not auth.startswith("Bearer ") or auth[len("Bearer ") :] not in self.tokens:
                self.auth_failures += 1
                self.rejected.append(auth)
                await self._send_json(conn, stream, 401, status_body(401, "Unauthorized", "Unauthorized"))
                return True
        url = urlsplit(target)
        m = _PATH.match(url.path)
        if req.method != b"GET" or m is None or RESOURCES[m["resource"]][0] != m["group"]:
            await self._send_json(
                conn,
                stream,
                404,
                status_body(404, "NotFound", "the server could not find the requested resource"),
            )
            return True
        q = {k: v[-1] for k, v in parse_qs(url.query).items()}
        resource, ns, name = m["resource"], m["ns"], m["name"]
        watching = m["watch"] is not None or q.get("watch") in ("true", "1")
        verb = "watch" if watching else ("get" if name else "list")
        if (resource, verb) in self.forbidden:
            group = "discovery.k8s.io" if resource == "endpointslices" else ""
            qualified = f"{resource}.{group}" if group else resource
            details: dict[str, Any] = {"kind": resource}
            if group:
                details = {"group": group, "kind": resource}
            msg = (
                f'{qualified} is forbidden: User "system:serviceaccount:{ns}:hostproxy" cannot {verb} '
                f'resource "{resource}" in API group "{group}" in the namespace "{ns}"'
            )
            await self._send_json(conn, stream, 403, status_body(403, "Forbidden", msg, details))
            return True
        selector = Selector(name=name)
        fs = q.get("fieldSelector")
        if fs:
            fm = re.fullmatch(r"metadata\.name==?(.+)", fs)
            if fm is None:
                await self._send_json(
                    conn, stream, 400, status_body(400, "BadRequest", f"unsupported field selector {fs!r}")
                )
                return True
            selector.name = fm[1]
        if q.get("labelSelector"):
            selector.labels = parse_label_selector(q["labelSelector"])
        if watching:
            await self._watch(conn, stream, resource, ns, selector, q)
            return False
        if name is not None:
            obj = self.objects.get((resource, ns, name))
            if obj is None:
                body = status_body(
                    404, "NotFound", f'{resource} "{name}" not found', {"name": name, "kind": resource}
                )
                await self._send_json(conn, stream, 404, body)
            else:
                await self._send_json(conn, stream, 200, obj)
            return True
        rv = q.get("resourceVersion")
        if rv and q.get("resourceVersionMatch") == "Exact" and int(rv) < self.compacted:
            body = status_body(410, "Expired", "The resourceVersion for the provided list is too old.")
            await self._send_json(conn, stream, 410, body)
            return True
        _, kind, api_version = RESOURCES[resource]
        items = []
        for (r, n, _), obj in sorted(self.objects.items()):
            if r == resource and n == ns and selector.matches(obj):
                item = {k: v for k, v in obj.items() if k not in ("kind", "apiVersion")}
                items.append(item)
        body = {
            "kind": f"{kind}List",
            "apiVersion": api_version,
            "metadata": {"resourceVersion": str(self.rv)},
            "items": items,
        }
        await self._send_json(conn, stream, 200, body)
        return True

    async def _watch(
        self,
        conn: h11.Connection,
        stream: trio.abc.Stream,
        resource: str,
        ns: str,
        selector: Selector,
        q: dict[str, str],
    ) -> None:
        rv_text = q.get("resourceVersion")
        too_old = bool(rv_text) and rv_text != "0" and int(rv_text or 0) < self.compacted
        if too_old and self.legacy_410:
            body = status_body(410, "Expired", f"too old resource version: {rv_text} ({self.compacted - 1})")
            await self._send_json(conn, stream, 410, body)
            return
        headers = [
            ("Cache-Control", "no-cache, private"),
            ("Content-Type", "application/json"),
            ("Transfer-Encoding", "chunked"),
        ]
        await stream.send_all(conn.send(h11.Response(status_code=200, headers=headers)))

        async def send_line(ev: dict[str, Any]) -> None:
            await stream.send_all(conn.send(h11.Data(data=_dumps(ev) + b"\n")))

        if too_old:
            msg = f"too old resource version: {rv_text} ({self.compacted - 1})"
            await send_line({"type": "ERROR", "object": status_body(410, "Expired", msg)})
            await stream.send_all(conn.send(h11.EndOfMessage()))
            return
        send, receive = trio.open_memory_channel[Any](10000)
        w = _Watch(resource, ns, selector, q.get("allowWatchBookmarks") == "true", send, receive)
        backlog: list[dict[str, Any]] = []
        if rv_text and rv_text != "0":
            since = int(rv_text)
            for ch in self.history:
                if ch.rv > since and ch.resource == resource and ch.ns == ns:
                    ev = event_for(ch, selector)
                    if ev is not None:
                        backlog.append(ev)
        else:
            for (r, n, _), obj in sorted(self.objects.items()):
                if r == resource and n == ns and selector.matches(obj):
                    backlog.append({"type": "ADDED", "object": obj})
        self._watches.add(w)
        try:
            async with trio.open_nursery() as nursery:
                # the client closing its end is noticed at once, as a real server does
                nursery.start_soon(self._until_closed, stream, nursery.cancel_scope)
                for ev in backlog:
                    await send_line(ev)
                timeout = min(float(q.get("timeoutSeconds") or self.watch_timeout), self.watch_timeout)
                with trio.move_on_after(timeout):
                    async for kind, item in receive:
                        if kind == "event":
                            await send_line(item)
                        elif kind == "error":
                            await send_line({"type": "ERROR", "object": item})
                            break
                        elif kind == "end":
                            break
                await stream.send_all(conn.send(h11.EndOfMessage()))
                nursery.cancel_scope.cancel()
        finally:
            self._watches.discard(w)
            send.close()

    @staticmethod
    async def _until_closed(stream: trio.abc.Stream, scope: trio.CancelScope) -> None:
        try:
            while await stream.receive_some(65536):
                pass
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        scope.cancel()


@asynccontextmanager
async def open_fake_api(*, port: int = 0, **kwargs: Any) -> AsyncIterator[FakeKubeApi]:
    """Start a :class:`FakeKubeApi` on 127.0.0.1, ``port`` (0: a free one); stop it (and every
    connection) on exit."""
    api = FakeKubeApi(**kwargs)
    api.port = port
    async with trio.open_nursery() as nursery:
        api._nursery = nursery
        await nursery.start(api._listen)
        try:
            yield api
        finally:
            nursery.cancel_scope.cancel()
