"""The Linkerd 1 example configs: `hostproxy check` (the real CLI) pinned per file.

Move a file to ACCEPTED (or change its expected messages) as the kinds it needs land in
``hostproxy/config/registry.py`` IMPLEMENTED.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from sharedpath import SHARED  # noqa: E402

CORPUS = SHARED / "compat" / "linkerd-examples"

# file -> None (accepted) or the exact error lines (after "FILE:LINE: ").
EXPECTED: dict[str, list[str] | None] = {
    "getting-started__docker__linkerd.yaml": None,
    "getting-started__local__linkerd.yaml": None,
    "http-proxy__linkerd.yaml": None,
    "perf-baseline__linkerd1-perf__linkerd1-perf.yaml": None,
    "perf-baseline__linkerd1-perf__linkerd1-perf-1.yaml": None,
    "add-steps__linkerd.yaml": None,
    "failure-accrual__linkerd.yaml": None,
    "getting-started__k8s__linkerd.yaml": None,
    "k8s-daemonset__k8s__linkerd.yaml": None,
    "k8s-daemonset__k8s__linkerd-latency.yaml": None,
    "k8s-daemonset__k8s__linkerd-tls.yaml": None,
    "k8s-daemonset__k8s__linkerd-ingress.yaml": None,
    "k8s-daemonset__k8s__linkerd-egress.yaml": None,
    "lifecycle__linkerd1__linkerd.yaml": None,
    "k8s-daemonset__k8s__linkerd-grpc.yaml": None,
    "k8s-daemonset__k8s__linkerd-zipkin.yaml": None,
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
