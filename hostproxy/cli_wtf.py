"""``hostproxy wtf``: whose fault is it — the proxy, the naming, the network or the application?

Theory of operation
-------------------
``wtf`` reads a running daemon's admin server (``--admin``, default ``http://127.0.0.1:9990``):
``/admin/metrics.json``, ``/client_state.json``, ``/admin/namer_state.json``,
``/admin/unbound.json``, ``/admin/process.json``, ``/admin/routers.json``, ``/admin/tls.json``
(certificates expiring within 14 days are warnings) and ``/admin/telemetry.json`` (spans trace export
lost are a warning); for each service it
asks ``/delegator.json`` (with the router's dtab) which clients the name binds to.  The pure
:func:`hostproxy.diagnose.diagnose` turns those documents into findings, worst first; this module
only fetches and prints.  Endpoints an older daemon lacks are read as empty.

The window: hostproxy's counters are cumulative since the daemon started and its latency
percentiles cover the last minute; it keeps no history.  So by default ``wtf`` reports everything
that failed since start.  ``--interval 30s`` samples twice, that far apart, and reports only what
failed in between — "what is failing right now".

Exit status: 0 when there is no finding, 1 when there is at least one (or the admin server cannot
be reached), 2 for a usage error (including ``--router`` naming no router).

``--json`` prints exactly one document on stdout::

    {"healthy": bool,
     "window": {"kind": "since_start" | "interval", "seconds": float},
     "findings": [{"severity": "critical" | "error" | "warning",
                   "level": "connection" | "application" | "proxy",
                   "fault": "network/upstream" | "application" | "naming" | "caller" | "hostproxy"
                            | "downstream proxy",
                   "router": str | null, "service": str | null, "client": str | null,
                   "endpoint": "host:port" | null, "cause": <hostproxy.causes.Cause value>,
                   "share": float (0..1), "failures": int, "requests": int,
                   "verdict": str, "next_step": str}, ...],
     "routers": {label: {"requests": int, "failures": int, "services": int}},
     "error": str (only when the admin server could not be read, or --router names no router),
     "unreadable": [str, ...] (only when an optional document answered an error; diagnosed without it)}

Only ``/admin/metrics.json`` is required; every other document that answers an error (a namer in
error failing ``/admin/namer_state.json``) is read as missing and named under ``unreadable``.
``--router`` naming no router of the daemon is a usage error (exit 2), not "healthy".  Bindings are
asked for the failing services first: a failing service past ``MAX_DELEGATIONS`` would otherwise be
blamed on whichever client of the router counted the most failures of its cause.

One finding per (router, service, cause); healthy services are absent.  ``service`` is the
service name (``/svc/web``), also for names that never bound (``/svc/typo``); ``client`` is the
bound name; ``share`` is the fraction of the service's requests (of the router's, for unbound
names and router-level findings) that failed with this cause.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any

from hostproxy.diagnose import (
    Report,
    Snapshot,
    Thresholds,
    delta_metrics,
    delta_unbound,
    diagnose,
    failing_services,
    format_age,
    leaf_ids,
)

__all__ = [
    "AdminClient",
    "AdminUnreachable",
    "add_parser",
    "collect",
    "main",
    "parse_duration",
    "render_text",
]

DEFAULT_ADMIN = "http://127.0.0.1:9990"
#: Most services per router whose bindings are asked for (one /delegator.json request each).
MAX_DELEGATIONS = 64

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")


def parse_duration(text: str) -> float:
    """Seconds in ``500ms``, ``30s``, ``5m``, ``1h`` or a bare number of seconds."""
    m = _DURATION.match(text)
    if m is None:
        raise ValueError(f"invalid duration {text!r}: use a number with ms, s, m or h, e.g. 30s or 5m")
    value, unit = float(m.group(1)), m.group(2) or "s"
    return value * {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[unit]


def share_arg(text: str) -> float:
    """``--ignore-below``: a share of requests, 0 to 1 (a percentage would silence every finding)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(
            f"{text} is not a share of requests from 0 to 1: write 0.05 for 5%, 0.001 for 0.1%"
        )
    return value


def timeout_arg(text: str) -> float:
    """``--timeout``: seconds, more than 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0.0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"{text}: the timeout must be a number of seconds above 0")
    return value


class AdminUnreachable(Exception):
    """The admin server could not be read (not running, wrong address, or an error answer)."""


class UnknownRouter(Exception):
    """``--router`` names no router of the daemon."""

    def __init__(self, label: str, known: list[str]) -> None:
        super().__init__(f"--router {label}: no such router; the routers are: {', '.join(known) or '(none)'}")


class _ErrorAnswer(AdminUnreachable):
    """The admin server answered, with an error or not with JSON (one document is unreadable)."""


def admin_tls_context(cafile: str | None, certfile: str | None, keyfile: str | None) -> Any:
    """The TLS context for an admin server with ``admin.tls``: its certificate checked against
    ``cafile`` (the system's CAs without it), and ``certfile``/``keyfile`` presented when it asks for
    a client certificate (``requireClientAuth``). Raises :class:`AdminUnreachable` naming a file that
    cannot be used."""
    import ssl

    try:
        ctx = ssl.create_default_context(cafile=cafile)
    except (OSError, ssl.SSLError) as e:
        raise AdminUnreachable(f"--cacert {cafile}: cannot be read as PEM CA certificates ({e})") from None
    if certfile or keyfile:
        if not certfile:
            raise AdminUnreachable("--key needs --cert (the client certificate it belongs to)")
        try:
            ctx.load_cert_chain(certfile, keyfile)
        except (OSError, ssl.SSLError) as e:
            raise AdminUnreachable(
                f"--cert {certfile} / --key {keyfile or certfile}: cannot be used as a client certificate ({e})"
            ) from None
    return ctx


def add_tls_arguments(p: argparse.ArgumentParser) -> None:
    """``--cacert``, ``--cert``, ``--key``: reading an admin server that has ``admin.tls``."""
    p.add_argument("--cacert", metavar="FILE", help="PEM CAs to check an https:// admin server's certificate")
    p.add_argument("--cert", metavar="FILE", help="PEM client certificate, for admin.tls.requireClientAuth")
    p.add_argument("--key", metavar="FILE", help="PEM private key of --cert (when not in the same file)")


def admin_client(args: argparse.Namespace) -> AdminClient:
    return AdminClient(
        args.admin, timeout=args.timeout, cafile=args.cacert, certfile=args.cert, keyfile=args.key
    )


def _tls_hint(reason: object, base: str) -> str:
    """What to do when reading an ``https://`` admin URL failed in TLS: the server speaks plaintext (it
    has no ``admin.tls``), or its certificate is not trusted; "" for any other failure."""
    import ssl

    if not base.startswith("https://") or not isinstance(reason, ssl.SSLError):
        return ""
    if isinstance(reason, ssl.SSLCertVerificationError):
        return "the admin server's certificate is not trusted: give the CA that signed it with --cacert"
    if reason.reason in ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG"):
        return (
            "the admin server at this address answered in plaintext (its config has no admin.tls): "
            "give --admin an http:// URL, without --cacert, --cert and --key"
        )
    return ""


class AdminClient:
    """Blocking JSON reads from an admin server (a CLI tool; the daemon never uses this)."""

    def __init__(
        self,
        base: str,
        timeout: float = 5.0,
        *,
        cafile: str | None = None,
        certfile: str | None = None,
        keyfile: str | None = None,
    ) -> None:
        if "://" not in base:
            base = "http://" + base
        self.base = base.rstrip("/")
        self.timeout = timeout
        # The admin server is read directly: an http_proxy/HTTP_PROXY in the operator's environment
        # would send these requests to that proxy (which cannot reach 127.0.0.1:9990 and answers its
        # own error), and the report would say hostproxy is not running.
        handlers: list[Any] = [urllib.request.ProxyHandler({})]
        if cafile or certfile or keyfile:
            if not self.base.startswith("https://"):
                raise AdminUnreachable(
                    f"--cacert, --cert and --key are for an admin server with admin.tls; give its https:// URL "
                    f"with --admin (not {self.base})"
                )
            handlers.append(urllib.request.HTTPSHandler(context=admin_tls_context(cafile, certfile, keyfile)))
        self._opener = urllib.request.build_opener(*handlers)

    def _open(self, req: urllib.request.Request, path: str, *, answered_only: bool = False) -> Any:
        error = _ErrorAnswer if answered_only else AdminUnreachable
        try:
            with self._opener.open(req, timeout=self.timeout) as resp:
                doc = json.loads(resp.read().decode("utf-8"))
        except urllib.error.HTTPError as e:
            body = e.read().decode("utf-8", "replace").strip()
            if e.code == 404 and "admin.security" in body:
                # Served by this daemon, but turned off in its config: not "missing", and a
                # diagnosis without it must say so.
                raise error(
                    f"{self.base}{path} is turned off by the daemon's admin.security "
                    "(diagnosticsEnabled: false, pathBlacklist); allow it with admin.security.pathWhitelist"
                ) from None
            routed = e.headers.get("l5d-err") if e.headers is not None else None
            if routed is not None:
                # A router answered (its errors carry l5d-err; the admin server's do not): --admin
                # names a router's port. Always fatal, even for an optional document.
                said = urllib.parse.unquote_plus(routed).splitlines()[0][:200] if routed else ""
                named = re.search(r"^service name: (\S+)$", body, re.MULTILINE)
                counted = (
                    f"; this request is counted as a failure of that router (service {named.group(1)})"
                    if named
                    else ""
                )
                raise AdminUnreachable(
                    f"{self.base}{path} was answered by a hostproxy router, not its admin server (a "
                    f"{e.code} with l5d-err: {said}): point --admin at the admin server (admin.ip/admin.port "
                    f"in the config; 9990 by default){counted}"
                ) from None
            if e.code == 404:
                return None
            raise error(f"{self.base}{path} answered {e.code}: {body[:200]}") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            if isinstance(reason, TimeoutError):
                # It is there but slow (a large document, a busy daemon): for an optional document,
                # the diagnosis goes on without it.
                raise error(
                    f"{self.base}{path} did not answer within {self.timeout:g} s (--timeout); is the daemon "
                    "overloaded? Raise --timeout to wait longer"
                ) from None
            tls_hint = _tls_hint(reason, self.base)
            if tls_hint:
                raise AdminUnreachable(f"cannot read {self.base}{path}: {reason}; {tls_hint}") from None
            raise AdminUnreachable(
                f"cannot read {self.base}{path}: {reason}; is hostproxy running, and is its admin server "
                "at this address (admin.ip/admin.port in the config)? Use --admin URL to point elsewhere"
            ) from None
        except ValueError as e:
            raise error(
                f"{self.base}{path} did not answer JSON ({e}): is this a hostproxy admin server "
                "(admin.port in the config, not a router's port)?"
            ) from None
        if not isinstance(doc, dict):
            # Every admin document hostproxy serves is a JSON object: something else answers here.
            raise error(
                f"{self.base}{path} answered a JSON {type(doc).__name__}, not an object: is this a "
                "hostproxy admin server (admin.port in the config, not a router's port)?"
            )
        return doc

    def get(self, path: str) -> Any:
        """The JSON document at ``path``; None when the daemon has no such endpoint (404)."""
        return self._open(urllib.request.Request(self.base + path), path)

    def get_optional(self, path: str, unreadable: list[str]) -> Any:
        """``get(path)``, but an error answer (a 500 from a namer in error, say) is noted in
        ``unreadable`` and read as missing: the diagnosis goes on with the other documents. An
        admin server that cannot be reached at all still raises."""
        try:
            return self._open(urllib.request.Request(self.base + path), path, answered_only=True)
        except _ErrorAnswer as e:
            unreadable.append(str(e))
            return None

    def post(self, path: str, doc: Any) -> Any:
        data = json.dumps(doc).encode("utf-8")
        req = urllib.request.Request(
            self.base + path, data=data, method="POST", headers={"Content-Type": "application/json"}
        )
        try:
            return self._open(req, path)
        except AdminUnreachable:
            return None  # a delegation that fails only loses the client attribution


def _bindings(
    admin: AdminClient, routers: dict[str, Any], only: str | None, metrics: Mapping[str, Any]
) -> dict[str, dict[str, list[str]]]:
    """Per router, the clients each service binds to: the failing services first (their blame
    depends on it), then the others (for namer and failure-accrual findings), ``MAX_DELEGATIONS`` at
    most."""
    out: dict[str, dict[str, list[str]]] = {}
    failing: dict[str, list[str]] = {}
    for label, svc in failing_services(metrics, only):
        failing.setdefault(label, []).append(svc)
    for label, info in routers.items():
        if (only is not None and label != only) or not isinstance(info, Mapping):
            continue
        services = list(info.get("services") or [])
        first = [s for s in failing.get(label, []) if s in services]
        ordered = first + [s for s in services if s not in set(first)]
        for svc in ordered[:MAX_DELEGATIONS]:
            tree = admin.post(
                "/delegator.json", {"namespace": label, "dtab": info.get("dtab", ""), "path": svc}
            )
            if tree is not None:
                out.setdefault(label, {})[svc] = leaf_ids(tree)
    return out


def collect(
    admin: AdminClient,
    *,
    router: str | None = None,
    interval: float = 0.0,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[Snapshot, dict[str, Any]]:
    """Read the admin documents into a ``Snapshot`` (deltas over ``interval`` when it is > 0)."""
    before_metrics = before_unbound = None
    if interval > 0:
        before_metrics = admin.get("/admin/metrics.json") or {}
        before_unbound = admin.get_optional("/admin/unbound.json", []) or {}
        sleep(interval)
    metrics = admin.get("/admin/metrics.json")
    if metrics is None or not any(key.startswith("rt/") for key in metrics):
        # A hostproxy (or Linkerd) admin server has its routers' metrics from the start.
        what = "is missing" if metrics is None else "has no router metrics (rt/...)"
        raise AdminUnreachable(f"{admin.base}/admin/metrics.json {what}: is this a hostproxy admin server?")
    unreadable: list[str] = []

    def optional(path: str) -> Any:
        return admin.get_optional(path, unreadable)

    unbound = optional("/admin/unbound.json") or {}
    if before_metrics is not None:
        metrics = delta_metrics(before_metrics, metrics)
        unbound = delta_unbound(before_unbound or {}, unbound)
    routers = optional("/admin/routers.json") or {}
    # The routers: /admin/routers.json's, else (turned off, an older daemon) those metrics name.
    labels = set(routers) or {
        key.split("/")[1] for key in metrics if key.startswith("rt/") and key.count("/") > 1
    }
    if router is not None and router not in labels:
        raise UnknownRouter(router, sorted(labels))
    snap = Snapshot(
        metrics=metrics,
        client_state=optional("/client_state.json") or {},
        namer_state=optional("/admin/namer_state.json") or {},
        unbound=unbound,
        process=optional("/admin/process.json"),
        bindings=_bindings(admin, routers, router, metrics),
        tls=optional("/admin/tls.json") or {},
        telemetry=optional("/admin/telemetry.json") or {},
    )
    window: dict[str, Any] = (
        {"kind": "interval", "seconds": interval}
        if interval > 0
        else {"kind": "since_start", "seconds": None}
    )
    if unreadable:
        window["unreadable"] = unreadable
    if snap.process and window["kind"] == "since_start":
        window["seconds"] = snap.process.get("uptime_s")
    return snap, window


def _window_text(window: dict[str, Any]) -> str:
    if window["kind"] == "interval":
        return f"over the last {format_age(window['seconds'])}"
    if window.get("seconds") is not None:
        return f"since start, {format_age(window['seconds'])} ago"
    return "since start"


def render_text(report: Report, window: dict[str, Any], admin: str) -> str:
    """The human report: a headline, then each finding worst first."""
    lines = []
    traffic = (
        ", ".join(
            f"router {r}: {v['requests']} requests, {v['failures']} failed"
            for r, v in sorted(report.routers.items())
        )
        or "no routers have seen requests"
    )
    if report.healthy:
        lines.append(f"healthy — {traffic} ({_window_text(window)}; admin {admin})")
        return "\n".join(lines) + "\n"
    n = len(report.findings)
    lines.append(f"{n} problem{'s' if n != 1 else ''} — {traffic} ({_window_text(window)}; admin {admin})")
    for f in report.findings:
        lines.append("")
        where = " ".join(x for x in (f"router {f.router}" if f.router else "", f.service or "") if x)
        share = f"{f.share * 100:.0f}% of {f.requests} {f.unit}" if f.requests else ""
        head = f"{f.severity.upper():<8} {f.cause} [fault: {f.fault}]"
        lines.append("  ".join(x for x in (head, where, share) if x))
        lines.append(f"  {f.verdict}")
        involved = " · ".join(
            x
            for x in (
                f"client {f.client}" if f.client else "",
                f"endpoint {f.endpoint}" if f.endpoint else "",
            )
            if x
        )
        if involved:
            lines.append(f"  {involved}")
        lines.append(f"  next: {f.next_step}")
    return "\n".join(lines) + "\n"


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "wtf",
        help="whose fault is it: diagnose a running hostproxy from its admin server",
        description=(
            "Read a running hostproxy's admin server and print what is failing, worst first: per service "
            "and cause, the share of requests, the client and endpoint involved, a verdict and what to "
            "check next. Counters are cumulative since the daemon started (latency percentiles cover the "
            "last minute); --interval samples twice and reports only what failed in between. "
            "Exit status: 0 healthy, 1 something is wrong, 2 usage error."
        ),
    )
    p.add_argument(
        "--admin", default=DEFAULT_ADMIN, metavar="URL", help=f"the admin server (default {DEFAULT_ADMIN})"
    )
    p.add_argument("--router", metavar="LABEL", help="only this router")
    p.add_argument(
        "--interval",
        default="0",
        metavar="DURATION",
        help="sample twice this far apart (e.g. 30s) and diagnose only the difference; "
        "default: counters since the daemon started",
    )
    p.add_argument(
        "--ignore-below",
        type=share_arg,
        default=0.0,
        metavar="SHARE",
        help="ignore causes costing less than this share of a service's requests (e.g. 0.001)",
    )
    p.add_argument("--timeout", type=timeout_arg, default=5.0, metavar="SECONDS", help="per admin request")
    add_tls_arguments(p)
    p.add_argument("--json", action="store_true", help="print one JSON document (schema: see module docs)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    try:
        interval = parse_duration(args.interval)
    except ValueError as e:
        print(f"hostproxy wtf: --interval: {e}", file=sys.stderr)
        return 2
    try:
        admin = admin_client(args)
        snap, window = collect(admin, router=args.router, interval=interval)
    except (UnknownRouter, AdminUnreachable) as e:
        if args.json:
            json.dump(
                {"healthy": False, "window": None, "findings": [], "routers": {}, "error": str(e)}, sys.stdout
            )
            sys.stdout.write("\n")
        else:
            print(f"hostproxy wtf: {e}", file=sys.stderr)
        return 2 if isinstance(e, UnknownRouter) else 1
    report = diagnose(snap, thresholds=Thresholds(ignore_share=args.ignore_below), router=args.router)
    unreadable = window.pop("unreadable", None)
    if args.json:
        doc = report.as_json()
        doc["window"] = window
        if unreadable:
            doc["unreadable"] = unreadable
        json.dump(doc, sys.stdout, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(render_text(report, window, admin.base))
        for note in unreadable or ():
            sys.stdout.write(f"\nnot read: {note} (diagnosed without it)\n")
    return 0 if report.healthy else 1
