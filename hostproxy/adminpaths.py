"""The admin server's own paths, for config validation: which paths a telemeter may not take.

Theory of operation
-------------------
The admin server answers a fixed table of paths (``hostproxy.admin.handlers``) plus two families
(``/files/<name>``, ``/namer_state/<prefix>.json``).  A telemeter that serves on the admin server
(``io.l5d.prometheus``'s ``path``) and names one of them would never be reached: the admin endpoint
answers first.  ``colliding_endpoint(path)`` says which endpoint a path belongs to, so that config
validation refuses such a telemeter with the endpoint's name.  This module imports nothing (the
config package imports neither trio nor the runtime); a test checks that ``ADMIN_PATHS`` is exactly
the handler's table.
"""

from __future__ import annotations

__all__ = ["ADMIN_PATHS", "PROMETHEUS_PATHS", "colliding_endpoint"]

#: The admin server's fixed paths, each with what it serves.
ADMIN_PATHS: dict[str, str] = {
    "/": "the dashboard",
    "/admin": "the endpoint index",
    "/admin/": "the endpoint index",
    "/admin/index.txt": "the endpoint index",
    "/help": "the endpoint index",
    "/admin/ping": "liveness",
    "/live": "liveness",
    "/ready": "readiness",
    "/admin/ready": "the readiness override",
    "/admin/metrics.json": "the metrics JSON",
    "/metrics.json": "the metrics JSON",
    "/admin/metrics": "the metrics page",
    "/admin/metrics/prometheus": "the Prometheus exposition",
    "/metrics": "the Prometheus exposition",
    "/admin/process.json": "the process figures",
    "/admin/server_info": "the server info",
    "/admin/unbound.json": "the names that did not bind",
    "/admin/namer_state.json": "every namer's state",
    "/admin/routers.json": "the routers' dtabs and services",
    "/config.json": "the running config",
    "/client_state.json": "the clients' state",
    "/bound-names.json": "the enumerating namers' names",
    "/delegator.json": "the delegation API",
    "/delegator": "the dtab playground",
    "/logging.json": "the log levels API",
    "/logging": "the log levels page",
    "/requests": "the recent requests",
    "/admin/shutdown": "the shutdown control",
    "/admin/reload": "the reload control",
    "/dtab_state.json": "the dtab files' state",
    "/overload.json": "the overload state",
    "/admin/tls.json": "the certificates in use",
    "/admin/telemetry.json": "the telemeters' state",
}

#: The paths that serve the Prometheus exposition anyway: a telemeter may name them.
PROMETHEUS_PATHS = frozenset({"/admin/metrics/prometheus", "/metrics"})


def colliding_endpoint(path: str) -> str | None:
    """``"<path> (<what it serves>)"`` for the admin endpoint that answers ``path``, or ``None``."""
    if path in ADMIN_PATHS:
        return f"{path} ({ADMIN_PATHS[path]})"
    if path.startswith("/files/"):
        return "/files/<name> (the dashboard's files)"
    if path.startswith("/namer_state/") and path.endswith(".json"):
        return "/namer_state/<prefix>.json (one namer's state)"
    return None
