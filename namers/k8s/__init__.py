"""``io.l5d.k8s``: Kubernetes service discovery (registered as ``"namers.k8s:from_config"``).

Modules: :mod:`namers.k8s.objects` (pure: Services, Endpoints and EndpointSlices to address sets),
:mod:`namers.k8s.watch` (pure: one list/watch as a state machine), :mod:`namers.k8s.client` (the
HTTP/1.1 API client over trio: plain or in-cluster TLS with a rotating token) and
:mod:`namers.k8s.namer` (the namer that wires them). ``io.l5d.k8s.external`` (Services' load
balancer addresses) is :mod:`namers.k8s.external`, on the same machinery.
"""

from namers.k8s.client import ApiServer, ApiUnavailable, InClusterConfigError, TokenFile, in_cluster
from namers.k8s.namer import KIND, K8sNamer, from_config

__all__ = [
    "KIND",
    "ApiServer",
    "ApiUnavailable",
    "InClusterConfigError",
    "K8sNamer",
    "TokenFile",
    "from_config",
    "in_cluster",
]
