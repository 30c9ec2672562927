"""The dashboard in a real headless Chromium, against a real daemon with traffic flowing.

Chromium loads ``/`` from the admin server, runs the page's script (which polls the admin JSON every
second; ``--virtual-time-budget`` lets several polls happen without waiting for them) while requests
flow, and dumps the
rendered DOM.  The numbers the page shows are read back from its ``data-k`` attributes and compared
with ``/admin/metrics.json``, ``/client_state.json`` and ``/admin/process.json``.  A screenshot is
saved in the test's ``tmp_path`` and in ``artifacts/`` at the repository root.
"""

from __future__ import annotations

import html.parser
import os
import shutil
import socket
from pathlib import Path

import pytest
import trio

from tests.daemonutil import curl, fs_config, running_daemon
from tests.upstreams import running_upstream

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")


def write_disco(disco: Path, name: str, text: str) -> None:
    disco.mkdir(exist_ok=True)
    tmp = disco / f".{name}.tmp"
    tmp.write_text(text)
    tmp.rename(disco / name)


def config(disco: Path) -> str:
    return fs_config(disco) + "  client:\n    requeueBudget: {minRetriesPerSec: 0, percentCanRetry: 0.0}\n"


class DataK(html.parser.HTMLParser):
    """Collects the text of every element with a ``data-k`` attribute (all occurrences)."""

    def __init__(self) -> None:
        super().__init__()
        self.values: dict[str, list[str]] = {}
        self.body: dict[str, str] = {}
        self._stack: list[str | None] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "body":
            self.body = {k: v or "" for k, v in a.items()}
        if tag in ("br", "img", "meta", "link", "input"):
            return
        self._stack.append(a.get("data-k"))
        if a.get("data-k") is not None:
            self.values.setdefault(a["data-k"] or "", []).append("")

    def handle_endtag(self, tag: str) -> None:
        if self._stack and tag not in ("br", "img", "meta", "link", "input"):
            self._stack.pop()

    def handle_data(self, data: str) -> None:
        for k in reversed(self._stack):
            if k is not None:
                self.values[k][-1] += data
                return

    def one(self, key: str) -> str:
        assert key in self.values, f"the page shows no {key!r}; it shows {sorted(self.values)}"
        return self.values[key][0]


async def chromium(url: str, profile: Path, *args: str) -> bytes:
    proc = await trio.run_process(
        [
            str(CHROMIUM),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            f"--user-data-dir={profile}",
            *args,
            url,
        ],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    return proc.stdout


def to_int(text: str) -> int:
    return int(text.replace(",", ""))


async def test_dashboard_shows_the_numbers_of_metrics_json(tmp_path: Path) -> None:
    disco = tmp_path / "disco"
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        refused = closed.getsockname()[1]
        async with running_upstream() as up:
            write_disco(disco, "web", f"127.0.0.1 {up.port}\n")
            write_disco(disco, "api", f"127.0.0.1 {refused}\n")
            async with running_daemon(config(disco)) as d:
                base = f"http://127.0.0.1:{d.port('out')}"
                for path in ["/", "/", "/", "/status/503", "/status/500", "/"]:
                    await curl(base + path, "-H", "Host: web")
                for _ in range(2):
                    assert (await curl(base + "/", "-H", "Host: api")).status == 502
                before = (await curl(d.admin + "/admin/metrics.json")).json()
                assert isinstance(before, dict)

                stop = trio.Event()

                async def traffic() -> None:
                    while not stop.is_set():
                        await curl(base + "/", "-H", "Host: web")
                        await trio.sleep(0.05)

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(traffic)
                    dom = await chromium(
                        d.admin + "/", tmp_path / "profile", "--virtual-time-budget=6000", "--dump-dom"
                    )
                    shot = tmp_path / "dashboard.png"
                    await chromium(
                        d.admin + "/",
                        tmp_path / "profile2",
                        "--virtual-time-budget=6000",
                        "--window-size=1400,1100",
                        "--hide-scrollbars",
                        f"--screenshot={shot}",
                    )
                    stop.set()
                after = (await curl(d.admin + "/admin/metrics.json")).json()
                assert isinstance(after, dict)
                client_state = (await curl(d.admin + "/client_state.json")).json()
                assert isinstance(client_state, dict)

                page = DataK()
                page.feed(dom.decode())
                assert int(page.body.get("data-polls", "0")) >= 3, "the page did not keep polling"
                srv = f"rt/out/server/127.0.0.1/{d.port('out')}"
                # Totals are read while traffic flows: between the samples taken before and after.
                shown = to_int(page.one("out:requests"))
                assert before[f"{srv}/requests"] <= shown <= after[f"{srv}/requests"]
                # The background traffic always succeeds: failures are exactly those before it.
                assert (
                    to_int(page.one("out:failures"))
                    == before[f"{srv}/failures"]
                    == after[f"{srv}/failures"]
                    == 4
                )
                assert (
                    to_int(page.one("out:failures/upstream/5xx"))
                    == after[f"{srv}/failures/upstream/5xx"]
                    == 2
                )
                assert (
                    to_int(page.one("out:failures/connect/refused"))
                    == after[f"{srv}/failures/connect/refused"]
                )
                assert page.one("out:rate") != "—" and float(page.one("out:rate")) >= 0
                assert page.one("out:p99").endswith(" ms")
                # One card per client, with its state and endpoints as /client_state.json has them.
                for client in ("/#/io.l5d.fs/web", "/#/io.l5d.fs/api"):
                    assert page.one(f"{client}:name") == client
                    assert page.one(f"{client}:state") == client_state[client]["state"]
                    assert page.values[f"{client}:endpoint"] == client_state[client]["addresses"]
                assert page.one("/#/io.l5d.fs/api:failures") == "2"
                assert page.one("out:service:/svc/web") == "/svc/web"
                # The process panel is this test's process (the daemon runs in it).
                assert page.one("process:pid") == str(os.getpid())
                fds, _, limit = page.one("process:fds").partition(" / ")
                assert int(fds) > 0 and int(limit) > 0
                assert page.one("process:python").count(".") == 2

                assert shot.stat().st_size > 10_000
                ARTIFACTS.mkdir(exist_ok=True)
                shutil.copyfile(shot, ARTIFACTS / "dashboard.png")


async def test_dashboard_page_is_self_contained(tmp_path: Path) -> None:
    (tmp_path / "disco").mkdir()
    async with running_daemon(config(tmp_path / "disco")) as d:
        r = await curl(d.admin + "/")
        assert r.status == 200 and r.header("content-type") == "text/html;charset=UTF-8"
        csp = r.header("content-security-policy") or ""
        assert "script-src 'self'" in csp and "connect-src 'self'" in csp and "default-src 'none'" in csp
        text = r.body.decode()
        assert "http://" not in text and "https://" not in text  # nothing from elsewhere
        for asset, ctype in (("dashboard.js", "text/javascript"), ("dashboard.css", "text/css")):
            a = await curl(f"{d.admin}/files/{asset}")
            assert a.status == 200 and (a.header("content-type") or "").startswith(ctype)
            assert b"https://" not in a.body and b"http://" not in a.body
        missing = await curl(f"{d.admin}/files/../handlers.py")
        assert missing.status == 404
