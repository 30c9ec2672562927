"""The config model: Linkerd 1's ``linkerd.yaml`` schema as frozen dataclasses.

Theory of operation: each class below is one YAML mapping; each field one key, declared with
:func:`~hostproxy.config.schema.key` (YAML name, type, default, description). Plugins — namers,
transformers, identifiers, interpreters, balancers, failure accrual policies, backoffs, response
classifiers, telemeters, and the router ``protocol`` itself — are subclasses of :class:`PluginConfig`
selected by their ``kind`` (``protocol`` for routers) through :mod:`hostproxy.config.registry`.

Defaults that depend on context (a server's port depends on the router's protocol, a router's label
defaults to its protocol, the default identifier is ``io.l5d.header.token`` on ``Host`` for http and
``:authority`` for h2) are ``None`` in the dataclass and filled in by the validator, so a loaded
:class:`Config` always holds concrete values. ``client`` and ``service`` are sections in one of two forms
(``io.l5d.global`` or ``io.l5d.static`` with prefix-matched ``configs``); each entry remembers which keys it
set explicitly, because a later matching entry overrides only those (see :mod:`hostproxy.config.params`).

This module imports neither trio nor any runtime module: it is data only.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any, ClassVar

from hostproxy.config.schema import (
    between,
    fraction,
    header_name,
    host_name,
    ip_literal,
    k8s_label_key,
    key,
    non_negative,
    one_of,
    port_number,
    positive,
    regex,
    router_label,
    timestamp_field_name,
    tls_version,
    yaml_name,
)


@dataclass(frozen=True, kw_only=True)
class PluginConfig:
    """Base of every plugin config; ``kind`` selects the subclass."""

    DISCRIMINATOR: ClassVar[str] = "kind"
    kind: str = key(required=True, doc="Which plugin; see the list of kinds.")

    def conflict(self) -> tuple[str, str] | None:
        """A rule between keys that each passed their own check: ``(yaml key, what is wrong)`` or None.
        Config loading reports it at that key, so a value the daemon would refuse when it builds the
        plugin (at the first request) is refused at load time instead."""
        return None


# -- backoff, budgets ------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class BackoffConfig(PluginConfig):
    pass


@dataclass(frozen=True, kw_only=True)
class ConstantBackoff(BackoffConfig):
    ms: int = key(0, "Fixed delay between attempts, in milliseconds.", check=non_negative)


@dataclass(frozen=True, kw_only=True)
class JitteredBackoff(BackoffConfig):
    min_ms: int = key(required=True, doc="Smallest delay, in milliseconds (more than 0).", check=positive)
    max_ms: int = key(required=True, doc="Largest delay, in milliseconds (at least minMs).", check=positive)

    def conflict(self) -> tuple[str, str] | None:
        if self.max_ms < self.min_ms:
            return "maxMs", f"must be >= minMs ({self.min_ms}), got {self.max_ms}"
        return None


@dataclass(frozen=True, kw_only=True)
class RetryBudget:
    ttl_secs: int = key(
        10,
        "Window over which requests deposit into the budget, in seconds (1 to 60).",
        check=lambda v: None if 1 <= v <= 60 else f"must be between 1 and 60 (seconds), got {v}",
    )
    min_retries_per_sec: int = key(
        10, "Retries always allowed per second, whatever the traffic.", check=non_negative
    )
    percent_can_retry: float = key(
        0.2,
        "Fraction of requests that may be retried on top of minRetriesPerSec (0 to 1000).",
        check=lambda v: None if 0 <= v <= 1000 else f"must be between 0 and 1000, got {v}",
    )


# -- load balancers ---------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class BalancerConfig(PluginConfig):
    enable_probation: bool = key(
        False,
        "Not supported (Linkerd: keep an endpoint removed by discovery while it is healthy); only false "
        "is accepted.",
    )


@dataclass(frozen=True, kw_only=True)
class P2cBalancer(BalancerConfig):
    max_effort: int = key(
        5, "How many times to pick again when the chosen endpoint is unavailable.", check=positive
    )


@dataclass(frozen=True, kw_only=True)
class EwmaBalancer(P2cBalancer):
    decay_time_ms: int = key(10000, "Decay window of the peak-EWMA latency, in milliseconds.", check=positive)


@dataclass(frozen=True, kw_only=True)
class RoundRobinBalancer(P2cBalancer):
    pass


@dataclass(frozen=True, kw_only=True)
class HeapBalancer(BalancerConfig):
    pass


@dataclass(frozen=True, kw_only=True)
class ApertureBalancer(P2cBalancer):
    smooth_window_ms: int = key(5000, "Window over which load is averaged, in milliseconds.", check=positive)
    low_load: float = key(
        0.5, "Shrink the aperture below this load per endpoint (below highLoad).", check=non_negative
    )
    high_load: float = key(2.0, "Grow the aperture above this load per endpoint.", check=positive)
    min_aperture: int = key(1, "Smallest number of endpoints in the aperture.", check=positive)

    def conflict(self) -> tuple[str, str] | None:
        if self.low_load >= self.high_load:
            return "lowLoad", f"must be below highLoad ({self.high_load}), got {self.low_load}"
        return None


# -- failure accrual --------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class AccrualConfig(PluginConfig):
    backoff: BackoffConfig | None = key(
        None,
        "How long a removed endpoint stays dead before a probe.",
        plugin="backoff",
        default_doc="equal-jittered backoff from 5 s to 300 s",
    )


@dataclass(frozen=True, kw_only=True)
class ConsecutiveFailuresAccrual(AccrualConfig):
    failures: int = key(5, "Consecutive failures that mark an endpoint dead.", check=positive)


@dataclass(frozen=True, kw_only=True)
class SuccessRateAccrual(AccrualConfig):
    success_rate: float = key(
        required=True, doc="Mark dead below this success rate (0 to 1).", check=fraction
    )
    requests: int = key(
        required=True, doc="Number of requests the success rate is computed over.", check=positive
    )


@dataclass(frozen=True, kw_only=True)
class SuccessRateWindowedAccrual(AccrualConfig):
    success_rate: float = key(
        required=True, doc="Mark dead below this success rate (0 to 1).", check=fraction
    )
    window: int = key(
        required=True, doc="Window over which the success rate is computed, in seconds.", check=positive
    )


@dataclass(frozen=True, kw_only=True)
class NoAccrual(AccrualConfig):
    pass


# -- response classifiers ---------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ClassifierConfig(PluginConfig):
    pass


@dataclass(frozen=True, kw_only=True)
class GrpcClassifier(ClassifierConfig):
    success_status_codes: tuple[int, ...] | None = key(
        None, "gRPC status codes that count as success; replaces the default [0].", default_doc="[0]"
    )


@dataclass(frozen=True, kw_only=True)
class GrpcRetryableStatusCodesClassifier(GrpcClassifier):
    retryable_status_codes: tuple[int, ...] = key(required=True, doc="gRPC status codes that may be retried.")


# -- TLS ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ServerTls:
    cert_path: str = key(required=True, doc="PEM certificate file.")
    key_path: str = key(required=True, doc="PEM private key file (PKCS#8 in Linkerd).")
    intermediate_certs_path: str | None = key(None, "PEM file of intermediate certificates.")
    ca_cert_path: str | None = key(None, "PEM file of CAs that client certificates must chain to.")
    require_client_auth: bool = key(False, "Reject clients that present no valid certificate.")
    protocols: tuple[str, ...] | None = key(
        None, "TLS versions to allow: TLSv1.2, TLSv1.3.", default_doc="both", check=tls_version
    )
    ciphers: tuple[str, ...] | None = key(None, "Cipher suites to allow.", default_doc="library default")


@dataclass(frozen=True, kw_only=True)
class ClientAuth:
    cert_path: str = key(required=True, doc="PEM client certificate.")
    key_path: str = key(required=True, doc="PEM private key of the client certificate.")
    intermediate_certs_path: str | None = key(None, "PEM file of intermediate certificates.")


@dataclass(frozen=True, kw_only=True)
class ClientTls:
    enabled: bool = key(True, "Set to false to turn TLS off for clients matched by this entry.")
    common_name: str | None = key(
        None,
        "Name the server certificate must carry (also sent as SNI); may use {captures} of a static "
        "client prefix. Required unless disableValidation.",
    )
    trust_certs_bundle: str | None = key(None, "PEM bundle of trusted CAs.", default_doc="system trust store")
    trust_certs: tuple[str, ...] = key((), "PEM files of trusted CAs (deprecated in Linkerd; still read).")
    client_auth: ClientAuth | None = key(None, "Present this client certificate.")
    disable_validation: bool = key(False, "Do not verify the server certificate (testing only).")
    protocols: tuple[str, ...] | None = key(
        None, "TLS versions to allow: TLSv1.2, TLSv1.3.", default_doc="both", check=tls_version
    )


# -- socket options ---------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class SocketOptions:
    """Linkerd's `socketOptions` (admin, servers[], client): set on the real sockets, timeouts on the connections."""

    no_delay: bool = key(
        True,
        "TCP_NODELAY on every connection (accepted, or opened by a client); false lets the kernel hold "
        "small writes back (Nagle's algorithm).",
    )
    reuse_addr: bool = key(
        True,
        "SO_REUSEADDR on the listening socket; false: binding fails while connections of an earlier "
        "listener on the port linger in TIME_WAIT. No effect on a client, whose connections are never "
        "bound to a local port.",
    )
    reuse_port: bool | None = key(
        None,
        "Accepted so that Linkerd 1 configs load: listeners always have SO_REUSEPORT, which upgrades "
        "and reloads hand the port over with; false is logged at start (listen.reuse_port_kept). No "
        "effect on a client.",
        default_doc="false in Linkerd; SO_REUSEPORT is always set",
    )
    keep_alive: bool = key(
        False,
        "SO_KEEPALIVE on every connection: the kernel probes a peer idle for "
        "net.ipv4.tcp_keepalive_time and closes the connection when it does not answer.",
    )
    backlog: int | None = key(
        None,
        "Listen backlog: connections the kernel completes before hostproxy accepts them (the kernel "
        "caps it at net.core.somaxconn; 1 to 2147483647). No effect on a client.",
        default_doc="1024",
        check=between(1, 2**31 - 1),
    )
    read_timeout_ms: int | None = key(
        None,
        "Cut a connection whose peer sends nothing for this long when something is awaited from it, "
        "1 to 2147483647 ms. Server: a request head or body that stalls (408, or the request fails as "
        "with requestBodyTimeoutMs) and the wait for the next request (the shorter of this and "
        "serverSession.idleTimeMs). Client: the response head or body (502, cause upstream/reset) and "
        "idle pooled connections. An upgraded (101) connection's tunnel is closed when its side moved "
        "no bytes either way for this long. Bytes hostproxy writes to the peer count as progress.",
        default_doc="unbounded",
        check=between(1, 2**31 - 1),
    )
    write_timeout_ms: int | None = key(
        None,
        "Cut a connection whose peer takes no bytes for this long when hostproxy writes to it "
        "(it stopped reading), 1 to 2147483647 ms. Server: the response (HTTP/1.1: the connection "
        "is reset; h2: the stream is reset, or the connection when its socket takes nothing). "
        "Client: the request (502, cause upstream/reset). Both: an upgraded (101) connection's tunnel "
        "is closed.",
        default_doc="unbounded",
        check=between(1, 2**31 - 1),
    )


_SOCKET_OPTIONS_DOC = "Socket options of this server's listener and connections."
_SAME_AS_ADMIN = "Linkerd's defaults (keys as admin.socketOptions)"


# -- client and service parameters ----------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class HostConnectionPool:
    min_size: int = key(
        0, "Connections (idle or in use) per endpoint the idle timeout leaves open.", check=non_negative
    )
    max_size: int | None = key(
        None,
        "Most connections per endpoint, opening ones included; a request beyond waits for one, within "
        "connectTimeoutMs (then cause connect/timeout).",
        default_doc="unlimited",
        check=positive,
    )
    idle_time_ms: int | None = key(
        None,
        "Close a pooled connection idle this long, with traffic or without (Linkerd 1: never).",
        default_doc="30000",
        check=positive,
    )
    max_waiters: int | None = key(
        None,
        "Most requests waiting for a connection at maxSize; one more is refused at once (503, cause "
        "overload, never sent).",
        default_doc="unlimited",
        check=non_negative,
    )


@dataclass(frozen=True, kw_only=True)
class Session:
    idle_time_ms: int | None = key(
        None,
        "Close a pooled connection idle this long (the shorter of this and hostConnectionPool.idleTimeMs).",
        default_doc="hostConnectionPool's",
        check=positive,
    )
    life_time_ms: int | None = key(
        None, "Close a connection this old when its exchange ends.", default_doc="never", check=positive
    )


@dataclass(frozen=True, kw_only=True)
class ServerSession(Session):
    idle_time_ms: int | None = key(
        None,
        "Close a client connection idle this long between requests (Linkerd 1: never).",
        default_doc="60000",
        check=positive,
    )
    life_time_ms: int | None = key(
        None,
        "A client connection this old gets Connection: close on its next response, and is closed if it "
        "is waiting for a request.",
        default_doc="never",
        check=positive,
    )


@dataclass(frozen=True, kw_only=True)
class ClientParams:
    """Parameters of one client (one bound name): how to talk to its endpoints."""

    load_balancer: BalancerConfig = key(
        P2cBalancer(kind="p2c"), "How an endpoint is chosen for each request.", plugin="balancer"
    )
    failure_accrual: AccrualConfig = key(
        ConsecutiveFailuresAccrual(kind="io.l5d.consecutiveFailures"),
        "When an endpoint is marked dead.",
        plugin="accrual",
        default_doc="io.l5d.consecutiveFailures, 5 failures, equal-jittered backoff 5 s to 300 s",
    )
    requeue_budget: RetryBudget = key(
        RetryBudget(), "Budget for requeues (connection failures known to be safe)."
    )
    request_attempt_timeout_ms: int | None = key(
        None, "Timeout of one attempt.", default_doc="none", check=positive
    )
    connect_timeout_ms: int = key(
        1000, "Give up connecting to an endpoint after this long (cause connect/timeout).", check=positive
    )
    fail_fast: bool = key(
        False,
        "Eject an endpoint at once when connecting to it fails (back after failure accrual's backoff and "
        "probe, whatever its kind).",
    )
    host_connection_pool: HostConnectionPool = key(
        HostConnectionPool(), "Connection pool per endpoint (HTTP/1.1)."
    )
    client_session: Session = key(Session(), "Connection lifetime limits.")
    tls: ClientTls | None = key(None, "Speak TLS to the endpoints.", default_doc="plaintext")
    socket_options: SocketOptions = key(
        SocketOptions(),
        "Socket options of the connections to the endpoints (noDelay, keepAlive, readTimeoutMs and "
        "writeTimeoutMs apply).",
        default_doc=_SAME_AS_ADMIN,
    )
    forward_client_cert: bool = key(False, "Forward the caller's certificate in x-forwarded-client-cert.")


@dataclass(frozen=True, kw_only=True)
class H2ClientParams(ClientParams):
    """An h2 router's client: every client's parameters and the HTTP/2 settings of its connections.

    The settings are Linkerd's ``H2EndpointConfig`` keys, which its h2 clients take as its servers do."""

    initial_stream_window_bytes: int = key(
        65535,
        "Initial flow-control window per stream of upstream connections (1 to 2^31-1).",
        check=between(1, 2**31 - 1),
    )
    max_frame_bytes: int = key(
        16384,
        "Largest frame accepted from upstreams (16384 to 16777215, as HTTP/2 allows).",
        check=between(16384, 2**24 - 1),
    )
    header_table_bytes: int | None = key(
        None,
        "HPACK table size upstreams may use to compress responses (0 to 2^32-1).",
        default_doc="4096",
        check=between(0, 2**32 - 1),
    )
    max_header_list_bytes: int | None = key(
        None,
        "Largest response header list advertised to upstreams (1 to 2^32-1).",
        default_doc="none",
        check=between(1, 2**32 - 1),
    )
    window_update_ratio: float = key(
        0.99,
        "Accepted so that Linkerd 1 configs load; not used: data is acknowledged as its reader takes it.",
        check=fraction,
    )


@dataclass(frozen=True, kw_only=True)
class RetryBufferSize:
    request_bytes: int = key(16383, "Largest request body kept for a retry.", check=non_negative)
    response_bytes: int = key(
        16383,
        "Accepted so that Linkerd 1 configs load; not used: a response is never replayed.",
        check=non_negative,
    )


@dataclass(frozen=True, kw_only=True)
class Retries:
    budget: RetryBudget = key(RetryBudget(), "How many retries are allowed, relative to traffic.")
    backoff: BackoffConfig = key(
        ConstantBackoff(kind="constant"),
        "Delay before each retry.",
        plugin="backoff",
        default_doc="constant, 0 ms",
    )


@dataclass(frozen=True, kw_only=True)
class ServiceParams:
    """Parameters of one service (one logical name): timeouts, retries, classification."""

    total_timeout_ms: int | None = key(
        None,
        "Budget for the whole request, retries included (1 to 2147483647, a Linkerd int).",
        default_doc="none",
        check=between(1, 2**31 - 1),
    )
    retries: Retries = key(Retries(), "Retry budget and backoff.")
    response_classifier: ClassifierConfig = key(
        ClassifierConfig(kind="io.l5d.http.nonRetryable5XX"),
        "Which responses are failures and which may be retried.",
        plugin="classifier",
    )


@dataclass(frozen=True, kw_only=True)
class H2ServiceParams(ServiceParams):
    classification_timeout_ms: int = key(
        100,
        "Accepted so that Linkerd 1 configs load; not used: a stream is classified when its trailers (or its "
        "end) arrive.",
        check=positive,
    )

    retry_buffer_size: RetryBufferSize = key(RetryBufferSize(), "Bytes kept so a stream can be retried.")


@dataclass(frozen=True)
class ParamsEntry:
    """One set of client or service parameters and the prefix it applies to.

    ``explicit`` names the fields (Python names) this entry set itself; a later entry overrides only those.
    ``line`` is the entry's line in the config file (0 when built in code).
    """

    prefix: str
    params: Any
    explicit: frozenset[str]
    line: int = dataclasses.field(default=0, compare=False)


@dataclass(frozen=True)
class ParamsSection:
    """``client`` or ``service``: ``io.l5d.global`` (one entry, prefix ``/``) or ``io.l5d.static``."""

    kind: str
    entries: tuple[ParamsEntry, ...]
    params_type: type

    def to_json(self) -> dict[str, Any]:
        if self.kind == "io.l5d.global":
            body = to_json(self.entries[0].params) if self.entries else to_json(self.params_type())
            return {"kind": self.kind, **body}
        configs = []
        for e in self.entries:
            full = to_json(e.params)
            item = {"prefix": e.prefix}
            for f in dataclasses.fields(e.params):
                if f.name in e.explicit:
                    item[yaml_name(f)] = full[yaml_name(f)]
            configs.append(item)
        return {"kind": self.kind, "configs": configs}


def global_section(params_type: type) -> ParamsSection:
    return ParamsSection(
        "io.l5d.global", (ParamsEntry("/", params_type(), all_fields(params_type)),), params_type
    )


def all_fields(cls: type) -> frozenset[str]:
    return frozenset(f.name for f in dataclasses.fields(cls) if "doc" in f.metadata)


# -- identifiers ------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class IdentifierConfig(PluginConfig):
    pass


@dataclass(frozen=True, kw_only=True)
class HeaderTokenIdentifier(IdentifierConfig):
    header: str | None = key(
        None,
        "Header whose value becomes the name.",
        default_doc="Host (http), :authority (h2)",
        check=header_name,
    )


@dataclass(frozen=True, kw_only=True)
class MethodAndHostIdentifier(IdentifierConfig):
    http_uri_in_dst: bool = key(False, "Append the request path to the name.")


@dataclass(frozen=True, kw_only=True)
class PathIdentifier(IdentifierConfig):
    segments: int = key(1, "Number of path segments that make the name.", check=positive)
    consume: bool = key(False, "Remove those segments from the forwarded path.")


@dataclass(frozen=True, kw_only=True)
class HeaderIdentifier(IdentifierConfig):
    header: str = key("l5d-name", "Header holding a path that becomes the name.", check=header_name)


@dataclass(frozen=True, kw_only=True)
class StaticIdentifier(IdentifierConfig):
    path: str = key(required=True, doc="Every request gets this name (after dstPrefix).", path=True)


@dataclass(frozen=True, kw_only=True)
class HeaderPathIdentifier(IdentifierConfig):
    header: str = key(":path", "Header holding the path.", check=header_name)
    segments: int | None = key(
        None, "Number of path segments that make the name.", default_doc="the whole path", check=positive
    )


# -- transformers -----------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class TransformerConfig(PluginConfig):
    pass


@dataclass(frozen=True, kw_only=True)
class DaemonSetTransformer(TransformerConfig):
    namespace: str = key(required=True, doc="Namespace of the daemonset's Service.")
    service: str = key(required=True, doc="Name of the daemonset's Service.")
    port: str = key(required=True, doc="Port name (or number) of the daemonset's Service.", coerce_str=True)
    k8s_host: str = key(
        "localhost",
        "Kubernetes API host: the transformer watches the daemonset Service through the io.l5d.k8s namer "
        "with this host and k8sPort (the first io.l5d.k8s namer when both are left at their defaults); "
        "one must exist.",
    )
    k8s_port: int = key(8001, "Kubernetes API port, as k8sHost.", check=port_number)
    host_network: bool = key(False, "Match by nodeName instead of /24 subnet.")

    def namer_index(self, namers: Any) -> int | None:
        """Which of ``namers`` (namer configs, in config order) the transformer watches through: the
        first io.l5d.k8s namer at ``k8sHost:k8sPort`` (a namer's default host counts as localhost), else,
        when both keys are at Linkerd's defaults, the first io.l5d.k8s namer; ``None`` if none fits."""
        k8s = [(i, n) for i, n in enumerate(namers) if isinstance(n, K8sNamer)]
        for i, n in k8s:
            if ((n.host or "localhost"), n.port) == (self.k8s_host, self.k8s_port):
                return i
        if (self.k8s_host, self.k8s_port) == ("localhost", 8001) and k8s:
            return k8s[0][0]
        return None


@dataclass(frozen=True, kw_only=True)
class LocalNodeTransformer(TransformerConfig):
    host_network: bool = key(False, "Match by nodeName (env NODE_NAME) instead of the /24 of env POD_IP.")


@dataclass(frozen=True, kw_only=True)
class PortTransformer(TransformerConfig):
    port: int = key(
        required=True,
        doc="Port every address is rewritten to (1 to 65535).",
        check=lambda v: None if 1 <= v <= 65535 else f"must be a port number from 1 to 65535, got {v}",
    )


@dataclass(frozen=True, kw_only=True)
class LocalhostTransformer(TransformerConfig):
    pass


@dataclass(frozen=True, kw_only=True)
class SpecificHostTransformer(TransformerConfig):
    host: str = key(required=True, doc="Keep only addresses of this host.")


@dataclass(frozen=True, kw_only=True)
class ReplaceTransformer(TransformerConfig):
    path: str = key(required=True, doc="Every bound name is replaced by this path.", path=True)


@dataclass(frozen=True, kw_only=True)
class ConstTransformer(TransformerConfig):
    path: str = key(
        required=True, doc="Always bind to this path, even when the input is negative.", path=True
    )


# -- namers -----------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class NamerConfig(PluginConfig):
    prefix: str | None = key(
        None, "Names under /#<prefix> go to this namer.", default_doc="/<kind>", path=True
    )
    experimental: bool = key(False, "Must be true to use an experimental namer.")
    transformers: tuple[TransformerConfig, ...] = key(
        (), "Applied to this namer's results, in order.", plugin="transformer"
    )


@dataclass(frozen=True, kw_only=True)
class FsNamer(NamerConfig):
    root_dir: str = key(
        required=True, doc="Directory with one file per name (relative to the working directory)."
    )


@dataclass(frozen=True, kw_only=True)
class DnsSrvNamer(NamerConfig):
    refresh_interval_seconds: int = key(5, "How often each SRV record is looked up again.", check=positive)
    refresh_from_ttl: bool = key(
        False,
        "Look each SRV record up again when its answer's TTL runs out (the shortest TTL of the SRV records, "
        "their targets' addresses and any CNAMEs on the way, clamped to 1-60 s; 5 s after a negative "
        "answer) instead of every `refreshIntervalSeconds`, which it replaces.",
        extension=True,
    )
    dns_hosts: tuple[str, ...] = key(
        (),
        "DNS servers to ask: IPs or host names, each with an optional :port (53). A name is resolved once, "
        "by the system resolver, when the first lookup needs it (an IPv4 address preferred, as Linkerd's JVM "
        "does); until it resolves, each lookup fails saying so. Asked in order; each gets two tries (a lost "
        "packet is sent again) within the 2 s a lookup may take, so a dead server leaves time to ask the next.",
        default_doc="the system resolver",
    )


@dataclass(frozen=True, kw_only=True)
class K8sNamer(NamerConfig):
    host: str | None = key(
        None,
        "Kubernetes API host (plain HTTP, e.g. a `kubectl proxy` beside the daemon).",
        default_doc="in-cluster (TLS + service account) when KUBERNETES_SERVICE_HOST is set, else localhost",
        check=host_name,
    )
    port: int = key(8001, "Kubernetes API port.", check=between(1, 65535))
    label_selector: str | None = key(
        None, "Label key whose value is an extra path segment, e.g. version.", check=k8s_label_key
    )
    use_endpoint_slices: bool = key(
        False, "Watch discovery.k8s.io/v1 EndpointSlices instead of Endpoints.", extension=True
    )
    resync_interval_secs: float = key(
        300.0,
        "Re-list every name this often, so a watch that silently stops is caught.",
        check=positive,
        extension=True,
    )
    service_account_dir: str = key(
        "/var/run/secrets/kubernetes.io/serviceaccount",
        "In-cluster: where the service account's token and CA are read (the token is re-read when it changes).",
        extension=True,
    )


@dataclass(frozen=True, kw_only=True)
class K8sExternalNamer(NamerConfig):
    host: str | None = key(
        None,
        "Kubernetes API host (plain HTTP, e.g. a `kubectl proxy` beside the daemon).",
        default_doc="in-cluster (TLS + service account) when KUBERNETES_SERVICE_HOST is set, else localhost",
        check=host_name,
    )
    port: int = key(8001, "Kubernetes API port.", check=between(1, 65535))
    label_selector: str | None = key(
        None, "Label key whose value is an extra path segment, e.g. version.", check=k8s_label_key
    )
    resync_interval_secs: float = key(
        300.0,
        "Re-list every name this often, so a watch that silently stops is caught.",
        check=positive,
        extension=True,
    )
    service_account_dir: str = key(
        "/var/run/secrets/kubernetes.io/serviceaccount",
        "In-cluster: where the service account's token and CA are read (the token is re-read when it changes).",
        extension=True,
    )


@dataclass(frozen=True, kw_only=True)
class RewriteNamer(NamerConfig):
    pattern: str = key(required=True, doc="Path pattern with {var} captures, e.g. /{port}/{ns}/{svc}.")
    name: str = key(required=True, doc="The rewritten path, using the captures, e.g. /k8s/{ns}/{port}/{svc}.")


# -- interpreters -----------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class InterpreterConfig(PluginConfig):
    kind: str = key("default", "Which interpreter.")
    experimental: bool = key(False, "Must be true to use an experimental interpreter.")
    transformers: tuple[TransformerConfig, ...] = key(
        (), "Applied to every bound name, in order.", plugin="transformer"
    )


@dataclass(frozen=True, kw_only=True)
class DefaultInterpreter(InterpreterConfig):
    pass


@dataclass(frozen=True, kw_only=True)
class FsInterpreter(InterpreterConfig):
    dtab_file: str = key(required=True, doc="Dtab file, watched and re-read when it changes.")


# -- trace propagators ------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class TracePropagatorConfig(PluginConfig):
    kind: str = key("io.l5d.default", "Which trace propagator.")


@dataclass(frozen=True, kw_only=True)
class DefaultTracePropagator(TracePropagatorConfig):
    pass


@dataclass(frozen=True, kw_only=True)
class ZipkinTracePropagator(TracePropagatorConfig):
    pass


# -- telemeters -------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class TelemeterConfig(PluginConfig):
    experimental: bool = key(False, "Must be true to use an experimental telemeter.")


@dataclass(frozen=True, kw_only=True)
class RecentRequestsTelemeter(TelemeterConfig):
    sample_rate: float = key(required=True, doc="Fraction of requests recorded (0 to 1).", check=fraction)
    capacity: int = key(10, "How many requests are kept.", check=positive)


@dataclass(frozen=True, kw_only=True)
class ZipkinTelemeter(TelemeterConfig):
    host: str = key("localhost", "Host of the Zipkin Scribe collector.", check=host_name)
    port: int = key(
        9410, "Port of the Zipkin Scribe collector (Zipkin's SCRIBE_ENABLED port).", check=between(1, 65535)
    )
    sample_rate: float = key(
        0.001,
        "Fraction of requests without a sampling decision that are recorded (0 to 1); a request that "
        "carries one (l5d-ctx-trace, l5d-sample, B3) is recorded as it says.",
        check=fraction,
    )


_TRACELOG_LEVELS = ("ALL", "TRACE", "DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL", "FATAL", "OFF")


@dataclass(frozen=True, kw_only=True)
class TraceLogTelemeter(TelemeterConfig):
    sample_rate: float = key(
        1.0,
        "Fraction of requests without a sampling decision whose spans are logged (Linkerd clamps it to 0..1; "
        "so does hostproxy).",
    )
    level: str = key(
        "INFO",
        "Log level of the trace.span events, on logger io.l5d.tracelog: " + ", ".join(_TRACELOG_LEVELS) + ".",
        check=lambda v: (
            None
            if v is None or str(v).upper() in _TRACELOG_LEVELS
            else f"unknown level {v!r}: use one of {', '.join(_TRACELOG_LEVELS)}"
        ),
    )


@dataclass(frozen=True, kw_only=True)
class InfluxDbTelemeter(TelemeterConfig):
    """Linkerd's ``io.l5d.influxdb``: no keys of its own (it serves /admin/metrics/influxdb)."""


#: The admin path the ``io.l5d.influxdb`` telemeter serves (Linkerd's).
INFLUXDB_PATH = "/admin/metrics/influxdb"

#: Linkerd's default ``path`` of the ``io.l5d.prometheus`` telemeter.
PROMETHEUS_DEFAULT_PATH = "/admin/metrics/prometheus"


@dataclass(frozen=True, kw_only=True)
class PrometheusTelemeter(TelemeterConfig):
    path: str = key(
        PROMETHEUS_DEFAULT_PATH,
        "Admin path of the exposition (also served at /admin/metrics/prometheus and /metrics); "
        "not another admin endpoint's path or another telemeter's.",
        check=lambda v: None if v.startswith("/") else f"must be a path starting with '/', got {v!r}",
    )
    prefix: str = key(
        "",
        "Prepended to every metric name.",
        check=lambda v: (
            None
            if re.fullmatch(r"([a-zA-Z_:][a-zA-Z0-9_:]*)?", v)
            else f"must be the start of a Prometheus metric name ([a-zA-Z_:][a-zA-Z0-9_:]*), got {v!r}"
        ),
    )


# -- servers ----------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ForwardedLabeler:
    kind: str = key(
        required=True,
        doc="ip, ip:port, connectionRandom, requestRandom, router or static.",
        check=one_of("ip", "ip:port", "connectionRandom", "requestRandom", "router", "static"),
    )
    label: str | None = key(None, "The label of a static labeler.")


@dataclass(frozen=True, kw_only=True)
class ForwardedHeader:
    by: ForwardedLabeler = key(ForwardedLabeler(kind="requestRandom"), "How this proxy labels itself.")
    for_: ForwardedLabeler = key(ForwardedLabeler(kind="requestRandom"), "How the client is labelled.")


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    ip: str = key("127.0.0.1", "Address to listen on; 0.0.0.0 for every interface.", check=ip_literal)
    port: int | None = key(
        None, "Port to listen on.", default_doc="4140 (http), 4142 (h2)", check=port_number
    )
    max_concurrent_requests: int | None = key(
        None,
        "Requests beyond this many in flight are rejected at once.",
        default_doc="unlimited",
        check=positive,
    )
    clear_context: bool = key(
        False,
        "Strip l5d-* context headers (l5d-dtab, ...) from requests arriving here (and the B3 trace headers "
        "of a router with tracePropagator io.l5d.zipkin: a new trace starts), and l5d-* fields from their responses, interim (1xx, 101) and trailers included (a response with l5d-err "
        "loses its body too).",
    )
    tls: ServerTls | None = key(None, "Accept TLS.", default_doc="plaintext")
    socket_options: SocketOptions = key(SocketOptions(), _SOCKET_OPTIONS_DOC, default_doc=_SAME_AS_ADMIN)
    timeout_ms: int | None = key(
        None,
        "Bound each request from when the router forwards it, as totalTimeoutMs does (503, cause "
        "timeout/request); the stricter of the two applies (1 to 2147483647).",
        default_doc="none",
        check=between(1, 2**31 - 1),
    )
    max_call_depth: int = key(
        1000, "Reject a request that already passed this many proxies (Via count).", check=positive
    )
    add_forwarded_header: ForwardedHeader | None = key(
        None, "Add an RFC 7239 Forwarded header.", default_doc="off"
    )
    timestamp_header: str | None = key(
        None,
        "Add this header to each request, holding the time it arrived in milliseconds since the epoch "
        "(New Relic's X-Request-Start); appended to any value the caller sent. A header of the caller's "
        "own: not Host, Content-Length, Transfer-Encoding, a hop-by-hop field, Expect, Via, Forwarded, "
        "x-forwarded-client-cert or l5d-*.",
        default_doc="off",
        check=timestamp_field_name,
    )
    server_session: ServerSession = key(ServerSession(), "Connection lifetime limits.")
    allow_address_overrides: bool = key(
        False,
        "Let a per-request l5d-dtab route to raw addresses (/$/inet/...) even on a non-loopback server.",
        extension=True,
    )
    max_connections: int | None = key(
        None,
        "Most open client connections; beyond it a new connection is closed at once.",
        default_doc="unlimited",
        check=positive,
        extension=True,
    )
    max_requests_per_connection: int | None = key(
        None,
        "Close a client connection after this many requests (Connection: close on the last).",
        default_doc="unlimited",
        check=positive,
        extension=True,
    )
    request_header_timeout_ms: int = key(
        10000,
        "A request head not complete this long after its first byte gets 408 and the connection is cut.",
        check=positive,
        extension=True,
    )
    request_body_timeout_ms: int | None = key(
        None,
        "Cut a connection whose request body stalls this long between two reads.",
        default_doc="none",
        check=positive,
        extension=True,
    )


@dataclass(frozen=True, kw_only=True)
class H2ServerConfig(ServerConfig):
    max_requests_per_connection: int | None = key(
        None,
        "Drain a client connection after this many streams (GOAWAY naming the last; later ones refused).",
        default_doc="unlimited",
        check=positive,
        extension=True,
    )
    request_header_timeout_ms: int = key(10000, "Not enforced on h2 servers.", check=positive, extension=True)
    request_body_timeout_ms: int | None = key(
        None,
        "A request stream whose body stalls this long between two DATA frames gets 400 and is reset.",
        default_doc="none",
        check=positive,
        extension=True,
    )
    server_session: ServerSession = key(
        ServerSession(),
        "Connection lifetime limits: a connection idle (no stream) or old past them is drained with "
        "GOAWAY, its streams in progress finishing first.",
    )
    window_update_ratio: float = key(
        0.99,
        "Accepted so that Linkerd 1 configs load; not used: data is acknowledged as its reader takes it.",
        check=fraction,
    )

    header_table_bytes: int | None = key(
        None,
        "HPACK table size (0 to 2^32-1): the most the client may use to compress requests, and the most "
        "this server keeps to compress responses, whatever larger table the client offers.",
        default_doc="4096",
        check=between(0, 2**32 - 1),
    )
    initial_stream_window_bytes: int | None = key(
        65535, "Initial flow-control window per stream (1 to 2^31-1).", check=between(1, 2**31 - 1)
    )
    max_concurrent_streams_per_connection: int | None = key(
        1000, "Most streams per connection (1 to 2^32-1).", check=between(1, 2**32 - 1)
    )
    max_frame_bytes: int | None = key(
        16384,
        "Largest frame accepted (16384 to 16777215, as HTTP/2 allows).",
        check=between(16384, 2**24 - 1),
    )
    max_header_list_byts: int | None = key(
        None,
        "Largest header list accepted (the spelling of Linkerd's docs; 1 to 2^32-1).",
        default_doc="library default",
        check=between(1, 2**32 - 1),
    )
    max_header_list_bytes: int | None = key(
        None,
        "The same, spelt as Linkerd's code reads it (set one of the two).",
        default_doc="library default",
        check=between(1, 2**32 - 1),
    )


# -- routers ----------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class BindingCache:
    paths: int = key(1000, "Cached service names.", check=positive)
    trees: int = key(1000, "Cached bound trees.", check=positive)
    bounds: int = key(1000, "Cached bound names.", check=positive)
    clients: int = key(1000, "Cached clients.", check=positive)
    idle_ttl_secs: int = key(600, "Evict entries idle this long, in seconds.", check=positive)


@dataclass(frozen=True, kw_only=True)
class RouterConfig(PluginConfig):
    DISCRIMINATOR: ClassVar[str] = "protocol"
    DEFAULT_PORT: ClassVar[int] = 0
    CLIENT_PARAMS: ClassVar[type] = ClientParams
    SERVICE_PARAMS: ClassVar[type] = ServiceParams

    kind: str = key(required=True, name="protocol", doc="http or h2.")
    label: str | None = key(
        None,
        "Router name in metrics and the admin UI; must be unique, non-empty, without '/' or spaces.",
        default_doc="the protocol",
        check=router_label,
    )
    dtab: str = key("", "Base dtab (usually a YAML block scalar `|`).", dtab=True)
    dst_prefix: str = key("/svc", "Prefix of the names identifiers produce.", path=True)
    identifier: tuple[IdentifierConfig, ...] = key(
        (),
        "How a request becomes a name; one identifier or a list, tried in order.",
        plugin="identifier",
        one_or_many=True,
        default_doc="io.l5d.header.token (Host for http, :authority for h2)",
    )
    interpreter: InterpreterConfig = key(
        DefaultInterpreter(kind="default"), "How names are bound: namers and a dtab.", plugin="interpreter"
    )
    servers: tuple[ServerConfig, ...] = key((), "Where the router listens; at least one.")
    trace_propagator: TracePropagatorConfig = key(
        DefaultTracePropagator(kind="io.l5d.default"),
        "The trace headers read from requests and written on forwarded ones (spans are exported only by "
        "an io.l5d.zipkin telemeter).",
        plugin="tracePropagator",
    )
    client: ParamsSection = key(
        None, "Client parameters (per bound name).", default_doc="kind: io.l5d.global"
    )
    service: ParamsSection = key(
        None, "Service parameters (per service name).", default_doc="kind: io.l5d.global"
    )
    binding_timeout_ms: int = key(10000, "Give up binding a name after this long (502).", check=positive)
    binding_cache: BindingCache = key(BindingCache(), "Sizes of the binding caches.")
    max_concurrent_requests: int | None = key(
        None,
        "Requests in flight on the whole router (all its servers; one is in flight until its response "
        "body ended) beyond which new ones get 503 overload.",
        default_doc="unlimited",
        check=positive,
        extension=True,
    )
    originator: bool = key(False, "Add the gauge rt/<label>/originator = 1.")
    experimental: bool = key(False, "Must be true for experimental protocols.")


def _roll_policy(v: Any) -> str | None:
    """A Linkerd access-log roll policy (see :mod:`hostproxy.logroll`)."""
    from hostproxy import logroll  # (pure: no I/O, no runtime imports)

    try:
        logroll.parse_policy(v)
    except ValueError as e:
        return str(e)
    return None


def _compression_level(v: Any) -> str | None:
    """Linkerd's ``compressionLevel``: -1, 0 or 1 to 9."""
    if v is None or v == -1 or 0 <= v <= 9:
        return None
    return (
        f"compressionLevel {v}: use -1 (textual types at zlib level 6, Linkerd's default), 0 (off) or 1 to 9"
    )


_ROLL_POLICY_DOC = (
    "When the access log rolls (Linkerd's values, any case): never, hourly, daily, weekly(N) (N: 1 Sunday .. "
    "7 Saturday), or a size such as 100.megabytes; sighup is never (SIGHUP always reopens the file). "
    "Times are UTC; the file is renamed NAME-SUFFIX.EXT with the time it was opened."
)
_ROTATE_COUNT_DOC = "How many rolled access logs to keep (the newest); -1 keeps all."
_APPEND_DOC = (
    "Append to an existing access log; false truncates it when the daemon starts (a reload or SIGHUP "
    "reopens it for appending)."
)


@dataclass(frozen=True, kw_only=True)
class HttpRouterConfig(RouterConfig):
    DEFAULT_PORT: ClassVar[int] = 4140
    http_access_log: str | None = key(
        None,
        "Access log: a file path (one line per request: router, service, client, endpoint, status, cause, "
        "duration), or '-' for a structured log event. Rotate with logrotate; SIGHUP reopens the file.",
        default_doc="off",
    )
    http_access_log_append: bool = key(True, _APPEND_DOC)
    http_access_log_format: str = key(
        "hostproxy",
        "The access log's line: hostproxy (tab-separated: time, router, method, path, service, client, "
        "endpoint, status, cause, duration, bytes) or linkerd (Linkerd 1's Apache-style line: host, remote "
        'address, [time], "METHOD target HTTP/version", status, bytes, referer, user agent).',
        check=one_of("hostproxy", "linkerd"),
        extension=True,
    )
    http_access_log_roll_policy: str = key("never", _ROLL_POLICY_DOC, check=_roll_policy)
    http_access_log_rotate_count: int = key(-1, _ROTATE_COUNT_DOC)
    compression_level: int = key(
        0,
        "Compress proxied responses for clients that accept gzip or deflate: -1 textual types (text/*, JSON, "
        "JavaScript, XML, SVG) at zlib level 6, 1 to 9 every type at that level, 0 none. Linkerd's default is "
        "-1; hostproxy's is 0 (off): set -1 to keep Linkerd's behaviour.",
        check=_compression_level,
    )
    max_headers_kb: int = key(
        8, "Largest request or response header block, in KB.", name="maxHeadersKB", check=positive
    )
    max_initial_line_kb: int = key(
        4, "Longest request or status line, in KB.", name="maxInitialLineKB", check=positive
    )
    max_err_response_kb: int = key(
        5120, "Largest l5d-err body, in KB.", name="maxErrResponseKB", check=positive
    )
    streaming_enabled: bool = key(
        True,
        "false: every request body with a Content-Length is read whole before it is forwarded, so that it "
        "can be retried (up to 2 GB - 1, as Linkerd).",
    )
    stream_after_content_length_kb: int | None = key(
        None,
        "Request bodies with a Content-Length up to this size are read whole before they are forwarded, so "
        "that they can be retried; larger ones are streamed once and never retried. Refused together with "
        "streamingEnabled: false, as in Linkerd.",
        name="streamAfterContentLengthKB",
        default_doc="5",
        check=non_negative,
    )


@dataclass(frozen=True, kw_only=True)
class H2RouterConfig(RouterConfig):
    DEFAULT_PORT: ClassVar[int] = 4142
    CLIENT_PARAMS: ClassVar[type] = H2ClientParams
    SERVICE_PARAMS: ClassVar[type] = H2ServiceParams
    servers: tuple[H2ServerConfig, ...] = key((), "Where the router listens; at least one.")
    h2_access_log: str | None = key(
        None,
        "Access log, as an http router's httpAccessLog: a file path (one line per request), or '-' for a "
        "structured log event. Rotate with logrotate; SIGHUP reopens the file.",
        default_doc="off",
    )
    h2_access_log_append: bool = key(True, _APPEND_DOC)
    h2_access_log_format: str = key(
        "hostproxy",
        "The access log's line, as an http router's httpAccessLogFormat: hostproxy or linkerd (Linkerd 1's "
        "h2 line: its bytes field is always -).",
        check=one_of("hostproxy", "linkerd"),
        extension=True,
    )
    h2_access_log_roll_policy: str = key("never", _ROLL_POLICY_DOC, check=_roll_policy)
    h2_access_log_rotate_count: int = key(-1, _ROTATE_COUNT_DOC)


# -- top level --------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class AdminSecurity:
    ui_enabled: bool = key(True, "Serve the dashboard and read-only UI endpoints.")
    control_enabled: bool = key(True, "Serve control endpoints (/admin/shutdown, POST /logging.json).")
    diagnostics_enabled: bool = key(True, "Serve every other endpoint.")
    path_whitelist: tuple[str, ...] = key((), "Regexes of paths always served.", check=regex)
    path_blacklist: tuple[str, ...] = key((), "Regexes of paths never served (checked first).", check=regex)


@dataclass(frozen=True, kw_only=True)
class AdminConfig:
    ip: str = key("127.0.0.1", "Address of the admin server.", check=ip_literal)
    port: int = key(9990, "Port of the admin server.", check=port_number)
    shutdown_grace_ms: int = key(10000, "Longest drain before exit on shutdown.", check=non_negative)
    security: AdminSecurity = key(AdminSecurity(), "Which admin endpoints are served.")
    socket_options: SocketOptions = key(
        SocketOptions(), "Socket options of the admin server's listener and connections."
    )
    allow_remote_control: bool = key(
        False, "Answer state-changing admin endpoints from non-loopback peers.", extension=True
    )
    tls: ServerTls | None = key(
        None,
        "Serve the admin interface over TLS (a server's tls keys; requireClientAuth admits only clients "
        "with a certificate from caCertPath). Changes with a restart; certificate files are re-read.",
        default_doc="plaintext",
    )


@dataclass(frozen=True, kw_only=True)
class OverloadSection:
    memory_limit_bytes: int | None = key(
        None,
        "Memory the marks are fractions of.",
        default_doc="the cgroup's memory.max, else off",
        check=positive,
    )
    no_keepalive: float = key(
        0.80, "Memory fraction past which connections close after each response.", check=fraction
    )
    shed: float = key(0.90, "Memory fraction past which new requests get 503 overload.", check=fraction)
    stop_accept: float = key(0.95, "Memory fraction past which no connection is accepted.", check=fraction)
    fd_stop_accept: float = key(
        0.90, "Fraction of RLIMIT_NOFILE past which no connection is accepted.", check=fraction
    )
    fd_reserve: int = key(16, "Stop accepting when fewer descriptors than this are left.", check=non_negative)
    hysteresis: float = key(
        0.05, "How far below a mark a reading must fall to leave its level.", check=fraction
    )
    interval_ms: int = key(1000, "How often memory and descriptors are sampled.", check=positive)


@dataclass(frozen=True, kw_only=True)
class UsageConfig:
    org_id: str = key("", "Accepted for compatibility; hostproxy sends no usage reports.")
    enabled: bool = key(True, "Accepted for compatibility; hostproxy sends no usage reports.")


@dataclass(frozen=True, kw_only=True)
class DnsConfig:
    nameservers: tuple[str, ...] = key(
        (),
        "DNS servers (IP or IP:port) for /$/inet names, asked in order; each gets two tries (a lost packet "
        "is sent again) within the 2 s a lookup may take, so a dead server leaves time to ask the next.",
        default_doc="/etc/resolv.conf",
    )


@dataclass(frozen=True, kw_only=True)
class NamerStateConfig:
    dir: str | None = key(
        None,
        "Directory where namers and the /$/inet resolver persist their last good state.",
        default_doc="none (not persisted)",
    )


@dataclass(frozen=True, kw_only=True)
class Config:
    """A whole ``linkerd.yaml``."""

    admin: AdminConfig = key(AdminConfig(), "The admin server.")
    namers: tuple[NamerConfig, ...] = key(
        (), "Service discovery plugins, reached as /#/<prefix>.", plugin="namer"
    )
    routers: tuple[RouterConfig, ...] = key(
        required=True, doc="The routers; at least one.", plugin="protocol"
    )
    telemetry: tuple[TelemeterConfig, ...] = key((), "Metrics and tracing plugins.", plugin="telemeter")
    usage: UsageConfig = key(UsageConfig(), "Linkerd's usage reporting; accepted and ignored.")
    dns: DnsConfig = key(DnsConfig(), "DNS resolution of /$/inet names.", extension=True)
    namer_state: NamerStateConfig = key(NamerStateConfig(), "Persistence of namer state.", extension=True)
    overload: OverloadSection = key(
        OverloadSection(), "Memory and file-descriptor watermarks (Envoy's overload manager).", extension=True
    )

    def to_json(self) -> dict[str, Any]:
        """The loaded config with defaults filled in (served as /config.json)."""
        return to_json(self)

    def router(self, label: str) -> RouterConfig:
        for r in self.routers:
            if r.label == label:
                return r
        raise KeyError(
            f"no router labelled {label!r}; routers: {', '.join(str(r.label) for r in self.routers)}"
        )


def plugin_mapping(cfg: Any) -> Any:
    """A plugin config as the Linkerd-style mapping the runtime's pure cores take (unset keys left out)."""

    def strip(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: strip(x) for k, x in v.items() if x is not None}
        if isinstance(v, list):
            return [strip(x) for x in v]
        return v

    return strip(to_json(cfg))


def to_json(obj: Any) -> Any:
    """A JSON-ready rendering of a config object, with YAML key names."""
    if isinstance(obj, ParamsSection):
        return obj.to_json()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(obj):
            if "doc" not in f.metadata:
                continue
            out[yaml_name(f)] = to_json(getattr(obj, f.name))
        if isinstance(obj, PluginConfig) and obj.DISCRIMINATOR != "kind":
            out = {obj.DISCRIMINATOR: out.pop(obj.DISCRIMINATOR), **out}
        return out
    if isinstance(obj, tuple | list):
        return [to_json(x) for x in obj]
    return obj
