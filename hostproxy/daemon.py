"""The daemon: one validated config → namers, routers, servers and the admin server, in one nursery.

Theory of operation
-------------------
``Daemon(config)`` builds everything that does no I/O (namer objects, the inet resolver, metrics, the
overload manager); ``Daemon.run`` then starts, in order: the namers' background tasks, each router
(an ``io.l5d.fs`` interpreter's dtab file is loaded first — missing or invalid, startup fails with
``FILE:LINE:COL`` — and watched from then on; the router's dtab is the file's followed by the router's
own ``dtab`` entries, as Linkerd's ``ConfiguredDtabNamer`` does), the admin server, the overload
sampler, the systemd watchdog, and each router's servers. Servers are made in one place
(:meth:`Daemon._make_server`) and are driven only through ``serve`` / ``stop_accepting`` / ``drain`` /
``statistics``, so every protocol's server is handled alike. Listeners are bound with
``SO_REUSEPORT``, or adopted from systemd socket activation (``LISTEN_FDS``; matched to servers by
address), with the server's ``socketOptions`` (:mod:`hostproxy.http.sockopts`; a ``reusePort: false``
is logged, not honoured). Once every listener is up the daemon is ready: ``/ready`` answers 200 and systemd gets
``READY=1``. Namers answer lazily (the first request for a name waits up to ``bindingTimeoutMs``).

Reload (``SIGHUP``, ``POST /admin/reload``): the config file is read and validated, the routers'
own dtabs are parsed and the dtab files of routers whose ``dtabFile`` changed are read and parsed, all
in a worker thread (:func:`prepare_reload`, which touches nothing the event loop owns: it gets the
path, and the dtab file paths in force, and returns new objects), so that a large config does not hold
up proxied traffic; then, on the event loop, everything
new is built — namers (only when the ``namers``/``dns`` sections changed), routers (only those whose
config changed, or all when the namers did), listeners for servers on new addresses — before anything
is swapped. Any error leaves the running config untouched and is reported (log, admin response). On
success the swap is one synchronous step: servers on unchanged addresses keep their sockets and get
the new router as their handler, new servers start, removed ones drain; requests in flight finish on
the router, clients and namers they started on, which are retired once idle (or after
``shutdownGraceMs``). A router whose dtab file did not move keeps its watcher, so it keeps its last
good dtab. systemd sees ``RELOADING=1`` then ``READY=1``. Reloads run one at a time, in the order
they were asked for (a ``trio.Lock``, which the start holds too), so the last one asked for is the one
in force.

Drain (``SIGTERM``/``SIGINT``, ``POST /admin/shutdown``): readiness goes false and ``STOPPING=1`` is
sent at once; every server drains (listeners closed — connections already in the kernel backlog are
still served — idle keep-alive connections closed, responses in flight carry ``Connection: close``);
the process exits once no connection is left or ``admin.shutdownGraceMs`` passed (one deadline from the
signal, the wait for a reload in progress included). The signal handlers stay until the process ends:
SIGHUP while draining only reopens the access logs, a second SIGTERM/SIGINT cuts the drain short.

TLS: a server with ``tls`` gets a :class:`~hostproxy.tls.ServerTls` (its files are read when the daemon
starts — a missing or unusable certificate or key stops the start with the config key and the path)
and its listeners are wrapped in :class:`~hostproxy.tls.TlsListener`, offering ALPN ``h2`` on h2
routers and ``http/1.1`` on http ones. Each router keeps a :class:`~hostproxy.tls.ClientTlsCache` of
the client TLS settings in use; static client settings without captures are loaded at start (so a
bad trust file is reported then, and ``/admin/tls.json`` lists them before any traffic). One task
(:func:`~hostproxy.tls.watch_certificates`) re-reads every certificate file that changed, every
``tls_reload_interval_s``, without touching established connections. A reload builds new TLS objects
only for settings that changed; a server whose TLS was switched on or off is a new server on the
same address (``SO_REUSEPORT``), the old one drains.

The daemon implements :class:`hostproxy.admin.context.AdminContext` for the admin server: every view
it hands out is a snapshot built on demand, so admin scrapes never touch the request path.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import functools
import gc
import os
import random
import signal
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import structlog
import trio

from dtab import Dtab, Path
from dtab.delegate import delegate
from hostproxy import gcpolicy, sdnotify
from hostproxy.config import Config, ConfigError, load_config
from hostproxy.config.model import (
    INFLUXDB_PATH,
    InfluxDbTelemeter,
    PrometheusTelemeter,
    RecentRequestsTelemeter,
    TraceLogTelemeter,
    ZipkinTelemeter,
    to_json,
)
from hostproxy.config.registry import load_factory, lookup
from hostproxy.config.validate import config_line
from hostproxy.dtabfile import DtabFileError, DtabFileWatcher, load_dtab_file, watch_dtab_file
from hostproxy.http.listening import LISTEN_BACKLOG
from hostproxy.http.proxyheaders import ForwardedConfig, Labeler
from hostproxy.http.server import Http1Server, ServerParams, bind_listeners
from hostproxy.http.sockopts import configure_listener, socket_options
from hostproxy.idle import run_when_idle
from hostproxy.metrics import MetricsRegistry, PromId
from hostproxy.metrics.registry import FLUSH_AT_MOST_S, FLUSH_EVERY_S, FLUSH_PIECE, FLUSH_QUIET_MAX_S
from hostproxy.namerstate import NamerStateStore
from hostproxy.overload import OverloadConfig, OverloadManager, detect_memory_limit, sample_loop
from hostproxy.router import HttpRouter
from namers.inet import InetResolver
from namers.transformers import transform_delegation

if TYPE_CHECKING:  # the TLS machinery (ssl, certificates) is imported only when a config uses TLS
    from hostproxy.tls import ClientTlsCache, ServerTls, TlsListener

log = structlog.get_logger("hostproxy.daemon")

#: How often a delegator explanation waiting for a namer is tried again.
DELEGATE_RETRY_S = 0.05

IDLE_SWEEP_S = 10.0

#: How long a stopping daemon waits for its ``io.l5d.zipkin`` telemeters to send the spans queued.
ZIPKIN_DRAIN_S = 2.0


@dataclasses.dataclass
class PreparedReload:
    """What :func:`prepare_reload` made off the event loop: the validated config (or the error that
    rejects it), each router's own dtab parsed, and the dtab files loaded for routers whose
    ``dtabFile`` is not one already watched (a :class:`DtabFileError` whose message names the config
    line and key when one cannot be used)."""

    config: Config | None = None
    error: ConfigError | None = None
    own_dtabs: dict[str, Dtab] = dataclasses.field(default_factory=dict)
    dtab_files: dict[str, DtabFileWatcher | DtabFileError] = dataclasses.field(default_factory=dict)


def prepare_reload(config_path: str, watched_dtab_files: dict[str, str]) -> PreparedReload:
    """Read and validate ``config_path`` and parse what it names (blocking: run in a worker thread).

    ``watched_dtab_files`` maps router labels to the dtab file path whose watcher is in force (a
    copy: nothing here reads the daemon's state); those files are not read again, their watchers are
    kept. Never raises for a bad config or dtab file: the result carries the error."""
    try:
        new = load_config(config_path)
    except ConfigError as e:
        return PreparedReload(error=e)
    out = PreparedReload(config=new)
    for index, rcfg in enumerate(new.routers):
        label = rcfg.label or rcfg.kind
        try:
            out.own_dtabs[label] = Dtab.read(rcfg.dtab)
        except ValueError:
            pass  # (validated already; if not, building the router reports it)
        interp = rcfg.interpreter
        path = getattr(interp, "dtab_file", None)
        if interp.kind != "io.l5d.fs" or not path or watched_dtab_files.get(label) == path:
            continue
        try:
            out.dtab_files[label] = load_dtab_file(path, router=label, then="reload again")
        except DtabFileError as e:
            steps = ("routers", index, "interpreter", "dtabFile")
            line = config_line(config_path, steps)
            where = f"{config_path}:{line}:" if line else f"{config_path}:"
            out.dtab_files[label] = DtabFileError(
                f"1 error(s)\n{where} routers[{index}].interpreter.dtabFile: {e}"
            )
    return out


def build_namer(cfg: Any) -> Any:
    spec = lookup("namer", cfg.kind)
    if spec is None:
        raise ValueError(f"namer kind {cfg.kind!r} has no runtime in this hostproxy version")
    return load_factory(spec)(cfg)


def _forwarded(cfg: Any) -> ForwardedConfig | None:
    if cfg is None:
        return None
    return ForwardedConfig(
        by=Labeler(cfg.by.kind, cfg.by.label),
        for_=Labeler(cfg.for_.kind, cfg.for_.label),
    )


def server_params(router_cfg: Any, server_cfg: Any, label: str, grace_s: float) -> ServerParams:
    sockopts = getattr(server_cfg, "socket_options", None)
    read_s = _ms(getattr(sockopts, "read_timeout_ms", None))
    return ServerParams(
        ip=server_cfg.ip,
        port=server_cfg.port if server_cfg.port is not None else router_cfg.DEFAULT_PORT,
        max_concurrent_requests=server_cfg.max_concurrent_requests,
        max_headers_kb=getattr(router_cfg, "max_headers_kb", 8),
        max_initial_line_kb=getattr(router_cfg, "max_initial_line_kb", 4),
        max_call_depth=server_cfg.max_call_depth,
        add_forwarded_header=_forwarded(server_cfg.add_forwarded_header),
        timestamp_header=server_cfg.timestamp_header.lower().encode("ascii")
        if server_cfg.timestamp_header is not None
        else None,
        router_label=label,
        shutdown_grace_s=grace_s,
        request_head_timeout_s=getattr(server_cfg, "request_header_timeout_ms", 10000) / 1000,
        # socketOptions.readTimeoutMs bounds every wait for the client's bytes: the wait for the next
        # request here; a body's stalls and each read of a request head in the servers themselves.
        request_body_timeout_s=_ms(getattr(server_cfg, "request_body_timeout_ms", None)),
        idle_timeout_s=shorter(_ms(server_cfg.server_session.idle_time_ms) or 60.0, read_s),
        read_timeout_s=read_s,
        write_timeout_s=_ms(getattr(sockopts, "write_timeout_ms", None)),
        life_time_s=_ms(server_cfg.server_session.life_time_ms),
        request_timeout_ms=getattr(server_cfg, "timeout_ms", None),
        max_connections=getattr(server_cfg, "max_connections", None),
        max_requests_per_connection=getattr(server_cfg, "max_requests_per_connection", None),
        clear_context=bool(getattr(server_cfg, "clear_context", False)),
        allow_address_overrides=bool(getattr(server_cfg, "allow_address_overrides", False)),
        socket_options=socket_options(getattr(server_cfg, "socket_options", None)),
    )


def h2_server_params(router_cfg: Any, server_cfg: Any, label: str, grace_s: float) -> Any:
    """An h2 router's server: the HTTP parameters plus the HTTP/2 settings Linkerd's keys name."""
    import dataclasses

    from hostproxy.h2.server import H2ServerParams

    base = server_params(router_cfg, server_cfg, label, grace_s)
    extra: dict[str, Any] = {}
    for key, field in (
        ("max_concurrent_streams_per_connection", "max_concurrent_streams"),
        ("initial_stream_window_bytes", "initial_stream_window_bytes"),
        ("max_frame_bytes", "max_frame_bytes"),
        ("max_header_list_byts", "max_header_list_bytes"),
        ("max_header_list_bytes", "max_header_list_bytes"),
        ("header_table_bytes", "header_table_bytes"),
    ):
        value = getattr(server_cfg, key, None)
        if value is not None:
            extra[field] = value
    write_s = base.write_timeout_s
    if write_s is not None:
        # A client that takes nothing: its stream's window stays at zero (the stream is reset), or
        # the connection's socket takes no bytes (the connection is closed).
        for name in ("stall_timeout_s", "outbound_stall_timeout_s"):
            extra[name] = min(write_s, getattr(H2ServerParams, name))
    return H2ServerParams(**{f.name: getattr(base, f.name) for f in dataclasses.fields(base)}, **extra)


def reuse_port_kept(config: Config) -> list[str]:
    """The config paths of the ``socketOptions`` sections with ``reusePort: false``, which hostproxy
    does not honour (its listeners always have ``SO_REUSEPORT``)."""
    out = ["admin"] if config.admin.socket_options.reuse_port is False else []
    for i, rcfg in enumerate(config.routers):
        for j, scfg in enumerate(rcfg.servers):
            if scfg.socket_options.reuse_port is False:
                out.append(f"routers[{i}].servers[{j}]")
    return out


def _ms(v: int | None) -> float | None:
    return None if v is None else v / 1000


def shorter(a: float | None, b: float | None) -> float | None:
    """The shorter of two optional timeouts (None: unbounded)."""
    if a is None:
        return b
    return a if b is None else min(a, b)


NAMER_READY_BOUND_S = 10.0  # /ready waits at most this long for namers' first answers


class RecentRequests:
    """The ``io.l5d.recentRequests`` telemeter: a bounded ring of sampled requests."""

    def __init__(self, sample_rate: float, capacity: int, rng: random.Random) -> None:
        self.sample_rate = sample_rate
        self.ring: collections.deque[dict[str, Any]] = collections.deque(maxlen=capacity)
        self._rng = rng

    def sampled(self) -> bool:
        """Whether this request is one to keep (decided before anything is built for it)."""
        return self.sample_rate >= 1.0 or self._rng.random() < self.sample_rate

    def record(self, entry: dict[str, Any]) -> None:
        if self.sampled():
            self.ring.append(entry)


class TlsStartupError(OSError):
    """A ``tls`` section's files cannot be used when the daemon starts (an ``OSError``, so
    ``hostproxy run`` reports it as a failed start, like a port that cannot be bound)."""


#: A server's own counters exposed under its metrics scope, by metric key (`rt/<router>/server/<ip>/
#: <port>/<key>`) and the name in the server's ``statistics()``; Linkerd's `connections` and
#: `connects` first, then what tells why clients were turned away (those the protocol counts).
_SERVER_KEYS = (
    ("connections", "connections"),
    ("connects", "connections_total"),
    ("rejected_connections", "rejected_connections"),
    ("accept_failures", "accept_failures"),
    ("connection_failures", "connection_failures"),
    ("bad_requests", "bad_requests"),
    ("rejected_overload", "rejected_overload"),
    ("header_timeouts", "header_timeouts"),
    ("body_timeouts", "body_timeouts"),
    ("write_timeouts", "write_timeouts"),
    ("tunnel_timeouts", "tunnel_timeouts"),
    ("refused_streams", "refused_streams"),
    ("client_resets", "client_resets"),
    ("requests_abandoned", "requests_abandoned"),
)


class _ServerMetrics:
    """A running server's counters, with its TLS handshakes when it has TLS, as one ``statistics()``
    under the metric keys (read when the metrics are rendered, so they cost requests nothing)."""

    def __init__(self, slot: _ServerSlot) -> None:
        self.slot = slot
        have = slot.server.statistics()
        self.keys: list[str] = [key for key, name in _SERVER_KEYS if name in have]
        self.keys.append("closes")
        #: The handshake failure reasons a TLS server counts (none without TLS).
        self.reasons: tuple[str, ...] = ()
        if slot.tls is not None:
            from hostproxy.tls.stream import REASONS

            self.reasons = REASONS
            self.keys += ["tls/handshakes", "tls/handshake_failures"]
            self.keys += [f"tls/handshake_failures/{reason}" for reason in REASONS]

    def statistics(self) -> dict[str, float]:
        have = self.slot.server.statistics()
        out: dict[str, float] = {key: have[name] for key, name in _SERVER_KEYS if name in have}
        out["closes"] = max(0, have["connections_total"] - have["connections"])
        tls = self.slot.tls
        if self.reasons and tls is not None:
            stats = tls.statistics()
            failures: dict[str, int] = stats["handshake_failures"]
            out["tls/handshakes"] = stats["handshakes"]
            out["tls/handshake_failures"] = sum(failures.values())
            for reason in self.reasons:
                out[f"tls/handshake_failures/{reason}"] = failures.get(reason, 0)
        return out


class _ServerSlot:
    """One running server: its object, its key (ip, port), the scope that ends it, and its TLS."""

    __slots__ = ("key", "router", "server", "scope", "params", "tls", "tls_listeners", "exposed")

    def __init__(
        self,
        key: tuple[str, Any],
        router: str,
        server: Any,
        params: ServerParams,
        tls: ServerTls | None = None,
    ) -> None:
        self.key = key
        self.router = router
        self.server = server
        self.params = params
        self.scope = trio.CancelScope()
        self.tls = tls
        self.tls_listeners: list[TlsListener] = []
        #: Where this server's counters are in the metrics: (router, ip, port, keys) per address.
        self.exposed: list[tuple[str, str, int, list[str]]] = []

    def wrap(self, listeners: list[Any]) -> list[Any]:
        """The listeners to serve: wrapped in TLS when this server has ``tls``."""
        if self.tls is None:
            return listeners
        from hostproxy.tls import TlsListener

        self.tls_listeners = [TlsListener(lst, self.tls) for lst in listeners]
        return list(self.tls_listeners)

    def set_tls(self, tls: ServerTls | None) -> None:
        """New connections use ``tls`` from now on (established ones keep their session)."""
        self.tls = tls
        if tls is not None:
            for lst in self.tls_listeners:
                lst.tls = tls


def _spec_key(params: ServerParams, label: str, index: int, tls: bool, kind: str = "http") -> tuple[str, Any]:
    """A server's identity across reloads: its address (an ephemeral port (0) is told apart by router
    and position); a TLS server is another server than a plaintext one on the same address, and an h2
    server another than an HTTP/1.1 one (a router whose protocol changed gets a new server)."""
    port: Any = params.port if params.port else f"0/{label}/{index}"
    if tls:
        port = f"{port}/tls"
    if kind != "http":
        port = f"{port}/{kind}"
    return (params.ip, port)


def systemd_listeners(env: dict[str, str] | os._Environ[str] | None = None) -> dict[tuple[str, int], Any]:
    """Listening sockets passed by systemd socket activation, keyed by their (ip, port).

    Honoured only when ``LISTEN_PID`` is this process. The variables are removed afterwards so that
    child processes do not adopt the same descriptors.
    """
    environ = os.environ if env is None else env
    if environ.get("LISTEN_PID") != str(os.getpid()):
        return {}
    try:
        count = int(environ.get("LISTEN_FDS", "0"))
    except ValueError:
        log.warning("daemon.listen_fds_invalid", value=environ.get("LISTEN_FDS"))
        return {}
    names = environ.get("LISTEN_FDNAMES", "").split(":")
    out: dict[tuple[str, int], Any] = {}
    for i in range(count):
        fd = 3 + i
        try:
            sock = socket.socket(fileno=fd)
        except OSError as e:
            log.warning("daemon.listen_fd_unusable", fd=fd, error=str(e))
            continue
        sock.setblocking(False)
        addr = sock.getsockname()
        key = (str(addr[0]), int(addr[1]))
        out[key] = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
        log.info("daemon.listen_fd_adopted", fd=fd, name=names[i] if i < len(names) else "", address=key)
    for var in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        environ.pop(var, None)
    return out


def overload_config(cfg: Any) -> OverloadConfig:
    limit = cfg.memory_limit_bytes if cfg.memory_limit_bytes is not None else detect_memory_limit()
    return OverloadConfig(
        memory_limit_bytes=limit,
        no_keepalive=cfg.no_keepalive,
        shed=cfg.shed,
        stop_accept=cfg.stop_accept,
        fd_stop_accept=cfg.fd_stop_accept,
        fd_reserve=cfg.fd_reserve,
        hysteresis=cfg.hysteresis,
    )


class _Namers:
    """The namers, inet resolver and namer pairs built from one config (swapped as a unit on reload)."""

    def __init__(self, daemon: Daemon, config: Config, *, load_state: bool = True) -> None:
        self.configs = config.namers
        self.namers = [build_namer(n) for n in config.namers]
        self.resolver = InetResolver(tuple(config.dns.nameservers))
        self.transformer_watches: list[tuple[Any, Path]] = []
        self.scope = trio.CancelScope()
        # (prefix, lookup) in preference order: the last-configured namer first, as Linkerd does.
        self.pairs: list[tuple[Path, Any]] = []
        for ncfg, namer in reversed(list(zip(config.namers, self.namers, strict=True))):
            lookup_fn = namer.lookup
            if ncfg.transformers:
                from namers.transformers import transforming_lookup

                lookup_fn = transforming_lookup(lookup_fn, daemon.build_transformers(ncfg.transformers, self))
            self.pairs.append((Path.read("/#") + namer.prefix, lookup_fn))
        # Last good answers that survive a restart (namerState.dir): loaded before any namer runs
        # (here at start; a reload loads them in a worker thread: see Daemon._reload).
        self.state_store: NamerStateStore | None = None
        if config.namer_state.dir:
            # The /$/inet resolver's DNS answers too: a restart while DNS is down keeps its hosts.
            self.state_store = NamerStateStore(config.namer_state.dir, [*self.namers, self.resolver])
            if load_state:
                self.state_store.load_all()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with self.scope:
            async with trio.open_nursery() as nursery:
                for n in self.namers:
                    await nursery.start(n.run)
                await nursery.start(self.resolver.run)
                if self.state_store is not None:
                    await nursery.start(self.state_store.run)
                task_status.started()
        # Cancelled (retired by a reload, or shutdown).


class Daemon:
    """A running hostproxy (see the module docstring)."""

    def __init__(
        self,
        config: Config,
        *,
        rng: random.Random | None = None,
        config_path: str | None = None,
        env: dict[str, str] | None = None,
        tls_reload_interval_s: float = 5.0,
        freeze_gc: bool = False,
    ) -> None:
        self.config = config
        self.tls_reload_interval_s = tls_reload_interval_s
        # The process owns the collector only when it is the daemon (hostproxy run), not a test harness.
        self.freeze_gc = freeze_gc
        #: The collector policy, installed once started when ``freeze_gc`` (see ``gcpolicy``).
        self.gc_policy: gcpolicy.GcPolicy | None = None
        self.config_path = config_path
        self.env = env  # None: os.environ (sd_notify, socket activation)
        self.rng = rng or random.Random()
        self.metrics = MetricsRegistry(time.monotonic)
        self._namers = _Namers(self, config)
        self.routers: dict[str, HttpRouter] = {}
        self.slots: dict[tuple[str, Any], _ServerSlot] = {}
        self.dtab_watchers: dict[str, DtabFileWatcher] = {}
        self._watch_scopes: dict[str, trio.CancelScope] = {}
        self.admin_address: tuple[str, int] | None = None
        self._admin_tls: ServerTls | None = None  # admin.tls (set when the daemon starts)
        self.addresses: dict[str, list[tuple[str, int]]] = {}
        self._ready = False
        self._ready_override = True
        self._namers_ready = False
        self._started_mono = time.monotonic()
        self.draining = False
        self._shutdown = trio.Event()
        self._drain_scope: trio.CancelScope | None = None
        self._drain_cut_by: str | None = None  # the signal that cut the drain short
        self._signal_reload_queued = False  # a SIGHUP's reload waits for its turn
        self._nursery: trio.Nursery | None = None
        self._servers_nursery: trio.Nursery | None = None
        self._reload_lock = trio.Lock()
        self.generation = 1
        self.last_reload: dict[str, Any] | None = None
        self.recent: RecentRequests | None = None
        #: The ``io.l5d.zipkin`` telemeters' exporters (their sender tasks start with the daemon).
        self.zipkin: list[Any] = []
        #: The ``io.l5d.tracelog`` telemeters (spans to the log).
        self.tracelogs: list[Any] = []
        for t in config.telemetry:
            if isinstance(t, RecentRequestsTelemeter):
                self.recent = RecentRequests(t.sample_rate, t.capacity, self.rng)
            elif isinstance(t, ZipkinTelemeter):
                from hostproxy.zipkin import ZipkinExporter

                self.zipkin.append(ZipkinExporter(t.host, t.port, t.sample_rate, rng=self.rng))
            elif isinstance(t, TraceLogTelemeter):
                from hostproxy.tracelog import TraceLogSink

                self.tracelogs.append(TraceLogSink(t.sample_rate, t.level, rng=self.rng))
        for name, help_text in (
            ("recorded", "spans recorded for the Zipkin collector"),
            ("sent", "spans the Zipkin collector took"),
            ("dropped", "spans lost: the queue was full, or the collector could not take them"),
            ("send_failures", "batches of spans the Zipkin collector did not take"),
        ):
            if self.zipkin:
                self.metrics.counter_fn(
                    f"zipkin/{name}",
                    functools.partial(self._zipkin_stat, name),
                    PromId(
                        f"hostproxy_zipkin_spans_{name}_total"
                        if name != "send_failures"
                        else "hostproxy_zipkin_send_failures_total",
                        (),
                        help_text,
                    ),
                )
        self.overload = OverloadManager(overload_config(config.overload), clock=time.monotonic)
        self._overload_interval_s = config.overload.interval_ms / 1000
        self._sampler_scope: trio.CancelScope | None = None
        for name in (
            "memory_level",
            "fd_exhausted",
            "rss_bytes",
            "open_fds",
            "fd_limit",
            "shed",
            "transitions",
        ):
            self.metrics.gauge(f"overload/{name}", functools.partial(self._overload_stat, name))
        self.started_at = time.time()

    # -- compatibility views (the namers in force) ------------------------------------------------

    @property
    def namers(self) -> list[Any]:
        return self._namers.namers

    @property
    def resolver(self) -> InetResolver:
        return self._namers.resolver

    @property
    def namer_pairs(self) -> list[tuple[Path, Any]]:
        return self._namers.pairs

    @property
    def servers(self) -> list[Any]:
        return [slot.server for slot in self.slots.values()]

    def build_transformers(self, cfgs: Any, namers: _Namers | None = None) -> list[Any]:
        """Transformer objects for a namer's or an interpreter's ``transformers`` list."""
        ns = namers or self._namers
        out: list[Any] = []
        for c in cfgs:
            spec = lookup("transformer", c.kind)
            if spec is None:
                raise ValueError(f"transformer kind {c.kind!r} has no runtime in this hostproxy version")
            factory = load_factory(spec)
            if c.kind == "io.l5d.k8s.daemonset":
                at = c.namer_index(ns.configs)
                if at is None:
                    raise ValueError(
                        "transformer io.l5d.k8s.daemonset needs an io.l5d.k8s namer at its k8sHost:k8sPort "
                        f"({c.k8s_host}:{c.k8s_port}) in `namers` to watch the daemonset Service "
                        f"{c.namespace}/{c.service}; add one"
                    )
                k8s = ns.namers[at]
                holder: dict[str, Any] = {}

                def source(k8s: Any = k8s, holder: dict[str, Any] = holder) -> Any:
                    residual = holder["t"].k8s_residual
                    try:
                        k8s.lookup(residual)  # starts (or keeps) the watch of the daemonset Service
                    except Exception:  # its state is read below, failed or not
                        pass
                    return k8s.addr(residual)

                t = factory(c, source=source)
                holder["t"] = t
                ns.transformer_watches.append((k8s, t.k8s_residual))
            elif c.kind in ("io.l5d.replace", "io.l5d.const"):
                t = factory(c, system=ns.resolver.system)
            else:
                t = factory(c)
            out.append(t)
        return out

    def _watch_transformer_sources(self, ns: _Namers) -> None:
        """A daemonset's pods moving changes every binding through its transformer: re-bind all."""
        for namer, residual in ns.transformer_watches:

            def changed(_n: Any, key: Any, residual: Path = residual) -> None:
                if residual.startswith(key) or key.startswith(residual):
                    for r in self.routers.values():
                        r.set_dtab(r.binder.base_dtab)

            namer.subscribe(changed)

    # -- building ---------------------------------------------------------------------------------

    def _dtab_watcher_in_force(self, rcfg: Any, label: str) -> tuple[str | None, DtabFileWatcher | None]:
        """The router's dtab file (None: its interpreter reads none) and the watcher in force for that
        path (None: none yet, or one of another path)."""
        interp = rcfg.interpreter
        path = getattr(interp, "dtab_file", None)
        if interp.kind != "io.l5d.fs" or not path:
            return None, None
        old = self.dtab_watchers.get(label)
        return path, (old if old is not None and old.path == path else None)

    def _dtab_watcher(self, rcfg: Any, label: str, then: str = "start again") -> DtabFileWatcher | None:
        """The router's dtab file watcher: kept across reloads while the path stays, else loaded now
        (:class:`DtabFileError` when it cannot be used; ``then``: what to do once the file is fixed)."""
        path, old = self._dtab_watcher_in_force(rcfg, label)
        if path is None or old is not None:
            return old
        # Loaded with no on_change: the router does not exist yet, its base dtab is computed below.
        watcher = load_dtab_file(path, router=label, then=then)
        watcher.on_change = lambda dtab, _v, label=label: self._file_dtab_changed(label)
        return watcher

    def _reload_dtab_watcher(
        self, rcfg: Any, label: str, loaded: DtabFileWatcher | None
    ) -> DtabFileWatcher | None:
        """:meth:`_dtab_watcher` for a reload whose dtab files :func:`prepare_reload` loaded: the
        watcher in force when the path stays, else the one loaded, wired to this router."""
        path, old = self._dtab_watcher_in_force(rcfg, label)
        if path is None or old is not None:
            return old
        if loaded is None:  # (a watcher that went away meanwhile: load it here)
            return self._dtab_watcher(rcfg, label, then="reload again")
        loaded.on_change = lambda dtab, _v, label=label: self._file_dtab_changed(label)
        return loaded

    def _base_dtab(self, rcfg: Any, watcher: DtabFileWatcher | None, own: Dtab | None = None) -> Dtab:
        """The router's dtab: its dtab file's, then its own (``own``: already parsed)."""
        if own is None:
            own = Dtab.read(rcfg.dtab)
        return own if watcher is None else watcher.dtab + own

    def _overload_stat(self, name: str) -> float:
        return float(self.overload.statistics()[name])

    def _file_dtab_changed(self, label: str) -> None:
        router = self.routers.get(label)
        watcher = self.dtab_watchers.get(label)
        if router is None or watcher is None:
            return
        router.set_dtab(self._base_dtab(router.cfg, watcher))

    def _build_router(
        self,
        rcfg: Any,
        ns: _Namers,
        watcher: DtabFileWatcher | None,
        index: int = 0,
        own_dtab: Dtab | None = None,
    ) -> HttpRouter:
        assert self._nursery is not None
        if rcfg.kind not in ("http", "h2"):
            raise ValueError(f"router protocol {rcfg.kind!r} has no runtime in this hostproxy version")
        pool_factory = None
        if rcfg.kind == "h2":
            from hostproxy.h2.upstream import H2UpstreamPool

            pool_factory = H2UpstreamPool
        label = rcfg.label or rcfg.kind
        client_tls = self._client_tls(rcfg, index, label)
        return HttpRouter(
            rcfg,
            namers=ns.namers,
            resolver=ns.resolver,
            metrics=self.metrics,
            nursery=self._nursery,
            rng=self.rng,
            namer_pairs=ns.pairs,
            pool_factory=pool_factory,
            transformers=self.build_transformers(rcfg.interpreter.transformers, ns),
            base_dtab=self._base_dtab(rcfg, watcher, own_dtab),
            client_tls=client_tls,
            recent=self.recent,
            spans=self._span_recorder(label),
        )

    def telemetry_state(self) -> dict[str, Any]:
        """``/admin/telemetry.json``: the config's telemeters in order, each with its settings and,
        for those that send or write, what they did (``sent``, ``dropped``, ``lastError`` ...)."""
        zipkin, tracelogs = iter(self.zipkin), iter(self.tracelogs)
        out: list[dict[str, Any]] = []
        for t in self.config.telemetry:
            entry: dict[str, Any] = {"kind": t.kind}
            if isinstance(t, ZipkinTelemeter):
                stats = next(zipkin).statistics()
                entry.update(
                    collector=stats["collector"],
                    sampleRate=stats["sample_rate"],
                    queued=stats["queued"],
                    recorded=stats["recorded"],
                    sent=stats["sent"],
                    dropped=stats["dropped"],
                    sendFailures=stats["send_failures"],
                    lastError=stats["last_error"],
                )
            elif isinstance(t, TraceLogTelemeter):
                sink = next(tracelogs)
                entry.update(sampleRate=sink.sample_rate, level=t.level.upper(), logged=sink.logged)
            elif isinstance(t, PrometheusTelemeter):
                entry.update(path=t.path, prefix=t.prefix)
            elif isinstance(t, RecentRequestsTelemeter):
                entry.update(sampleRate=t.sample_rate, capacity=t.capacity)
            elif isinstance(t, InfluxDbTelemeter):
                entry.update(path=INFLUXDB_PATH)
            out.append(entry)
        return {"telemeters": out}

    def _zipkin_stat(self, name: str) -> int:
        return sum(int(e.statistics()[name]) for e in self.zipkin)

    def _span_recorder(self, label: str) -> Any:
        """A router's span recorder, when an ``io.l5d.zipkin`` telemeter exports traces."""
        sinks = [*self.zipkin, *self.tracelogs]
        if not sinks:
            return None
        from hostproxy.zipkin import AttemptRecorder

        return AttemptRecorder(sinks, label)

    async def _watch_tls(self) -> None:
        """Re-read changed certificate files every ``tls_reload_interval_s`` (when any TLS is in use)."""
        while True:
            await trio.sleep(self.tls_reload_interval_s)
            objects = list(self._tls_objects())
            if objects:
                from hostproxy.tls import reload_all

                reload_all(objects)

    @staticmethod
    def _client_tls(rcfg: Any, index: int, label: str) -> ClientTlsCache | None:
        """The router's client TLS cache, with every client setting that has no ``{capture}`` loaded
        now (settings with captures have their files read and checked only). Raises
        :class:`TlsStartupError` naming the config key and the file."""
        from hostproxy.config.params import client_tls_sections

        sections = client_tls_sections(rcfg, index)
        if not sections:
            return None  # no client TLS configured: the router makes a cache if it ever needs one
        from hostproxy.tls import ClientTlsCache, TlsConfigError
        from hostproxy.tls.client import load_client_tls

        cache = ClientTlsCache()
        for key, tls in sections:
            try:
                load_client_tls(cache, tls, router=label, key=key, protocol=rcfg.kind)
            except TlsConfigError as exc:
                raise TlsStartupError(str(exc)) from None
        return cache

    def _make_server(self, router: HttpRouter, params: ServerParams) -> Any:
        """The one place a server object is made for a router (one protocol per router kind)."""
        if router.cfg.kind == "h2":
            from hostproxy.h2.server import H2Server

            return H2Server(router.handle, params, rng=self.rng, overload=self.overload)  # type: ignore[arg-type]  # H2ServerParams
        return Http1Server(router.handle, params, rng=self.rng, overload=self.overload)

    def _server_specs(self, config: Config) -> dict[tuple[str, Any], tuple[str, ServerParams]]:
        """Servers by address; an ephemeral port (0) is told apart by router and position."""
        grace_s = config.admin.shutdown_grace_ms / 1000
        out: dict[tuple[str, Any], tuple[str, ServerParams]] = {}
        for rcfg in config.routers:
            label = rcfg.label or rcfg.kind
            make = h2_server_params if rcfg.kind == "h2" else server_params
            for i, scfg in enumerate(rcfg.servers):
                params = make(rcfg, scfg, label, grace_s)
                out[_spec_key(params, label, i, scfg.tls is not None, rcfg.kind)] = (label, params)
        return out

    def _build_server_tls(self, config: Config) -> dict[tuple[str, Any], ServerTls]:  # noqa: C901
        """The ServerTls of every TLS server of ``config`` by server key: the running one when its
        settings did not change, else loaded now (:class:`TlsStartupError` when its files cannot be used)."""
        if not any(scfg.tls is not None for rcfg in config.routers for scfg in rcfg.servers):
            return {}
        from hostproxy.tls import ServerTls, TlsConfigError, alpn_for_protocol

        grace_s = config.admin.shutdown_grace_ms / 1000
        out: dict[tuple[str, Any], ServerTls] = {}
        for ri, rcfg in enumerate(config.routers):
            label = rcfg.label or rcfg.kind
            make = h2_server_params if rcfg.kind == "h2" else server_params
            alpn = alpn_for_protocol(rcfg.kind)
            for j, scfg in enumerate(rcfg.servers):
                if scfg.tls is None:
                    continue
                key = _spec_key(make(rcfg, scfg, label, grace_s), label, j, True, rcfg.kind)
                slot = self.slots.get(key)
                if (
                    slot is not None
                    and slot.tls is not None
                    and slot.tls.config == scfg.tls
                    and slot.tls.alpn == alpn
                    and slot.tls.router == label
                ):
                    out[key] = slot.tls
                    continue
                try:
                    out[key] = ServerTls(
                        scfg.tls, alpn=alpn, router=label, key=f"routers[{ri}].servers[{j}].tls"
                    )
                except TlsConfigError as exc:
                    raise TlsStartupError(str(exc)) from None
        return out

    @staticmethod
    def _build_admin_tls(config: Config) -> ServerTls | None:
        """The admin server's ServerTls (``admin.tls``), loaded now (:class:`TlsStartupError` when its
        files cannot be used); None for a plaintext admin server."""
        if config.admin.tls is None:
            return None
        from hostproxy.tls import ServerTls, TlsConfigError, alpn_for_protocol

        try:
            return ServerTls(
                config.admin.tls, alpn=alpn_for_protocol("http"), router="admin", key="admin.tls"
            )
        except TlsConfigError as exc:
            raise TlsStartupError(str(exc)) from None

    def _tls_objects(self) -> list[Any]:
        """Every live TLS object (servers', the admin server's and routers' clients'), for reloads and
        /admin/tls.json."""
        objs: list[Any] = [slot.tls for slot in self.slots.values() if slot.tls is not None]
        if self._admin_tls is not None:
            objs.append(self._admin_tls)
        for r in self.routers.values():
            if r._client_tls is not None:  # never made for a router without client TLS
                objs.extend(r._client_tls)
        return objs

    @staticmethod
    def _listeners_for(params: ServerParams, inherited: dict[tuple[str, int], Any]) -> list[Any]:
        lst = inherited.pop((params.ip, params.port), None) if params.port else None
        if lst is not None:
            if params.socket_options is not None:
                configure_listener(lst.socket, params.socket_options, LISTEN_BACKLOG)
            return [lst]
        return bind_listeners(params.ip, params.port, options=params.socket_options)

    async def _start_slot(self, slot: _ServerSlot, listeners: list[Any]) -> None:
        assert self._servers_nursery is not None

        async def run(task_status: trio.TaskStatus[list[tuple[str, int]]] = trio.TASK_STATUS_IGNORED) -> None:
            with slot.scope:
                await slot.server.serve(listeners, task_status=task_status)

        addrs = await self._servers_nursery.start(run)
        self.addresses.setdefault(slot.router, []).extend(addrs)
        self._expose_server(slot, [port for _, port in addrs])

    def _expose_server(self, slot: _ServerSlot, ports: list[int]) -> None:
        """Show ``slot``'s connection and TLS counters under its server scope in the metrics (again
        after a reload, which may have changed its router or its TLS)."""
        self._hide_server(slot)
        view = _ServerMetrics(slot)
        for port in ports:
            self.metrics.router(slot.router).server_extras(slot.params.ip, port, view, view.keys)
            slot.exposed.append((slot.router, slot.params.ip, port, view.keys))

    def _hide_server(self, slot: _ServerSlot) -> None:
        for label, ip, port, keys in slot.exposed:
            self.metrics.router(label).drop_server_extras(ip, port, keys)
        slot.exposed = []

    def _start_dtab_watch(self, label: str, watcher: DtabFileWatcher) -> None:
        assert self._nursery is not None
        scope = trio.CancelScope()
        self._watch_scopes[label] = scope

        async def watch() -> None:
            with scope:
                await watch_dtab_file(watcher)

        self._nursery.start_soon(watch)

    # -- running ----------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[Daemon] = trio.TASK_STATUS_IGNORED) -> None:
        # Held until the daemon is started: a reload asked for meanwhile (a SIGHUP at boot) waits for
        # the start instead of running against half-built routers and servers.
        await self._reload_lock.acquire()
        server_tls = self._build_server_tls(self.config)  # certificate files fail the start here
        self._admin_tls = self._build_admin_tls(self.config)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self._namers.run)
            inherited = systemd_listeners(self.env)
            for index, rcfg in enumerate(self.config.routers):
                label = rcfg.label or rcfg.kind
                watcher = self._dtab_watcher(rcfg, label)
                router = self._build_router(rcfg, self._namers, watcher, index)
                self.routers[router.label] = router
                if watcher is not None:
                    self.dtab_watchers[label] = watcher
                    self._start_dtab_watch(label, watcher)
            self._watch_transformer_sources(self._namers)
            from hostproxy.admin.server import AdminServer

            admin = AdminServer(
                self,
                self.config.admin.ip,
                self.config.admin.port,
                self.config.admin.allow_remote_control,
                security=self.config.admin.security,
                socket_options=socket_options(self.config.admin.socket_options),
                read_timeout_s=_ms(self.config.admin.socket_options.read_timeout_ms),
                write_timeout_s=_ms(self.config.admin.socket_options.write_timeout_ms),
                prometheus=[t for t in self.config.telemetry if isinstance(t, PrometheusTelemeter)],
                influxdb=any(isinstance(t, InfluxDbTelemeter) for t in self.config.telemetry),
                tls=self._admin_tls,
            )
            self.admin_address = await nursery.start(admin.serve)
            await nursery.start(self._run_sampler)
            nursery.start_soon(functools.partial(sdnotify.watchdog_loop, env=self.env))
            # Request metrics are recorded between bursts of requests, not inside them (the
            # registry's "deferred records"); every reader flushes first.
            self.metrics.defer_records()
            nursery.start_soon(
                functools.partial(
                    run_when_idle,
                    functools.partial(self.metrics.flush, FLUSH_PIECE),
                    lambda: self.metrics.deferred,
                    every_s=FLUSH_EVERY_S,
                    at_most_s=FLUSH_AT_MOST_S,
                    quiet_max_s=FLUSH_QUIET_MAX_S,
                    final=self.metrics.flush,
                )
            )
            servers_done = trio.Event()

            async def run_servers(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
                try:
                    async with trio.open_nursery() as sn:
                        self._servers_nursery = sn
                        for key, (label, params) in self._server_specs(self.config).items():
                            slot = _ServerSlot(
                                key,
                                label,
                                self._make_server(self.routers[label], params),
                                params,
                                server_tls.get(key),
                            )
                            self.slots[key] = slot
                            await self._start_slot(slot, slot.wrap(self._listeners_for(params, inherited)))
                        task_status.started()
                        await self._shutdown.wait()
                finally:
                    servers_done.set()

            await nursery.start(run_servers)
            for where in reuse_port_kept(self.config):
                log.info(
                    "listen.reuse_port_kept",
                    key=f"{where}.socketOptions.reusePort",
                    message=(
                        f"{where}.socketOptions.reusePort is false, but hostproxy's listeners always have "
                        "SO_REUSEPORT: upgrades and reloads hand the port over through it (see README, "
                        "Operations); remove the key to silence this"
                    ),
                )
            for lst in inherited.values():
                log.warning("daemon.listen_fd_unused", address=lst.socket.getsockname())
                await lst.aclose()
            nursery.start_soon(self._sweep_idle)
            nursery.start_soon(self._watch_tls)
            for exporter in self.zipkin:
                await nursery.start(exporter.run)
            self._ready = True
            # Everything built at start lives as long as the daemon: keep it out of the collector's
            # full scans, which otherwise pause the event loop for milliseconds under load.
            if self.freeze_gc:
                gc.collect()
                gc.freeze()
                # From here on, what survives a full collection is frozen too (``gcpolicy``).
                self.gc_policy = gcpolicy.GcPolicy()
                self.gc_policy.walked_all()
                gcpolicy.install(self.gc_policy)
            log.info("daemon.started", routers=self.addresses, admin=self.admin_address, pid=os.getpid())
            sdnotify.ready(f"routing on {self._describe_addresses()}", env=self.env)
            self._reload_lock.release()
            task_status.started(self)
            await self._shutdown.wait()
            await self._drain(servers_done)
            for r in self.routers.values():
                r.close()
            if self.zipkin:
                # The spans of the last requests (those of the drain too) go out before the sender stops.
                with trio.move_on_after(ZIPKIN_DRAIN_S):
                    for exporter in self.zipkin:
                        await exporter.drain()
            nursery.cancel_scope.cancel()
        if self.gc_policy is not None:
            gcpolicy.uninstall()
        log.info("daemon.stopped")

    async def _run_sampler(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The overload sampler at the interval in force (restarted by a reload that changes it)."""
        with trio.CancelScope() as scope:
            self._sampler_scope = scope
            await sample_loop(self.overload, interval_s=self._overload_interval_s, task_status=task_status)

    def _describe_addresses(self) -> str:
        return ", ".join(
            f"{label} {ip}:{port}" for label, addrs in self.addresses.items() for ip, port in addrs
        )

    async def _drain(self, servers_done: trio.Event) -> None:
        grace_s = self.config.admin.shutdown_grace_ms / 1000
        self.draining = True
        self._ready = False
        sdnotify.stopping(env=self.env)
        slots: list[_ServerSlot] | None = None
        # One deadline for the whole drain, the wait for a reload in progress included: the grace is
        # what TimeoutStopSec and terminationGracePeriodSeconds are sized on.
        with trio.move_on_after(grace_s) as scope:
            self._drain_scope = scope
            if self._drain_cut_by is not None:
                scope.cancel()
            # A reload in progress finishes first (no new one starts once draining): otherwise the
            # servers it adds would be missed by the drain, or started in the closed servers' nursery.
            async with self._reload_lock:
                pass
            slots = self._start_draining(grace_s)
            await servers_done.wait()
        if slots is None:  # the grace ran out (or the drain was cut short) before the reload finished
            slots = self._start_draining(grace_s)
        if self._drain_cut_by is not None:
            log.warning("daemon.drain_cut_short", signal=self._drain_cut_by, in_flight=self._in_flight(slots))
        elif scope.cancelled_caught:
            log.warning("daemon.drain_grace_expired", grace_s=grace_s, in_flight=self._in_flight(slots))
        for slot in slots:
            slot.scope.cancel()

    def _start_draining(self, grace_s: float) -> list[_ServerSlot]:
        slots = list(self.slots.values())
        log.info("daemon.draining", grace_s=grace_s, in_flight=self._in_flight(slots))
        for slot in slots:
            slot.server.drain()
        return slots

    def cut_drain_short(self, by: str) -> None:
        """Stop waiting for the requests in flight (a second SIGTERM/SIGINT): the drain ends now."""
        self._drain_cut_by = by
        if self._drain_scope is not None:
            self._drain_scope.cancel()

    @staticmethod
    def _in_flight(slots: list[_ServerSlot]) -> int:
        return sum(int(s.server.statistics().get("requests_in_flight", 0)) for s in slots)

    async def _sweep_idle(self) -> None:
        while True:
            await trio.sleep(IDLE_SWEEP_S)
            for r in self.routers.values():
                r.expire_idle()

    async def serve_signals(self) -> None:
        """SIGTERM/SIGINT drain, SIGHUP reloads. The handlers stay in place until the process ends: a
        signal's default action would end a draining daemon at once (SIGHUP's too)."""
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for sig in signals:
                name = signal.Signals(sig).name
                log.info("daemon.signal", signal=name)
                if sig == signal.SIGHUP:
                    for r in self.routers.values():
                        r.access_log.reopen()  # after logrotate moved the file away
                    if self.draining or self._shutdown.is_set():
                        log.info("daemon.signal_ignored", signal=name, reason="no reload while draining")
                    elif self._signal_reload_queued:
                        # The reload queued by an earlier SIGHUP has not read the file yet: it will
                        # read it as it is now, so a storm of SIGHUPs is one more reload, not many.
                        log.info("daemon.reload_coalesced", signal=name)
                    elif self._nursery is not None:
                        self._signal_reload_queued = True
                        self._nursery.start_soon(self._reload_on_signal)
                elif self._shutdown.is_set():
                    # A second stop signal: the operator does not want to wait for the grace.
                    self.cut_drain_short(name)
                else:
                    self.request_shutdown()

    # -- reload -----------------------------------------------------------------------------------

    async def _reload_on_signal(self) -> None:
        def started() -> None:
            self._signal_reload_queued = False

        try:
            await self.reload(on_start=started)
        finally:
            started()

    async def reload(self, *, on_start: Callable[[], None] | None = None) -> tuple[bool, str]:
        """Re-read and apply the config file (see the module docstring); ``(ok, message)``.
        ``on_start`` is called when this reload's turn comes, before the file is read."""
        if self.config_path is None or self.config_path == "-":
            return _refused(
                "reload needs a config file: this daemon was started from stdin or in-process text"
            )
        if self.draining or self._nursery is None:
            return _refused("reload refused: the daemon is shutting down")
        async with self._reload_lock:
            if on_start is not None:
                on_start()
            if self.draining:
                return _refused("reload refused: the daemon is shutting down")
            sdnotify.reloading(env=self.env)
            try:
                ok, message = await self._reload()
            finally:
                # RELOADING=1 is always answered: READY=1, or STOPPING=1 again when a drain started
                # meanwhile (READY=1 after STOPPING=1 would tell systemd the opposite of the truth).
                if self.draining or self._shutdown.is_set():
                    sdnotify.stopping(env=self.env)
                else:
                    sdnotify.ready(env=self.env)
        self.last_reload = {"ok": ok, "message": message, "at": time.time(), "generation": self.generation}
        if ok and self.freeze_gc:
            # What the old config built is garbage now: let the collector see it, then freeze again.
            gc.unfreeze()
            gc.collect()
            gc.freeze()
            if self.gc_policy is not None:
                self.gc_policy.walked_all()
        if ok:
            log.info("daemon.reloaded", generation=self.generation, message=message)
        else:
            log.error("daemon.reload_failed", error=message)
        return ok, message

    async def _reload(self) -> tuple[bool, str]:
        assert self.config_path is not None
        # Reading, validating and parsing, in a worker thread: the event loop keeps serving meanwhile.
        # The thread gets copies (the path, the dtab files watched now; no reload can change those
        # while this one holds the lock) and hands back new objects; everything else happens here.
        watched = {label: w.path for label, w in self.dtab_watchers.items()}
        prepared = await trio.to_thread.run_sync(
            prepare_reload, self.config_path, watched, abandon_on_cancel=True
        )
        if prepared.error is not None:
            e = prepared.error
            lines = "\n".join(i.format() for i in e.errors)
            return False, f"reload rejected, the running config stays: {len(e.errors)} error(s)\n{lines}"
        assert prepared.config is not None
        new = prepared.config
        old = self.config
        admin_note = ""
        if new.admin != old.admin:
            # Not applied, so not reported as in force either: the running config keeps the admin
            # section the admin server and the drains use (``shutdownGraceMs`` included).
            log.warning("daemon.reload_admin_ignored", reason="admin settings change only with a restart")
            new = dataclasses.replace(new, admin=old.admin)
            admin_note = "; admin settings not changed (they change only with a restart)"
        if new.telemetry != old.telemetry:
            # The telemeters live with the admin server and the routers' request recorder, made once.
            log.warning("daemon.reload_telemetry_ignored", reason="telemetry changes only with a restart")
            new = dataclasses.replace(new, telemetry=old.telemetry)
            admin_note += "; telemetry not changed (it changes only with a restart)"
        namers_changed = new.namers != old.namers or new.dns != old.dns or new.namer_state != old.namer_state
        built: list[Any] = []  # listeners bound so far, closed if the reload fails
        routers: dict[str, HttpRouter] = {}
        try:
            if namers_changed and self._namers.state_store is not None:
                # What the running namers know now, for the new ones to load (the same directory).
                await self._namers.state_store.flush()
            ns = _Namers(self, new, load_state=False) if namers_changed else self._namers
            if namers_changed and ns.state_store is not None:
                # Decoding a large file takes seconds: not on the event loop, which serves meanwhile.
                # The new namers do not run yet, so nothing else touches their tables.
                await trio.to_thread.run_sync(ns.state_store.load_all)
            watchers: dict[str, DtabFileWatcher] = {}
            changed: list[str] = []
            for index, rcfg in enumerate(new.routers):
                label = rcfg.label or rcfg.kind
                loaded = prepared.dtab_files.get(label)
                if isinstance(loaded, DtabFileError):
                    raise loaded
                watcher = self._reload_dtab_watcher(rcfg, label, loaded)
                if watcher is not None:
                    watchers[label] = watcher
                cur = self.routers.get(label)
                if cur is not None and not namers_changed and cur.cfg == rcfg:
                    routers[label] = cur
                else:
                    routers[label] = self._build_router(
                        rcfg, ns, watcher, index, prepared.own_dtabs.get(label)
                    )
                    changed.append(label)
            specs = self._server_specs(new)
            server_tls = self._build_server_tls(new)
            overload_cfg = overload_config(new.overload) if new.overload != old.overload else None
            new_listeners: dict[tuple[str, Any], list[Any]] = {}
            for key, (_label, params) in specs.items():
                if key not in self.slots:
                    new_listeners[key] = bind_listeners(params.ip, params.port, options=params.socket_options)
                    built.extend(new_listeners[key])
        except (ValueError, OSError, DtabFileError) as e:
            for lst in built:
                await lst.aclose()
            # The routers built for it never serve: they stop following the namers, their access logs
            # close (the files' roll settings are the running routers' again), and the running routers'
            # metrics that read settings are theirs again.
            for label, r in routers.items():
                running = self.routers.get(label)
                if r is not running:
                    r.discard()
                    if running is not None:
                        running.register_metrics()
            return False, f"reload rejected, the running config stays: {e}"
        # -- commit: from here on nothing fails --------------------------------------------------
        assert self._nursery is not None
        if namers_changed:
            await self._nursery.start(ns.run)
            self._watch_transformer_sources(ns)
        if overload_cfg is not None:
            self.overload.config = overload_cfg
            if self.overload.last is not None:
                self.overload.update(self.overload.last)  # the new watermarks, at once
            interval_s = new.overload.interval_ms / 1000
            if interval_s != self._overload_interval_s:
                self._overload_interval_s = interval_s
                if self._sampler_scope is not None:
                    self._sampler_scope.cancel()
                await self._nursery.start(self._run_sampler)
        old_ns, self._namers = self._namers, ns
        if old_ns is not ns and old_ns.state_store is not None:
            # The retired namers only finish old requests now: the new ones own namerState.dir.
            old_ns.state_store.retire()
        retired = [r for label, r in self.routers.items() if routers.get(label) is not r]
        self.routers = routers
        for label in list(self._watch_scopes):
            if self.dtab_watchers.get(label) is not watchers.get(label):
                self._watch_scopes.pop(label).cancel()
        for label, w in watchers.items():
            if label not in self._watch_scopes:
                self._start_dtab_watch(label, w)
        self.dtab_watchers = watchers
        for label in changed:
            kept = watchers.get(label)
            if kept is not None:
                own = prepared.own_dtabs.get(label)
                routers[label].set_dtab(self._base_dtab(routers[label].cfg, kept, own))  # its last good dtab
        removed = [slot for key, slot in self.slots.items() if key not in specs]
        for key, (label, params) in specs.items():
            slot = self.slots.get(key)
            if slot is not None:
                slot.server.handler = routers[label].handle
                if params.socket_options != slot.params.socket_options:
                    slot.server.configure_listeners(params.socket_options)
                slot.server.params = params
                slot.router, slot.params = label, params
                slot.set_tls(server_tls.get(key))
                self._expose_server(slot, [port for _, _, port, _ in slot.exposed])
        for slot in removed:
            del self.slots[slot.key]
            self._hide_server(slot)
            slot.server.drain()
        self.config = new
        self.generation += 1
        self.addresses = {}
        for slot in self.slots.values():
            self.addresses.setdefault(slot.router, []).extend(slot.server.addresses)
        for key, listeners in new_listeners.items():
            label, params = specs[key]
            slot = _ServerSlot(
                key, label, self._make_server(routers[label], params), params, server_tls.get(key)
            )
            self.slots[key] = slot
            await self._start_slot(slot, slot.wrap(listeners))
        self._nursery.start_soon(self._retire, retired, removed, old_ns if old_ns is not ns else None)
        return True, (
            f"reloaded {self.config_path} (generation {self.generation}): "
            f"{len(changed)} router(s) rebuilt, {len(new_listeners)} server(s) added, "
            f"{len(removed)} removed, namers {'rebuilt' if namers_changed else 'kept'}{admin_note}"
        )

    async def _retire(self, routers: list[HttpRouter], slots: list[_ServerSlot], ns: _Namers | None) -> None:
        """Let requests on replaced objects finish (up to the grace), then close them."""
        grace_s = self.config.admin.shutdown_grace_ms / 1000
        with trio.move_on_after(grace_s):
            while any(r.in_flight for r in routers) or any(not s.server.idle for s in slots):
                await trio.sleep(0.05)
        for slot in slots:
            slot.scope.cancel()
        for r in routers:
            r.retire()
        if ns is not None:
            ns.scope.cancel()

    # -- AdminContext -----------------------------------------------------------------------------

    def config_json(self) -> dict[str, Any]:
        return self.config.to_json()  # type: ignore[no-any-return]

    def client_state(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for r in self.routers.values():
            out.update(r.client_state())
        return out

    def client_state_entries(self) -> list[tuple[str, Callable[[], Any]]]:
        """``client_state()`` as ``(client id, state function)`` pairs, in its order, for the admin
        server to build a slice of clients per event-loop turn (a client id two routers share: the
        later router's state, as ``client_state()`` keeps)."""
        entries: dict[str, Callable[[], Any]] = {}
        for r in self.routers.values():
            for cid, c in r.clients.items():
                entries[cid] = c.state_json
        return list(entries.items())

    def bound_names(self) -> list[str]:
        names: set[str] = set()
        for r in self.routers.values():
            names.update(cid for cid, _ in r.clients.items())
        return sorted(names)

    def namer_states(self) -> dict[str, dict[str, Any]]:
        out = {str(n.prefix): n.state_json() for n in self.namers}
        out["/$/inet"] = self.resolver.state_json()
        return out

    def router_labels(self) -> list[str]:
        return list(self.routers)

    def router_dtab(self, label: str) -> Dtab:
        return self.routers[label].binder.base_dtab

    def interpreter_dtab(self, label: str) -> Dtab:
        """The dtab the router's interpreter puts before any dtab it binds with: an ``io.l5d.fs``
        interpreter's file (Linkerd's ``ConfiguredDtabNamer``), else empty."""
        watcher = self.dtab_watchers.get(label)
        return watcher.dtab if watcher is not None else Dtab.EMPTY

    def delegate(self, label: str | None, dtab: Dtab, path: Path) -> Any:
        """The explanation's JSON, or, while a namer (or transformer) it asked has not answered yet,
        an awaitable that explains again every ``DELEGATE_RETRY_S`` until none is pending (the admin
        server bounds the wait: 503 ``Request timed out.`` after 2 s, as Linkerd's delegator). The
        names it asked about are being looked up meanwhile: the namers watch them from the first ask."""
        tree = self._delegate_once(label, dtab, path)
        if tree is not None:
            return tree

        async def when_answered() -> dict[str, Any]:
            while True:
                await trio.sleep(DELEGATE_RETRY_S)
                tree = self._delegate_once(label, dtab, path)
                if tree is not None:
                    return tree

        return when_answered()

    def _delegate_once(self, label: str | None, dtab: Dtab, path: Path) -> dict[str, Any] | None:
        """The explanation's JSON, or None when a namer or transformer has not answered yet."""
        if label is None:
            tree = delegate(dtab, path, (), system=self.resolver.system)
        else:
            router = self.routers[label]
            # As the router binds, and as Linkerd's ConfiguredDtabNamer delegates: the interpreter's
            # own dtab (a dtab file) first, then the dtab given.
            dtab = self.interpreter_dtab(label) + dtab
            tree = delegate(dtab, path, router.namer_pairs, system=self.resolver.system)
            if router.transformers and hasattr(tree, "to_json"):
                # as the router binds: its interpreter transformers rewrite the bound leaves
                tree = transform_delegation(tree, router.transformers)
        if not hasattr(tree, "to_json"):  # pending
            return None
        return tree.to_json()  # type: ignore[no-any-return]

    def is_ready(self) -> bool:
        """Listeners bound, config loaded, and every namer's first answers in (or timed out)."""
        return self._ready and self._ready_override and self._namers_settled()

    def _namers_settled(self) -> bool:
        # Startup never blocks on a namer backend: readiness waits for names still pending at most
        # NAMER_READY_BOUND_S, then the daemon is ready regardless (pending names wait per request).
        if self._namers_ready:
            return True
        if time.monotonic() - self._started_mono > NAMER_READY_BOUND_S:
            self._namers_ready = True
            return True
        for n in self._namers.namers:
            table = getattr(n, "table", None)
            if table is not None and any(st.state == "pending" for st in table.states()):
                return False
        self._namers_ready = True
        return True

    def set_ready(self, ready: bool) -> None:
        self._ready_override = ready
        log.info("daemon.readiness_set", ready=ready)

    def request_shutdown(self) -> None:
        self._shutdown.set()

    def recent_requests(self) -> list[dict[str, Any]] | None:
        return list(self.recent.ring) if self.recent is not None else None

    def tls_state(self, now: dt.datetime | None = None) -> dict[str, Any]:
        """``/admin/tls.json``: every certificate in use (servers, clients, trusted CAs), soonest expiry first."""
        seen: set[tuple[Any, ...]] = set()
        certs = []
        for obj in self._tls_objects():
            for c in obj.certificates():
                k = (c.path, c.role, c.router, c.subject, c.not_after)
                if k not in seen:
                    seen.add(k)
                    certs.append(c)
        from hostproxy.tls import tls_json

        return tls_json(certs, now or dt.datetime.now(dt.UTC))

    def dtab_state(self) -> dict[str, Any]:
        """``/dtab_state.json``: per router with a dtab file, the watcher's state (version, errors, history)."""
        return {label: w.state_json() for label, w in self.dtab_watchers.items()}

    def overload_state(self) -> dict[str, Any]:
        """``/overload.json``: watermarks and actions, per-server connection stats, lifecycle."""
        return {
            "overload": self.overload.state_json(),
            "servers": {
                f"{slot.router} {ip}:{port}": slot.server.statistics()
                for slot in self.slots.values()
                for ip, port in slot.server.addresses[:1]
            },
            "routers": {
                label: {
                    "in_flight": r.in_flight,
                    "max_concurrent_requests": r.max_concurrent,
                    "rejected_overload": r.rejected_overload,
                    "retries": r.retry_state(),
                }
                for label, r in self.routers.items()
            },
            "lifecycle": {
                "generation": self.generation,
                "draining": self.draining,
                "ready": self.is_ready(),
                "last_reload": self.last_reload,
            },
        }


def _refused(message: str) -> tuple[bool, str]:
    """A reload refused before it started: logged like one that failed, so a SIGHUP is never silent."""
    log.error("daemon.reload_failed", error=message)
    return False, message


async def run_daemon(config: Config, config_path: str | None = None) -> None:
    daemon = Daemon(config, config_path=config_path, freeze_gc=True)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(daemon.serve_signals)
        await daemon.run()
        nursery.cancel_scope.cancel()


__all__ = ["Daemon", "TlsStartupError", "run_daemon", "systemd_listeners", "to_json"]
