"""Routing changed while the daemon runs: watched dtab files, reloads and per-request overrides."""

from __future__ import annotations

import json
from pathlib import Path

from tests.test_lifecycle_helpers import config, daemon_proc, get, write_atomic, write_disco
from tests.upstreams import running_upstream


def _interp(path: Path) -> str:
    return f"  interpreter:\n    kind: io.l5d.fs\n    dtabFile: {path}\n"


async def test_dtab_file_cut_off_last_dentry_points_at_its_line(tmp_path: Path) -> None:
    """A dtab file whose last dentry is cut off (``/svc/x =>`` and the file's final line break) was
    rejected as ``FILE:4:1`` with an empty line under the caret: the end of the input was placed
    after the final line break, on a line the file does not have. The error now points just after
    the last thing written (``FILE:3:10``, the incomplete line shown), and the last good dtab stays."""
    async with running_upstream() as a:
        disco = tmp_path / "disco"
        write_disco(disco, "a", a.port)
        dtab_file = tmp_path / "dtab"
        dtab_file.write_text("/svc/web => /#/io.l5d.fs/a;\n")
        cfg = tmp_path / "hostproxy.yaml"
        cfg.write_text(config(disco, dtab="/svc/other => /#/io.l5d.fs/a;", interpreter=_interp(dtab_file)))
        async with daemon_proc(cfg) as d:
            port = d.port("out")
            assert (await get(port, "/")).status == 200
            write_atomic(dtab_file, "/svc/web => /#/io.l5d.fs/a;\n/svc/b => /#/io.l5d.fs/a;\n/svc/x =>\n\n")
            rejected = await d.wait_event("dtab.rejected")
            assert rejected["error"] == (
                f"{dtab_file}:3:10: a name ('/path', '!', '~', '$' or '(') expected but end of input found\n"
                "/svc/x =>\n"
                "         ^"
            )
            state = json.loads((await get(d.admin_port, "/dtab_state.json", host="admin")).body)["out"]
            assert state["version"] == 1 and state["last_error"]["message"] == rejected["error"]
            n = len(a.requests)
            assert (await get(port, "/")).status == 200 and len(a.requests) == n + 1
