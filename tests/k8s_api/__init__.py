"""A fake Kubernetes API server for the ``io.l5d.k8s`` namer's tests (not a real cluster).

:mod:`tests.k8s_api.server` serves list/watch over HTTP or HTTPS with test controls,
:mod:`tests.k8s_api.objects` builds real-shaped Services, Endpoints and EndpointSlices, and
:mod:`tests.k8s_api.certs` makes a throwaway CA and server certificate.
"""
