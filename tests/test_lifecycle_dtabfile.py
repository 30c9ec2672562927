"""A watched dtab file edited under traffic: valid edits apply within a second, invalid ones are rejected."""

from __future__ import annotations

import json
from pathlib import Path

import trio

from tests.test_lifecycle_helpers import config, daemon_proc, get, write_atomic, write_disco
from tests.upstreams import running_upstream


def _interp(path: Path) -> str:
    return f"  interpreter:\n    kind: io.l5d.fs\n    dtabFile: {path}\n"


async def test_dtab_file_edits_under_traffic(tmp_path: Path) -> None:
    async with running_upstream() as a, running_upstream() as b:
        disco = tmp_path / "disco"
        write_disco(disco, "a", a.port)
        write_disco(disco, "b", b.port)
        dtab_file = tmp_path / "dtab"
        dtab_file.write_text("/svc/web => /#/io.l5d.fs/a;\n")
        cfg = tmp_path / "hostproxy.yaml"
        # The router's own dtab comes after the file's: it wins for /svc/other.
        cfg.write_text(config(disco, dtab="/svc/other => /#/io.l5d.fs/b;", interpreter=_interp(dtab_file)))
        async with daemon_proc(cfg) as d:
            port = d.port("out")
            assert (await get(port, "/")).status == 200
            assert len(a.requests) == 1
            assert (await get(port, "/", host="other")).status == 200 and len(b.requests) == 1
            # A valid edit applies within a second, while requests keep flowing.
            write_atomic(dtab_file, "/svc/web => /#/io.l5d.fs/b;\n")
            with trio.fail_after(3):
                while True:
                    r = await get(port, "/")
                    assert (r.outcome, r.status) == ("ok", 200)
                    if len(b.requests) > 1:
                        break
                    await trio.sleep(0.05)
            applied = await d.wait_event("dtab.applied", count=2)
            assert (applied["version"], applied["added"], applied["removed"]) == (
                2,
                ["/svc/web=>/#/io.l5d.fs/b"],
                ["/svc/web=>/#/io.l5d.fs/a"],
            )
            # An invalid edit is rejected with FILE:LINE:COL; the last good dtab stays.
            write_atomic(dtab_file, "/svc/web => /#/io.l5d.fs/b;\n/svc/x => => ;\n")
            rejected = await d.wait_event("dtab.rejected")
            assert rejected["error"].startswith(f"{dtab_file}:2:")
            state = json.loads((await get(d.admin_port, "/dtab_state.json", host="admin")).body)["out"]
            assert state["version"] == 2 and state["last_error"]["message"] == rejected["error"]
            n = len(b.requests)
            assert (await get(port, "/")).status == 200 and len(b.requests) == n + 1
            # A config reload keeps the last good dtab (the file is still invalid).
            write_atomic(
                cfg, config(disco, dtab="/svc/other => /#/io.l5d.fs/a;", interpreter=_interp(dtab_file))
            )
            r = await get(d.admin_port, "/admin/reload", method="POST", host="admin")
            assert r.status == 200, r.body
            assert (await get(port, "/")).status == 200 and len(b.requests) == n + 2
            na = len(a.requests)
            assert (await get(port, "/", host="other")).status == 200 and len(a.requests) == na + 1


async def test_missing_dtab_file_fails_startup(tmp_path: Path) -> None:
    disco = tmp_path / "disco"
    write_disco(disco, "a", 1)
    cfg = tmp_path / "hostproxy.yaml"
    bad = tmp_path / "dtab"
    bad.write_text("/svc => /#/io.l5d.fs;\n/svc/x => ;;\n")
    cfg.write_text(config(disco, interpreter=_interp(bad)))
    async with daemon_proc(cfg, wait_started=False) as d:
        assert await d.wait_exit() == 1
        assert f"hostproxy: failed to start: dtab file {bad} is not a valid dtab" in d.log()
        assert f"{bad}:2:" in d.log()
