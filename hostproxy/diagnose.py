"""Whose fault is it: turn the admin server's JSON documents into a short, ranked list of findings.

Theory of operation
-------------------
``diagnose(snapshot)`` is pure: it reads the documents the admin server serves (the flat
``/admin/metrics.json``, ``/client_state.json``, every ``/namer_state/<prefix>.json``,
``/admin/unbound.json``, ``/admin/process.json``) plus which clients each failing service binds to
(from ``/delegator.json``), and returns a :class:`Report`.  ``hostproxy wtf`` fetches the documents
and prints the report; tests feed hand-made documents.

One :class:`Finding` per (router, service, cause) that failed, worst first.  Each names the level
at fault through its cause (``hostproxy.causes``: *connection* — the network or a dead upstream
process; *application* — the upstream answered badly or slowly; *proxy* — naming, identification,
hostproxy itself), the share of that service's requests it cost, the client (bound name) and the
endpoint (``host:port``) involved when one is, a one-line verdict and the next thing to check.

Where the numbers come from:

* bound services: ``rt/<r>/service/<svc>/{requests,failures/<cause>,status/<code>}``; the client
  is the bound name the service delegates to whose ``failures/<cause>`` counted it, the endpoint
  the one ``/client_state.json`` shows failing (connect failures in its pool, marked dead by
  failure accrual, failures in its balancer state) or the only one;
* names that never bound (typos, hostile Hosts) share ``service/unbound`` in metrics; the bounded
  top-N table behind ``/admin/unbound.json`` gives one finding per (name, cause);
* failures counted by a server but by no service (identification, overload, internal errors)
  become router-level findings with no service;
* namers: a name in state ``stale`` (its backend fails; the last good addresses are served) is a
  ``naming/stale`` warning even when every request still succeeds;
* failure accrual: an endpoint marked dead while its service still succeeds (requests go to the
  others, connect failures requeued there fail no request) is a warning, with the endpoint's last
  failure (``/client_state.json`` → ``endpoints.<ep>.lastFailure``);
* a timeout of a client none of whose endpoints ever got a connection (``pool.connects`` 0; connects
  failed, under way, or abandoned when the request gave up: ``pool.connects_abandoned``) is the
  network's or the upstream host's, not the application's slowness;
* failed answers (5XX, gRPC errors) that carry ``l5d-err`` were made by a proxy downstream (a peer
  hostproxy's incoming router, a Linkerd), not by the application: when most of a service's did
  (``/client_state.json`` → ``downstreamProxyErrors.<service>``), the finding's fault is
  ``downstream proxy`` and it quotes that proxy's l5d-err;
* the process: open file descriptors near the limit; the overload manager holding back (the
  ``overload/memory_level`` and ``overload/fd_exhausted`` gauges: memory past a mark, descriptors
  past theirs), which refuses connections without failing any counted request;
* TLS: a failing ``tls`` cause is explained with the last handshake failure the client recorded
  (``/client_state.json`` → ``tls.lastError``: unknown CA, name mismatch, expired, no client
  certificate...); every certificate in ``/admin/tls.json`` that expires within
  ``Thresholds.cert_expiry_days`` (14) is a warning (``critical`` once expired or unreadable), even
  while every request succeeds.

Counters are cumulative since the daemon started.  :func:`delta_metrics` and :func:`delta_unbound`
subtract an earlier sample, so that ``wtf --interval 30s`` diagnoses only what happened in between.
Severity: ``critical`` when a cause costs at least half the requests, ``error`` from 5 %,
``warning`` below that and for the conditions that do not fail requests yet, and for fewer than
``Thresholds.min_failures_to_rate`` (2) failures among requests that otherwise succeeded (one failure
in three requests is no rate of 33 %; the verdict says how few).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from hostproxy.causes import BODY_CUT_OFF, Cause

__all__ = [
    "SEVERITIES",
    "Finding",
    "Report",
    "Snapshot",
    "Thresholds",
    "delta_metrics",
    "delta_unbound",
    "diagnose",
    "failing_services",
    "format_age",
    "leaf_ids",
    "scopes",
]

#: Severities, worst first.
SEVERITIES = ("critical", "error", "warning")
_RANK = {s: i for i, s in enumerate(SEVERITIES)}
UNBOUND = "unbound"
#: Failure accrual states of an endpoint taken out of rotation (``hostproxy.accrual.State``).
_OUT_OF_ROTATION = frozenset({"dead", "probe_open", "probe_closed"})
#: ``fault`` of 5XX answers a proxy downstream made (they carry ``l5d-err``).
DOWNSTREAM_PROXY = "downstream proxy"
#: Causes a service's retries (``service.retries``, its ``responseClassifier``) may retry.
_RETRIED = frozenset({Cause.UPSTREAM_5XX, Cause.UPSTREAM_GRPC, Cause.UPSTREAM_RESET, Cause.TIMEOUT_ATTEMPT})
#: ``cause`` of the finding on requests their callers abandoned (no failure cause of hostproxy's).
ABANDONED = "abandoned"


def _daemonset(client: str | None) -> tuple[str, str, str] | None:
    """``(namespace, port, service)`` of the daemonset a client id sends through
    (``/%/io.l5d.k8s.daemonset/<ns>/<port>/<svc>/...``), None for any other client."""
    parts = (client or "").split("/")
    if len(parts) >= 6 and parts[1] == "%" and parts[2] == "io.l5d.k8s.daemonset":
        return parts[3], parts[4], parts[5]
    return None


def _host_port(endpoint: str) -> str:
    """``HOST PORT`` for nc from an endpoint ``host:port`` or ``[v6]:port``."""
    host, _, port = endpoint.rpartition(":")
    return f"{host.strip('[]')} {port}" if host else endpoint


def _clip(text: Any, limit: int = 300) -> str:
    """``text`` on one line, at most ``limit`` characters (an l5d-err can be long)."""
    one = " ".join(str(text).split())
    return one if len(one) <= limit else one[: limit - 1] + "…"


@dataclass(frozen=True)
class Thresholds:
    critical_share: float = 0.5
    error_share: float = 0.05
    #: Failures below this share of a service's requests are ignored (0: any failure is reported).
    ignore_share: float = 0.0
    fd_warning: float = 0.8
    fd_critical: float = 0.95
    #: Certificates expiring within this many days are reported.
    cert_expiry_days: int = 14
    #: Fewer failures than this (one), while other requests succeeded, are at most a warning: too few to rate.
    min_failures_to_rate: int = 2


@dataclass
class Finding:
    """One (router, service, cause) at fault.  ``as_json`` is the documented ``wtf --json`` shape."""

    severity: str
    router: str | None
    service: str | None
    client: str | None
    endpoint: str | None
    cause: str
    share: float
    verdict: str
    next_step: str
    failures: int = 0
    requests: int = 0
    #: Whose fault, when the cause alone does not say (a TLS failure on a server's side is the
    #: caller's, not the upstream's); not part of the JSON shape, which has it as ``fault``.
    blame: str | None = None
    #: What ``requests`` counts (``requests``; a server's ``handshakes`` or ``connections``); not
    #: part of the JSON shape.
    unit: str = "requests"

    @property
    def level(self) -> str:
        """Whose fault: ``connection`` (network or a dead upstream), ``application`` or ``proxy``."""
        if self.blame == DOWNSTREAM_PROXY:
            return "proxy"  # a proxy's error answer, passed on: not the application's
        if self.blame == "network/upstream":
            return "connection"  # (a timeout spent connecting: the application was never reached)
        if self.blame == "application":
            return "application"  # (callers gave up on a slow answer: ``abandoned``)
        try:
            return Cause(self.cause).level.value
        except ValueError:
            return "proxy"

    @property
    def fault(self) -> str:
        """The one-word answer to "whose fault": network, application, naming, caller or hostproxy."""
        if self.blame is not None:
            return self.blame
        if self.cause.startswith("naming/"):
            return "naming"
        if self.cause == Cause.IDENTIFICATION.value:
            return "caller"
        return {"connection": "network/upstream", "application": "application"}.get(self.level, "hostproxy")

    def as_json(self) -> dict[str, Any]:
        d = asdict(self)
        del d["blame"], d["unit"]
        d["share"] = round(self.share, 4)
        d["level"] = self.level
        d["fault"] = self.fault
        return d


@dataclass
class Snapshot:
    """The admin documents one diagnosis reads (any may be empty when the daemon lacks the endpoint)."""

    metrics: Mapping[str, float]
    client_state: Mapping[str, Any] = field(default_factory=dict)
    #: namer prefix (``/io.l5d.fs``, ``/$/inet``) -> that namer's state document
    namer_state: Mapping[str, Any] = field(default_factory=dict)
    #: router -> ``{"names": [{"name", "count", "causes": {cause: n}}, ...]}``
    unbound: Mapping[str, Any] = field(default_factory=dict)
    process: Mapping[str, Any] | None = None
    #: router -> service name -> client ids it binds to (leaves of its delegation)
    bindings: Mapping[str, Mapping[str, list[str]]] = field(default_factory=dict)
    #: ``/admin/tls.json``: ``{"certificates": [{"path", "role", "router", ..., "daysLeft"}]}``
    tls: Mapping[str, Any] = field(default_factory=dict)
    #: ``/admin/telemetry.json``: ``{"telemeters": [{"kind", ...}]}``
    telemetry: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class Report:
    findings: list[Finding]
    #: router -> {"requests", "failures", "services"} over the diagnosed window
    routers: dict[str, dict[str, Any]]

    @property
    def healthy(self) -> bool:
        return not self.findings

    def as_json(self) -> dict[str, Any]:
        return {
            "healthy": self.healthy,
            "findings": [f.as_json() for f in self.findings],
            "routers": self.routers,
        }


# -- metrics keys -------------------------------------------------------------------------------------

_SCOPE_KEY = re.compile(r"^rt/([^/]+)/(server|service|client)/(.+)/requests$")
_COUNTER_TAIL = re.compile(
    r"(/requests|/success|/failures|/failures/.+|/abandoned|/status/[^/]+|\.count|\.sum|/retries/total"
    r"|/retries/budget_exhausted|/connects|/closes|/removals|/revivals|/probes"
    r"|/rejected_connections|/rejected_overload|/bad_requests|/header_timeouts|/tls/handshakes"
    r"|/tls/handshake_failures(/.+)?)$"
)
#: A server's counters of clients it turned away (``rt/<router>/server/<ip>/<port>/<what>``).
_SERVER_TURNED_AWAY = re.compile(
    r"^rt/([^/]+)/server/([^/]+/\d+)/(rejected_connections|rejected_overload|bad_requests|tls/handshake_failures)$"
)


def _server_address(server: str) -> str:
    """``host:port`` of a server's metric scope ``<ip>/<port>``, an IPv6 address in brackets."""
    ip, port = server.rsplit("/", 1)
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


#: What to do about clients failing TLS handshakes with a server, by the commonest reason.
_TLS_NEXT_STEP = {
    "not-tls": "a client speaks plaintext HTTP to this TLS port: point it at https:// or at a plaintext server",
    "no-client-certificate": (
        "the server requires client certificates (requireClientAuth) and these clients send none: give "
        "them a certificate signed by the server's caCertPath"
    ),
    "client-certificate-untrusted": "the clients' certificates are not signed by the server's caCertPath",
    "client-certificate-expired": "renew the clients' certificates",
    "protocol-mismatch": "the clients and servers[].tls.protocols share no TLS version: align them",
    "no-shared-cipher": "the clients and servers[].tls.ciphers share no cipher: align them",
    "certificate-rejected-by-peer": (
        "the clients reject this server's certificate: check that they trust its CA and use a name in "
        "its SANs (/admin/tls.json shows the certificate)"
    ),
}


def scopes(metrics: Mapping[str, float]) -> dict[str, dict[str, list[str]]]:
    """router -> kind (``server``/``service``/``client``) -> scope names, from the ``…/requests`` keys.

    Service and client names come back with their leading ``/`` (``/svc/web``, ``/#/io.l5d.fs/web``);
    servers as ``ip/port``.
    """
    out: dict[str, dict[str, list[str]]] = {}
    for key in metrics:
        m = _SCOPE_KEY.match(key)
        if m is None:
            continue
        router, kind, name = m.groups()
        if kind != "server" and name != UNBOUND:
            name = "/" + name
        out.setdefault(router, {"server": [], "service": [], "client": []})[kind].append(name)
    for kinds in out.values():
        for names in kinds.values():
            names.sort()
    return out


def delta_metrics(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    """``after`` with its counters replaced by their increase since ``before`` (gauges and percentiles
    are taken from ``after``).  A counter that went down (its scope was dropped and recreated) counts
    from zero."""
    out: dict[str, float] = {}
    for key, value in after.items():
        if _COUNTER_TAIL.search(key) and isinstance(value, int | float):
            prev = before.get(key, 0)
            prev = prev if isinstance(prev, int | float) else 0
            out[key] = value - prev if value >= prev else value
        else:
            out[key] = value
    return out


def delta_unbound(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, Any]:
    """The ``/admin/unbound.json`` table of ``after`` minus the counts already in ``before``."""
    out: dict[str, Any] = {}
    for router, doc in after.items():
        prev = {r["name"]: r for r in (before.get(router) or {}).get("names", [])}
        rows = []
        for row in doc.get("names", []):
            old = prev.get(row["name"])
            if old is None or old.get("count", 0) > row.get("count", 0):
                rows.append(row)
                continue
            causes = {c: n - old.get("causes", {}).get(c, 0) for c, n in row.get("causes", {}).items()}
            causes = {c: n for c, n in causes.items() if n > 0}
            count = row.get("count", 0) - old.get("count", 0)
            if count > 0:
                rows.append({**row, "count": count, "causes": causes})
        out[router] = {**doc, "names": rows}
    return out


def format_age(seconds: float) -> str:
    """``4m12s``, ``2h05m``, ``37s``, ``3d04h``."""
    s = int(max(seconds, 0))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _pct(share: float) -> str:
    p = share * 100
    if p >= 10 or p == 0:
        return f"{p:.0f}%"
    return f"{p:.1f}%" if p >= 0.1 else f"{p:.2f}%"


def _names(doc: Mapping[str, Any]) -> Mapping[str, Any]:
    """A namer state document's ``names`` (name -> entry); empty when it has none or a namer in error
    wrote something else there."""
    names = doc.get("names")
    return names if isinstance(names, Mapping) else {}


# -- the analysis -----------------------------------------------------------------------------------


class _Analysis:
    def __init__(self, snap: Snapshot, thresholds: Thresholds, router: str | None) -> None:
        self.snap = snap
        self.t = thresholds
        self.only = router
        self.m = snap.metrics
        self.findings: list[Finding] = []
        self.routers: dict[str, dict[str, Any]] = {}

    def num(self, key: str) -> int:
        v = self.m.get(key, 0)
        # (JSON from Python may carry NaN or Infinity: not a count)
        return int(v) if isinstance(v, int | float) and math.isfinite(v) else 0

    def severity(self, share: float) -> str:
        if share >= self.t.critical_share:
            return "critical"
        if share >= self.t.error_share:
            return "error"
        return "warning"

    # -- scopes -------------------------------------------------------------------------------------

    @staticmethod
    def prefix(router: str, kind: str, name: str) -> str:
        return f"rt/{router}/{kind}/{name.lstrip('/')}"

    def causes(self, prefix: str) -> dict[Cause, int]:
        out = {}
        for c in Cause:
            n = self.num(f"{prefix}/failures/{c.value}")
            if n > 0:
                out[c] = n
        return out

    def statuses(self, prefix: str, lo: int, hi: int) -> dict[int, int]:
        out = {}
        pat = prefix + "/status/"
        for key, value in self.m.items():
            if key.startswith(pat):
                code = key[len(pat) :]
                if code.isdigit() and lo <= int(code) <= hi and value:
                    out[int(code)] = int(value)
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))

    # -- endpoints ----------------------------------------------------------------------------------

    @staticmethod
    def _accrual_state(ep: Mapping[str, Any]) -> str | None:
        acc = ep.get("accrual")
        if isinstance(acc, Mapping):
            acc = acc.get("state")
        return acc if isinstance(acc, str) else None

    def endpoints_involved(self, client: str | None, cause: Cause) -> list[str]:
        """Endpoints of ``client`` that show the failure, most implicated first."""
        if client is None:
            return []
        entry = self.snap.client_state.get(client)
        if not isinstance(entry, Mapping):
            return []
        eps: Mapping[str, Any] = entry.get("endpoints") or {}
        if not eps:
            return list(entry.get("addresses") or [])[:1]
        scored: list[tuple[float, str]] = []
        for key, ep in eps.items():
            if not isinstance(ep, Mapping):
                continue
            score = 0.0
            pool = ep.get("pool") or {}
            if cause.value.startswith("connect/") or cause is Cause.TLS:
                score += float(pool.get("connect_failures", 0) or 0) * 10
            bal = ep.get("balancer")
            fails = ep.get("failures", (bal or {}).get("failures") if isinstance(bal, Mapping) else None)
            if isinstance(fails, int | float):
                score += float(fails)
            if self._accrual_state(ep) in _OUT_OF_ROTATION:
                score += 5
            if ep.get("status") == "busy":
                score += 1
            last = ep.get("lastFailure")
            if isinstance(last, Mapping) and last.get("cause") == cause.value:
                score += 1  # (its last failure was this one: failure accrual off, or not yet tripped)
            if score > 0:
                scored.append((score, key))
        if scored:
            return [k for _, k in sorted(scored, key=lambda x: (-x[0], x[1]))]
        return list(eps)[:1] if len(eps) == 1 else []

    def out_of_resources(self, client: str | None) -> Mapping[str, Any] | None:
        """The last connect ``client`` could not make for want of hostproxy's own resources
        (``/client_state.json`` → ``outOfResources``)."""
        entry = self.snap.client_state.get(client) if client is not None else None
        last = entry.get("outOfResources") if isinstance(entry, Mapping) else None
        return last if isinstance(last, Mapping) else None

    def downstream_proxy_errors(
        self, client: str | None, service: str
    ) -> tuple[int, int, Mapping[str, Any]] | None:
        """``(5XX answers with l5d-err, 5XX answers, the last with l5d-err)`` that ``client`` had
        for ``service`` (``/client_state.json`` → ``downstreamProxyErrors``), None when none."""
        entry = self.snap.client_state.get(client) if client is not None else None
        docs = entry.get("downstreamProxyErrors") if isinstance(entry, Mapping) else None
        doc = docs.get(service) if isinstance(docs, Mapping) else None
        if not isinstance(doc, Mapping):
            return None
        count, answered, last = doc.get("proxied"), doc.get("answered"), doc.get("last")
        if not isinstance(count, int) or count <= 0 or not isinstance(last, Mapping):
            return None
        return count, max(answered if isinstance(answered, int) else count, count), last

    def unreached(self, client: str | None) -> tuple[list[tuple[str, int]], list[tuple[str, int]], bool]:
        """Endpoints of ``client`` that no connection ever reached although hostproxy tried (no
        ``pool.connects``; connects failed, abandoned when their request gave up, or still under
        way), with those attempts; the other endpoints with connects abandoned, most first; and
        whether any endpoint of the client ever got a connection."""
        entry = self.snap.client_state.get(client) if client is not None else None
        eps = entry.get("endpoints") if isinstance(entry, Mapping) else None
        never: list[tuple[str, int]] = []
        abandoned: list[tuple[str, int]] = []
        reached = False
        for key, ep in eps.items() if isinstance(eps, Mapping) else ():
            pool = ep.get("pool") if isinstance(ep, Mapping) else None
            if not isinstance(pool, Mapping):
                continue

            def count(name: str, pool: Mapping[str, Any] = pool) -> int:
                v = pool.get(name)
                return v if isinstance(v, int) else 0

            tried = count("connects_abandoned") + count("connect_failures")
            reached = reached or count("connects") > 0
            if count("connects") == 0 and tried + count("opening") > 0:
                never.append((key, tried))
            elif count("connects_abandoned"):
                abandoned.append((key, count("connects_abandoned")))
        never.sort(key=lambda kv: (-kv[1], kv[0]))
        abandoned.sort(key=lambda kv: (-kv[1], kv[0]))
        return never, abandoned, reached

    def endpoint_failure(self, client: str | None, endpoint: str | None, cause: Cause) -> str | None:
        """The message of ``endpoint``'s last failure in ``client`` (``/client_state.json`` →
        ``endpoints.<ep>.lastFailure``) when it had ``cause``."""
        entry = self.snap.client_state.get(client) if client is not None else None
        eps = entry.get("endpoints") if isinstance(entry, Mapping) else None
        ep = eps.get(endpoint) if isinstance(eps, Mapping) and endpoint is not None else None
        last = ep.get("lastFailure") if isinstance(ep, Mapping) else None
        if not isinstance(last, Mapping) or last.get("cause") != cause.value or not last.get("message"):
            return None
        return str(last["message"])

    def tls_error(self, client: str | None) -> Mapping[str, Any] | None:
        """The last TLS failure ``client`` recorded (``/client_state.json`` → ``tls.lastError``)."""
        entry = self.snap.client_state.get(client) if client is not None else None
        tls = entry.get("tls") if isinstance(entry, Mapping) else None
        last = tls.get("lastError") if isinstance(tls, Mapping) else None
        return last if isinstance(last, Mapping) else None

    def client_for(self, router: str, service: str, cause: Cause) -> str | None:
        """The bound name through which ``service`` failed with ``cause``."""
        bound = list(self.snap.bindings.get(router, {}).get(service, []))
        candidates = bound or list(self.snap_clients(router))
        counted: dict[str, int] = {}
        for cid in candidates:
            n = self.num(f"{self.prefix(router, 'client', cid)}/failures/{cause.value}")
            if n > 0:
                counted[cid] = n
        if not counted:
            return bound[0] if len(bound) == 1 else None
        if not bound and len(counted) > 1:
            # Without the service's bindings, several clients that failed so are the failures of
            # several services: the one whose count is the service's own, or none rather than the
            # wrong client (and its endpoint) for this service.
            own = self.num(f"{self.prefix(router, 'service', service)}/failures/{cause.value}")
            same = [cid for cid, n in counted.items() if n == own]
            return same[0] if len(same) == 1 else None
        return max(counted, key=lambda cid: counted[cid])

    def snap_clients(self, router: str) -> list[str]:
        return self._scopes.get(router, {}).get("client", [])

    # -- namers -------------------------------------------------------------------------------------

    def namer_entry(self, client: str | None) -> tuple[str, str, str, Mapping[str, Any]] | None:
        """``(prefix, kind, name, entry)`` of the namer name behind a client id, if the namer shows it."""
        if client is None:
            return None
        for prefix, doc in self.snap.namer_state.items():
            if not isinstance(doc, Mapping):
                continue
            names = _names(doc)
            kind = str(doc.get("kind") or prefix.strip("/"))
            if prefix == "/$/inet":
                if client.startswith("/$/inet/"):
                    host = client[len("/$/inet/") :].split("/")[0]
                    if host in names:
                        return prefix, "inet", host, names[host]
                continue
            base = "/#" + prefix + "/"
            if client.startswith(base):
                rest = client[len(base) :]
                # the longest watched name that the client id starts with (names may nest)
                for name in sorted(names, key=len, reverse=True):
                    if rest == name or rest.startswith(name + "/"):
                        return prefix, kind, name, names[name]
        return None

    def failing_namer(self, service: str = "") -> tuple[str, int, str, str] | None:
        """``(prefix, names failing, one of them, its error)`` of the namer with the most names in
        state ``failed`` (``/admin/namer_state.json``), None when none fails. The one quoted is
        ``service``'s own (``/svc/web`` → ``web``) when it fails."""
        labels = set(service.split("/"))
        best: tuple[str, int, str, str] | None = None
        for prefix, doc in sorted(self.snap.namer_state.items()):
            if not isinstance(doc, Mapping):
                continue
            failed = [
                (name, str(e.get("lastError")))
                for name, e in sorted(_names(doc).items())
                if isinstance(e, Mapping) and e.get("state") == "failed" and e.get("lastError")
            ]
            if failed and (best is None or len(failed) > best[1]):
                own = [f for f in failed if f[0] in labels or service.endswith("/" + f[0])]
                example = (own or failed)[0]
                best = (str(prefix), len(failed), example[0], example[1])
        return best

    def services_of(self, router: str, client: str) -> list[str]:
        return sorted(s for s, cids in self.snap.bindings.get(router, {}).items() if client in cids)

    # -- findings -----------------------------------------------------------------------------------

    def add(self, *, rated: int | None = None, **kw: Any) -> None:
        """Add a finding; ``rated``: the failures its severity went by, when not its own (a namer
        failing many names, one failure each, is rated by all of them)."""
        finding = Finding(**kw)
        if (
            0 < (finding.failures if rated is None else rated) < self.t.min_failures_to_rate
            and finding.failures < finding.requests
            and _RANK.get(finding.severity, 9) < _RANK["warning"]
        ):
            # One failure in three requests is "33%" but rates nothing (the next request may make it
            # 25% or 50%): a warning that says how few. (Every request failing is rated however few.)
            finding.severity = "warning"
            finding.verdict += f" ({finding.failures} of {finding.requests} {finding.unit}: too few to rate)"
        self.findings.append(finding)

    def run(self) -> Report:
        self._scopes = scopes(self.m)
        labels = sorted(
            set(self._scopes) | {r for r, v in self.snap.unbound.items() if isinstance(v, Mapping)}
        )
        for router in labels:
            if self.only is not None and router != self.only:
                continue
            self.router(router)
        self.servers()
        self.namers()
        self.process()
        self.overload()
        self.certificates()
        self.trace_export()
        self.findings.sort(
            key=lambda f: (
                _RANK.get(f.severity, 9),
                -f.share,
                -f.failures,
                f.router or "",
                f.service or "",
                f.cause,
            )
        )
        return Report(self.findings, self.routers)

    def router(self, router: str) -> None:
        sc = self._scopes.get(router, {"server": [], "service": [], "client": []})
        total = sum(self.num(f"{self.prefix(router, 'server', s)}/requests") for s in sc["server"])
        failed = sum(self.num(f"{self.prefix(router, 'server', s)}/failures") for s in sc["server"])
        self.routers[router] = {
            "requests": total,
            "failures": failed,
            "services": len([s for s in sc["service"] if s != UNBOUND]),
        }
        seen: dict[Cause, int] = {}
        for svc in sc["service"]:
            prefix = self.prefix(router, "service", svc)
            causes = self.causes(prefix)
            for c, n in causes.items():
                seen[c] = seen.get(c, 0) + n
            if svc == UNBOUND:
                continue
            requests = self.num(f"{prefix}/requests")
            for cause, n in causes.items():
                share = n / requests if requests else 1.0
                if share < self.t.ignore_share:
                    continue
                self.service_finding(router, svc, prefix, cause, n, requests)
            self.abandoned(router, svc, prefix, requests)
        self.unbound(router, total, seen)
        # Failures a server counted but no service did: they never got as far as a name.
        residual: dict[Cause, int] = {}
        for srv in sc["server"]:
            for c, n in self.causes(self.prefix(router, "server", srv)).items():
                residual[c] = residual.get(c, 0) + n
        for c, n in residual.items():
            left = n - seen.get(c, 0)
            if left > 0:
                self.router_finding(router, c, left, total)
        self.accrual(router)

    def abandoned(self, router: str, svc: str, prefix: str, requests: int) -> None:
        """Requests of ``svc`` whose callers gave up before the answer (``abandoned``: counted as 499
        and neither as a success nor as a failure). Callers that stop waiting
        are no failure of the proxy's, but an upstream that answers slower than they wait (or never,
        with no timeout set) is the application's."""
        n = self.num(f"{prefix}/abandoned")
        if not requests or n <= 0:
            return
        share = n / requests
        if n <= 0 or share < self.t.ignore_share:
            return
        cause = Cause.UPSTREAM_5XX  # (the application's, as a slow answer is)
        client = self.client_for(router, svc, cause)
        p99 = self.m.get(f"{prefix}/request_latency_ms.p99")
        waited = f", after {p99:g} ms at p99" if p99 else ""
        self.add(
            severity=self.severity(share),
            router=router,
            service=svc,
            client=client,
            endpoint=None,
            cause=ABANDONED,
            share=share,
            verdict=(
                f"{_pct(share)} of requests to {svc} were abandoned by their callers before an answer came"
                f"{waited} (499: the caller closed its connection or reset its stream): the upstream "
                "answers slower than its callers wait, or not at all"
            ),
            next_step=(
                f"check the app's latency and whether it hangs ({client or 'its client'} in "
                "/client_state.json: pending requests per endpoint); set totalTimeoutMs on the service so "
                "that hostproxy answers with l5d-err before the callers give up"
            ),
            failures=n,
            requests=requests,
            blame="application",
        )

    def service_finding(
        self, router: str, svc: str, prefix: str, cause: Cause, n: int, requests: int
    ) -> None:
        share = n / requests if requests else 1.0
        blame: str | None = None
        client = self.client_for(router, svc, cause)
        involved = self.endpoints_involved(client, cause)
        endpoint = involved[0] if involved else None
        others = f" (and {len(involved) - 1} more)" if len(involved) > 1 else ""
        ep = endpoint or "its endpoints"
        p99 = self.m.get(f"{prefix}/request_latency_ms.p99")
        rate = f"{_pct(share)} of requests"
        node_proxy = _daemonset(client)
        if node_proxy is not None and cause in (Cause.CONNECT_REFUSED, Cause.CONNECT_TIMEOUT):
            # Through io.l5d.k8s.daemonset the endpoint is the proxy on the destination's node (its
            # incoming router), not the application: "is the app listening" would be the wrong lead.
            ns, port, name = node_proxy
            how = (
                "refuses connections"
                if cause is Cause.CONNECT_REFUSED
                else "does not answer connects in time"
            )
            verdict = (
                f"the proxy on the destination's node at {ep}{others} (daemonset {ns}/{name}, port "
                f"{port}) {how}: requests go to each node's hostproxy or Linkerd, not to the app — is "
                "that node's proxy pod running and listening?"
            )
            nxt = (
                f"`kubectl -n {ns} get pods -o wide` for the {name} pod on the node of {endpoint or 'that IP'} "
                f"(its logs, restarts; its '{port}' port); the app behind it was not reached"
            )
        elif cause is Cause.CONNECT_REFUSED:
            verdict = f"upstream {ep}{others} refuses connections (app down or wrong port?)"
            nxt = (
                f"is the app listening on {endpoint}? (`ss -ltn` on its host); does the address "
                f"{client or 'the namer'} publishes have the right port?"
            )
        elif cause is Cause.CONNECT_TIMEOUT:
            verdict = (
                f"connecting to {ep}{others} times out (host down, packets dropped by a firewall, "
                "or the app stopped accepting)"
            )
            nxt = (
                f"`nc -vz -w2 {_host_port(endpoint) if endpoint else 'HOST PORT'}` from this host; "
                "check firewalls/security groups and whether the app's accept queue is full"
            )
        elif cause is Cause.CONNECT_UNREACHABLE:
            verdict = f"no network route to {ep}{others} (host or network unreachable)"
            nxt = "check routes and that the address the namer publishes is current (`ip route get`)"
        elif cause is Cause.TLS:
            last = self.tls_error(client)
            why = f": {last.get('reason')} — {last.get('message')}" if last else ""
            verdict = f"TLS handshake with {ep}{others} fails for {rate}{why}"
            nxt = (
                "check the certificate the upstream presents (`openssl s_client -connect "
                f"{(last or {}).get('endpoint') or endpoint or 'HOST:PORT'} -showcerts`) against the client's "
                "tls.commonName and trustCerts, and its clientAuth certificate against the server's caCertPath; "
                "/admin/tls.json lists the certificates in use"
            )
        elif cause is Cause.UPSTREAM_RESET:
            # One cause for many things (a reset, a malformed or oversized response, an h2 handshake
            # refused): the endpoint's last failure says which.
            said = self.endpoint_failure(client, endpoint, cause)
            if said is not None and "before the HTTP/2 handshake" in said:
                verdict = (
                    f"upstream {ep}{others} closes connections before the HTTP/2 handshake completes, "
                    f"failing {rate}: it does not speak HTTP/2 in cleartext (prior knowledge) — an "
                    "HTTP/1.1 app behind an h2 router?"
                )
                nxt = (
                    f"check that {endpoint or 'the app'} serves HTTP/2 (`curl --http2-prior-knowledge "
                    f"http://{endpoint or 'HOST:PORT'}/`), or route this service through an http router"
                )
            elif said is not None and said.startswith(BODY_CUT_OFF):
                # The head went on to the caller: the app died or gave up while writing the body.
                verdict = (
                    f"upstream {ep}{others} cut off the body of {_pct(share)} of responses after their "
                    f"head was passed on (callers got a truncated answer); last error: {_clip(said)}"
                )
                nxt = (
                    f"check the app's logs/restarts on {endpoint or 'its hosts'} at these times: it died "
                    "or gave up while writing the response body"
                )
            else:
                verdict = f"upstream {ep}{others} closes or resets connections mid-request for {rate} " + (
                    f"(or answers what hostproxy refuses); last error: {_clip(said)}"
                    if said is not None
                    else "(app crashing, or its keep-alive timeout shorter than hostproxy's pool idle time?)"
                )
                nxt = (
                    f"check the app's logs/restarts on {endpoint or 'its hosts'} at these times; "
                    "compare its keep-alive timeout with client.hostConnectionPool.idleTimeMs"
                )
        elif cause in (Cause.UPSTREAM_5XX, Cause.UPSTREAM_GRPC):
            if cause is Cause.UPSTREAM_5XX:
                codes = self.statuses(prefix, 500, 599)
                shown = ", ".join(f"{c}×{k}" for c, k in list(codes.items())[:3])
                what, counted = "5xx", f"{' (' + shown + ')' if shown else ''}"
            else:
                what, counted = "gRPC errors", ""
            proxied = self.downstream_proxy_errors(client, svc)
            if proxied is not None and 2 * proxied[0] >= proxied[1]:
                # Most of these failed answers carry l5d-err: a proxy downstream (a peer hostproxy's
                # incoming router, a Linkerd) made them; the application behind it may never have
                # been reached.
                count, answered, last = proxied
                peer = str(last.get("endpoint") or endpoint or "its endpoints")
                some = "" if count >= answered else f" ({count} of {answered} failed answers)"
                verdict = (
                    f"a proxy downstream at {peer} answers {what} for {rate}{counted} itself, with "
                    f"l5d-err{some}: {_clip(last.get('message'))} — not the application's answer"
                )
                nxt = (
                    f"diagnose that proxy: `hostproxy wtf` on the host of {peer} (its l5d-err names what it "
                    "could not reach); hostproxy here only passes its answer on"
                )
                blame = DOWNSTREAM_PROXY
            else:
                also = ""
                if proxied is not None:
                    also = (
                        f"; {proxied[0]} of {proxied[1]} failed answers came from a proxy downstream "
                        f"({proxied[2].get('endpoint')}: {_clip(proxied[2].get('message'))})"
                    )
                if cause is Cause.UPSTREAM_5XX:
                    verdict = f"application returns 5xx for {rate}{counted} — hostproxy is passing them through{also}"
                    nxt = f"look at the application's logs on {ep}{others}; the proxy is not the cause"
                else:
                    verdict = (
                        f"application answers gRPC errors (a grpc-status the service's responseClassifier "
                        f"calls a failure) for {rate} — hostproxy is passing them through{also}"
                    )
                    nxt = (
                        f"look at the application's logs on {ep}{others} (grpc-message says "
                        "why); the proxy is not the cause"
                    )
        elif cause in (Cause.TIMEOUT_REQUEST, Cause.TIMEOUT_ATTEMPT):
            which = "totalTimeoutMs" if cause is Cause.TIMEOUT_REQUEST else "requestAttemptTimeoutMs"
            lat = f", p99 latency {p99:g} ms" if isinstance(p99, int | float) else ""
            # A deadline that ran out while hostproxy was still connecting is not the application's
            # slowness: the request never reached it.
            never, stuck, reached = self.unreached(client)
            if never and not reached:
                endpoint = never[0][0]
                tried = sum(n for _, n in never)
                verdict = (
                    f"{rate} exceed {which} while hostproxy is still connecting to {endpoint}"
                    f"{f' (and {len(never) - 1} more)' if len(never) > 1 else ''}: no connection to it was "
                    f"ever established ({tried} connect(s) failed or abandoned at the deadline), so the "
                    "application was never reached — host down, SYNs dropped by a firewall, or the app's "
                    "accept queue full"
                )
                nxt = (
                    f"`nc -vz -w2 {_host_port(endpoint)}` from this host; set client.connectTimeoutMs "
                    f"below {which} so that such endpoints fail fast (connect/timeout) and requests are "
                    "requeued to the others"
                )
                blame = "network/upstream"
            else:
                also = ""
                if never:
                    also = (
                        f"; but no connection to {never[0][0]}"
                        f"{f' (and {len(never) - 1} more)' if len(never) > 1 else ''} was ever established "
                        "(host down, or SYNs dropped?): requests sent there never reached the application"
                    )
                elif stuck:
                    also = (
                        f"; {sum(n for _, n in stuck)} connect(s) to {stuck[0][0]} were still under way "
                        "when the time ran out (the network or the app's accept queue may be part of it)"
                    )
                verdict = f"the application is too slow: {rate} exceed {which}{lat}{also}"
                nxt = (
                    f"check the app's latency and load on {endpoint or 'its endpoints'}; raise {which} "
                    "only if the app is known to be this slow"
                )
        elif cause is Cause.NAMING_NEG:
            verdict = f"no route: {svc} is negative in the dtab of router {router}"
            nxt = f"explain it: /delegator?router={router} with path {svc}; check the namer's entry exists"
        elif (
            cause is Cause.NAMING_FAILED
            and (ent := self.namer_entry(client)) is not None
            and ent[3].get("state") == "bound"
            and not ent[3].get("lastError")
        ):
            # The namer serves the name: what failed these bindings was not (or no longer) its answer.
            verdict = (
                f"naming {svc} failed for {rate}, but namer {ent[1]} answers for {ent[2]} (bound, no "
                "error): a binding that ran past bindingTimeoutMs, a per-request override (l5d-dtab, "
                "l5d-ctx-dtab) that needs more than 1,000 lookups, or a namer failure since mended"
            )
            nxt = (
                "the l5d-err of those 502s says which; "
                f"/delegator?router={router} with path {svc} explains the binding"
            )
        elif cause in (Cause.NAMING_FAILED, Cause.NAMING_STALE):
            ent = self.namer_entry(client)
            err = f" ({ent[3].get('lastError')})" if ent and ent[3].get("lastError") else ""
            where = f"namer {ent[1]} name {ent[2]}" if ent else "the namer"
            verdict = f"naming {svc} fails for {rate}: {where}{err}"
            nxt = (
                f"/namer_state{ent[0]}.json shows the namer's view"
                if ent
                else f"explain it: /delegator?router={router} with path {svc}"
            )
        elif cause is Cause.OVERLOAD and (short := self.out_of_resources(client)) is not None:
            # hostproxy's own resources ran out opening connections (file descriptors).
            verdict = (
                f"hostproxy could not open connections for {client} ({rate} of {svc}): {short['message']}"
            )
            nxt = (
                "raise hostproxy's descriptor limit (LimitNOFILE= in its systemd unit, ulimit -n), and "
                "check …/connections and pool_size in /admin/metrics.json for a leak"
            )
        elif (
            cause is Cause.OVERLOAD
            and client is not None
            and self.num(f"{self.prefix(router, 'client', client)}/failures/{cause.value}")
        ):
            # Counted by the client: its endpoints' connection pools refused them (maxWaiters).
            verdict = (
                f"the connection pools of {client} were full for {rate} of {svc}: "
                "hostConnectionPool.maxSize connections in use and maxWaiters requests already waiting"
            )
            nxt = (
                f"check the app's latency on {ep} (slow answers hold connections longer), then "
                "client.hostConnectionPool.maxSize and maxWaiters; the client's pool_waiters metric shows the queue"
            )
        elif cause is Cause.OVERLOAD:
            verdict = f"hostproxy shed {rate} for {svc} (maxConcurrentRequests reached)"
            nxt = "check the app's latency (slow upstreams pile up requests) and servers[].maxConcurrentRequests"
        elif cause is Cause.IDENTIFICATION:
            verdict = f"{rate} for {svc} were refused (address override or dtab header not allowed)"
            nxt = "check l5d-dtab / address overrides the callers send; see l5d-err on the 400 responses"
        else:
            verdict = f"hostproxy failed {rate} for {svc} with an internal error — a hostproxy bug"
            nxt = "look for 'Traceback' in hostproxy's log (stderr / journalctl) and report it"
        spent = self.num(f"{prefix}/retries/budget_exhausted")
        if spent > 0 and cause in _RETRIED:
            # Retries would have hidden some of these: say why they did not.
            verdict += (
                f"; {spent} retr{'y was' if spent == 1 else 'ies were'} not made: the service's retry "
                "budget was spent (service.retries.budget)"
            )
        self.add(
            severity=self.severity(share),
            router=router,
            service=svc,
            client=client,
            endpoint=endpoint,
            cause=cause.value,
            share=share,
            verdict=verdict,
            next_step=nxt,
            failures=n,
            requests=requests,
            blame=blame,
        )

    def unbound(self, router: str, total: int, seen: dict[Cause, int]) -> None:
        doc = self.snap.unbound.get(router)
        rows = doc.get("names") if isinstance(doc, Mapping) else None
        if rows is None:
            # No table (older daemon): one finding for the aggregate.
            prefix = self.prefix(router, "service", UNBOUND)
            for cause, n in self.causes(prefix).items():
                share = n / total if total else 1.0
                self.add(
                    severity=self.severity(share),
                    router=router,
                    service=None,
                    client=None,
                    endpoint=None,
                    cause=cause.value,
                    share=share,
                    verdict=f"{n} requests for names that do not bind ({cause.value})",
                    next_step="see /admin/unbound.json for the names",
                    failures=n,
                    requests=total,
                )
            return

        def row_causes(row: Mapping[str, Any]) -> dict[Cause, int]:
            causes = row.get("causes") or {}
            if not causes and row.get("count"):
                causes = {Cause.NAMING_NEG.value: row["count"]}
            out: dict[Cause, int] = {}
            for cause_text, n in causes.items() if isinstance(causes, Mapping) else ():
                if not isinstance(n, int | float) or not n > 0:
                    continue
                try:
                    cause = Cause(cause_text)
                except ValueError:
                    cause = Cause.PROXY_INTERNAL
                out[cause] = out.get(cause, 0) + int(n)
            return out

        rows = [row for row in rows if isinstance(row, Mapping)]
        # A namer failing many names (every Host failing because DNS does not answer) is one problem
        # as large as all of them: severity and --ignore-below go by naming/failed's total share.
        # (Names negative in the dtab are each their own typo or missing service.)
        by_cause: dict[Cause, int] = {}
        for row in rows:
            for cause, n in row_causes(row).items():
                by_cause[cause] = by_cause.get(cause, 0) + n
        for row in rows:
            name = str(row.get("name"))
            for cause, n in row_causes(row).items():
                if self.num(f"{self.prefix(router, 'service', name)}/failures/{cause.value}") > 0:
                    # A service that bound before (its file deleted since, say) counts these failures
                    # under its own name too: its finding is already made, with its own share.
                    continue
                share = n / total if total else 1.0
                cause_share = (
                    (by_cause[cause] / total if total else 1.0) if cause is Cause.NAMING_FAILED else share
                )
                if cause_share < self.t.ignore_share:
                    continue
                if cause is Cause.NAMING_NEG:
                    verdict = (
                        f"no route: {name} is negative in the dtab of router {router} "
                        "(a typo in the Host, or a service that is not deployed?)"
                    )
                    nxt = (
                        f"explain it: /delegator?router={router} with path {name}; if it is a typo, "
                        "fix the caller"
                    )
                elif cause is Cause.NAMING_FAILED:
                    said = row.get("last_error")
                    failing = self.failing_namer(name)
                    if isinstance(said, str) and "binding timeout" in said and failing is not None:
                        # The binding gave up waiting: what the namer says is the cause.
                        prefix, count, example, error = failing
                        verdict = (
                            f"naming {name} failed in router {router}: {said}; namer {prefix} fails "
                            f"{count} name(s), e.g. {example}: {_clip(error)}"
                        )
                        nxt = (
                            f"fix what the namer's error names; /namer_state{prefix}.json shows the "
                            "namer's view of each name"
                        )
                    elif isinstance(said, str) and said:
                        verdict = f"naming {name} failed in router {router}: {said}"
                        namer = re.match(r"/#/([^/:\s]+)", said)
                        nxt = "fix what the error names" + (
                            f"; /namer_state/{namer.group(1)}.json shows the namer's view of each name"
                            if namer
                            else f"; explain it: /delegator?router={router} with path {name}"
                        )
                    else:
                        verdict = (
                            f"naming {name} failed or timed out in router {router} (namer backend down?)"
                        )
                        nxt = "check /namer_state/<prefix>.json of the namers the dtab uses"
                elif cause is Cause.IDENTIFICATION:
                    verdict = f"requests for {name} were refused: address override not allowed on this server"
                    nxt = "the caller sends an l5d-dtab or a Host that names a raw address; it is refused by design"
                else:
                    verdict = f"requests for {name} failed in router {router} ({cause.value})"
                    nxt = f"explain it: /delegator?router={router} with path {name}"
                self.add(
                    rated=by_cause[cause] if cause is Cause.NAMING_FAILED else None,
                    severity=self.severity(cause_share),
                    router=router,
                    service=name,
                    client=None,
                    endpoint=None,
                    cause=cause.value,
                    share=share,
                    verdict=verdict,
                    next_step=nxt,
                    failures=int(n),
                    requests=total,
                )

    def router_finding(self, router: str, cause: Cause, n: int, total: int) -> None:
        share = n / total if total else 1.0
        if share < self.t.ignore_share:
            return
        rate = f"{_pct(share)} of requests"
        if cause is Cause.IDENTIFICATION:
            verdict = (
                f"router {router} could not name {rate} (no Host header, or one its identifier "
                "cannot turn into a name)"
            )
            nxt = "see l5d-err on the 400 responses; check the callers' Host headers and routers[].identifier"
        elif cause is Cause.OVERLOAD:
            verdict = f"router {router} shed {rate}: maxConcurrentRequests reached"
            nxt = "check upstream latency (slow apps pile up requests) and servers[].maxConcurrentRequests"
        elif cause is Cause.PROXY_INTERNAL:
            verdict = f"hostproxy failed {rate} in router {router} with an internal error — a hostproxy bug"
            nxt = "look for 'Traceback' in hostproxy's log (stderr / journalctl) and report it"
        else:
            verdict = f"router {router} failed {rate} before naming them ({cause.value})"
            nxt = "see l5d-err on the failing responses"
        self.add(
            severity=self.severity(share),
            router=router,
            service=None,
            client=None,
            endpoint=None,
            cause=cause.value,
            share=share,
            verdict=verdict,
            next_step=nxt,
            failures=n,
            requests=total,
        )

    def accrual(self, router: str) -> None:
        """Endpoints marked dead while their service still works: a warning naming the endpoint."""
        reported = {(f.router, f.client, f.endpoint) for f in self.findings}
        for cid in self.snap_clients(router):
            entry = self.snap.client_state.get(cid)
            if not isinstance(entry, Mapping):
                continue
            eps = entry.get("endpoints") or {}
            # (an endpoint failure accrual probes back is as out as a dead one until a probe succeeds)
            dead = [
                k
                for k, ep in eps.items()
                if isinstance(ep, Mapping) and self._accrual_state(ep) in _OUT_OF_ROTATION
            ]
            if not dead:
                continue
            # The client's failures may be none at all: connect failures requeued on the other
            # endpoints never failed a request, yet took this one out.
            causes = self.causes(self.prefix(router, "client", cid))
            for key in dead:
                if (router, cid, key) in reported:
                    continue
                ep = eps[key]
                last = ep.get("lastFailure")
                last = last if isinstance(last, Mapping) else {}
                try:
                    cause = Cause(str(last.get("cause")))
                except ValueError:
                    pool = ep.get("pool")
                    connect_failures = pool.get("connect_failures") if isinstance(pool, Mapping) else None
                    if causes:
                        cause = max(causes, key=lambda c: causes[c])
                    elif isinstance(connect_failures, int) and connect_failures > 0:
                        cause = Cause.CONNECT_REFUSED
                    else:
                        cause = Cause.UPSTREAM_5XX
                requests = self.num(f"{self.prefix(router, 'client', cid)}/requests")
                failed = causes.get(cause, 0)
                share = failed / requests if requests else 0.0
                svcs = self.services_of(router, cid)
                said = f" (last: {_clip(last['message'])})" if last.get("message") else ""
                if self._accrual_state(ep) != "dead":
                    said += "; it is being probed back, no probe has succeeded yet"
                alive = len(eps) - len(dead)
                self.add(
                    severity="warning",
                    router=router,
                    service=svcs[0] if svcs else None,
                    client=cid,
                    endpoint=key,
                    cause=cause.value,
                    share=share,
                    verdict=(
                        f"endpoint {key} of {cid} is marked dead by failure accrual after "
                        f"{cause.value} failures{said}; "
                        + (
                            f"requests go to the other {alive} endpoint(s)"
                            if alive
                            # (the balancer falls back to the dead ones when none is left)
                            else f"so is every endpoint of {cid}, and requests still go to them"
                        )
                    ),
                    next_step=f"check the app on {key}; hostproxy probes it back automatically",
                    failures=failed,
                    requests=requests,
                )

    def servers(self) -> None:
        """Clients a server turned away before any request was routed: failed TLS handshakes,
        connections over ``maxConnections``, malformed requests, requests refused at
        ``maxConcurrentRequests`` or shed (none of them is in the request counters)."""
        for key in sorted(self.m):
            match = _SERVER_TURNED_AWAY.match(key)
            if match is None:
                continue
            router, server, what = match.groups()
            if self.only is not None and router != self.only:
                continue
            n = self.num(key)
            if n <= 0:
                continue
            prefix = self.prefix(router, "server", server)
            address = _server_address(server)
            where = f"server {address} of router {router}"
            if what == "tls/handshake_failures":
                ok = self.num(f"{prefix}/tls/handshakes")
                reasons = {
                    k.rsplit("/", 1)[1]: self.num(k)
                    for k in self.m
                    if k.startswith(f"{key}/") and self.num(k) > 0
                }
                top = sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))
                listed = ", ".join(f"{reason} {count}" for reason, count in top) or "reason unknown"
                verdict = f"{n} TLS handshake(s) from clients failed on {where} ({listed}); {ok} succeeded"
                nxt = _TLS_NEXT_STEP.get(
                    top[0][0] if top else "",
                    "check the clients' TLS settings against servers[].tls; `openssl s_client -connect "
                    f"{address}` shows the handshake",
                )
                cause, blame, total, unit = Cause.TLS.value, "caller", n + ok, "TLS handshakes"
            elif what == "rejected_connections":
                total = n + self.num(f"{prefix}/connects")
                verdict = f"{where} refused {n} connection(s) at servers[].maxConnections"
                nxt = (
                    "raise servers[].maxConnections, or find the client holding many connections open "
                    "(/admin/metrics.json …/connections; `ss -tn`)"
                )
                cause, blame, unit = Cause.OVERLOAD.value, None, "connections"
            elif what == "rejected_overload":
                # Refused before routing, so in none of the request counters: the share is of what
                # the server was sent.
                total = n + self.num(f"{prefix}/requests")
                verdict = (
                    f"{where} answered {n} request(s) 503 at once: at servers[].maxConcurrentRequests, "
                    "or shedding load past the memory mark"
                )
                nxt = (
                    "check the upstreams' latency (slow answers hold requests in flight), then "
                    "servers[].maxConcurrentRequests; /overload.json shows whether memory is shedding"
                )
                cause, blame, unit = Cause.OVERLOAD.value, None, "requests"
            else:
                total = n + self.num(f"{prefix}/requests")
                timeouts = self.num(f"{prefix}/header_timeouts")
                late = f", {timeouts} of them heads not sent in time (408)" if timeouts else ""
                verdict = f"{where} answered {n} malformed request(s) with 4xx before routing{late}"
                nxt = "the callers send malformed HTTP: the responses' l5d-err says what was wrong"
                cause, blame, unit = Cause.IDENTIFICATION.value, "caller", "requests"
            share = n / total if total else 1.0
            if share < self.t.ignore_share:
                continue
            self.add(
                severity=self.severity(share),
                router=router,
                service=None,
                client=None,
                endpoint=None,
                cause=cause,
                share=share,
                verdict=verdict,
                next_step=nxt,
                failures=n,
                requests=total,
                blame=blame,
                unit=unit,
            )

    def namers(self) -> None:
        for prefix, doc in sorted(self.snap.namer_state.items()):
            if not isinstance(doc, Mapping):
                continue
            kind = str(doc.get("kind") or prefix.strip("/"))
            for name, entry in sorted(_names(doc).items()):
                if not isinstance(entry, Mapping) or entry.get("state") != "stale":
                    continue
                age = entry.get("staleAgeSecs")
                age_text = f" for {format_age(float(age))}" if isinstance(age, int | float) else ""
                err = entry.get("lastError")
                if prefix == "/$/inet":
                    client_prefix = f"/$/inet/{name}/"
                    clients = [c for c in self.snap.client_state if c.startswith(client_prefix)]
                else:
                    cid = f"/#{prefix}/{name}"
                    clients = [c for c in self.snap.client_state if c == cid or c.startswith(cid + "/")]
                client = clients[0] if clients else (None if prefix == "/$/inet" else f"/#{prefix}/{name}")
                services: list[tuple[str | None, str | None]] = []
                for router in sorted(self.snap.bindings):
                    if self.only is not None and router != self.only:
                        continue
                    for svc in self.services_of(router, client or ""):
                        services.append((router, svc))
                if not services:
                    routers = [r for r, kinds in self._scopes.items() if client in kinds.get("client", [])]
                    if self.only is not None:
                        if routers and self.only not in routers:
                            continue
                        routers = [self.only] if self.only in routers else routers
                    services = [(routers[0] if routers else None, None)]
                addrs = entry.get("addrs") or []
                for where, service in services:
                    self.add(
                        severity="warning",
                        router=where,
                        service=service,
                        client=client,
                        endpoint=None,
                        cause=Cause.NAMING_STALE.value,
                        share=0.0,
                        verdict=(
                            f"namer {kind} stale{age_text} on {name}"
                            f"{' (' + str(err) + ')' if err else ''} — serving last known "
                            f"endpoints ({len(addrs)})"
                        ),
                        next_step=(
                            f"fix the namer's backend; /namer_state{prefix}.json shows the "
                            "last error and when the name last updated"
                        ),
                    )

    def process(self) -> None:
        p = self.snap.process
        if not p:
            return
        fds, limit = p.get("open_fds"), p.get("fd_limit")
        if isinstance(fds, int) and isinstance(limit, int) and limit > 0:
            ratio = fds / limit
            if ratio >= self.t.fd_warning:
                self._overloaded(
                    "critical" if ratio >= self.t.fd_critical else "warning",
                    ratio,
                    f"hostproxy is near its file-descriptor limit ({fds}/{limit})",
                    "raise LimitNOFILE (systemd) or `ulimit -n`; if connections keep "
                    "growing, look for a leak in /admin/metrics.json (…/connections, pool_size)",
                )

    def overload(self) -> None:
        """The overload manager holding back (the ``overload/*`` gauges): memory past a mark, or file
        descriptors past theirs. Refusing connections leaves no failure in any request counter, so
        without this finding a proxy that stopped accepting would look healthy."""
        level = self.num("overload/memory_level")
        actions = {
            1: ("noKeepalive", "connections close after each response", "warning"),
            2: ("shed", "new requests get 503 overload at once", "critical"),
            3: ("stopAccept", "not accepting connections, and new requests get 503", "critical"),
        }
        if level in actions:
            mark, doing, severity = actions[level]
            self._overloaded(
                severity,
                1.0,
                f"hostproxy's memory is past the overload {mark} mark: {doing}",
                "/overload.json shows the resident memory against overload.memoryLimitBytes (or the "
                "cgroup's memory.max); raise the limit, or find what holds memory (large bodies "
                "buffered, many connections)",
            )
        if self.num("overload/fd_exhausted") > 0:
            self._overloaded(
                "critical",
                1.0,
                "hostproxy's open file descriptors are past the overload fdStopAccept mark: not "
                "accepting connections (those already open are served)",
                "/overload.json shows the open descriptors against RLIMIT_NOFILE; raise LimitNOFILE "
                "(systemd) or `ulimit -n`, or find what holds connections open",
            )

    def _overloaded(self, severity: str, share: float, verdict: str, next_step: str) -> None:
        """A finding about hostproxy's own resources (cause ``overload``): no router, service,
        client or endpoint is at fault."""
        self.add(
            severity=severity,
            router=None,
            service=None,
            client=None,
            endpoint=None,
            cause=Cause.OVERLOAD.value,
            share=share,
            verdict=verdict,
            next_step=next_step,
        )

    def certificates(self) -> None:
        certs = self.snap.tls.get("certificates") if isinstance(self.snap.tls, Mapping) else None
        for c in certs if isinstance(certs, list) else ():
            if not isinstance(c, Mapping):
                continue
            router = c.get("router") or None
            if self.only is not None and router is not None and router != self.only:
                continue
            role, path = c.get("role", "?"), c.get("path", "?")
            what = f"{role} certificate {path}"
            if c.get("error"):
                self.add(
                    severity="critical",
                    router=router,
                    service=None,
                    client=None,
                    endpoint=None,
                    cause=Cause.TLS.value,
                    share=0.0,
                    verdict=f"{what} cannot be read: {c['error']}",
                    next_step="restore the file (the certificate loaded before stays in use until then)",
                )
                continue
            days = c.get("daysLeft")
            if not isinstance(days, int) or days > self.t.cert_expiry_days:
                continue
            subject = c.get("subject") or "?"
            if days < 0:
                verdict = f"{what} ({subject}) expired on {c.get('notAfter')}"
                severity = "critical"
            else:
                verdict = f"{what} ({subject}) expires in {days} day(s), on {c.get('notAfter')}"
                severity = "critical" if days < 2 else "warning"
            self.add(
                severity=severity,
                router=router,
                service=None,
                client=None,
                endpoint=None,
                cause=Cause.TLS.value,
                share=0.0,
                verdict=verdict,
                next_step=(
                    f"renew it and replace {path} (and its key) in place: hostproxy re-reads changed "
                    "certificate files within seconds, without a restart"
                ),
            )

    def trace_export(self) -> None:
        """Spans lost by trace export in the window (``zipkin/dropped``: the Zipkin collector could not
        take them, or the queue was full): a warning about hostproxy's telemetry, not about traffic
        (requests are not affected), with the collector and its last error from ``/admin/telemetry.json``."""
        dropped = int(self.num("zipkin/dropped"))
        if dropped <= 0:
            return
        failures = int(self.num("zipkin/send_failures"))
        recorded = int(self.num("zipkin/recorded")) + dropped
        zipkins = [
            t
            for t in (self.snap.telemetry.get("telemeters") or [])
            if isinstance(t, Mapping) and t.get("kind") == "io.l5d.zipkin"
        ]
        collector = ", ".join(str(t.get("collector")) for t in zipkins) or "the Zipkin collector"
        errors = [str(t["lastError"]) for t in zipkins if t.get("lastError")]
        why = f"; last error: {errors[-1]}" if errors else ""
        if failures:
            verdict = f"trace export to {collector} lost {dropped} span(s) in {failures} failed send(s){why}"
            nxt = (
                f"is Zipkin running with its Scribe collector on ({collector}; SCRIBE_ENABLED=true, port "
                "9410)? `nc -vz` it from this host; requests are not affected, only their spans"
            )
        else:
            verdict = f"trace export dropped {dropped} span(s): its queue was full (the collector is slower than the traffic)"
            nxt = "lower the telemeter's sampleRate, or give the collector more capacity; requests are not affected"
        self.add(
            severity="warning",
            router=None,
            service=None,
            client=None,
            endpoint=None,
            cause="telemetry/zipkin",
            share=dropped / recorded if recorded else 1.0,
            verdict=verdict,
            next_step=nxt,
            failures=dropped,
            requests=recorded,
        )


def diagnose(snap: Snapshot, *, thresholds: Thresholds | None = None, router: str | None = None) -> Report:
    """The findings for ``snap``, worst first; ``router`` restricts them to one router label."""
    return _Analysis(snap, thresholds or Thresholds(), router).run()


def leaf_ids(tree: Any) -> list[str]:
    """The bound ids (client names) at the leaves of a ``/delegator.json`` tree, in order."""
    out: list[str] = []

    def walk(node: Any) -> None:
        if not isinstance(node, Mapping):
            return
        if node.get("type") == "leaf":
            bound = node.get("bound") or {}
            ident = bound.get("id") if isinstance(bound, Mapping) else None
            if isinstance(ident, str) and ident not in out:
                out.append(ident)
            return
        for key in ("delegate", "tree"):
            walk(node.get(key))
        for child in node.get("alt") or ():
            walk(child)
        for branch in node.get("union") or ():
            if isinstance(branch, Mapping):
                walk(branch.get("tree"))

    walk(tree)
    return out


def failing_services(metrics: Mapping[str, float], router: str | None = None) -> list[tuple[str, str]]:
    """``(router, service)`` pairs with at least one failure (the ones worth delegating)."""
    out = []
    for r, kinds in scopes(metrics).items():
        if router is not None and r != router:
            continue
        for svc in kinds["service"]:
            if svc != UNBOUND and metrics.get(f"rt/{r}/service/{svc.lstrip('/')}/failures", 0):
                out.append((r, svc))
    return out
