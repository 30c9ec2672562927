"""Client-side TLS: connect to an endpoint, verify it, and say in plain words why it failed.

Theory of operation
-------------------
:class:`ClientTls` holds the contexts for one ``client.tls`` section (after ``{capture}``
substitution by ``hostproxy.config.client_params_for``): one per ALPN offer, built lazily from the
same files and rebuilt together by :meth:`ClientTls.maybe_reload` (same rules as the server side: a
broken new set of files is logged and the old contexts kept). :meth:`ClientTls.connect` opens TCP and
completes the handshake within one ``connect_timeout``, and translates every failure *once*, here,
into an ``UpstreamError``: :class:`~hostproxy.http.errors.ConnectError` with a ``connect/*`` cause
for TCP failures, :class:`TlsError` (cause ``tls``, retryable: nothing was sent) for TLS ones, each
with a :attr:`TlsError.reason` word for metrics and a message that says what was wrong and what to
do.

OpenSSL reports a rejected server certificate only as a code ("certificate has expired"), without the
certificate. To name the presented names or the expiry date, a failed verification is followed by a
*probe*: one more handshake to the same endpoint without verification, within what is left of the
connect timeout, that only reads the certificate and closes. The probe never carries a request.

An offer of ``h2`` alone (the ALPN of an h2 router) that the server does not accept is a ``tls``
failure (``protocol-mismatch``) rather than an HTTP/2 preface sent to an HTTP/1.1 server. When a
verification fails as expired (or not yet valid) but the server's own certificate is within its
validity, the message names what is out of date instead: a trusted CA of ours (with its file and
date) or an intermediate the server sent. The router's ALPN offer is built with the first context
(``alpn=``), so a file broken later never fails a connection; an offer first asked for after the
files broke is a ``tls`` error with reason ``config``.

With TLS 1.3 a server checks the client certificate after the client's handshake has completed, so a
missing or rejected client certificate shows up on the first read: the stream returned by
:meth:`connect` raises :class:`~hostproxy.tls.stream.TlsBroken` (a ``trio.BrokenResourceError``)
carrying the same kind of :class:`TlsError`; :func:`hostproxy.tls.stream.tls_error_of` extracts it.

:class:`ClientTlsCache` shares one :class:`ClientTls` per distinct configuration (clients of many
bound names usually share one), for reloads and for ``/admin/tls.json``.
"""

from __future__ import annotations

import datetime as dt
import errno
import ipaddress
import os
import ssl
from collections.abc import Iterator, Sequence
from typing import Any

import structlog
import trio

from hostproxy.config import model as m
from hostproxy.http.errors import ConnectError, out_of_resources
from hostproxy.tls.context import (
    Loaded,
    TlsConfigError,
    alpn_for_protocol,
    build_client_context,
    check_not_expired,
    file_signature,
)
from hostproxy.tls.inspect import CertInfo, cert_info
from hostproxy.tls.stream import _NO_CLIENT_CERT, _NOT_TLS, _PEER_REJECTED, _PROTOCOL, TlsStream, ssl_error_of

__all__ = ["CLIENT_REASONS", "ClientTls", "ClientTlsCache", "TlsError"]

log = structlog.get_logger("hostproxy.tls")

#: Every :attr:`TlsError.reason`.
CLIENT_REASONS = (
    "unknown-ca",
    "name-mismatch",
    "expired",
    "not-yet-valid",
    "certificate-not-for-servers",
    "verify-failed",
    "client-certificate-required",
    "client-certificate-rejected",
    "protocol-mismatch",
    "handshake-failure",
    "not-tls",
    "eof",
    "timeout",
    "config",
    "other",
)

_UNKNOWN_CA_CODES = {2, 18, 19, 20, 21}
_MISMATCH_CODES = {62, 64}  # X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH
_EXPIRED_CODE = 10
_NOT_YET_VALID_CODE = 9
_PURPOSE_CODE = 26
_UNREACHABLE = {errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL}


class TlsError(ConnectError):
    """The TLS handshake with an upstream failed (cause ``tls``); nothing was sent, so it is
    retryable. ``reason`` is one of :data:`CLIENT_REASONS`."""

    def __init__(self, message: str, *, endpoint: str, reason: str) -> None:
        super().__init__(message, endpoint=endpoint, cause="tls")
        self.reason = reason


def _endpoint(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _date(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _names(info: CertInfo | None) -> str:
    if info is None:
        return "names that could not be read"
    if info.sans:
        return ", ".join(info.sans)
    return f"only its subject {info.subject} (it has no subjectAltName)"


class ClientTls:
    """TLS for the endpoints of clients configured with ``config`` (see the module docstring)."""

    def __init__(
        self, config: m.ClientTls, *, router: str = "", key: str = "client.tls", alpn: Sequence[str] = ()
    ) -> None:
        self.config = config
        self.router = router
        self.key = key
        self._contexts: dict[tuple[str, ...], Loaded] = {}
        self._contexts[()] = build_client_context(config, router=router, key=key)
        # The offer its router makes is built now, from the same files, so that a trust file broken
        # later never fails a connection: like the base context it is only replaced by a reload.
        if alpn:
            self._contexts[tuple(alpn)] = build_client_context(config, alpn=alpn, router=router, key=key)
        self._failed_signature: Any = None
        self.generation = 1
        self.last_reload_error: str | None = None
        self._stats = {"handshakes": 0, "reloads": 0, "reload_failures": 0, "probes": 0}
        self._failures: dict[str, int] = {}

    # -- state ---------------------------------------------------------------------------------------

    def context(self, alpn: Sequence[str] = ()) -> ssl.SSLContext:
        """The context offering ``alpn`` (built on first use from the current files; raises
        :class:`TlsConfigError` when they cannot be used now)."""
        key = tuple(alpn)
        loaded = self._contexts.get(key)
        if loaded is None:
            loaded = build_client_context(self.config, alpn=key, router=self.router, key=self.key)
            self._contexts[key] = loaded
        return loaded.context

    def certificates(self) -> list[CertInfo]:
        return list(self._contexts[()].certificates)

    def statistics(self) -> dict[str, Any]:
        return {
            **self._stats,
            "generation": self.generation,
            "failures": dict(self._failures),
            "last_reload_error": self.last_reload_error,
        }

    def server_name(self, host: str) -> str | None:
        """SNI and the name verified: ``commonName``, else the host when it is a DNS name."""
        if self.config.common_name:
            return self.config.common_name
        return None if _is_ip(host) else host

    def __repr__(self) -> str:
        return (
            f"<ClientTls {self.router} commonName={self.config.common_name!r} generation={self.generation}>"
        )

    # -- reload --------------------------------------------------------------------------------------

    def maybe_reload(self) -> bool:
        """Rebuild every context if the trust or client-certificate files changed; True on a new generation."""
        base = self._contexts[()]
        sig = file_signature([p for p, *_ in base.signature])
        if sig == base.signature or sig == self._failed_signature:
            return False
        try:
            fresh = {
                alpn: build_client_context(self.config, alpn=alpn, router=self.router, key=self.key)
                for alpn in self._contexts
            }
            check_not_expired(base, fresh[()], "client", f"{self.key}.clientAuth.certPath")
        except TlsConfigError as exc:
            self._failed_signature = sig
            self._stats["reload_failures"] += 1
            self.last_reload_error = str(exc)
            log.warning(
                "tls.reload.failed",
                router=self.router,
                role="client",
                error=str(exc),
                kept_generation=self.generation,
            )
            return False
        self._contexts = fresh
        self._failed_signature = None
        self.generation += 1
        self._stats["reloads"] += 1
        self.last_reload_error = None
        log.info("tls.reload.complete", router=self.router, role="client", generation=self.generation)
        return True

    # -- connecting ----------------------------------------------------------------------------------

    async def connect(
        self, host: str, port: int, *, connect_timeout: float, alpn: Sequence[str] = ()
    ) -> TlsStream:
        """TCP + TLS handshake to ``host:port`` within ``connect_timeout`` seconds.

        Raises ``ConnectError`` (``connect/refused|unreachable|timeout``) or :class:`TlsError`."""
        endpoint = _endpoint(host, port)
        deadline = trio.current_time() + connect_timeout
        try:
            context = self.context(alpn)
        except TlsConfigError as exc:
            error = TlsError(f"TLS to {endpoint} is not possible: {exc}", endpoint=endpoint, reason="config")
            self._failures[error.reason] = self._failures.get(error.reason, 0) + 1
            raise error from None
        tcp = await _open_tcp(host, port, endpoint, deadline, connect_timeout)
        sni = self.server_name(host)
        ssl_stream = trio.SSLStream(tcp, context, server_hostname=sni, https_compatible=True)
        stream = TlsStream(ssl_stream, translate=lambda exc: self._after_handshake(exc, endpoint))
        failure: BaseException | None = None
        try:
            with trio.move_on_at(deadline) as scope:
                try:
                    await stream.do_handshake()
                except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    failure = exc
        except BaseException:
            # Cancelled from outside (a request timeout, a client gone): close the connection now
            # rather than leave it to the garbage collector.
            with trio.CancelScope(shield=True):
                await tcp.aclose()
            raise
        if failure is None and not scope.cancelled_caught:
            # An offer of h2 alone (an h2 router) is a connection that will speak HTTP/2: the server
            # must have accepted it (HTTP/2 over TLS is negotiated by ALPN, RFC 9113 3.2).
            if "h2" not in alpn or "http/1.1" in alpn or stream.alpn == "h2":
                self._stats["handshakes"] += 1
                return stream
            chosen = f"chose {stream.alpn!r}" if stream.alpn else "chose no protocol"
            error = TlsError(
                f"TLS handshake with {endpoint} failed: ALPN offered h2 and the server {chosen}; "
                f"HTTP/2 over TLS needs the server to accept h2 by ALPN: {endpoint} is probably an "
                "HTTP/1.1 server (route it through an http router) or needs h2 enabled",
                endpoint=endpoint,
                reason="protocol-mismatch",
            )
            with trio.CancelScope(shield=True):
                await stream.aclose()
            self._failures[error.reason] = self._failures.get(error.reason, 0) + 1
            raise error
        with trio.CancelScope(shield=True):
            await tcp.aclose()
        if failure is None:
            error = TlsError(
                f"TLS handshake with {endpoint} failed: no answer within connect timeout "
                f"{connect_timeout * 1000:g} ms; the endpoint may not speak TLS on this port, or it is "
                "overloaded",
                endpoint=endpoint,
                reason="timeout",
            )
        else:
            error = await self._explain(failure, host, port, endpoint, sni, deadline)
        self._failures[error.reason] = self._failures.get(error.reason, 0) + 1
        raise error from failure

    # -- explaining failures -------------------------------------------------------------------------

    def _own_cert(self) -> CertInfo | None:
        return next((c for c in self.certificates() if c.role == "client"), None)

    def _trust_text(self) -> str:
        cfg = self.config
        files = [*cfg.trust_certs] + ([cfg.trust_certs_bundle] if cfg.trust_certs_bundle else [])
        if not files:
            return "the system trust store"
        cas = sorted({c.subject for c in self.certificates() if c.role == "ca"})
        return f"trusted: {'; '.join(cas)} from {', '.join(files)}"

    def _after_handshake(self, exc: BaseException, endpoint: str) -> TlsError | None:
        err = ssl_error_of(exc)
        reason = getattr(err, "reason", None) or ""
        if reason in _NO_CLIENT_CERT or reason in _PEER_REJECTED:
            error = self._peer_alert(reason, endpoint)
            self._failures[error.reason] = self._failures.get(error.reason, 0) + 1
            return error
        return None

    def _peer_alert(self, reason: str, endpoint: str) -> TlsError:
        prefix = f"TLS handshake with {endpoint} failed"
        own = self._own_cert()
        if reason in _NO_CLIENT_CERT or (own is None and reason == "SSLV3_ALERT_BAD_CERTIFICATE"):
            if own is None:
                return TlsError(
                    f"{prefix}: the server requires a client certificate and none was sent; set "
                    f"{self.key}.clientAuth (certPath, keyPath) to a certificate issued by a CA the "
                    "server trusts (its caCertPath)",
                    endpoint=endpoint,
                    reason="client-certificate-required",
                )
            return TlsError(
                f"{prefix}: the server requires a client certificate and did not accept "
                f"{own.path} ({own.subject}); use a certificate issued by a CA in the server's caCertPath",
                endpoint=endpoint,
                reason="client-certificate-rejected",
            )
        why = {
            "TLSV1_ALERT_UNKNOWN_CA": "its issuer is not a CA the server trusts",
            "SSLV3_ALERT_CERTIFICATE_EXPIRED": "the server says it has expired",
            "SSLV3_ALERT_BAD_CERTIFICATE": "the server calls it a bad certificate",
            "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "the server could not verify it",
            "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE": "the server does not accept its type or key usage",
            "SSLV3_ALERT_CERTIFICATE_REVOKED": "the server says it is revoked",
            "TLSV1_ALERT_ACCESS_DENIED": "the server denies access to it",
            "TLSV1_ALERT_DECRYPT_ERROR": "its signature did not verify (certificate and key mismatch?)",
        }.get(reason, reason)
        if own is None:
            return TlsError(
                f"{prefix}: the server rejected the handshake ({why}); check the server's TLS settings",
                endpoint=endpoint,
                reason="client-certificate-rejected",
            )
        expiry = f", notAfter {_date(own.not_after)}" if own.error is None else ""
        return TlsError(
            f"{prefix}: the server rejected our client certificate {own.path} ({own.subject}{expiry}): "
            f"{why}; issue the client certificate from a CA in the server's caCertPath, or renew it",
            endpoint=endpoint,
            reason="client-certificate-rejected",
        )

    async def _explain(
        self, exc: BaseException, host: str, port: int, endpoint: str, sni: str | None, deadline: float
    ) -> TlsError:
        prefix = f"TLS handshake with {endpoint} failed"
        err = ssl_error_of(exc)
        if err is None or isinstance(err, ssl.SSLEOFError | ssl.SSLZeroReturnError):
            return TlsError(
                f"{prefix}: the server closed the connection during the handshake; it may not accept "
                "this TLS version or client, or not speak TLS on this port (see the server's log)",
                endpoint=endpoint,
                reason="eof",
            )
        reason = getattr(err, "reason", None) or ""
        if isinstance(err, ssl.SSLCertVerificationError):
            return await self._verify_failed(err, host, port, endpoint, sni, deadline)
        if reason in _NO_CLIENT_CERT or reason in _PEER_REJECTED:
            return self._peer_alert(reason, endpoint)
        if reason in _NOT_TLS:
            return TlsError(
                f"{prefix}: the server did not answer in TLS ({reason}); {endpoint} is probably a "
                f"plaintext port: point the client at the TLS port or remove {self.key}",
                endpoint=endpoint,
                reason="not-tls",
            )
        if reason in _PROTOCOL:
            ours = ", ".join(self.config.protocols) if self.config.protocols else "TLSv1.2, TLSv1.3"
            return TlsError(
                f"{prefix}: no TLS version in common ({reason}); this client allows {ours} "
                f"({self.key}.protocols): align it with the server's protocols",
                endpoint=endpoint,
                reason="protocol-mismatch",
            )
        if reason == "SSLV3_ALERT_HANDSHAKE_FAILURE":
            if self._own_cert() is None:
                hint = (
                    f"it may require a client certificate (none is configured: set {self.key}.clientAuth) "
                    "or share no cipher suite with this client"
                )
            else:
                hint = "it may share no cipher suite with this client, or reject our client certificate"
            return TlsError(
                f"{prefix}: the server aborted the handshake (handshake_failure alert): {hint}; "
                "check the server's ciphers and requireClientAuth",
                endpoint=endpoint,
                reason="handshake-failure",
            )
        return TlsError(f"{prefix}: {reason or err}", endpoint=endpoint, reason="other")

    async def _verify_failed(
        self,
        err: ssl.SSLCertVerificationError,
        host: str,
        port: int,
        endpoint: str,
        sni: str | None,
        deadline: float,
    ) -> TlsError:
        prefix = f"TLS handshake with {endpoint} failed"
        code = err.verify_code
        presented = await self._probe(host, port, sni, deadline)
        subject = presented.subject if presented is not None else "subject unknown"
        if code in _MISMATCH_CODES:
            expected = self.config.common_name or sni or host
            return TlsError(
                f"{prefix}: the server certificate names {_names(presented)} but {self.key}.commonName "
                f"expects {expected!r}; set commonName to one of those names (or fix the static client "
                f"prefix that supplies it), or reissue the server certificate with {expected!r} as a "
                "subjectAltName",
                endpoint=endpoint,
                reason="name-mismatch",
            )
        if code in (_EXPIRED_CODE, _NOT_YET_VALID_CODE) and presented is not None:
            chain = self._chain_validity(code, presented, endpoint, subject)
            if chain is not None:
                return chain
        if code == _EXPIRED_CODE:
            when = f"expired on {_date(presented.not_after)}" if presented is not None else "has expired"
            return TlsError(
                f"{prefix}: the server certificate ({subject}) {when}; renew it on the server (hostproxy "
                "re-reads renewed certificate files without a restart)",
                endpoint=endpoint,
                reason="expired",
            )
        if code == _NOT_YET_VALID_CODE:
            when = (
                f"is not valid before {_date(presented.not_before)}"
                if presented is not None and presented.not_before is not None
                else "is not valid yet"
            )
            return TlsError(
                f"{prefix}: the server certificate ({subject}) {when}; check the clocks of both hosts",
                endpoint=endpoint,
                reason="not-yet-valid",
            )
        if code in _UNKNOWN_CA_CODES:
            issuer = f"issued by {presented.issuer!r}" if presented is not None else "issued by an unknown CA"
            return TlsError(
                f"{prefix}: the server certificate ({subject}) is {issuer}, which is not a trusted CA "
                f"({self._trust_text()}); add that CA to {self.key}.trustCertsBundle (or trustCerts), or "
                f"check that {endpoint} is the server you meant",
                endpoint=endpoint,
                reason="unknown-ca",
            )
        if code == _PURPOSE_CODE:
            return TlsError(
                f"{prefix}: the server certificate ({subject}) is not issued for servers (extended key "
                "usage lacks serverAuth); reissue it for server use",
                endpoint=endpoint,
                reason="certificate-not-for-servers",
            )
        return TlsError(
            f"{prefix}: the server certificate ({subject}) did not verify: {err.verify_message}",
            endpoint=endpoint,
            reason="verify-failed",
        )

    def _chain_validity(self, code: int, presented: CertInfo, endpoint: str, subject: str) -> TlsError | None:
        """When the server's own certificate is within its validity, the expired (or not yet valid)
        certificate is elsewhere in the chain: a trusted CA of ours, or an intermediate the server
        sent. None when the server's certificate is itself the one out of its validity."""
        now = dt.datetime.now(dt.UTC)
        expired = code == _EXPIRED_CODE
        if expired and presented.not_after <= now:
            return None
        if not expired and (presented.not_before is None or presented.not_before > now):
            return None
        prefix = f"TLS handshake with {endpoint} failed"
        word = "expired" if expired else "not-yet-valid"
        for ca in self.certificates():
            if ca.role != "ca" or ca.error is not None:
                continue
            if expired and ca.not_after <= now:
                return TlsError(
                    f"{prefix}: the trusted CA certificate {ca.subject} in {ca.path} expired on "
                    f"{_date(ca.not_after)} (the server certificate ({subject}) is valid until "
                    f"{_date(presented.not_after)}); install the CA's renewed certificate in {ca.path}",
                    endpoint=endpoint,
                    reason=word,
                )
            if not expired and ca.not_before is not None and ca.not_before > now:
                return TlsError(
                    f"{prefix}: the trusted CA certificate {ca.subject} in {ca.path} is not valid before "
                    f"{_date(ca.not_before)}; check the clocks of both hosts",
                    endpoint=endpoint,
                    reason=word,
                )
        state = "has expired" if expired else "is not valid yet"
        return TlsError(
            f"{prefix}: the server certificate ({subject}, valid until {_date(presented.not_after)}) "
            f"chains through an intermediate CA certificate that {state}; the server must send the "
            "renewed intermediate (its intermediateCertsPath)",
            endpoint=endpoint,
            reason=word,
        )

    async def _probe(self, host: str, port: int, sni: str | None, deadline: float) -> CertInfo | None:
        """The certificate the endpoint presents, read without verifying it (None on any failure)."""
        self._stats["probes"] += 1
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        with trio.move_on_at(deadline):
            try:
                tcp = await trio.open_tcp_stream(host, port)
            except OSError:
                return None
            probe = trio.SSLStream(tcp, ctx, server_hostname=sni, https_compatible=True)
            try:
                await probe.do_handshake()
                der = probe.getpeercert(binary_form=True)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                der = None
            finally:
                with trio.CancelScope(shield=True):
                    await tcp.aclose()
            if der:
                try:
                    from cryptography import x509

                    return cert_info(x509.load_der_x509_certificate(der))
                except ValueError:
                    return None
        return None


async def _open_tcp(host: str, port: int, endpoint: str, deadline: float, timeout: float) -> Any:
    with trio.move_on_at(deadline) as scope:
        try:
            return await trio.open_tcp_stream(host, port)
        except OSError as exc:
            codes = {e.errno for e in _oserrors(exc)}
            local = out_of_resources({c for c in codes if c}, endpoint)
            if local is not None:
                raise local from exc
            cause = (
                "connect/unreachable"
                if codes & _UNREACHABLE
                else "connect/timeout"
                if errno.ETIMEDOUT in codes
                else "connect/refused"
            )
            detail = next((os.strerror(e.errno) for e in _oserrors(exc) if e.errno), str(exc))
            raise ConnectError(
                f"Unable to establish connection to {endpoint}: {detail}", endpoint=endpoint, cause=cause
            ) from exc
    assert scope.cancelled_caught
    raise ConnectError(
        f"Unable to establish connection to {endpoint}: no answer within connect timeout "
        f"{timeout * 1000:g} ms",
        endpoint=endpoint,
        cause="connect/timeout",
    )


def _oserrors(exc: BaseException) -> Iterator[OSError]:
    if isinstance(exc, BaseExceptionGroup):
        for sub in exc.exceptions:
            yield from _oserrors(sub)
    elif isinstance(exc, OSError):
        yield exc
        if exc.__cause__ is not None and exc.__cause__ is not exc:
            yield from _oserrors(exc.__cause__)


class ClientTlsCache:
    """One :class:`ClientTls` per distinct (router, ``client.tls`` config); configs are frozen
    dataclasses, so two bound names with the same substituted settings share one."""

    def __init__(self) -> None:
        self._items: dict[tuple[str, m.ClientTls], ClientTls] = {}

    def get(
        self, config: m.ClientTls, *, router: str = "", key: str = "client.tls", alpn: Sequence[str] = ()
    ) -> ClientTls:
        """The shared ClientTls for ``config`` (raises :class:`TlsConfigError` if it cannot load);
        ``key`` names the config section and ``alpn`` the router's offer (built at once) for a
        ClientTls created by this call."""
        k = (router, config)
        item = self._items.get(k)
        if item is None:
            item = ClientTls(config, router=router, key=key, alpn=alpn)
            self._items[k] = item
        return item

    def __iter__(self) -> Iterator[ClientTls]:
        return iter(list(self._items.values()))

    def __len__(self) -> int:
        return len(self._items)


def load_client_tls(
    cache: ClientTlsCache, config: m.ClientTls, *, router: str, key: str, protocol: str
) -> None:
    """Load a router's ``client.tls`` setting at start (raises :class:`TlsConfigError`): into
    ``cache`` with the router's ALPN offer, or, for a setting with a ``{capture}`` (its files depend
    on the bound name), its files only read and checked."""
    if "{" in repr(config):
        build_client_context(config, router=router, key=key)
    else:
        cache.get(config, router=router, key=key, alpn=alpn_for_protocol(protocol))
