"""Building ``ssl.SSLContext`` objects from the ``tls`` sections of the config.

Theory of operation
-------------------
:func:`build_server_context` and :func:`build_client_context` read the files a config section names
and return a :class:`Loaded`: the context, the :class:`~hostproxy.tls.inspect.CertInfo` records of
the certificates it uses, and the file signature it was built from. They are synchronous and touch
only the named files, so a reload can call them again and keep the old result when they raise.
Every failure is a :class:`TlsConfigError` whose message names the config key, the file, what is
wrong and what to do.

Defaults are safe: TLS 1.2 and 1.3 only (``protocols`` may narrow them; TLSv1/TLSv1.1 are refused),
the ``ssl`` module's default cipher list (``ciphers`` may replace it, in OpenSSL or IANA spelling; it
applies to TLS 1.2, TLS 1.3 suites are all strong and enabled: a list of TLS 1.3 suites alone means TLS
1.3 only), no compression, no renegotiation. Keys may be
PKCS#8 (what Linkerd requires) or the older PKCS#1/SEC1 PEM forms. ``intermediateCertsPath`` is
appended to the certificate so the peer receives the whole chain.

A :class:`FileSignature` is ``(path, device, inode, size, mtime_ns)`` per file, read with ``stat`` (which
follows symlinks, so a Kubernetes secret's ``..data`` symlink swap counts as a change).
"""

from __future__ import annotations

import os
import ssl
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass

from hostproxy.config import model as m
from hostproxy.regularfile import NotRegularFile, read_regular
from hostproxy.tls.inspect import CertInfo, read_certificates

__all__ = [
    "FileSignature",
    "check_not_expired",
    "Loaded",
    "TlsConfigError",
    "alpn_for_protocol",
    "build_client_context",
    "build_server_context",
    "file_signature",
]


class TlsConfigError(ValueError):
    """A ``tls`` section whose files or settings cannot be used; the message says which and why."""


FileSignature = tuple[tuple[str, int, int, int, int], ...]

_VERSIONS = {
    "TLSv1.2": ssl.TLSVersion.TLSv1_2,
    "TLSv1.3": ssl.TLSVersion.TLSv1_3,
}
_INSECURE = {"TLSv1", "TLSv1.0", "TLSv1.1", "SSLv3", "SSLv2"}

# The IANA (Java, Linkerd docs) spellings of common TLS 1.2 suites and their OpenSSL names.
_IANA_CIPHERS = {
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_DHE_RSA_WITH_AES_128_GCM_SHA256": "DHE-RSA-AES128-GCM-SHA256",
    "TLS_DHE_RSA_WITH_AES_256_GCM_SHA384": "DHE-RSA-AES256-GCM-SHA384",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
}

#: The TLS 1.3 suites (the same name in IANA and OpenSSL spelling); OpenSSL enables them all.
_TLS13_SUITES = {
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
    "TLS_AES_128_CCM_SHA256",
    "TLS_AES_128_CCM_8_SHA256",
}


def alpn_for_protocol(router_protocol: str) -> tuple[str, ...]:
    """The ALPN protocol a router of ``protocol: h2|http`` offers and accepts."""
    return ("h2",) if router_protocol == "h2" else ("http/1.1",)


@dataclass(frozen=True)
class Loaded:
    """One generation of a TLS configuration: the context and what it was built from."""

    context: ssl.SSLContext
    certificates: tuple[CertInfo, ...]
    signature: FileSignature


def file_signature(paths: Sequence[str]) -> FileSignature:
    """The stat signature of ``paths``; a missing file signs as zeros (so its return is a change)."""
    out = []
    for p in paths:
        try:
            st = os.stat(p)
            out.append((p, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
        except OSError:
            out.append((p, 0, 0, 0, 0))
    return tuple(out)


def check_not_expired(old: Loaded, new: Loaded, role: str, key: str) -> None:
    """Refuse (:class:`TlsConfigError`) a reload whose ``role`` certificate (``server``/``client``)
    has already expired while the one in use has not: replacing a valid certificate by an expired
    one (an old backup restored, a renewal that wrote the previous file) would break every handshake."""
    import datetime as dt

    now = dt.datetime.now(dt.UTC)
    current = next((c for c in old.certificates if c.role == role and c.error is None), None)
    fresh = next((c for c in new.certificates if c.role == role and c.error is None), None)
    if current is None or fresh is None or current.not_after <= now or fresh.not_after > now:
        return
    when = "%Y-%m-%dT%H:%M:%SZ"
    raise TlsConfigError(
        f"{key}: {fresh.path} ({fresh.subject}) expired on {fresh.not_after.strftime(when)}; the "
        f"certificate in use ({current.subject}, valid until {current.not_after.strftime(when)}) is "
        "kept: install the renewed certificate"
    )


def _read(path: str, key: str) -> bytes:
    try:
        return read_regular(path)
    except NotRegularFile as exc:
        raise TlsConfigError(f"{key}: {path} is {exc.strerror}; point {key} at a PEM file") from None
    except OSError as exc:
        raise TlsConfigError(
            f"{key}: cannot read {path}: {exc.strerror or exc}; check the path and that hostproxy may read it"
        ) from None


def _certs(pem: bytes, path: str, key: str, role: str, router: str, leaf_only: bool) -> list[CertInfo]:
    try:
        return read_certificates(pem, path=path, role=role, router=router, leaf_only=leaf_only)
    except ValueError:
        raise TlsConfigError(
            f"{key}: {path} holds no PEM certificate (expected '-----BEGIN CERTIFICATE-----' blocks)"
        ) from None


def _versions(ctx: ssl.SSLContext, protocols: Sequence[str] | None, key: str) -> None:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    if not protocols:
        return
    chosen = []
    for p in protocols:
        if p in _INSECURE:
            raise TlsConfigError(f"{key}: {p} is insecure and not supported; use TLSv1.2 and/or TLSv1.3")
        if p not in _VERSIONS:
            raise TlsConfigError(f"{key}: unknown TLS version {p!r}; use TLSv1.2 and/or TLSv1.3")
        chosen.append(_VERSIONS[p])
    ctx.minimum_version = min(chosen)
    ctx.maximum_version = max(chosen)


def _ciphers(ctx: ssl.SSLContext, ciphers: Sequence[str] | None, key: str) -> None:
    if not ciphers:
        return
    names = [_IANA_CIPHERS.get(c, c) for c in ciphers if c not in _TLS13_SUITES]
    if not names:
        # Only TLS 1.3 suites: those are not chosen through OpenSSL's cipher list (all are strong and
        # enabled), and the list allows no TLS 1.2 suite, so (as in Java) only TLS 1.3 can be used.
        if ctx.maximum_version < ssl.TLSVersion.TLSv1_3:
            raise TlsConfigError(
                f"{key}: {list(ciphers)} are TLS 1.3 suites only, but protocols allows no TLS 1.3; "
                "add TLSv1.3 to protocols, or name TLS 1.2 suites such as ECDHE-RSA-AES128-GCM-SHA256"
            )
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        return
    try:
        ctx.set_ciphers(":".join(names))
    except ssl.SSLError:
        raise TlsConfigError(
            f"{key}: none of the ciphers {list(ciphers)} is known to OpenSSL; use OpenSSL names such as "
            "ECDHE-RSA-AES128-GCM-SHA256 (see `openssl ciphers -v`)"
        ) from None


def _check_key(pem: bytes, path: str, key: str) -> None:
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    try:
        serialization.load_pem_private_key(pem, password=None)
    except TypeError:
        raise TlsConfigError(
            f"{key}: {path} is an encrypted private key; hostproxy needs it unencrypted (PKCS#8 PEM: "
            "`openssl pkcs8 -topk8 -nocrypt -in KEY -out KEY.pk8`), readable only by hostproxy"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise TlsConfigError(
            f"{key}: {path} is not a PEM private key (expected '-----BEGIN PRIVATE KEY-----', PKCS#8; "
            "PKCS#1 'RSA PRIVATE KEY' and SEC1 'EC PRIVATE KEY' are accepted too)"
        ) from None


def _load_chain(
    ctx: ssl.SSLContext, cert_path: str, key_path: str, intermediates: str | None, key: str
) -> bytes:
    """Load certificate (+ intermediates) and key into ``ctx``; returns the certificate PEM."""
    cert_pem = _read(cert_path, f"{key}.certPath")
    key_pem = _read(key_path, f"{key}.keyPath")
    _certs(cert_pem, cert_path, f"{key}.certPath", "", "", True)  # a clear error for a bad certificate
    _check_key(key_pem, key_path, f"{key}.keyPath")
    chain = cert_pem
    if intermediates:
        chain = cert_pem.rstrip(b"\n") + b"\n" + _read(intermediates, f"{key}.intermediateCertsPath")
    # load_cert_chain only reads files: stage the chain and key in a private directory.
    with tempfile.TemporaryDirectory(prefix="hostproxy-tls-") as tmp:
        c = os.path.join(tmp, "chain.pem")
        k = os.path.join(tmp, "key.pem")
        fd = os.open(k, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key_pem)
        with open(c, "wb") as f:
            f.write(chain)
        try:
            ctx.load_cert_chain(c, k)
        except ssl.SSLError as exc:
            reason = exc.reason or str(exc)
            if reason == "KEY_VALUES_MISMATCH":
                raise TlsConfigError(
                    f"{key}: the key {key_path} does not belong to the certificate {cert_path}; "
                    "install the key the certificate was issued for (renew both together)"
                ) from None
            if "PEM" in reason or "NO_START_LINE" in reason or "DECODER" in reason:
                raise TlsConfigError(
                    f"{key}: cannot load {cert_path} / {key_path} ({reason}); the certificate must be a "
                    "PEM certificate and the key an unencrypted PEM private key (PKCS#8: "
                    "'-----BEGIN PRIVATE KEY-----')"
                ) from None
            raise TlsConfigError(f"{key}: cannot load {cert_path} / {key_path}: {reason}") from None
    return cert_pem


def build_server_context(
    cfg: m.ServerTls, *, alpn: Sequence[str], router: str = "", key: str = "tls"
) -> Loaded:
    """The server context for ``cfg`` offering ``alpn``; ``key`` is the config path for messages."""
    paths = [cfg.cert_path, cfg.key_path]
    if cfg.intermediate_certs_path:
        paths.append(cfg.intermediate_certs_path)
    if cfg.ca_cert_path:
        paths.append(cfg.ca_cert_path)
    signature = file_signature(paths)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
    _versions(ctx, cfg.protocols, f"{key}.protocols")
    _ciphers(ctx, cfg.ciphers, f"{key}.ciphers")
    cert_pem = _load_chain(ctx, cfg.cert_path, cfg.key_path, cfg.intermediate_certs_path, key)
    infos = _certs(cert_pem, cfg.cert_path, f"{key}.certPath", "server", router, True)
    if cfg.intermediate_certs_path:
        pem = _read(cfg.intermediate_certs_path, f"{key}.intermediateCertsPath")
        infos += _certs(pem, cfg.intermediate_certs_path, f"{key}.intermediateCertsPath", "ca", router, False)
    if cfg.ca_cert_path:
        pem = _read(cfg.ca_cert_path, f"{key}.caCertPath")
        infos += _certs(pem, cfg.ca_cert_path, f"{key}.caCertPath", "ca", router, False)
        ctx.load_verify_locations(cadata=pem.decode("ascii", "replace"))
        ctx.verify_mode = ssl.CERT_REQUIRED if cfg.require_client_auth else ssl.CERT_OPTIONAL
    elif cfg.require_client_auth:
        raise TlsConfigError(
            f"{key}.requireClientAuth: true needs {key}.caCertPath, the CAs client certificates must "
            "chain to; set caCertPath or turn requireClientAuth off"
        )
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    # Session tickets are only useful for resumption; sent after every handshake they would make an
    # idle client connection look readable. Clients of this server rarely resume: send none.
    ctx.num_tickets = 0
    return Loaded(ctx, tuple(infos), signature)


def build_client_context(
    cfg: m.ClientTls, *, alpn: Sequence[str] = (), router: str = "", key: str = "client.tls"
) -> Loaded:
    """The client context for ``cfg`` offering ``alpn``; hostname checking follows ``commonName``."""
    paths = [*cfg.trust_certs]
    if cfg.trust_certs_bundle:
        paths.append(cfg.trust_certs_bundle)
    if cfg.client_auth is not None:
        paths += [cfg.client_auth.cert_path, cfg.client_auth.key_path]
        if cfg.client_auth.intermediate_certs_path:
            paths.append(cfg.client_auth.intermediate_certs_path)
    signature = file_signature(paths)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    # Python sets OP_IGNORE_UNEXPECTED_EOF, which makes an upstream's TCP close without close_notify
    # read as a clean end: cleared, so that a body delimited by the connection's end can be told
    # from one cut short (``TlsStream.eof_without_close_notify``).
    ctx.options &= ~ssl.OP_IGNORE_UNEXPECTED_EOF
    _versions(ctx, cfg.protocols, f"{key}.protocols")
    infos: list[CertInfo] = []
    if cfg.disable_validation:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        if not cfg.common_name:
            raise TlsConfigError(
                f"{key}.commonName is required unless disableValidation is true: it is the name the "
                "server certificate must carry"
            )
        trust = [*cfg.trust_certs] + ([cfg.trust_certs_bundle] if cfg.trust_certs_bundle else [])
        if trust:
            for path in trust:
                which = "trustCertsBundle" if path == cfg.trust_certs_bundle else "trustCerts"
                pem = _read(path, f"{key}.{which}")
                infos += _certs(pem, path, f"{key}.{which}", "ca", router, False)
                ctx.load_verify_locations(cadata=pem.decode("ascii", "replace"))
        else:
            ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if cfg.client_auth is not None:
        ca = cfg.client_auth
        cert_pem = _load_chain(
            ctx, ca.cert_path, ca.key_path, ca.intermediate_certs_path, f"{key}.clientAuth"
        )
        infos = _certs(cert_pem, ca.cert_path, f"{key}.clientAuth.certPath", "client", router, True) + infos
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return Loaded(ctx, tuple(infos), signature)
