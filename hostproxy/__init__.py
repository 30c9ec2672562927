"""hostproxy: a per-host proxy daemon in the Linkerd 1 style."""
