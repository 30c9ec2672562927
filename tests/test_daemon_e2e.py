"""End to end: the real daemon, real curl, real upstream servers on loopback.

Each test writes a config (ports 0, read back), starts the daemon in-process and drives it with curl
or a raw socket; upstreams are ``tests.upstreams.TestUpstream`` servers that record what they receive.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
from pathlib import Path

import h11
import pytest
import trio
from sharedpath import COMPAT  # noqa: E402

from tests.daemonutil import curl, fs_config, keepalive_gets, running_daemon
from tests.upstreams import running_upstream


def write_disco(disco: Path, name: str, *ports: int) -> None:
    disco.mkdir(exist_ok=True)
    tmp = disco / f".{name}.tmp"
    tmp.write_text("".join(f"127.0.0.1 {p}\n" for p in ports))
    tmp.rename(disco / name)


async def test_routes_through_fs_namer_and_sets_l5d_headers(tmp_path: Path) -> None:
    async with running_upstream() as up:
        write_disco(tmp_path / "disco", "web", up.port)
        async with running_daemon(fs_config(tmp_path / "disco")) as d:
            r = await curl(f"http://127.0.0.1:{d.port('out')}/headers", "-H", "Host: web")
            assert r.status == 200, r
            seen = up.requests[-1]
            assert seen.header("l5d-dst-service") == "/svc/web"
            assert seen.header("l5d-dst-client") == "/#/io.l5d.fs/web"
            assert re.fullmatch(r"[0-9a-f]{16}", seen.header("l5d-reqid") or "")
            assert "hostproxy" in (seen.header("via") or "")
            assert seen.header("l5d-ctx-dtab") is None  # no override, nothing to propagate
            state = (await curl(f"{d.admin}/client_state.json")).json()
            assert state["/#/io.l5d.fs/web"]["state"] == "bound"
            assert state["/#/io.l5d.fs/web"]["addresses"] == [f"127.0.0.1:{up.port}"]
            metrics = (await curl(f"{d.admin}/admin/metrics.json")).json()
            assert metrics["rt/out/service/svc/web/requests"] == 1
            assert metrics["rt/out/client/#/io.l5d.fs/web/success"] == 1


async def test_l5d_dtab_override_routes_and_is_reemitted_as_ctx(tmp_path: Path) -> None:
    async with running_upstream() as v1, running_upstream() as v2:
        write_disco(tmp_path / "disco", "web", v1.port)
        write_disco(tmp_path / "disco", "web-v2", v2.port)
        async with running_daemon(fs_config(tmp_path / "disco")) as d:
            r = await curl(
                f"http://127.0.0.1:{d.port('out')}/headers",
                "-H",
                "Host: web",
                "-H",
                "l5d-dtab: /svc/web => /#/io.l5d.fs/web-v2",
            )
            assert r.status == 200
            assert v1.requests == [] and len(v2.requests) == 1
            seen = v2.requests[0]
            assert seen.header("l5d-ctx-dtab") == "/svc/web=>/#/io.l5d.fs/web-v2"
            assert seen.header("l5d-dtab") is None
            assert seen.header("l5d-dst-client") == "/#/io.l5d.fs/web-v2"
            # An override that is negative falls back to the base dtab.
            r = await curl(
                f"http://127.0.0.1:{d.port('out')}/",
                "-H",
                "Host: web",
                "-H",
                "l5d-dtab: /svc/web => /#/io.l5d.fs/missing",
            )
            assert r.status == 200 and len(v1.requests) == 1


async def test_bad_override_is_400_with_position(tmp_path: Path) -> None:
    async with running_upstream() as up:
        write_disco(tmp_path / "disco", "web", up.port)
        async with running_daemon(fs_config(tmp_path / "disco")) as d:
            r = await curl(
                f"http://127.0.0.1:{d.port('out')}/",
                "-H",
                "Host: web",
                "-H",
                "l5d-dtab: /svc/web => /#/io.l5d.fs/web;;",
            )
            assert r.status == 400
            assert r.l5d_err is not None and "l5d-dtab" in r.l5d_err
            assert up.requests == []


async def test_no_route_is_502_listing_name_and_dtabs(tmp_path: Path) -> None:
    (tmp_path / "disco").mkdir()
    async with running_daemon(fs_config(tmp_path / "disco")) as d:
        r = await curl(f"http://127.0.0.1:{d.port('out')}/", "-H", "Host: nowhere")
        assert r.status == 502
        err = r.l5d_err or ""
        assert err.startswith("Unable to route request!\nservice name: /svc/nowhere\n")
        assert "base dtab:\n  /svc => /#/io.l5d.fs" in err
        assert r.body.decode() == err
        metrics = (await curl(f"{d.admin}/admin/metrics.json")).json()
        key = f"rt/out/server/127.0.0.1/{d.port('out')}/failures/naming/neg"
        assert metrics[key] == 1


async def test_connection_refused_names_the_endpoint(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]  # bound, never listening: connections are refused
        write_disco(tmp_path / "disco", "web", dead)
        async with running_daemon(fs_config(tmp_path / "disco")) as d:
            r = await curl(f"http://127.0.0.1:{d.port('out')}/", "-H", "Host: web")
            assert r.status == 502
            assert (r.l5d_err or "").startswith(f"Unable to establish connection to 127.0.0.1:{dead}.")
            assert r.header("l5d-retryable") == "true"
            metrics = (await curl(f"{d.admin}/admin/metrics.json")).json()
            assert metrics["rt/out/client/#/io.l5d.fs/web/failures/connect/refused"] >= 1


async def test_total_timeout_is_503(tmp_path: Path) -> None:
    async with running_upstream() as up:
        write_disco(tmp_path / "disco", "web", up.port)
        cfg = fs_config(tmp_path / "disco") + "  service:\n    totalTimeoutMs: 200\n"
        async with running_daemon(cfg) as d:
            r = await curl(f"http://127.0.0.1:{d.port('out')}/slow/3000", "-H", "Host: web")
            assert r.status == 503
            assert "totalTimeoutMs (200 ms)" in (r.l5d_err or "")


async def test_application_5xx_passes_through_without_l5d_err(tmp_path: Path) -> None:
    async with running_upstream() as up:
        write_disco(tmp_path / "disco", "web", up.port)
        async with running_daemon(fs_config(tmp_path / "disco")) as d:
            r = await curl(f"http://127.0.0.1:{d.port('out')}/status/503", "-H", "Host: web")
            assert r.status == 503 and r.header("l5d-err") is None
            assert r.header("l5d-success-class") == "0.0"
            metrics = (await curl(f"{d.admin}/admin/metrics.json")).json()
            assert metrics["rt/out/service/svc/web/failures/upstream/5xx"] == 1
            r = await curl(f"http://127.0.0.1:{d.port('out')}/", "-H", "Host: web")
            assert r.header("l5d-success-class") == "1.0"


async def test_classifier_decides_what_fails(tmp_path: Path) -> None:
    async with running_upstream() as up:
        write_disco(tmp_path / "disco", "web", up.port)
        cfg = (
            fs_config(tmp_path / "disco")
            + "  service:\n    responseClassifier: {kind: io.l5d.http.allSuccessful}\n"
        )
        async with running_daemon(cfg) as d:
            r = await curl(f"http://127.0.0.1:{d.port('out')}/status/503", "-H", "Host: web")
            assert r.status == 503 and r.header("l5d-success-class") == "1.0"
            metrics = (await curl(f"{d.admin}/admin/metrics.json")).json()
            assert metrics["rt/out/service/svc/web/success"] == 1
            assert "rt/out/service/svc/web/failures/upstream/5xx" not in metrics


async def test_request_without_host_is_unidentified(tmp_path: Path) -> None:
    (tmp_path / "disco").mkdir()
    async with running_daemon(fs_config(tmp_path / "disco")) as d:
        stream = await trio.open_tcp_stream("127.0.0.1", d.port("out"))
        async with stream:
            await stream.send_all(b"GET / HTTP/1.0\r\n\r\n")
            data = b""
            with trio.fail_after(5):
                while chunk := await stream.receive_some():
                    data += chunk
        head = data.split(b"\r\n\r\n")[0].decode()
        assert head.startswith("HTTP/1.1 400 ")
        assert "Unknown+destination" in head


async def test_http_proxy_mode_with_curl(tmp_path: Path) -> None:
    async with running_upstream() as up:
        write_disco(tmp_path / "disco", "web", up.port)
        async with running_daemon(fs_config(tmp_path / "disco")) as d:
            r = await curl("http://web/headers", "-x", f"http://127.0.0.1:{d.port('out')}")
            assert r.status == 200
            assert up.requests[-1].target == "/headers"
            assert up.requests[-1].header("l5d-dst-service") == "/svc/web"


async def test_fs_change_under_traffic_moves_requests_without_failures(tmp_path: Path) -> None:
    async with running_upstream() as a, running_upstream() as b:
        disco = tmp_path / "disco"
        write_disco(disco, "web", a.port)
        async with running_daemon(fs_config(disco)) as d:
            port = d.port("out")
            statuses: list[int] = []
            switched_at = None
            for i in range(300):
                r = await curl(f"http://127.0.0.1:{port}/", "-H", "Host: web")
                statuses.append(r.status)
                if i == 5:
                    write_disco(disco, "web", b.port)
                    switched_at = trio.current_time()
                if b.requests:
                    break
                await trio.sleep(0.02)
            assert switched_at is not None and b.requests, "the fs change never took effect"
            assert trio.current_time() - switched_at < 3.0
            assert set(statuses) == {200}


def _flood_hosts(port: int, count: int) -> list[int]:
    """Send ``count`` requests with distinct Host values over one keep-alive connection."""
    return [e.status for e in keepalive_gets(port, [f"h{i}.example" for i in range(count)])]


async def test_flood_of_distinct_hosts_stays_within_cache_bounds(tmp_path: Path) -> None:
    async with running_upstream() as up:
        write_disco(tmp_path / "disco", "web", up.port)
        cfg = fs_config(
            tmp_path / "disco", dtab="/svc => /#/io.l5d.fs; /svc => /$/inet/127.1/" + str(up.port) + ";"
        )
        cfg += "  bindingCache: {paths: 50, trees: 50, bounds: 50, clients: 20}\n"
        async with running_daemon(cfg) as d:
            statuses = await trio.to_thread.run_sync(_flood_hosts, d.port("out"), 1500)
            assert statuses == [200] * 1500
            router = d.daemon.routers["out"]
            stats = router.binder.statistics()
            assert json.dumps(stats)  # renderable
            assert len(router.clients) <= 20
            for key, value in stats.items():
                if isinstance(value, dict) and "size" in value:
                    assert value["size"] <= 50, (key, value)
            fs_state = (await curl(f"{d.admin}/namer_state/io.l5d.fs.json")).json()
            assert len(fs_state["names"]) <= 1000
            metrics = (await curl(f"{d.admin}/admin/metrics.json")).json()
            services = {k.split("/service/")[1].split("/")[0] for k in metrics if "/service/" in k}
            assert len(services) <= 1001


# -- the compat corpus configs that need no cluster, started on loopback --------------------------


def compat_copy(name: str, tmp: Path, *, disco: Path | None = None) -> tuple[str, int]:
    """The config with ip → 127.0.0.1, ports → free ones, rootDir → ``disco``; nothing else changed."""
    text = (COMPAT / name).read_text()
    text = text.replace("0.0.0.0", "127.0.0.1")
    text = re.sub(r"port: \d+", "port: 0", text)
    if disco is not None:
        text = re.sub(r"rootDir: .*", f"rootDir: {disco}", text)
    return text, 0


def _port_free(port: int) -> bool:
    """Whether a listener can bind 127.0.0.1:``port`` as the test upstream will (with SO_REUSEADDR, so
    a connection of an earlier test left in TIME-WAIT on that port does not count as taken)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


async def test_compat_getting_started_local_routes(tmp_path: Path) -> None:
    async with running_upstream() as up:
        write_disco(tmp_path / "disco", "hello", up.port)
        text, _ = compat_copy("getting-started__local__linkerd.yaml", tmp_path, disco=tmp_path / "disco")
        async with running_daemon(text) as d:
            r = await curl(f"http://127.0.0.1:{d.port('http')}/", "-H", "Host: hello")
            assert r.status == 200 and r.body == b"ok"


@pytest.mark.parametrize(
    ("name", "upstream_port", "host"),
    [
        ("http-proxy__linkerd.yaml", 8888, "webapp"),
        ("perf-baseline__linkerd1-perf__linkerd1-perf.yaml", 8080, "anything"),
    ],
)
async def test_compat_inet_configs_route(tmp_path: Path, name: str, upstream_port: int, host: str) -> None:
    # These dtabs name a fixed upstream port (/$/inet/127.1/<port>); the config is used as written.
    assert _port_free(upstream_port), f"127.0.0.1:{upstream_port} is taken; the {name} dtab needs it"
    async with running_upstream(port=upstream_port) as up:
        text, _ = compat_copy(name, tmp_path)
        async with running_daemon(text) as d:
            r = await curl(f"http://127.0.0.1:{d.port('http')}/headers", "-H", f"Host: {host}")
            assert r.status == 200
            assert up.requests[-1].header("l5d-dst-client") == f"/$/inet/127.1/{upstream_port}"


def test_curl_is_installed() -> None:
    assert shutil.which("curl"), "curl is required (make install installs it)"


async def test_reset_mid_body_is_counted_as_upstream_reset(tmp_path: Path) -> None:
    async with running_upstream() as up:
        write_disco(tmp_path / "disco", "web", up.port)
        async with running_daemon(fs_config(tmp_path / "disco")) as d:
            r = await curl(f"http://127.0.0.1:{d.port('out')}/reset", "-H", "Host: web")
            assert r.exit_code != 0  # the client saw the response cut short
            metrics = (await curl(f"{d.admin}/admin/metrics.json")).json()
            assert metrics["rt/out/service/svc/web/failures/upstream/reset"] == 1
            assert metrics["rt/out/service/svc/web/success"] == 0
            assert metrics["rt/out/client/#/io.l5d.fs/web/failures/upstream/reset"] == 1


async def test_access_log_line_per_request(tmp_path: Path) -> None:
    async with running_upstream() as up:
        write_disco(tmp_path / "disco", "web", up.port)
        log_path = tmp_path / "access.log"
        cfg = fs_config(tmp_path / "disco") + f"  httpAccessLog: {log_path}\n"
        async with running_daemon(cfg) as d:
            await curl(f"http://127.0.0.1:{d.port('out')}/status/503", "-H", "Host: web")
            await curl(f"http://127.0.0.1:{d.port('out')}/", "-H", "Host: nowhere")
        lines = log_path.read_text().splitlines()
        assert len(lines) == 2, lines
        assert "/svc/web" in lines[0] and f"127.0.0.1:{up.port}" in lines[0] and "503" in lines[0]
        assert "upstream/5xx" in lines[0]
        assert "/svc/nowhere" in lines[1] and "naming/neg" in lines[1]


async def test_union_weights_split_traffic(tmp_path: Path) -> None:
    async with running_upstream() as a, running_upstream() as b:
        write_disco(tmp_path / "disco", "a", a.port)
        write_disco(tmp_path / "disco", "b", b.port)
        dtab = "/svc/web => 0.8 * /#/io.l5d.fs/a & 0.2 * /#/io.l5d.fs/b;"
        async with running_daemon(fs_config(tmp_path / "disco", dtab=dtab)) as d:
            statuses = await trio.to_thread.run_sync(_same_host, d.port("out"), "web", 400)
            assert statuses == [200] * 400
            # 400 draws at p=0.2: mean 80, sd 8; a 5-sd band never fails by chance in practice.
            assert 40 <= len(b.requests) <= 120, (len(a.requests), len(b.requests))
            assert len(a.requests) + len(b.requests) == 400


def _same_host(port: int, host: str, count: int) -> list[int]:
    statuses = []
    with socket.create_connection(("127.0.0.1", port)) as s:
        conn = h11.Connection(h11.CLIENT)
        for _ in range(count):
            s.sendall(conn.send(h11.Request(method="GET", target="/", headers=[("Host", host)])))
            s.sendall(conn.send(h11.EndOfMessage()))
            while True:
                ev = conn.next_event()
                if ev is h11.NEED_DATA:
                    conn.receive_data(s.recv(65536))
                    continue
                if isinstance(ev, h11.Response):
                    statuses.append(ev.status_code)
                if isinstance(ev, h11.EndOfMessage):
                    break
            conn.start_next_cycle()
    return statuses


async def test_recent_requests_telemeter(tmp_path: Path) -> None:
    async with running_upstream() as up:
        write_disco(tmp_path / "disco", "web", up.port)
        cfg = (
            fs_config(tmp_path / "disco")
            + "telemetry:\n- kind: io.l5d.recentRequests\n  sampleRate: 1.0\n  capacity: 2\n"
        )
        async with running_daemon(cfg) as d:
            for path in ("/a", "/b", "/c"):
                await curl(f"http://127.0.0.1:{d.port('out')}{path}", "-H", "Host: web")
            recent = (await curl(f"{d.admin}/requests")).json()
            assert isinstance(recent, list)
            assert [r["path"] for r in recent] == ["/b", "/c"]  # bounded: the newest two
            assert recent[-1]["service"] == "/svc/web" and recent[-1]["client"] == "/#/io.l5d.fs/web"
            assert recent[-1]["endpoint"] == f"127.0.0.1:{up.port}" and recent[-1]["status"] == 200
        async with running_daemon(fs_config(tmp_path / "disco")) as d:
            await curl(f"http://127.0.0.1:{d.port('out')}/a", "-H", "Host: web")
            r = await curl(f"{d.admin}/requests")
            assert r.status == 404 and b"no io.l5d.recentRequests telemeter" in r.body


async def test_client_state_json_is_the_daemons_client_state_across_routers(tmp_path: Path) -> None:
    """/client_state.json is served a slice of clients at a time; it is the same document as
    ``Daemon.client_state()`` — every client of every router, a client id two routers share once."""
    async with running_upstream() as up:
        write_disco(tmp_path / "disco", "web", up.port)
        for i in range(150):  # more clients than one slice
            write_disco(tmp_path / "disco", f"s{i}", up.port)
        extra = """- protocol: http
  label: second
  dtab: /svc => /#/io.l5d.fs;
  servers:
  - {ip: 127.0.0.1, port: 0}
"""
        async with running_daemon(fs_config(tmp_path / "disco", extra_router=extra)) as d:
            for i in range(150):
                r = await curl(f"http://127.0.0.1:{d.port('out')}/", "-H", f"Host: s{i}")
                assert r.status == 200, r
            r = await curl(f"http://127.0.0.1:{d.port('second')}/", "-H", "Host: web")
            assert r.status == 200, r
            r = await curl(f"http://127.0.0.1:{d.port('out')}/", "-H", "Host: web")
            assert r.status == 200, r
            served = (await curl(f"{d.admin}/client_state.json")).json()
            assert isinstance(served, dict) and len(served) == 151
            assert "/#/io.l5d.fs/web" in served and "/#/io.l5d.fs/s149" in served
            expected = json.loads(json.dumps(d.daemon.client_state(), default=str))
            assert list(served) == list(expected)  # same clients, same order
            assert served == expected  # nothing moves at rest
