"""admin.security: Linkerd's path categories, whitelist and blacklist (rejected paths answer 404)."""

from __future__ import annotations

from hostproxy.admin.handlers import AdminSecurityPolicy
from hostproxy.config import load_config

BASE = "routers:\n- protocol: http\n  servers: [{port: 0}]\n"


def policy(security_yaml: str) -> AdminSecurityPolicy:
    cfg = load_config("admin:\n  security:\n" + security_yaml + BASE, source="t.yaml")
    return AdminSecurityPolicy.from_config(cfg.admin.security)


def test_default_serves_everything() -> None:
    p = AdminSecurityPolicy.from_config(None)
    assert all(p.allows(x) for x in ["/", "/admin/shutdown", "/client_state.json", "/admin/ping"])


def test_categories() -> None:
    p = policy("    controlEnabled: false\n")
    assert not p.allows("/admin/shutdown") and not p.allows("/logging.json")
    assert p.allows("/") and p.allows("/client_state.json")
    p = policy("    uiEnabled: false\n")
    assert not p.allows("/") and not p.allows("/admin/metrics.json") and not p.allows("/delegator.json")
    assert p.allows("/client_state.json") and p.allows("/admin/shutdown")
    p = policy("    diagnosticsEnabled: false\n")
    assert not p.allows("/client_state.json") and not p.allows("/namer_state/io.l5d.fs.json")
    assert p.allows("/admin/metrics.json") and p.allows("/admin/shutdown")


def test_whitelist_reopens_and_blacklist_wins() -> None:
    p = policy("    diagnosticsEnabled: false\n    pathWhitelist: ['/admin/ping', '/ready']\n")
    assert p.allows("/admin/ping") and p.allows("/ready") and not p.allows("/client_state.json")
    p = policy("    pathBlacklist: ['/admin/metrics.*']\n    pathWhitelist: ['/admin/metrics.json']\n")
    assert not p.allows("/admin/metrics.json") and not p.allows("/admin/metrics/prometheus")
    assert p.allows("/client_state.json")
