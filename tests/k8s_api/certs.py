"""A throwaway CA and a server certificate for 127.0.0.1, generated per test with ``cryptography``.

Theory of operation: :func:`make_ca` returns a self-signed CA; :func:`issue` signs a server
certificate whose subjectAltName is an IP address (the in-cluster API certificate names
``$KUBERNETES_SERVICE_HOST``, usually an IP). :func:`server_context` loads one into an
``ssl.SSLContext`` for the fake API server. The certificates come from the suite's
:class:`certs.TestCA`; this module only keeps them as PEM pairs, the form the service-account
files and the fake server want.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass

from certs import Issued, TestCA
from cryptography import x509

__all__ = ["Pem", "issue", "make_ca", "server_context"]


@dataclass(frozen=True)
class Pem:
    cert: bytes
    key: bytes


def _pem(issued: Issued) -> Pem:
    return Pem(issued.cert_pem, issued.key_pem)


def make_ca(cn: str = "fake-kubernetes-ca") -> Pem:
    return _pem(TestCA(cn).issued)


def issue(ca: Pem, ip: str = "127.0.0.1", cn: str = "kube-apiserver") -> Pem:
    authority = TestCA(_issued=Issued(x509.load_pem_x509_certificate(ca.cert), ca.key))
    return _pem(authority.issue(cn, sans=[ip]))


def server_context(pem: Pem, directory: str) -> ssl.SSLContext:
    cert_path = os.path.join(directory, "server.crt")
    key_path = os.path.join(directory, "server.key")
    with open(cert_path, "wb") as f:
        f.write(pem.cert)
    with open(key_path, "wb") as f:
        f.write(pem.key)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert_path, key_path)
    return ctx
