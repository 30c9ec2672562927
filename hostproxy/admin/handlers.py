"""The admin endpoints: one handler object that answers every admin path from an ``AdminContext``.

Theory of operation
-------------------
``AdminHandler`` is an ``hostproxy.http.server.Handler``: ``await handler(request, conn_info)``
returns a ``Response``.  It owns no socket and no task; ``AdminServer`` runs it on the project's
HTTP/1.1 server, and tests may call it directly with any peer address.

A request is answered in four steps:

1. the path (percent-decoded, query split off) selects an ``Endpoint`` from a fixed table, or the
   ``/namer_state/<prefix>.json`` family; a path ``admin.security`` turns off: 404; nothing matched:
   404 with the list of endpoints.  Every list of endpoints (``/admin``, ``/help``, the 404 page, the
   dashboard's navigation) shows only what ``admin.security`` serves;
2. a method the endpoint does not accept: 405 with ``Allow`` (``HEAD`` is accepted wherever ``GET``
   is; the HTTP layer drops the body);
3. a *control* method (shutdown, reload, readiness override, log levels) is refused with 403 unless
   the peer is loopback (127.0.0.0/8, ::1, or IPv4-mapped loopback) or ``allow_remote_control`` is
   set (config ``admin.allowRemoteControl``).  Independently of that setting, a control request a
   browser sent from another origin (``Origin`` not matching ``Host``, or
   ``Sec-Fetch-Site: cross-site``) is refused, so that a web page cannot shut the daemon down, and
   so is one that came through a proxy (more ``Via`` entries than the admin server's own HTTP layer
   adds), so that a router cannot be used to reach the admin port from outside.  Without
   ``allow_remote_control``, a control request a browser sent (``Origin`` or ``Sec-Fetch-Site``) must
   also name a loopback address or ``localhost`` in its ``Host``: under DNS rebinding, a page's own
   name resolves to 127.0.0.1, so peer, ``Origin`` and ``Host`` all look local except the name;
4. the endpoint method renders the context's state.  An exception from the context becomes a 500
   naming the endpoint and the error (logged as ``admin.handler_failed``), never a dead connection.

Admin work is bounded so that it never stalls routing: request bodies are read up to
``MAX_REQUEST_BODY``, the delegation tree (the one answer whose size depends on the request) is
capped at ``MAX_DELEGATE_JSON`` bytes, ``/requests`` lists at most ``MAX_RECENT_REQUESTS`` entries,
and the metrics renderers are bounded by the registry's cardinality limits.  Delegation runs on the
event loop (it is pure, and bounded: an explanation of more than ``dtab.delegate.MAX_NODES`` lookup
steps, which a short dtab whose rules each offer two alternatives reaches, fails as a 400
``Delegation failed: …``); a context that has to wait for a namer returns an awaitable, which gets
``delegate_timeout_s`` (2 s, Linkerd's) before 503 ``Request timed out.``.

Scrapes of a large daemon (``/admin/metrics.json``, ``/admin/metrics/prometheus``,
``/client_state.json``) are rendered a slice per event-loop turn (see ``hostproxy.metrics.render``),
and each slice runs with the cyclic garbage collector paused: a slice's temporaries are freed by
reference counting when it ends, and were they to survive a collection they would be promoted to
the oldest generation, whose growth triggers full collections that stall routing for ~100 ms
once there are thousands of clients.

``/delegator.json`` follows Linkerd's ``DelegateApiHandler`` (spec ``dtab.md`` §6.4): ``dtab`` is
the entire dtab (missing on GET means empty; with a ``namespace`` whose interpreter has a dtab file,
the context puts that file's dentries before it) and is checked first (400 ``Invalid dtab: …``), then
``path`` (400 ``Invalid path: …``); POST needs ``Content-Type: application/json`` (415) and a
JSON object with string ``dtab`` and ``path`` (400 ``Malformed delegation request: …``).  An
unknown ``namespace`` (router label) is a 400 that lists the routers: the request names a router
that does not exist, the endpoint itself does.  A failure of the whole explanation (a delegation
cycle) is a 400 ``Delegation failed: …``, since the submitted dtab caused it.
"""

from __future__ import annotations

import gc
import inspect
import ipaddress
import json
import re
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import structlog
import trio

from dtab import Dtab, DtabSyntaxError, parse_dtab, parse_path
from dtab.errors import BindError
from hostproxy import log as hlog
from hostproxy.admin.context import AdminContext
from hostproxy.admin.dashboard import (
    DASHBOARD_CSP,
    STATIC_TYPES,
    dashboard_page,
    process_info,
    server_info,
    static_file,
)
from hostproxy.admin.delegator_page import CONTENT_SECURITY_POLICY, render_page
from hostproxy.admin.pages import LOGGING_PAGE_CSP, logging_page, metrics_page
from hostproxy.config.model import INFLUXDB_PATH
from hostproxy.http.errors import RequestBodyError, request_body_error_response
from hostproxy.http.message import Body, Headers, Request, Response
from hostproxy.http.proxyheaders import via_count
from hostproxy.http.server import ConnInfo
from hostproxy.idle import wait_idle
from hostproxy.metrics import NoSuchSubtree
from hostproxy.metrics.influx import influx_slices
from hostproxy.metrics.render import (
    check_query,
    collect,
    flat_from,
    flat_json_slices,
    metrics_json_from,
    prometheus_slices,
)

__all__ = [
    "DELEGATE_TIMEOUT_S",
    "HTML_TYPE",
    "JSON_TYPE",
    "MAX_DELEGATE_JSON",
    "MAX_RECENT_REQUESTS",
    "MAX_REQUEST_BODY",
    "PROMETHEUS_TYPE",
    "TEXT_TYPE",
    "AdminHandler",
    "Endpoint",
    "is_loopback",
]

log = structlog.get_logger("hostproxy.admin")

JSON_TYPE = "application/json;charset=UTF-8"
TEXT_TYPE = "text/plain;charset=UTF-8"
HTML_TYPE = "text/html;charset=UTF-8"
PROMETHEUS_TYPE = "text/plain; version=0.0.4"

#: Largest request body an admin endpoint reads (the delegator's JSON).
MAX_REQUEST_BODY = 64 * 1024
#: Largest ``/delegator.json`` answer.
MAX_DELEGATE_JSON = 4 * 1024 * 1024
#: Most entries ``/requests`` lists (the newest).
MAX_RECENT_REQUESTS = 1000
#: Linkerd's delegation timeout.
DELEGATE_TIMEOUT_S = 2.0

_LOGGER_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,200}$")
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_REASONS = {
    200: b"OK",
    202: b"Accepted",
    400: b"Bad Request",
    403: b"Forbidden",
    404: b"Not Found",
    405: b"Method Not Allowed",
    413: b"Payload Too Large",
    415: b"Unsupported Media Type",
    500: b"Internal Server Error",
    503: b"Service Unavailable",
}


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and IPv4-mapped loopback; False for anything else (or not an IP)."""
    try:
        addr = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped.is_loopback
    return addr.is_loopback


def _host_name(host: str) -> str:
    """The name or address part of a ``Host`` header value (``[::1]:9990`` -> ``::1``)."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host[1:]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _loopback_name(name: str) -> bool:
    """A ``Host`` that cannot be an attacker's name: ``localhost`` (and ``*.localhost``, which
    resolvers keep on loopback) or a loopback address."""
    return name == "localhost" or name.endswith(".localhost") or is_loopback(name)


def _response(
    status: int, body: bytes | str, content_type: str, extra: tuple[tuple[str, str], ...] = ()
) -> Response:
    data = body.encode("utf-8") if isinstance(body, str) else body
    headers = Headers(
        [
            (b"content-type", content_type.encode("ascii")),
            (b"cache-control", b"no-store"),
            (b"x-content-type-options", b"nosniff"),
        ]
    )
    for name, value in extra:
        headers.add(name, value.encode("latin-1"))
    return Response(status, _REASONS.get(status, b""), headers, Body.from_bytes(data))


def _text(status: int, text: str, extra: tuple[tuple[str, str], ...] = ()) -> Response:
    return _response(status, text if text.endswith("\n") else text + "\n", TEXT_TYPE, extra)


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, default=str).encode("utf-8")


def _json(status: int, obj: Any) -> Response:
    return _response(status, _dumps(obj), JSON_TYPE)


async def _read_body(call: _Call, what: str = "Request") -> bytes | Response:
    """The request body (``MAX_REQUEST_BODY`` at most: beyond, 413), or the 400 for a body that failed
    (cut short by a client that left, stalled, malformed): the client's doing, not a handler failure."""
    try:
        return await call.request.body.read_all(MAX_REQUEST_BODY)
    except ValueError:
        return _text(413, f"{what} body exceeds {MAX_REQUEST_BODY} bytes")
    except RequestBodyError as exc:
        return request_body_error_response(exc)


def _flag(query: dict[str, str], name: str) -> bool:
    """A boolean query parameter: ``1 true yes on`` or ``0 false no off`` (any case); missing or empty
    is false. Anything else raises ``ValueError`` with the 400 message (``tree=maybe`` must not
    quietly give another form than the one asked for)."""
    value = query.get(name, "")
    if value.lower() in _TRUE:
        return True
    if not value or value.lower() in _FALSE:
        return False
    raise ValueError(
        f"Invalid {name}={value[:80]!r}: use {name}=1 (or true, yes, on) or {name}=0 (or false, no, off)"
    )


def _prefix_names(text: str, prefix: str) -> str:
    """The exposition with ``prefix`` before every metric name (samples, ``# HELP`` and ``# TYPE``)."""
    out = []
    for line in text.split("\n"):
        if line.startswith(("# HELP ", "# TYPE ")):
            line = line[:7] + prefix + line[7:]
        elif line and not line.startswith("#"):
            line = prefix + line
        out.append(line)
    return "\n".join(out)


@dataclass(frozen=True)
class _Call:
    """One admin request, decoded."""

    method: str
    path: str
    query: dict[str, str]
    request: Request
    peer: str


@dataclass(frozen=True)
class Endpoint:
    """A row of the endpoint table: ``control`` lists the methods that change daemon state."""

    path: str
    methods: tuple[str, ...]
    help: str
    control: tuple[str, ...] = ()


_Fn = Callable[[_Call], Awaitable[Response]]


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic collector for one synchronous step (no await inside)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


#: The longest a sliced render waits for an idle event loop before its next slice anyway: under a
#: load that never lets the loop idle, a scrape still advances (a slice per this many seconds).
SLICE_WAIT_MAX_S = 0.05


async def _between_slices() -> None:
    """Requests first: the next slice of a render runs once the event loop has nothing else to run
    (``SLICE_WAIT_MAX_S`` at most). Yielding alone would queue each request's next step (its
    write, see ``sockstream``) behind the slice."""
    await wait_idle(0.0, at_most_s=SLICE_WAIT_MAX_S)


async def _drain_sliced(steps: Iterator[Any]) -> list[Any]:
    """Run a sliced renderer: one step at a time when the loop is idle, each with the collector
    paused."""
    parts: list[Any] = []
    while True:
        with _gc_paused():
            part = next(steps, None)
        if part is None:
            return parts
        parts.append(part)
        await _between_slices()  # let requests through between slices


COLLECT_SLICE = 256  # metrics read per event-loop turn while a human form (tree, pretty) collects
SCRAPE_SLICE = 1000  # metrics read and rendered per event-loop turn by the flat and Prometheus scrapes
CLIENT_STATE_SLICE = 100  # clients serialised per event-loop turn by /client_state.json

# Linkerd's admin.security categories: these paths are "UI"; the control ones are "control"; the rest
# (every other path) "diagnostics".
_UI_PATHS = re.compile(
    r"^(/|/files/.*|/admin/files/.*|/config\.json|/metrics\.json|/admin/metrics\.json|/admin/metrics|"
    r"/delegator|/delegator\.json|/logging|/help)$"
)
_CONTROL_PATHS = re.compile(r"^(/admin/shutdown|/logging\.json|/admin/reload|/admin/ready)$")
# A navigation link of the dashboard page, one a line: group 1 is its path.
_NAV_LINK = re.compile(rb'^[ \t]*<a href="(/[^"?#]*)[^"]*"[^>]*>[^<]*</a>\n', re.MULTILINE)
# hostproxy's aliases of Linkerd's paths: served only where the Linkerd path is, so that admin.security
# rules written for Linkerd's paths cover them (``/admin/namer_state.json`` leaves out each namer whose
# ``/namer_state/<prefix>.json`` is not served).
_ALIASES = {"/metrics": "/admin/metrics/prometheus"}


@dataclass(frozen=True)
class AdminSecurityPolicy:
    """``admin.security``: which admin paths are served (Linkerd's ``SecurityFilter`` rules).

    The blacklist is checked first; then a path is served if its category is enabled or it matches the
    whitelist. Entries are regular expressions matched against the whole path.
    """

    ui: bool = True
    control: bool = True
    diagnostics: bool = True
    whitelist: tuple[re.Pattern[str], ...] = ()
    blacklist: tuple[re.Pattern[str], ...] = ()

    @classmethod
    def from_config(cls, cfg: Any) -> AdminSecurityPolicy:
        if cfg is None:
            return cls()
        return cls(
            ui=cfg.ui_enabled,
            control=cfg.control_enabled,
            diagnostics=cfg.diagnostics_enabled,
            whitelist=tuple(re.compile(p) for p in cfg.path_whitelist),
            blacklist=tuple(re.compile(p) for p in cfg.path_blacklist),
        )

    def allows(self, path: str) -> bool:
        if any(p.fullmatch(path) for p in self.blacklist):
            return False
        if _UI_PATHS.match(path):
            enabled = self.ui
        elif _CONTROL_PATHS.match(path):
            enabled = self.control
        else:
            enabled = self.diagnostics
        return enabled or any(p.fullmatch(path) for p in self.whitelist)


class AdminHandler:
    """Answers admin requests from ``ctx`` (see the module docstring for the rules)."""

    def __init__(
        self,
        ctx: AdminContext,
        *,
        allow_remote_control: bool = False,
        delegate_timeout_s: float = DELEGATE_TIMEOUT_S,
        trusted_via_entries: int = 0,
        security: Any = None,
        prometheus: Any = None,
        influxdb: bool = False,
    ) -> None:
        self.ctx = ctx
        self.security = AdminSecurityPolicy.from_config(security)
        # The io.l5d.prometheus telemeters (one, or a sequence): each one's path serves the exposition
        # with its prefix before every name; the standing Prometheus paths use the first one's prefix.
        telemeters = (
            []
            if prometheus is None
            else list(prometheus)
            if isinstance(prometheus, list | tuple)
            else [prometheus]
        )
        self.prometheus_prefix: str = telemeters[0].prefix if telemeters else ""
        self._prometheus_prefixes: dict[str, str] = {}
        for t in telemeters:
            self._prometheus_prefixes.setdefault(t.path, t.prefix)
        # (a telemeter's own path is no alias: its rule is the operator's)
        self._aliases = {a: c for a, c in _ALIASES.items() if a not in self._prometheus_prefixes}
        self.allow_remote_control = allow_remote_control
        self.delegate_timeout_s = delegate_timeout_s
        # How many ``Via`` entries the HTTP layer in front of this handler appends itself.
        self.trusted_via_entries = trusted_via_entries
        self.requests_total = 0
        self.refused_control = 0
        self.failures = 0
        table: list[tuple[Endpoint, _Fn]] = [
            (Endpoint("/", ("GET",), "the dashboard"), self._dashboard),
            (Endpoint("/files/<name>", ("GET",), "the dashboard's script and stylesheet"), self._files),
            (Endpoint("/admin", ("GET",), "this list"), self._index),
            (Endpoint("/admin/", ("GET",), "this list"), self._index),
            (Endpoint("/admin/index.txt", ("GET",), "this list"), self._index),
            (Endpoint("/help", ("GET",), "this list"), self._index),
            (Endpoint("/admin/ping", ("GET",), "liveness: 'pong'"), self._ping),
            (Endpoint("/live", ("GET",), "liveness: 200 'live'"), self._live),
            (Endpoint("/ready", ("GET",), "readiness: 200 'ready' or 503 'not ready'"), self._ready),
            (
                Endpoint(
                    "/admin/ready",
                    ("POST",),
                    "POST ?state=false|true: take out of / put back into rotation",
                    control=("POST",),
                ),
                self._set_ready,
            ),
            (
                Endpoint(
                    "/admin/metrics.json", ("GET",), "metrics (?tree=1, ?q=<regex or subtree>, ?pretty=1)"
                ),
                self._metrics_json,
            ),
            (Endpoint("/metrics.json", ("GET",), "alias of /admin/metrics.json"), self._metrics_json),
            (
                Endpoint("/admin/metrics/prometheus", ("GET",), "metrics in Prometheus text format"),
                self._prometheus,
            ),
            (Endpoint("/metrics", ("GET",), "alias of /admin/metrics/prometheus"), self._prometheus),
            (
                Endpoint(
                    "/admin/process.json",
                    ("GET",),
                    "pid, rss_bytes, cpu_seconds, uptime_s, open_fds, fd_limit, python, gc",
                ),
                self._process,
            ),
            (
                Endpoint(
                    "/admin/server_info", ("GET",), "name, version, start_time, uptime (ms), as Linkerd's"
                ),
                self._server_info,
            ),
            (
                Endpoint(
                    "/admin/unbound.json",
                    ("GET",),
                    "per router, the most requested names that did not bind, with causes",
                ),
                self._unbound,
            ),
            (
                Endpoint("/admin/namer_state.json", ("GET",), "every namer's state, keyed by namer prefix"),
                self._all_namer_states,
            ),
            (
                Endpoint("/admin/routers.json", ("GET",), "per router, its dtab and bound service names"),
                self._routers_json,
            ),
            (Endpoint("/config.json", ("GET",), "the running config"), self._config),
            (
                Endpoint("/client_state.json", ("GET",), "each client's state and addresses"),
                self._client_state,
            ),
            (Endpoint("/bound-names.json", ("GET",), "names known to enumerating namers"), self._bound_names),
            (
                Endpoint(
                    "/namer_state/<prefix>.json",
                    ("GET",),
                    "one namer's watch state, e.g. /namer_state/io.l5d.fs.json",
                ),
                self._namer_state,
            ),
            (
                Endpoint(
                    "/delegator.json",
                    ("GET", "POST"),
                    "explain a delegation: ?namespace=<router>&path=<path>&dtab=<dtab>, or POST JSON",
                ),
                self._delegator_json,
            ),
            (Endpoint("/delegator", ("GET",), "dtab playground (?router=<label>)"), self._delegator_page),
            (
                Endpoint(
                    "/logging.json",
                    ("GET", "POST"),
                    "log levels; POST ?logger=<name|root>&level=<LEVEL> (or a form body) sets one",
                    control=("POST",),
                ),
                self._logging,
            ),
            (
                Endpoint("/logging", ("GET",), "log levels page, with a form per logger"),
                self._logging_page,
            ),
            (
                Endpoint(
                    "/admin/metrics",
                    ("GET", "POST"),
                    "metric names and values page; ?m=<name> (repeatable) gives those metrics as JSON",
                ),
                self._metrics_query,
            ),
            (Endpoint("/requests", ("GET",), "recent requests"), self._requests),
            (
                Endpoint("/admin/shutdown", ("POST",), "start a graceful shutdown", control=("POST",)),
                self._shutdown,
            ),
            (
                Endpoint("/admin/reload", ("POST",), "reload the config file", control=("POST",)),
                self._reload,
            ),
        ]
        # Lifecycle views (watched dtab files, overload and reload state), when the context has them.
        table += [
            (
                Endpoint(
                    "/dtab_state.json",
                    ("GET",),
                    "per router, its dtab file: version, diff history, last error",
                ),
                self._dtab_state,
            ),
            (
                Endpoint(
                    "/overload.json", ("GET",), "overload watermarks, server limits, retries, reload state"
                ),
                self._overload,
            ),
            (
                Endpoint(
                    "/admin/tls.json",
                    ("GET",),
                    "certificates in use: path, role, router, subject, SANs, issuer, notAfter, daysLeft",
                ),
                self._tls,
            ),
            (
                Endpoint(
                    "/admin/telemetry.json",
                    ("GET",),
                    "the telemeters: each one's kind and settings, and trace export's spans sent and dropped "
                    "and last error",
                ),
                self._telemetry,
            ),
        ]
        if influxdb:  # (an io.l5d.influxdb telemeter; its path is its own, checked by the config)
            table.append(
                (
                    Endpoint(INFLUXDB_PATH, ("GET",), "metrics in InfluxDB line protocol (io.l5d.influxdb)"),
                    self._influxdb,
                )
            )
        for path in self._prometheus_prefixes:
            if all(ep.path != path for ep, _ in table):
                table.append(
                    (
                        Endpoint(path, ("GET",), "metrics in Prometheus text format (io.l5d.prometheus)"),
                        self._prometheus,
                    )
                )
        self.endpoints: list[Endpoint] = [ep for ep, _ in table]
        self._routes: dict[str, tuple[Endpoint, _Fn]] = {
            ep.path: (ep, fn) for ep, fn in table if "<" not in ep.path
        }
        self._namer_state_endpoint = next(ep for ep in self.endpoints if ep.path.startswith("/namer_state/"))
        self._files_endpoint = next(ep for ep in self.endpoints if ep.path.startswith("/files/"))

    def statistics(self) -> dict[str, int]:
        return {
            "requests_total": self.requests_total,
            "refused_control": self.refused_control,
            "failures": self.failures,
        }

    def __repr__(self) -> str:
        return (
            f"<AdminHandler endpoints={len(self.endpoints)} "
            f"allow_remote_control={self.allow_remote_control} requests={self.requests_total}>"
        )

    def serves(self, path: str) -> bool:
        """Whether ``admin.security`` lets ``path`` be served (a hostproxy alias: its Linkerd path too)."""
        canonical = self._aliases.get(path)
        return self.security.allows(path) and (canonical is None or self.security.allows(canonical))

    def _listed(self, ep: Endpoint) -> bool:
        """Whether the index may show ``ep``: only what ``admin.security`` serves.  A family of paths
        is shown when one of its members is served (a configured namer's page, for
        ``/namer_state/<prefix>.json``)."""
        if ep.path.startswith("/files/"):
            return any(self.serves(f"/files/{name}") for name in STATIC_TYPES)
        if ep.path.startswith("/namer_state/"):
            try:
                prefixes = list(self.ctx.namer_states()) or ["/io.l5d.fs"]
            except Exception:  # (the 404 page must not fail with the context)
                prefixes = ["/io.l5d.fs"]
            return any(self.serves(f"/namer_state/{p.lstrip('/')}.json") for p in prefixes)
        return self.serves(ep.path)

    def index_text(self) -> str:
        """The text list of the endpoints this ``admin.security`` serves (``/admin``, ``/help``, 404s)."""
        seen: set[str] = set()
        lines = ["hostproxy admin endpoints:", ""]
        listed = [ep for ep in self.endpoints if self._listed(ep)]
        for ep in listed:
            if ep.path in ("/admin/", "/admin/index.txt", "/help") and self.serves("/admin"):
                continue
            if ep.path in seen:
                continue
            seen.add(ep.path)
            methods = "|".join(ep.methods)
            lines.append(f"{methods:<9} {ep.path:<28} {ep.help}")
        if not seen:
            lines.append("(none: admin.security turns every endpoint off)")
        control = ", ".join(f"{m} {ep.path}" for ep in listed for m in ep.control)
        if control:
            lines += [
                "",
                f"Control endpoints ({control}) answer loopback clients only "
                "unless admin.allowRemoteControl is true.",
            ]
        return "\n".join(lines) + "\n"

    # -- dispatch --------------------------------------------------------------------------------

    async def __call__(self, request: Request, conn: ConnInfo) -> Response:
        self.requests_total += 1
        split = urlsplit(request.target)
        path = unquote(split.path) or "/"
        query = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        call = _Call(request.method.upper(), path, query, request, conn.peer[0])
        if not self.serves(path):
            # Linkerd answers 404, not 403, for paths admin.security turns off.
            return _text(404, f"No admin endpoint at {path} (turned off by admin.security).")
        route = self._routes.get(path)
        if route is not None:
            endpoint, fn = route
        elif path.startswith("/namer_state/") and path.endswith(".json"):
            endpoint, fn = self._namer_state_endpoint, self._namer_state
        elif path.startswith("/files/"):
            endpoint, fn = self._files_endpoint, self._files
        else:
            return _text(404, f"No admin endpoint at {path}.\n\n{self.index_text()}")
        method = "GET" if call.method == "HEAD" else call.method
        if method not in endpoint.methods:
            allow = ", ".join([*endpoint.methods, "HEAD"] if "GET" in endpoint.methods else endpoint.methods)
            return _text(
                405,
                f"Method {call.method} is not allowed on {path}: use {' or '.join(endpoint.methods)}",
                (("allow", allow),),
            )
        if method in endpoint.control:
            refusal = self._control_refusal(call)
            if refusal is not None:
                self.refused_control += 1
                log.warning("admin.control_refused", path=path, peer=call.peer, reason=refusal)
                return _text(403, refusal)
        try:
            return await fn(call)
        except Exception as exc:
            self.failures += 1
            log.exception("admin.handler_failed", path=path)
            return _text(500, f"Internal error serving {path}: {type(exc).__name__}: {exc}")

    def _control_refusal(self, call: _Call) -> str | None:
        path = call.path
        if not self.allow_remote_control and not is_loopback(call.peer):
            return (
                f"{call.method} {path} is a control endpoint and answers only loopback clients "
                f"(127.0.0.0/8, ::1); this request came from {call.peer}. "
                "Set admin.allowRemoteControl: true to allow control from other hosts."
            )
        headers = call.request.headers
        origin = headers.get(b"origin")
        browser = origin is not None or headers.get(b"sec-fetch-site") is not None
        if browser and not self.allow_remote_control:
            host_name = _host_name((headers.get(b"host") or b"").decode("latin-1"))
            if not _loopback_name(host_name):
                return (
                    f"{call.method} {path} refused: a browser sent it for host {host_name or '(none)'}, "
                    "which is not a loopback address or localhost (a DNS rebinding attack makes a page's "
                    "own name point at 127.0.0.1); open the admin page as http://127.0.0.1:<port> or "
                    "http://localhost:<port>, or use curl -X POST."
                )
        if origin is not None:
            host = (headers.get(b"host") or b"").decode("latin-1").lower()
            origin_s = origin.decode("latin-1")
            netloc = urlsplit(origin_s).netloc.lower()
            if not host or netloc != host:
                return (
                    f"{call.method} {path} refused: a browser sent it from another origin ({origin_s}); "
                    "control endpoints accept only same-origin or non-browser requests (e.g. curl -X POST)."
                )
        if (headers.get(b"sec-fetch-site") or b"").lower() == b"cross-site":
            return (
                f"{call.method} {path} refused: a browser sent it cross-site; "
                "control endpoints accept only same-origin or non-browser requests (e.g. curl -X POST)."
            )
        if via_count(headers) > self.trusted_via_entries:
            # Quoted as it arrived: without the entries this server added itself (the last ones).
            entries = [p.strip() for v in headers.get_all(b"via") for p in v.split(b",") if p.strip()]
            via = b", ".join(entries[: len(entries) - self.trusted_via_entries]).decode("latin-1")
            return (
                f"{call.method} {path} refused: it arrived through a proxy (Via: {via}); "
                "call control endpoints directly on the admin port, not through a router."
            )
        return None

    # -- simple endpoints ------------------------------------------------------------------------

    async def _index(self, call: _Call) -> Response:
        return _text(200, self.index_text())

    async def _ping(self, call: _Call) -> Response:
        return _response(200, b"pong", TEXT_TYPE)

    async def _live(self, call: _Call) -> Response:
        return _text(200, "live")

    async def _ready(self, call: _Call) -> Response:
        if self.ctx.is_ready():
            return _text(200, "ready")
        return _text(503, "not ready")

    async def _set_ready(self, call: _Call) -> Response:
        raw = call.query.get("state")
        value = (raw or "").lower()
        if value in _TRUE:
            ready = True
        elif value in _FALSE:
            ready = False
        else:
            got = "nothing" if raw is None else repr(raw)
            return _text(
                400,
                f"POST /admin/ready needs ?state=true or ?state=false, got {got}: "
                "state=false takes this daemon out of rotation (/ready answers 503), state=true puts it back",
            )
        self.ctx.set_ready(ready)
        log.info("admin.ready_override", ready=ready, peer=call.peer)
        return _text(200, "ready" if self.ctx.is_ready() else "not ready")

    async def _dashboard(self, call: _Call) -> Response:
        # The page's navigation links are an index too: only to what admin.security serves.
        page = _NAV_LINK.sub(lambda m: m[0] if self.serves(m[1].decode()) else b"", dashboard_page())
        return _response(200, page, HTML_TYPE, (("content-security-policy", DASHBOARD_CSP),))

    async def _files(self, call: _Call) -> Response:
        name = call.path[len("/files/") :]
        found = static_file(name)
        if found is None:
            return _text(404, f"No dashboard file {name!r}: the files are dashboard.js and dashboard.css")
        body, ctype = found
        return _response(200, body, ctype)

    async def _process(self, call: _Call) -> Response:
        return _json(200, process_info())

    async def _server_info(self, call: _Call) -> Response:
        return _json(200, server_info())

    async def _unbound(self, call: _Call) -> Response:
        out = {}
        for label, scope in sorted(self.ctx.metrics.routers().items()):
            table = scope.unbound_names
            out[label] = {
                "capacity": table.capacity,
                "total": table.total,
                "evictions": table.evictions,
                "names": table.table(),
            }
        return _json(200, out)

    async def _all_namer_states(self, call: _Call) -> Response:
        states = self.ctx.namer_states()
        return _json(
            200,
            {
                prefix: state
                for prefix, state in states.items()
                if self.security.allows(f"/namer_state/{prefix.lstrip('/')}.json")
            },
        )

    async def _routers_json(self, call: _Call) -> Response:
        scopes = self.ctx.metrics.routers()
        out = {}
        for label in self.ctx.router_labels():
            scope = scopes.get(label)
            out[label] = {
                "dtab": self._own_dtab_text(label),
                "services": scope.service_names() if scope is not None else [],
            }
        return _json(200, out)

    async def _config(self, call: _Call) -> Response:
        return _json(200, self.ctx.config_json())

    async def _client_state(self, call: _Call) -> Response:
        """A context with ``client_state_entries()`` (``(client id, state function)`` pairs, in
        ``client_state()``'s order) has its clients' states built and serialised a slice of clients
        per event-loop turn; otherwise ``client_state()`` builds them all in one step."""
        entries_fn = getattr(self.ctx, "client_state_entries", None)
        if entries_fn is None:
            # Built at once by the context: serialise in the same step, so that the whole state is
            # garbage (freed at once) before other tasks run.
            with _gc_paused():
                body = _dumps(self.ctx.client_state())
            return _response(200, body, JSON_TYPE)
        entries: list[tuple[Any, Callable[[], Any]]] = list(entries_fn())

        def steps() -> Iterator[str]:
            for i in range(0, len(entries), CLIENT_STATE_SLICE):
                part = {cid: fn() for cid, fn in entries[i : i + CLIENT_STATE_SLICE]}
                text = json.dumps(part, separators=(",", ":"), ensure_ascii=False, default=str)
                yield text[1:-1]

        parts = [p for p in await _drain_sliced(steps()) if p]
        return _response(200, "{" + ",".join(parts) + "}", JSON_TYPE)

    async def _bound_names(self, call: _Call) -> Response:
        return _json(200, list(self.ctx.bound_names()))

    async def _requests(self, call: _Call) -> Response:
        recorded = self.ctx.recent_requests()
        if recorded is None:
            # (An empty list would read as "no requests came": say that none are recorded, and how.)
            return _text(
                404,
                "No recent requests are recorded: no io.l5d.recentRequests telemeter is configured. "
                "Add one to the config's telemetry list, e.g. "
                "'telemetry: [{kind: io.l5d.recentRequests, sampleRate: 1.0}]' "
                "(sampleRate: the share of requests kept, 0 to 1; capacity: how many, 10 by default).",
            )
        return _json(200, list(recorded)[-MAX_RECENT_REQUESTS:])

    async def _namer_state(self, call: _Call) -> Response:
        name = call.path[len("/namer_state/") : -len(".json")]
        prefix = "/" + name.lstrip("/")
        states = self.ctx.namer_states()
        if name and prefix in states:
            return _json(200, states[prefix])
        known = sorted(states)
        if known:
            hint = "known namer prefixes: " + ", ".join(known) + " (e.g. /namer_state" + known[0] + ".json)"
        else:
            hint = "no namers are configured"
        return _text(404, f"No namer with prefix {prefix}: {hint}")

    # -- metrics ---------------------------------------------------------------------------------

    async def _collect(self) -> list[Any]:
        """Read every metric's value in slices, each when the event loop is idle, so a scrape of
        thousands of clients never holds up requests for more than one slice."""
        metrics = list(self.ctx.metrics.metrics())
        items: list[Any] = []
        for i in range(0, len(metrics), COLLECT_SLICE):
            items.extend(collect(metrics[i : i + COLLECT_SLICE]))
            await _between_slices()
        return items

    async def _metrics_json(self, call: _Call) -> Response:
        q = call.query.get("q") or None
        try:
            tree_form, pretty = _flag(call.query, "tree"), _flag(call.query, "pretty")
            if not tree_form:
                check_query(q)  # (in tree form, q is a subtree's path)
        except ValueError as exc:
            return _text(400, str(exc))
        if tree_form or pretty:
            items = await self._collect()
            try:  # the human forms: one pass (scripts and scrapers use the compact flat form)
                body = metrics_json_from(items, tree_form=tree_form, q=q, pretty=pretty)
            except NoSuchSubtree as exc:
                return _json(404, {"error": str(exc)})
            return _response(200, body, JSON_TYPE)
        parts = await _drain_sliced(flat_json_slices(self.ctx.metrics, q, SCRAPE_SLICE))
        return _response(200, b"".join(parts), JSON_TYPE)

    async def _prometheus(self, call: _Call) -> Response:
        parts = await _drain_sliced(prometheus_slices(self.ctx.metrics, SCRAPE_SLICE))
        text = "".join(parts)
        prefix = self._prometheus_prefixes.get(call.path, self.prometheus_prefix)
        if prefix:
            text = _prefix_names(text, prefix)
        return _response(200, text, PROMETHEUS_TYPE)

    async def _influxdb(self, call: _Call) -> Response:
        host = call.request.headers.get(b"host")
        # (Read as UTF-8, as a client that sends a non-ASCII name writes it; a byte that is not is U+FFFD.)
        text = host.decode("utf-8", "replace") if host else "none"
        parts = await _drain_sliced(influx_slices(self.ctx.metrics, text, SCRAPE_SLICE))
        return _response(200, "".join(parts), TEXT_TYPE)

    # -- logging ---------------------------------------------------------------------------------

    @staticmethod
    def _levels() -> list[dict[str, str]]:
        return [{"logger": name, "level": level} for name, level in hlog.levels().items()]

    async def _logging(self, call: _Call) -> Response:
        if call.method in ("GET", "HEAD"):
            return _json(200, self._levels())
        params = dict(call.query)
        ctype = (call.request.headers.get(b"content-type") or b"").decode("latin-1")
        if ctype.split(";", 1)[0].strip().lower() == "application/x-www-form-urlencoded":
            # As Finagle's request params (Linkerd's handler reads them): a form body's fields too.
            raw = await _read_body(call)
            if isinstance(raw, Response):
                return raw
            form = parse_qs(raw.decode("utf-8", errors="replace"), keep_blank_values=True)
            for name, values in form.items():
                params.setdefault(name, values[-1])
        logger = params.get("logger")
        level = params.get("level")
        usage = "POST /logging.json?logger=<name|root>&level=<DEBUG|INFO|WARNING|ERROR|CRITICAL>"
        if not logger or not level:
            missing = " and ".join(n for n, v in (("logger", logger), ("level", level)) if not v)
            return _text(400, f"Missing {missing}: use {usage}")
        if not _LOGGER_NAME.match(logger):
            return _text(
                400,
                f"Invalid logger name {logger[:80]!r}: use 'root' or a dotted name of letters, digits, "
                "'_', '-' (at most 200 characters), e.g. hostproxy.http",
            )
        try:
            hlog.set_level(logger, level)
        except ValueError as exc:
            return _text(400, f"Invalid level for logger {logger}: {exc}")
        log.info("admin.log_level_set", logger=logger, level=level.upper(), peer=call.peer)
        return _json(200, self._levels())

    async def _logging_page(self, call: _Call) -> Response:
        page = logging_page(hlog.levels(), logging_json=self.serves("/logging.json"))
        return _response(200, page, HTML_TYPE, (("content-security-policy", LOGGING_PAGE_CSP),))

    # -- /admin/metrics (TwitterServer's metric query) -----------------------------------------

    async def _metrics_query(self, call: _Call) -> Response:
        """TwitterServer's ``/admin/metrics``: with ``m`` (repeatable) the named metrics as a JSON list
        of ``{"name", "value"}`` (names not found are left out, in the order asked); without, a page of
        every metric name and value.  As Linkerd's, a POST's form body counts as the query."""
        names = parse_qs(urlsplit(call.request.target).query, keep_blank_values=True).get("m", [])
        if call.method == "POST":
            raw = await _read_body(call)
            if isinstance(raw, Response):
                return raw
            names += parse_qs(raw.decode("utf-8", errors="replace"), keep_blank_values=True).get("m", [])
        values = flat_from(await self._collect())
        if names:
            return _json(200, [{"name": n, "value": values[n]} for n in dict.fromkeys(names) if n in values])
        page = metrics_page(values, metrics_json=self.serves("/admin/metrics.json"))
        return _response(200, page, HTML_TYPE, (("content-security-policy", LOGGING_PAGE_CSP),))

    # -- lifecycle -------------------------------------------------------------------------------

    async def _shutdown(self, call: _Call) -> Response:
        log.info("admin.shutdown_requested", peer=call.peer)
        self.ctx.request_shutdown()
        return _text(202, "shutting down: draining connections")

    async def _dtab_state(self, call: _Call) -> Response:
        fn = getattr(self.ctx, "dtab_state", None)
        return _json(200, fn() if fn is not None else {})

    async def _overload(self, call: _Call) -> Response:
        fn = getattr(self.ctx, "overload_state", None)
        return _json(200, fn() if fn is not None else {})

    async def _tls(self, call: _Call) -> Response:
        fn = getattr(self.ctx, "tls_state", None)
        return _json(200, fn() if fn is not None else {"certificates": []})

    async def _telemetry(self, call: _Call) -> Response:
        fn = getattr(self.ctx, "telemetry_state", None)
        return _json(200, fn() if fn is not None else {"telemeters": []})

    async def _reload(self, call: _Call) -> Response:
        log.info("admin.reload_requested", peer=call.peer)
        ok, message = await self.ctx.reload()
        return _text(200 if ok else 500, message)

    # -- delegator -------------------------------------------------------------------------------

    async def _delegator_page(self, call: _Call) -> Response:
        routers: dict[str, str] = {}
        for label in self.ctx.router_labels():
            routers[label] = self._own_dtab_text(label)
        selected = call.query.get("router") or None
        if selected is not None and selected not in routers:
            # A mistyped label must not show another router's dtab as if it were the one asked for.
            known = ", ".join(routers) if routers else "none configured"
            first = f"; for example /delegator?router={next(iter(routers))}" if routers else ""
            return _text(404, f"Unknown router {selected}: it must be a router label ({known}){first}")
        page = render_page(routers, selected)
        return _response(200, page, HTML_TYPE, (("content-security-policy", CONTENT_SECURITY_POLICY),))

    def _own_dtab_text(self, label: str) -> str:
        """The router's own dtab as text to post back to ``/delegator.json`` (the ``/delegator`` page's
        prefill, ``/admin/routers.json``'s ``dtab``, which ``hostproxy wtf`` posts): without the
        interpreter's dtab file, which ``/delegator.json`` puts first itself (as the router binds, and
        as Linkerd's UI and delegator do), and with weights as written, so that it delegates what the
        router binds."""
        dtab = self.ctx.router_dtab(label)
        interpreter_dtab = getattr(self.ctx, "interpreter_dtab", None)
        if interpreter_dtab is not None:
            dtab = dtab[len(interpreter_dtab(label)) :]
        return "".join(f"{d.show_exact};\n" for d in dtab)

    async def _delegate_request(self, call: _Call) -> tuple[str | None, str, str | None] | Response:
        """``(namespace, dtab text, path text)`` from the query or the JSON body, or an error answer."""
        if call.method in ("GET", "HEAD"):
            return call.query.get("namespace") or None, call.query.get("dtab", ""), call.query.get("path")
        ctype = (call.request.headers.get(b"content-type") or b"").decode("latin-1")
        if ctype.split(";", 1)[0].strip().lower() != "application/json":
            return _text(
                415,
                f"POST /delegator.json needs Content-Type: application/json, got {ctype or 'none'}; "
                'send {"namespace": <router>, "dtab": <dtab>, "path": <path>}',
            )
        raw = await _read_body(call, "Delegation request")
        if isinstance(raw, Response):
            return raw
        text = raw.decode("utf-8", errors="replace")
        try:
            doc = json.loads(text)
        except (ValueError, RecursionError):  # RecursionError: arrays or objects nested too deep
            doc = None
        ok = (
            isinstance(doc, dict)
            and isinstance(doc.get("dtab"), str)
            and isinstance(doc.get("path"), str)
            and (doc.get("namespace") is None or isinstance(doc.get("namespace"), str))
        )
        if not ok:
            shown = text if len(text) <= 200 else text[:200] + "…"
            return _text(
                400,
                f"Malformed delegation request: {shown} "
                '(expected a JSON object {"namespace": <router or null>, "dtab": <string>, "path": <string>})',
            )
        assert isinstance(doc, dict)
        return doc.get("namespace") or None, doc["dtab"], doc["path"]

    async def _delegator_json(self, call: _Call) -> Response:
        parsed = await self._delegate_request(call)
        if isinstance(parsed, Response):
            return parsed
        namespace, dtab_text, path_text = parsed
        try:
            dtab: Dtab = parse_dtab(dtab_text)
        except DtabSyntaxError as exc:
            return _text(400, f"Invalid dtab: {exc}")
        if path_text is None:
            return _text(400, "Invalid path: missing 'path' (e.g. path=/svc/web)")
        try:
            path = parse_path(path_text)
        except DtabSyntaxError as exc:
            return _text(400, f"Invalid path: {exc}")
        if namespace is not None:
            labels = list(self.ctx.router_labels())
            if namespace not in labels:
                known = ", ".join(labels) if labels else "none configured"
                return _text(
                    400,
                    f"Unknown namespace {namespace}: it must be a router label ({known}), "
                    "or leave it out to delegate with the system namers only",
                )
        try:
            result: Any = self.ctx.delegate(namespace, dtab, path)
            if inspect.isawaitable(result):
                with trio.move_on_after(self.delegate_timeout_s):
                    return self._delegate_answer(await result)
                return _text(503, "Request timed out.")
        except BindError as exc:
            return _text(400, f"Delegation failed: {exc}")
        return self._delegate_answer(result)

    @staticmethod
    def _delegate_answer(tree: dict[str, Any]) -> Response:
        body = _dumps(tree)
        if len(body) > MAX_DELEGATE_JSON:
            return _text(
                500,
                f"Delegation tree is {len(body)} bytes, over the {MAX_DELEGATE_JSON}-byte limit of "
                "/delegator.json; delegate a more specific path or a smaller dtab",
            )
        return _response(200, body, JSON_TYPE)
