"""Certificate inspection: what each certificate in use says, for ``/admin/tls.json`` and ``wtf``.

Theory of operation
-------------------
:func:`read_certificates` parses PEM bytes (``cryptography``) into :class:`CertInfo` records: the
subject, the subject alternative names (``DNS:``/``IP:``/``URI:``), the issuer and the expiry. The
live TLS objects (:class:`hostproxy.tls.ServerTls`, :class:`hostproxy.tls.ClientTls`) keep the
records of the generation they loaded, so the admin page shows what is *in use*, not what is on disk
(after a rejected reload the two differ, and the page must not pretend the new file is live).
:func:`config_certificates` reads every file a config names, for offline checks.

:func:`tls_json` renders records with ``daysLeft`` computed against an injected ``now``; :func:`expiring`
picks the ones expiring within ``days`` (expired ones included). Both are pure.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hostproxy.regularfile import read_regular

if TYPE_CHECKING:  # cryptography is loaded only when certificates are inspected
    from cryptography import x509

__all__ = [
    "CertInfo",
    "cert_info",
    "config_certificates",
    "expiring",
    "read_certificates",
    "tls_json",
]

UTC = dt.UTC


@dataclass(frozen=True)
class CertInfo:
    """One certificate: where it came from, what it names, when it expires."""

    path: str
    role: str  # server | client | ca
    router: str
    subject: str
    sans: tuple[str, ...]
    issuer: str
    not_after: dt.datetime
    not_before: dt.datetime | None = None
    error: str | None = None  # the file could not be read or parsed (the other fields are empty)

    def days_left(self, now: dt.datetime) -> int:
        """Whole days until expiry (negative once expired)."""
        return (self.not_after - now).days

    def to_json(self, now: dt.datetime) -> dict[str, Any]:
        out: dict[str, Any] = {
            "path": self.path,
            "role": self.role,
            "router": self.router,
            "subject": self.subject,
            "sans": list(self.sans),
            "issuer": self.issuer,
            "notAfter": self.not_after.isoformat().replace("+00:00", "Z") if self.error is None else None,
            "daysLeft": self.days_left(now) if self.error is None else None,
        }
        if self.error is not None:
            out["error"] = self.error
        return out


def _sans(cert: x509.Certificate) -> tuple[str, ...]:
    from cryptography import x509

    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    out: list[str] = []
    for name in ext:
        if isinstance(name, x509.DNSName):
            out.append(f"DNS:{name.value}")
        elif isinstance(name, x509.IPAddress):
            out.append(f"IP:{name.value}")
        elif isinstance(name, x509.UniformResourceIdentifier):
            out.append(f"URI:{name.value}")
        elif isinstance(name, x509.RFC822Name):
            out.append(f"email:{name.value}")
    return tuple(out)


def cert_info(cert: x509.Certificate, *, path: str = "", role: str = "", router: str = "") -> CertInfo:
    return CertInfo(
        path=path,
        role=role,
        router=router,
        subject=cert.subject.rfc4514_string(),
        sans=_sans(cert),
        issuer=cert.issuer.rfc4514_string(),
        not_after=cert.not_valid_after_utc,
        not_before=cert.not_valid_before_utc,
    )


def der_info(der: bytes, *, role: str = "", router: str = "") -> CertInfo:
    from cryptography import x509

    return cert_info(x509.load_der_x509_certificate(der), role=role, router=router)


def pem_of_der(der: bytes) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    return x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM)


def read_certificates(
    pem: bytes, *, path: str, role: str, router: str = "", leaf_only: bool = False
) -> list[CertInfo]:
    """Every certificate in ``pem`` (only the first with ``leaf_only``); ValueError if none."""
    from cryptography import x509

    certs = x509.load_pem_x509_certificates(pem)  # raises ValueError on no/garbled certificates
    if leaf_only:
        certs = certs[:1]
    return [cert_info(c, path=path, role=role, router=router) for c in certs]


def _read_file(path: str, role: str, router: str, leaf_only: bool) -> list[CertInfo]:
    try:
        data = read_regular(path)
        return read_certificates(data, path=path, role=role, router=router, leaf_only=leaf_only)
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return [
            CertInfo(
                path,
                role,
                router,
                "",
                (),
                "",
                dt.datetime.min.replace(tzinfo=UTC),
                error=f"cannot read certificate {path}: {reason}",
            )
        ]


def config_certificates(config: Any) -> list[CertInfo]:
    """Every certificate file named by ``config`` (a ``hostproxy.config.model.Config``), read now.

    Server certificates and client certificates (``clientAuth``) as ``server``/``client`` (the leaf
    only), ``caCertPath``/``trustCerts``/``trustCertsBundle`` as ``ca`` (every certificate). A path
    that still holds a ``{capture}`` is skipped (it names a file only per client)."""
    out: list[CertInfo] = []
    seen: set[tuple[str, str, str]] = set()

    def add(path: str | None, role: str, router: str, leaf_only: bool) -> None:
        if not path or "{" in path or (path, role, router) in seen:
            return
        seen.add((path, role, router))
        out.extend(_read_file(path, role, router, leaf_only))

    for r in config.routers:
        label = str(r.label or r.kind)
        for srv in r.servers:
            tls = srv.tls
            if tls is None:
                continue
            add(tls.cert_path, "server", label, True)
            add(tls.ca_cert_path, "ca", label, False)
        for entry in r.client.entries if r.client is not None else ():
            ctls = getattr(entry.params, "tls", None)
            if ctls is None or "tls" not in entry.explicit or not ctls.enabled:
                continue
            if ctls.client_auth is not None:
                add(ctls.client_auth.cert_path, "client", label, True)
            add(ctls.trust_certs_bundle, "ca", label, False)
            for p in ctls.trust_certs:
                add(p, "ca", label, False)
    return out


def tls_json(certs: Iterable[CertInfo], now: dt.datetime) -> dict[str, Any]:
    """The ``/admin/tls.json`` body: ``{"certificates": [...]}`` sorted by expiry, soonest first."""
    items = sorted(certs, key=lambda c: (c.error is None, c.not_after, c.path))
    return {"certificates": [c.to_json(now) for c in items]}


def expiring(certs: Iterable[CertInfo], now: dt.datetime, days: int = 14) -> list[CertInfo]:
    """Certificates that expire within ``days`` of ``now`` (already expired ones included), soonest
    first; unreadable entries are not included (they are reported by their ``error``)."""
    limit = now + dt.timedelta(days=days)
    return sorted((c for c in certs if c.error is None and c.not_after <= limit), key=lambda c: c.not_after)
