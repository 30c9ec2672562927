"""The plugin registry: every config ``kind`` hostproxy knows, in one place.

Theory of operation: a plugin is ``(category, kind) -> PluginSpec``: the frozen config dataclass the
kind's keys are read into, a lazy ``"module:attr"`` factory string (the runtime module that builds the
plugin; resolved only by :func:`load_factory`, so this package never imports trio or the runtime), and a
status. The status comes from :data:`IMPLEMENTED`, the single list of kinds this hostproxy version can
run: every other registered kind is ``planned`` and ``hostproxy check`` rejects it with "not supported
yet" and a hint of what to use now. Kinds Linkerd has that hostproxy does not plan are listed in
:data:`UNSUPPORTED` with advice; any other kind is unknown, and the error lists the valid ones.

The router ``protocol`` is a plugin category too (``http``, ``h2``), with ``protocol`` as its
discriminating key instead of ``kind``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Literal

from hostproxy.config import model as m

Status = Literal["implemented", "planned"]

# The ONE list of kinds this hostproxy version implements (category, kind). Move a kind here when its
# runtime lands; `hostproxy check` accepts exactly these.
IMPLEMENTED: frozenset[tuple[str, str]] = frozenset(
    {
        ("protocol", "http"),
        ("protocol", "h2"),
        ("namer", "io.l5d.fs"),
        ("namer", "io.l5d.dnssrv"),
        ("namer", "io.l5d.k8s"),
        ("namer", "io.l5d.k8s.external"),
        ("namer", "io.l5d.rewrite"),
        ("transformer", "io.l5d.k8s.daemonset"),
        ("transformer", "io.l5d.k8s.localnode"),
        ("transformer", "io.l5d.port"),
        ("transformer", "io.l5d.localhost"),
        ("transformer", "io.l5d.specificHost"),
        ("transformer", "io.l5d.replace"),
        ("transformer", "io.l5d.const"),
        ("interpreter", "default"),
        ("interpreter", "io.l5d.fs"),
        ("identifier", "io.l5d.header.token"),
        ("identifier", "io.l5d.methodAndHost"),
        ("identifier", "io.l5d.path"),
        ("identifier", "io.l5d.header"),
        ("identifier", "io.l5d.static"),
        ("identifier", "io.l5d.header.path"),
        ("classifier", "io.l5d.h2.grpc.default"),
        ("classifier", "io.l5d.h2.grpc.compliant"),
        ("classifier", "io.l5d.h2.grpc.alwaysRetryable"),
        ("classifier", "io.l5d.h2.grpc.neverRetryable"),
        ("classifier", "io.l5d.h2.grpc.retryableStatusCodes"),
        ("balancer", "p2c"),
        ("balancer", "ewma"),
        ("balancer", "roundRobin"),
        ("balancer", "heap"),
        ("balancer", "aperture"),
        ("accrual", "io.l5d.consecutiveFailures"),
        ("accrual", "io.l5d.successRate"),
        ("accrual", "io.l5d.successRateWindowed"),
        ("accrual", "none"),
        ("backoff", "constant"),
        ("backoff", "jittered"),
        ("classifier", "io.l5d.http.nonRetryable5XX"),
        ("classifier", "io.l5d.http.retryableRead5XX"),
        ("classifier", "io.l5d.http.retryableIdempotent5XX"),
        ("classifier", "io.l5d.http.retryableAll5XX"),
        ("classifier", "io.l5d.http.allSuccessful"),
        ("classifier", "io.l5d.h2.nonRetryable5XX"),
        ("classifier", "io.l5d.h2.retryableRead5XX"),
        ("classifier", "io.l5d.h2.retryableIdempotent5XX"),
        ("classifier", "io.l5d.h2.retryableAll5XX"),
        ("classifier", "io.l5d.h2.allSuccessful"),
        ("telemeter", "io.l5d.recentRequests"),
        ("telemeter", "io.l5d.prometheus"),
        ("telemeter", "io.l5d.influxdb"),
        ("telemeter", "io.l5d.zipkin"),
        ("telemeter", "io.l5d.tracelog"),
        ("tracePropagator", "io.l5d.default"),
        ("tracePropagator", "io.l5d.zipkin"),
    }
)

# Human names of the categories, as used in messages ("unknown namer kind ...").
CATEGORY_NOUN: dict[str, str] = {
    "protocol": "router protocol",
    "namer": "namer",
    "transformer": "transformer",
    "identifier": "identifier",
    "interpreter": "interpreter",
    "balancer": "load balancer",
    "accrual": "failure accrual",
    "backoff": "backoff",
    "classifier": "response classifier",
    "telemeter": "telemeter",
    "tracePropagator": "trace propagator",
}

# The base class each category's configs derive from.
CATEGORY_BASE: dict[str, type[m.PluginConfig]] = {
    "protocol": m.RouterConfig,
    "namer": m.NamerConfig,
    "transformer": m.TransformerConfig,
    "identifier": m.IdentifierConfig,
    "interpreter": m.InterpreterConfig,
    "balancer": m.BalancerConfig,
    "accrual": m.AccrualConfig,
    "backoff": m.BackoffConfig,
    "classifier": m.ClassifierConfig,
    "telemeter": m.TelemeterConfig,
    "tracePropagator": m.TracePropagatorConfig,
}


@dataclass(frozen=True)
class PluginSpec:
    category: str
    kind: str
    config_type: type
    factory: str  # "module:attr", imported lazily by load_factory
    status: Status
    description: str
    experimental: bool = False
    protocols: frozenset[str] | None = None  # routers it applies to; None = any
    use_now: str = ""  # what to use while this kind is planned

    def __post_init__(self) -> None:
        base = CATEGORY_BASE[self.category]
        if not issubclass(self.config_type, base):
            raise TypeError(f"{self.kind}: {self.config_type.__name__} must derive from {base.__name__}")
        module, sep, attr = self.factory.partition(":")
        if not (module and sep and attr):
            raise ValueError(f"{self.kind}: factory must be 'module:attr', got {self.factory!r}")


class DuplicateKindError(ValueError):
    """Two plugins claim the same (category, kind) — a programming error caught at import."""


REGISTRY: dict[tuple[str, str], PluginSpec] = {}


def register(
    category: str,
    kind: str,
    config_type: type,
    factory: str,
    description: str,
    *,
    experimental: bool = False,
    protocols: tuple[str, ...] | None = None,
    use_now: str = "",
) -> PluginSpec:
    if (category, kind) in REGISTRY:
        raise DuplicateKindError(f"{CATEGORY_NOUN[category]} kind {kind!r} is registered twice")
    spec = PluginSpec(
        category=category,
        kind=kind,
        config_type=config_type,
        factory=factory,
        status="implemented" if (category, kind) in IMPLEMENTED else "planned",
        description=description,
        experimental=experimental,
        protocols=frozenset(protocols) if protocols else None,
        use_now=use_now,
    )
    REGISTRY[(category, kind)] = spec
    return spec


def lookup(category: str, kind: str) -> PluginSpec | None:
    return REGISTRY.get((category, kind))


def kinds(category: str, *, status: Status | None = None, protocol: str | None = None) -> list[str]:
    """Registered kinds of a category, in registration order."""
    return [
        s.kind
        for s in REGISTRY.values()
        if s.category == category
        and (status is None or s.status == status)
        and (protocol is None or s.protocols is None or protocol in s.protocols)
    ]


def load_factory(spec: PluginSpec) -> Any:
    """Import and return the runtime factory of a plugin (the daemon calls this; `check` never does)."""
    module, _, attr = spec.factory.partition(":")
    return getattr(importlib.import_module(module), attr)


# -- registrations -----------------------------------------------------------------------------------

_FS_NOW = "for now, list the endpoints in files read by the io.l5d.fs namer (namers: [{kind: io.l5d.fs, rootDir: DIR}])"
_TRANSFORMER_NOW = "for now, remove the transformer and route to the target addresses directly"

register("protocol", "http", m.HttpRouterConfig, "hostproxy.router:HttpRouter", "HTTP/1.1 router.")
register(
    "protocol",
    "h2",
    m.H2RouterConfig,
    "hostproxy.router:HttpRouter",
    "HTTP/2 router (prior knowledge, h2c upgrade, ALPN).",
)

register(
    "namer",
    "io.l5d.fs",
    m.FsNamer,
    "namers.fs:from_config",
    "One file of `host port [* weight]` lines per name, watched.",
)
register(
    "namer",
    "io.l5d.dnssrv",
    m.DnsSrvNamer,
    "namers.dnssrv:from_config",
    "DNS SRV records, polled.",
    experimental=True,
    use_now="for now, use /$/inet/<host>/<port> in the dtab (DNS A/AAAA records) or the io.l5d.fs namer",
)
register(
    "namer",
    "io.l5d.k8s",
    m.K8sNamer,
    "namers.k8s:from_config",
    "Kubernetes Endpoints, watched.",
    use_now=_FS_NOW,
)
register(
    "namer",
    "io.l5d.k8s.external",
    m.K8sExternalNamer,
    "namers.k8s.external:from_config",
    "Kubernetes Services' external load balancer addresses (status.loadBalancer.ingress) on a Service "
    "port, watched.",
    experimental=True,
    use_now=_FS_NOW,
)
register(
    "namer",
    "io.l5d.rewrite",
    m.RewriteNamer,
    "namers.rewrite:from_config",
    "Rewrites a path with {var} captures. Its `prefix` is required: it has no default.",
    use_now="for now, write the rewrite as dtab entries (a dtab cannot reorder segments)",
)

for _kind, _cls, _attr, _desc in [
    (
        "io.l5d.k8s.daemonset",
        m.DaemonSetTransformer,
        "daemonset",
        "Replaces each address with the daemonset pod on its node.",
    ),
    ("io.l5d.k8s.localnode", m.LocalNodeTransformer, "localnode", "Keeps addresses on this node."),
    ("io.l5d.port", m.PortTransformer, "port", "Rewrites the port of every address."),
    ("io.l5d.localhost", m.LocalhostTransformer, "localhost", "Keeps addresses of this host's interfaces."),
    ("io.l5d.specificHost", m.SpecificHostTransformer, "specific_host", "Keeps addresses of one host."),
    ("io.l5d.replace", m.ReplaceTransformer, "replace", "Replaces every bound name with a path."),
    ("io.l5d.const", m.ConstTransformer, "const", "Always binds a constant path."),
]:
    register("transformer", _kind, _cls, f"namers.transformers:{_attr}", _desc, use_now=_TRANSFORMER_NOW)

_HTTP = ("http",)
_H2 = ("h2",)
register(
    "identifier",
    "io.l5d.header.token",
    m.HeaderTokenIdentifier,
    "hostproxy.routing.identifiers:HeaderTokenIdentifier",
    "The value of one header (Host / :authority) is the name.",
)
register(
    "identifier",
    "io.l5d.methodAndHost",
    m.MethodAndHostIdentifier,
    "hostproxy.routing.identifiers:MethodAndHostIdentifier",
    "/<version>/<METHOD>/<host>[/<path>].",
    protocols=_HTTP,
)
register(
    "identifier",
    "io.l5d.path",
    m.PathIdentifier,
    "hostproxy.routing.identifiers:PathIdentifier",
    "The first path segments are the name.",
    protocols=_HTTP,
)
register(
    "identifier",
    "io.l5d.header",
    m.HeaderIdentifier,
    "hostproxy.routing.identifiers:HeaderIdentifier",
    "A header holding a path is the name.",
    protocols=_HTTP,
)
register(
    "identifier",
    "io.l5d.static",
    m.StaticIdentifier,
    "hostproxy.routing.identifiers:StaticIdentifier",
    "Every request gets the same name.",
    protocols=_HTTP,
)
register(
    "identifier",
    "io.l5d.header.path",
    m.HeaderPathIdentifier,
    "hostproxy.routing.identifiers:HeaderPathIdentifier",
    "Path segments of :path are the name (gRPC: /pkg.Svc).",
    protocols=_H2,
    use_now="for now, use io.l5d.header.token (the :authority header)",
)

register(
    "interpreter",
    "default",
    m.DefaultInterpreter,
    "dtab.bind:bind",
    "The router's dtab over the configured namers.",
)
register(
    "interpreter",
    "io.l5d.fs",
    m.FsInterpreter,
    "hostproxy.dtabfile:DtabFileWatcher",
    "A watched dtab file over the configured namers.",
)

register(
    "balancer",
    "p2c",
    m.P2cBalancer,
    "hostproxy.balancer:balancer_from_config",
    "Least loaded of two random endpoints.",
)
register(
    "balancer",
    "ewma",
    m.EwmaBalancer,
    "hostproxy.balancer:balancer_from_config",
    "Two random endpoints, weighted by peak-EWMA latency.",
)
register(
    "balancer",
    "roundRobin",
    m.RoundRobinBalancer,
    "hostproxy.balancer:balancer_from_config",
    "Each endpoint in turn.",
)
register(
    "balancer", "heap", m.HeapBalancer, "hostproxy.balancer:balancer_from_config", "Least loaded endpoint."
)
register(
    "balancer",
    "aperture",
    m.ApertureBalancer,
    "hostproxy.balancer:balancer_from_config",
    "A subset of endpoints sized by load.",
)

_ACCRUAL_NOW = "for now, use io.l5d.consecutiveFailures"
register(
    "accrual",
    "io.l5d.consecutiveFailures",
    m.ConsecutiveFailuresAccrual,
    "hostproxy.accrual:accrual_from_config",
    "Dead after N consecutive failures.",
)
register(
    "accrual",
    "io.l5d.successRate",
    m.SuccessRateAccrual,
    "hostproxy.accrual:accrual_from_config",
    "Dead below a success rate over N requests.",
    use_now=_ACCRUAL_NOW,
)
register(
    "accrual",
    "io.l5d.successRateWindowed",
    m.SuccessRateWindowedAccrual,
    "hostproxy.accrual:accrual_from_config",
    "Dead below a success rate over a time window.",
    use_now=_ACCRUAL_NOW,
)
register(
    "accrual", "none", m.NoAccrual, "hostproxy.accrual:accrual_from_config", "Never mark endpoints dead."
)

register("backoff", "constant", m.ConstantBackoff, "hostproxy.backoff:backoff_from_config", "A fixed delay.")
register(
    "backoff",
    "jittered",
    m.JitteredBackoff,
    "hostproxy.backoff:backoff_from_config",
    "Decorrelated jitter between minMs and maxMs.",
)

for _kind, _desc in [
    ("io.l5d.http.nonRetryable5XX", "5XX and errors are failures; nothing is retried."),
    ("io.l5d.http.retryableRead5XX", "5XX are failures; GET, HEAD, OPTIONS, TRACE are retried."),
    ("io.l5d.http.retryableIdempotent5XX", "5XX are failures; read methods, PUT and DELETE are retried."),
    (
        "io.l5d.http.retryableAll5XX",
        "5XX are failures; read methods, PUT, DELETE, POST and PATCH are retried (not CONNECT or other methods).",
    ),
    ("io.l5d.http.allSuccessful", "Every response is a success."),
]:
    register("classifier", _kind, m.ClassifierConfig, "hostproxy.classifier:classifier_from_config", _desc)
# Linkerd's h2 router names the same five io.l5d.h2.*; they behave as the io.l5d.http ones.
for _kind in [k for k in kinds("classifier") if k.startswith("io.l5d.http.")]:
    register(
        "classifier",
        _kind.replace("io.l5d.http.", "io.l5d.h2."),
        m.ClassifierConfig,
        "hostproxy.classifier:classifier_from_config",
        f"As {_kind}, for h2 routers.",
        protocols=_H2,
    )
_GRPC_NOW = "for now, use io.l5d.http.nonRetryable5XX (HTTP status only)"
for _kind, _cls, _desc in [
    (
        "io.l5d.h2.grpc.default",
        m.GrpcClassifier,
        "Non-OK grpc-status is a failure; UNAVAILABLE (14) is retried.",
    ),
    (
        "io.l5d.h2.grpc.compliant",
        m.GrpcClassifier,
        "Non-OK grpc-status is a failure; UNAVAILABLE (14), and HTTP 429, 502, 503 and 504 without a "
        "grpc-status, are retried (a REFUSED_STREAM is resent by the h2 client whatever the kind).",
    ),
    ("io.l5d.h2.grpc.alwaysRetryable", m.GrpcClassifier, "Non-OK grpc-status is a retryable failure."),
    ("io.l5d.h2.grpc.neverRetryable", m.GrpcClassifier, "Non-OK grpc-status is a failure, never retried."),
    (
        "io.l5d.h2.grpc.retryableStatusCodes",
        m.GrpcRetryableStatusCodesClassifier,
        "The listed grpc-status codes are retried.",
    ),
]:
    register(
        "classifier",
        _kind,
        _cls,
        "hostproxy.classifier:classifier_from_config",
        _desc,
        protocols=_H2,
        use_now=_GRPC_NOW,
    )

register(
    "telemeter",
    "io.l5d.recentRequests",
    m.RecentRequestsTelemeter,
    "hostproxy.daemon:RecentRequests",
    "The /requests page of recent requests.",
)
register(
    "telemeter",
    "io.l5d.zipkin",
    m.ZipkinTelemeter,
    "hostproxy.zipkin:ZipkinExporter",
    "A span per forwarded attempt, sent to a Zipkin Scribe collector (Thrift spans over Scribe's Log, as "
    "Linkerd's); requests without a sampling decision are sampled at sampleRate.",
)
register(
    "telemeter",
    "io.l5d.tracelog",
    m.TraceLogTelemeter,
    "hostproxy.tracelog:TraceLogSink",
    "Each span hostproxy records (one per forwarded attempt) of a sampled request, as a trace.span log "
    "event on logger io.l5d.tracelog at level.",
)
register(
    "telemeter",
    "io.l5d.influxdb",
    m.InfluxDbTelemeter,
    "hostproxy.metrics.influx:influx_slices",
    "Every metric in InfluxDB's line protocol at /admin/metrics/influxdb, for Telegraf (Linkerd's "
    "measurements and tags: rt, server, service, client, host).",
)
register(
    "telemeter",
    "io.l5d.prometheus",
    m.PrometheusTelemeter,
    "hostproxy.metrics:prometheus",
    "Prometheus text exposition on the admin server.",
)

register(
    "tracePropagator",
    "io.l5d.default",
    m.DefaultTracePropagator,
    "hostproxy.routing.tracectx:propagator_for",
    "l5d-ctx-trace (a child of the trace received, or a new one), l5d-sample, l5d-reqid.",
)
register(
    "tracePropagator",
    "io.l5d.zipkin",
    m.ZipkinTracePropagator,
    "hostproxy.routing.tracectx:propagator_for",
    "B3 headers (x-b3-traceid, x-b3-spanid, x-b3-parentspanid, x-b3-sampled, x-b3-flags), l5d-reqid.",
)


# -- Linkerd kinds hostproxy does not plan to support --------------------------------------------------

_DTAB_FILE = "use a dtab file instead: interpreter: {kind: io.l5d.fs, dtabFile: FILE}"
UNSUPPORTED: dict[tuple[str, str], str] = {
    ("protocol", "thrift"): "hostproxy proxies HTTP/1.1 and HTTP/2 only (protocol: http or h2)",
    ("protocol", "mux"): "hostproxy proxies HTTP/1.1 and HTTP/2 only (protocol: http or h2)",
    ("protocol", "thriftmux"): "hostproxy proxies HTTP/1.1 and HTTP/2 only (protocol: http or h2)",
    ("interpreter", "io.l5d.namerd"): _DTAB_FILE,
    ("interpreter", "io.l5d.namerd.http"): _DTAB_FILE,
    ("interpreter", "io.l5d.mesh"): _DTAB_FILE,
    ("interpreter", "io.l5d.k8s.configMap"): _DTAB_FILE + " (mount the ConfigMap as a file)",
    ("interpreter", "io.l5d.consul.interpreter"): _DTAB_FILE,
    ("interpreter", "io.l5d.k8s.istio"): _DTAB_FILE,
    ("namer", "io.l5d.consul"): "use the io.l5d.fs namer (e.g. fed by consul-template) or DNS via /$/inet",
    ("namer", "io.l5d.marathon"): "use the io.l5d.fs namer or DNS via /$/inet",
    ("namer", "io.l5d.serversets"): "use the io.l5d.fs namer or DNS via /$/inet",
    ("namer", "io.l5d.zkLeader"): "use the io.l5d.fs namer or DNS via /$/inet",
    ("namer", "io.l5d.curator"): "use the io.l5d.fs namer or DNS via /$/inet",
    ("namer", "io.l5d.rancher"): "use the io.l5d.fs namer or DNS via /$/inet",
    ("namer", "io.l5d.k8s.ns"): "use the io.l5d.k8s namer with the namespace in the dtab",
    ("namer", "io.l5d.k8s.istio"): "use the io.l5d.k8s namer (Kubernetes Endpoints, with labelSelector for "
    "versions) or the io.l5d.fs namer",
    ("identifier", "io.l5d.ingress"): "use io.l5d.header.token and route ingress hosts in the dtab",
    ("identifier", "io.l5d.k8s.istio"): "use io.l5d.header.token",
    ("identifier", "io.l5d.k8s.istio-ingress"): "use io.l5d.header.token and route ingress hosts in the dtab",
    ("telemeter", "io.l5d.statsd"): "Linkerd deprecated it too (it sampled counters, so counts were lost); "
    "scrape io.l5d.prometheus or io.l5d.influxdb instead (a StatsD or Datadog agent can scrape either)",
    ("telemeter", "io.l5d.adminMetricsExport"): "remove it: /admin/metrics.json is always served",
}

# Linkerd kinds hostproxy means to support later but has no runtime for yet (not in the plan above).
NOT_YET: dict[tuple[str, str], str] = {}
