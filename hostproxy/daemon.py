"""The daemon: one validated config → namers, routers, servers and the admin server, in one nursery.

Theory of operation
-------------------
``Daemon(config)`` builds everything that does no I/O (namer objects, the inet resolver, routers,
metrics); ``Daemon.run`` starts, in order, the namers' background tasks, the admin server and each
router's listeners, reporting the bound addresses through ``task_status`` once every listener is up.
The daemon is ready (``/ready``) when its listeners are bound; namers answer lazily (the first request
for a name waits up to ``bindingTimeoutMs``).

Shutdown (``SIGTERM``/``SIGINT``, ``POST /admin/shutdown``) stops the listeners at once — new
connections are refused — and gives in-flight requests up to ``admin.shutdownGraceMs`` to finish
before the nursery is cancelled.

The daemon implements :class:`hostproxy.admin.context.AdminContext` for the admin server: every view
it hands out is a snapshot built on demand, so admin scrapes never touch the request path.
"""

from __future__ import annotations

import collections
import os
import random
import signal
import time
from typing import Any

import structlog
import trio

from dtab import Dtab, Path
from dtab.delegate import delegate
from hostproxy.config import Config
from hostproxy.config.model import to_json
from hostproxy.config.registry import load_factory, lookup
from hostproxy.http.proxyheaders import ForwardedConfig, Labeler
from hostproxy.http.server import Http1Server, ServerParams
from hostproxy.metrics import MetricsRegistry
from hostproxy.router import HttpRouter
from namers.inet import InetResolver

log = structlog.get_logger("hostproxy.daemon")

IDLE_SWEEP_S = 10.0


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
    return ServerParams(
        ip=server_cfg.ip,
        port=server_cfg.port if server_cfg.port is not None else router_cfg.DEFAULT_PORT,
        max_concurrent_requests=server_cfg.max_concurrent_requests,
        max_headers_kb=getattr(router_cfg, "max_headers_kb", 8),
        max_initial_line_kb=getattr(router_cfg, "max_initial_line_kb", 4),
        max_call_depth=server_cfg.max_call_depth,
        add_forwarded_header=_forwarded(server_cfg.add_forwarded_header),
        router_label=label,
        shutdown_grace_s=grace_s,
    )


class RecentRequests:
    """The ``io.l5d.recentRequests`` telemeter: a bounded ring of sampled requests."""

    def __init__(self, sample_rate: float, capacity: int, rng: random.Random) -> None:
        self.sample_rate = sample_rate
        self.ring: collections.deque[dict[str, Any]] = collections.deque(maxlen=capacity)
        self._rng = rng

    def record(self, entry: dict[str, Any]) -> None:
        if self.sample_rate >= 1.0 or self._rng.random() < self.sample_rate:
            self.ring.append(entry)


class Daemon:
    """A running hostproxy (see the module docstring)."""

    def __init__(self, config: Config, *, rng: random.Random | None = None) -> None:
        self.config = config
        self.rng = rng or random.Random()
        self.metrics = MetricsRegistry(time.monotonic)
        self.namers = [build_namer(n) for n in config.namers]
        self.resolver = InetResolver(tuple(config.dns.nameservers))
        self._transformer_watches: list[tuple[Any, Path]] = []
        # (prefix, lookup) in preference order: the last-configured namer first, as Linkerd does.
        self.namer_pairs = []
        for ncfg, namer in reversed(list(zip(config.namers, self.namers, strict=True))):
            lookup_fn = namer.lookup
            if ncfg.transformers:
                from namers.transformers import transforming_lookup

                lookup_fn = transforming_lookup(lookup_fn, self.build_transformers(ncfg.transformers))
            self.namer_pairs.append((Path.read("/#") + namer.prefix, lookup_fn))
        self.routers: dict[str, HttpRouter] = {}
        self.servers: list[Http1Server] = []
        self.admin_address: tuple[str, int] | None = None
        self.addresses: dict[str, list[tuple[str, int]]] = {}
        self._ready = False
        self._ready_override = True
        self._shutdown = trio.Event()
        self._nursery: trio.Nursery | None = None
        self.recent: RecentRequests | None = None
        for t in config.telemetry:
            if t.kind == "io.l5d.recentRequests":
                self.recent = RecentRequests(t.sample_rate, t.capacity, self.rng)
        self.started_at = time.time()

    def build_transformers(self, cfgs: Any) -> list[Any]:
        """Transformer objects for a namer's or an interpreter's ``transformers`` list."""
        out: list[Any] = []
        for c in cfgs:
            spec = lookup("transformer", c.kind)
            if spec is None:
                raise ValueError(f"transformer kind {c.kind!r} has no runtime in this hostproxy version")
            factory = load_factory(spec)
            if c.kind == "io.l5d.k8s.daemonset":
                k8s = next((n for n in self.namers if getattr(n, "kind", "") == "io.l5d.k8s"), None)
                if k8s is None:
                    raise ValueError(
                        "transformer io.l5d.k8s.daemonset needs an io.l5d.k8s namer in `namers` to watch the "
                        f"daemonset Service {c.namespace}/{c.service}; add one"
                    )
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
                self._transformer_watches.append((k8s, t.k8s_residual))
            elif c.kind in ("io.l5d.replace", "io.l5d.const"):
                t = factory(c, system=self.resolver.system)
            else:
                t = factory(c)
            out.append(t)
        return out

    def _watch_transformer_sources(self) -> None:
        """A daemonset's pods moving changes every binding through its transformer: re-bind all."""
        for namer, residual in self._transformer_watches:
            def changed(_n: Any, key: Any, residual: Path = residual) -> None:
                if residual.startswith(key) or key.startswith(residual):
                    for r in self.routers.values():
                        r.set_dtab(r.binder.base_dtab)

            namer.subscribe(changed)

    # -- running ----------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[Daemon] = trio.TASK_STATUS_IGNORED) -> None:
        grace_s = self.config.admin.shutdown_grace_ms / 1000
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for n in self.namers:
                await nursery.start(n.run)
            await nursery.start(self.resolver.run)
            for rcfg in self.config.routers:
                if rcfg.kind != "http":
                    raise ValueError(f"router protocol {rcfg.kind!r} has no runtime in this hostproxy version")
                router = HttpRouter(rcfg, namers=self.namers, resolver=self.resolver, metrics=self.metrics,
                                    nursery=nursery, rng=self.rng, namer_pairs=self.namer_pairs,
                                    transformers=self.build_transformers(rcfg.interpreter.transformers))
                self.routers[router.label] = router
            self._watch_transformer_sources()
            from hostproxy.admin.server import AdminServer

            admin = AdminServer(self, self.config.admin.ip, self.config.admin.port,
                                self.config.admin.allow_remote_control)
            self.admin_address = await nursery.start(admin.serve)
            servers_scope = trio.CancelScope()
            servers_nursery_started = trio.Event()

            async def run_servers(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
                with servers_scope:
                    async with trio.open_nursery() as sn:
                        for rcfg in self.config.routers:
                            label = rcfg.label or rcfg.kind
                            router = self.routers[label]
                            for scfg in rcfg.servers:
                                params = server_params(rcfg, scfg, label, grace_s)
                                server = Http1Server(router.handle, params, rng=self.rng)
                                self.servers.append(server)
                                addrs = await sn.start(server.serve)
                                self.addresses.setdefault(label, []).extend(addrs)
                        servers_nursery_started.set()
                        task_status.started()

            await nursery.start(run_servers)
            nursery.start_soon(self._sweep_idle)
            self._ready = True
            log.info("daemon.started", routers=self.addresses, admin=self.admin_address, pid=os.getpid())
            task_status.started(self)
            await self._shutdown.wait()
            log.info("daemon.draining", grace_s=grace_s)
            self._ready = False
            servers_scope.cancel()  # closes the listeners; connections are cut after the grace below
            with trio.move_on_after(grace_s):
                while any(s.statistics().get("requests_in_flight", 0) for s in self.servers):
                    await trio.sleep(0.05)
            for r in self.routers.values():
                r.close()
            nursery.cancel_scope.cancel()
        log.info("daemon.stopped")

    async def _sweep_idle(self) -> None:
        while True:
            await trio.sleep(IDLE_SWEEP_S)
            for r in self.routers.values():
                r.expire_idle()

    async def serve_signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for sig in signals:
                log.info("daemon.signal", signal=signal.Signals(sig).name)
                self.request_shutdown()
                return

    # -- AdminContext -----------------------------------------------------------------------------

    def config_json(self) -> dict[str, Any]:
        return self.config.to_json()  # type: ignore[no-any-return]

    def client_state(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for r in self.routers.values():
            out.update(r.client_state())
        return out

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

    def delegate(self, label: str | None, dtab: Dtab, path: Path) -> dict[str, Any]:
        if label is None:
            tree = delegate(dtab, path, (), system=self.resolver.system)
        else:
            router = self.routers[label]
            tree = delegate(dtab, path, router.namer_pairs, system=self.resolver.system)
        if not hasattr(tree, "to_json"):  # pending: a namer has not answered yet
            return {"type": "pending", "path": str(path)}
        return tree.to_json()  # type: ignore[no-any-return]

    def is_ready(self) -> bool:
        return self._ready and self._ready_override

    def set_ready(self, ready: bool) -> None:
        self._ready_override = ready
        log.info("daemon.readiness_set", ready=ready)

    def request_shutdown(self) -> None:
        self._shutdown.set()

    async def reload(self) -> tuple[bool, str]:
        return False, "reload is not supported by this hostproxy version yet; restart the daemon"

    def recent_requests(self) -> list[dict[str, Any]]:
        return list(self.recent.ring) if self.recent else []


async def run_daemon(config: Config) -> None:
    daemon = Daemon(config)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(daemon.serve_signals)
        await daemon.run()
        nursery.cancel_scope.cancel()


__all__ = ["Daemon", "run_daemon", "to_json"]
