"""Per-name client/service parameters: prefix patterns, greedy captures, merge order, substitution."""

from __future__ import annotations

import pytest
from sharedpath import COMPAT  # noqa: E402

from dtab import Path as DPath
from hostproxy.config import client_params_for, load_config, match_prefix, service_params_for
from hostproxy.config import model as m
from hostproxy.config.params import PatternError, parse_pattern


def test_literal_wildcard_and_prefix_semantics() -> None:
    assert match_prefix("/svc", "/svc/web") == {}
    assert match_prefix("/svc", "/svcx/web") is None
    assert match_prefix("/svc/*/api", "/svc/web/api/v1") == {}
    assert match_prefix("/svc/*/api", "/svc/web") is None
    assert match_prefix("/", "/anything/at/all") == {}


def test_greedy_captures() -> None:
    assert match_prefix("/x/{foo}-{bar}", "/x/a-b-c") == {"foo": "a-b", "bar": "c"}
    assert match_prefix("/$/io.buoyant.rinet/443/{service}", "/$/io.buoyant.rinet/443/example.com") == {
        "service": "example.com"
    }
    assert match_prefix("/$/io.buoyant.rinet/443/{service}", "/$/io.buoyant.rinet/80/example.com") is None


def test_matching_a_dtab_path_object() -> None:
    assert match_prefix("/#/io.l5d.fs/{svc}", DPath.read("/#/io.l5d.fs/web/rest")) == {"svc": "web"}


@pytest.mark.parametrize(
    ("prefix", "message"),
    [
        ("svc", "a prefix must start with '/', got 'svc'"),
        ("/a//b", "empty segment in prefix '/a//b' (two '/' in a row)"),
        ("/a/{x", "unbalanced brace in prefix '/a/{x'"),
        ("/a/{x}/{x}", "capture '{x}' appears twice in prefix '/a/{x}/{x}'"),
        ("/a/{1x}", "invalid capture '{1x}' in prefix '/a/{1x}'; use a name such as {service}"),
    ],
)
def test_bad_patterns(prefix: str, message: str) -> None:
    with pytest.raises(PatternError) as info:
        parse_pattern(prefix)
    assert str(info.value) == message


ROUTER = """\
routers:
- protocol: http
  servers: [{port: 4140}]
  client:
    kind: io.l5d.static
    configs:
    - prefix: /#/io.l5d.fs
      loadBalancer: {kind: ewma}
      requestAttemptTimeoutMs: 100
    - prefix: /#/io.l5d.fs/{svc}
      tls: {commonName: "{svc}.internal"}
    - prefix: /#/io.l5d.fs/special
      requestAttemptTimeoutMs: 5
      tls: {commonName: other}
  service:
    kind: io.l5d.static
    configs:
    - prefix: /svc
      totalTimeoutMs: 1000
    - prefix: /svc/slow
      totalTimeoutMs: 9000
"""


def test_later_entries_win_key_by_key() -> None:
    r = load_config(ROUTER, source="t").routers[0]
    web = client_params_for(r, "/#/io.l5d.fs/web")
    assert web.load_balancer.kind == "ewma"
    assert web.request_attempt_timeout_ms == 100
    assert web.tls.common_name == "web.internal"
    special = client_params_for(r, "/#/io.l5d.fs/special")
    assert special.load_balancer.kind == "ewma"  # from the first entry, not overridden
    assert special.request_attempt_timeout_ms == 5
    assert special.tls.common_name == "other"
    other = client_params_for(r, "/$/inet/127.1/80")
    assert other == m.ClientParams()


def test_service_params() -> None:
    r = load_config(ROUTER, source="t").routers[0]
    assert service_params_for(r, "/svc/web").total_timeout_ms == 1000
    assert service_params_for(r, "/svc/slow/x").total_timeout_ms == 9000
    assert service_params_for(r, "/other").total_timeout_ms is None
    assert service_params_for(r, "/svc/web").response_classifier.kind == "io.l5d.http.nonRetryable5XX"


def test_global_form_applies_to_every_name() -> None:
    text = "routers:\n- protocol: http\n  servers: [{}]\n  client:\n    failFast: true\n"
    r = load_config(text, source="t").routers[0]
    assert client_params_for(r, "/anything").fail_fast is True
    assert client_params_for(r, "/anything").load_balancer.kind == "p2c"


def test_h2_router_gets_h2_params() -> None:
    r = load_config("routers:\n- protocol: h2\n  servers: [{}]\n", source="t").routers[0]
    sp = service_params_for(r, "/svc/x")
    assert isinstance(sp, m.H2ServiceParams)
    assert sp.classification_timeout_ms == 100
    assert sp.retry_buffer_size.request_bytes == 16383


def test_egress_example_tls_common_name_from_capture() -> None:
    text = (COMPAT / "k8s-daemonset__k8s__linkerd-egress.yaml").read_text()
    # the namers/transformers are planned kinds; the router's client section alone is what is tested here
    from hostproxy.config.validate import Ctx, Validator

    v = Validator(text, "egress")
    from hostproxy.config.yamlpos import compose

    root = compose(text)
    routers = [val for k, val in root.value if k.value == "routers"][0]
    client = [val for k, val in routers.value[0].value if k.value == "client"][0]
    section = v.decode_section(Ctx("routers[0].client", "http", m.HttpRouterConfig), client)
    assert v.issues == []
    router = m.HttpRouterConfig(kind="http", client=section)
    tls = client_params_for(router, "/$/io.buoyant.rinet/443/example.com").tls
    assert tls.common_name == "example.com"
    assert client_params_for(router, "/$/io.buoyant.rinet/80/example.com").tls is None
