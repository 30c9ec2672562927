"""Review of response classification, retries, retry budgets and timeouts (HTTP/1.1 and h2).

Each test names the defect it guards against. Real upstreams on loopback, real curl as the client.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hostproxy.causes import Cause
from hostproxy.classifier import HTTP_CLASSIFIERS, ResponseClass
from hostproxy.http.message import Body, Headers, Request, Response
from tests.daemonutil import curl, fs_config, running_daemon
from tests.test_lifecycle_helpers import write_disco
from tests.upstreams import serving


class Scripted:
    """An upstream answering its n-th request with ``statuses[n]`` (the last one from then on); records
    each request's method and body."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.seen: list[tuple[str, bytes]] = []

    async def handle(self, req: Request, conn: object) -> Response:
        body = await req.body.read_all(1 << 22)
        n = len(self.seen)
        self.seen.append((req.method, body))
        status = self.statuses[min(n, len(self.statuses) - 1)]
        return Response(status, b"", Headers([]), Body.from_bytes(f"attempt {n}".encode()))


@contextlib.asynccontextmanager
async def scripted(statuses: list[int]) -> AsyncIterator[tuple[Scripted, int]]:
    up = Scripted(statuses)
    async with serving(up.handle) as port:
        yield up, port


def cfg(disco: Path, classifier: str, *, service: str = "", client: str = "") -> str:
    """One router ``out`` on the fs namer; ``service``/``client``: extra keys (indented by 4)."""
    return fs_config(disco) + (
        f"  client:\n    kind: io.l5d.global\n    failureAccrual: {{kind: none}}\n{client}"
        f"  service:\n    kind: io.l5d.global\n    responseClassifier: {{kind: {classifier}}}\n"
        f"    retries:\n      backoff: {{kind: constant, ms: 0}}\n{service}"
    )


# -- methods --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(HTTP_CLASSIFIERS))
@pytest.mark.parametrize(
    "method", ["get", "Get", "head", "put", "delete", "post", "Patch", "PURGE", "CONNECT"]
)
def test_a_method_is_retryable_only_in_its_own_spelling(kind: str, method: str) -> None:
    """HTTP methods are case-sensitive (RFC 9110 section 9.1) and hostproxy forwards the method as the
    client spelled it: a ``get`` reaches the upstream as ``get``, a method that is not GET, which many
    servers take for a write (anything but ``GET`` goes to the update branch). The classifiers
    upper-cased the method before looking it up, so a 5XX answer to ``get`` or ``delete`` was retried
    as if it were a GET or a DELETE. (Finagle matches the standard names whatever their case, but it
    also sends them in upper case, so the upstream sees the method it classified.)"""
    c = HTTP_CLASSIFIERS[kind]
    expected = ResponseClass.SUCCESS if c.all_successful else ResponseClass.FAILURE
    assert c.classify(method, 503, None) is expected
    assert c.classify(method, None, Cause.UPSTREAM_RESET) is expected


async def test_a_lowercase_get_answered_503_is_not_sent_again(tmp_path: Path) -> None:
    """End to end: ``curl -X get`` through a router with ``retryableRead5XX`` to an upstream that answers
    503 then 200. The upstream saw ``get`` twice (the 503 retried); it is sent once and its 503 passed
    back, while ``GET`` is still retried."""
    for method, calls, status in [("get", 1, 503), ("GET", 2, 200)]:
        async with scripted([503, 200]) as (up, port):
            write_disco(tmp_path / "disco", "web", port)
            async with running_daemon(cfg(tmp_path / "disco", "io.l5d.http.retryableRead5XX")) as d:
                r = await curl(f"http://127.0.0.1:{d.port('out')}/", "-H", "Host: web", "-X", method)
        assert [m for m, _ in up.seen] == [method] * calls
        assert r.status == status
