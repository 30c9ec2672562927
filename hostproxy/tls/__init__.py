"""TLS for hostproxy: server listeners, upstream connections, certificate reload and inspection.

* :class:`ServerTls` + :class:`TlsListener` — accept TLS on a server (``servers[].tls``);
* :class:`ClientTls` (:meth:`ClientTls.connect`) — speak TLS to endpoints (``client.tls``), failures
  translated into :class:`TlsError` (cause ``tls``);
* :func:`watch_certificates` — re-read certificate files when they change;
* :func:`tls_json`, :func:`expiring`, :func:`config_certificates` — inspection;
* :func:`check_tls_prefixes` — the static-client-prefix mistake, for ``hostproxy check``.
"""

from hostproxy.tls.check import check_tls_prefixes
from hostproxy.tls.client import CLIENT_REASONS, ClientTls, ClientTlsCache, TlsError
from hostproxy.tls.context import (
    TlsConfigError,
    alpn_for_protocol,
    build_client_context,
    build_server_context,
)
from hostproxy.tls.inspect import CertInfo, config_certificates, expiring, read_certificates, tls_json
from hostproxy.tls.reload import reload_all, watch_certificates
from hostproxy.tls.server import ServerTls, TlsListener
from hostproxy.tls.stream import REASONS, TlsBroken, TlsStream, peer_certificate, tls_error_of

__all__ = [
    "CLIENT_REASONS",
    "REASONS",
    "CertInfo",
    "ClientTls",
    "ClientTlsCache",
    "ServerTls",
    "TlsBroken",
    "TlsConfigError",
    "TlsError",
    "TlsListener",
    "TlsStream",
    "alpn_for_protocol",
    "build_client_context",
    "build_server_context",
    "check_tls_prefixes",
    "config_certificates",
    "expiring",
    "peer_certificate",
    "read_certificates",
    "reload_all",
    "tls_error_of",
    "tls_json",
    "watch_certificates",
]
