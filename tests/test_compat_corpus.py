"""The Linkerd 1 example configs: `hostproxy check` (the real CLI) pinned per file.

Move a file to ACCEPTED (or change its expected messages) as the kinds it needs land in
``hostproxy/config/registry.py`` IMPLEMENTED.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

_here = Path(__file__).resolve()
SHARED = _here.parents[2] / "shared"
if not (SHARED / "compat").is_dir():
    SHARED = Path("/work/shared")
CORPUS = SHARED / "compat" / "linkerd-examples"

K8S = (
    "namers[{i}].kind: kind 'io.l5d.k8s' (namers[{i}].kind) is not supported yet by this hostproxy version; "
    "for now, list the endpoints in files read by the io.l5d.fs namer (namers: [{{kind: io.l5d.fs, rootDir: DIR}}])"
)
DS = (
    "routers[{r}].interpreter.transformers[0].kind: kind 'io.l5d.k8s.daemonset' "
    "(routers[{r}].interpreter.transformers[0].kind) is not supported yet by this hostproxy version; "
    "for now, remove the transformer and route to the target addresses directly"
)
LN = DS.replace("io.l5d.k8s.daemonset", "io.l5d.k8s.localnode")
SR = (
    "routers[{r}].client.failureAccrual.kind: kind 'io.l5d.successRate' (routers[{r}].client.failureAccrual.kind) "
    "is not supported yet by this hostproxy version; for now, use io.l5d.consecutiveFailures"
)


def k8s(i: int = 0) -> str:
    return K8S.format(i=i)


# file -> None (accepted) or the exact error lines (after "FILE:LINE: ").
EXPECTED: dict[str, list[str] | None] = {
    "getting-started__docker__linkerd.yaml": None,
    "getting-started__local__linkerd.yaml": None,
    "http-proxy__linkerd.yaml": None,
    "perf-baseline__linkerd1-perf__linkerd1-perf.yaml": None,
    "perf-baseline__linkerd1-perf__linkerd1-perf-1.yaml": None,
    "add-steps__linkerd.yaml": [SR.format(r=0)],
    "failure-accrual__linkerd.yaml": [SR.format(r=3)],
    "getting-started__k8s__linkerd.yaml": [k8s()],
    "k8s-daemonset__k8s__linkerd.yaml": [k8s(), DS.format(r=0), LN.format(r=1)],
    "k8s-daemonset__k8s__linkerd-latency.yaml": [k8s(), DS.format(r=0), LN.format(r=1)],
    "k8s-daemonset__k8s__linkerd-tls.yaml": [k8s(), DS.format(r=0), LN.format(r=1)],
    "k8s-daemonset__k8s__linkerd-ingress.yaml": [k8s(), DS.format(r=0), DS.format(r=1), LN.format(r=2)],
    "k8s-daemonset__k8s__linkerd-egress.yaml": [
        k8s(0),
        DS.replace("routers[{r}].interpreter", "namers[0]").replace("(routers[{r}]", "(namers[0]"),
        k8s(1),
        LN.format(r=1),
    ],
    "k8s-daemonset__k8s__linkerd-grpc.yaml": [
        k8s(),
        "routers[0].identifier.kind: kind 'io.l5d.header.path' (routers[0].identifier.kind) is not supported yet "
        "by this hostproxy version; for now, use io.l5d.header.token (the :authority header)",
        DS.format(r=0),
        "routers[1].identifier.kind: kind 'io.l5d.header.path' (routers[1].identifier.kind) is not supported yet "
        "by this hostproxy version; for now, use io.l5d.header.token (the :authority header)",
        LN.format(r=1),
    ],
    "k8s-daemonset__k8s__linkerd-zipkin.yaml": [
        k8s(),
        "telemetry[1].kind: telemeter kind 'io.l5d.zipkin' is not supported yet by hostproxy; tracing export is "
        "not implemented; remove this telemeter",
        DS.format(r=0),
        LN.format(r=1),
    ],
    "lifecycle__linkerd1__linkerd.yaml": [
        k8s(0),
        "namers[1].kind: kind 'io.l5d.rewrite' (namers[1].kind) is not supported yet by this hostproxy version; "
        "for now, write the rewrite as dtab entries (a dtab cannot reorder segments)",
        DS.format(r=0),
        LN.format(r=1),
        DS.format(r=2),
        LN.format(r=3),
    ],
}


def test_every_corpus_file_is_pinned() -> None:
    assert sorted(p.name for p in CORPUS.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_check(name: str) -> None:
    path = CORPUS / name
    proc = subprocess.run(
        [sys.executable, "-m", "hostproxy", "check", str(path)], capture_output=True, text=True, timeout=60
    )
    expected = EXPECTED[name]
    if expected is None:
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith(f"{path}: OK: ")
        assert proc.stderr == ""
        return
    assert proc.returncode == 1
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert lines[-1] == f"{path}: {len(expected)} error{'s' if len(expected) != 1 else ''}"
    got = []
    for ln in lines[:-1]:
        prefix, _, rest = ln.partition(": ")
        assert prefix.startswith(f"{path}:") and prefix.rsplit(":", 1)[1].isdigit(), ln
        got.append(rest)
    assert got == expected
