"""`hostproxy check`: exit codes, the OK summary, error lines on stderr, --json, stdin."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

DATA = Path(__file__).parent / "data" / "config"


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hostproxy", "check", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_ok_summary() -> None:
    # The files it names (rootDir disco, dtabFile h2.dtab) are not on this machine: named, not errors.
    proc = run(str(DATA / "valid_full.yaml"))
    assert proc.returncode == 0
    assert proc.stdout.startswith(
        f"{DATA / 'valid_full.yaml'}: OK: 2 routers: outgoing (http) on 0.0.0.0:4140; h2 (h2) on 127.0.0.1:4142"
        "; not on this machine, so read when the daemon starts (--require-files: an error): "
    )
    assert "(namers[0].rootDir)" in proc.stdout
    assert proc.stderr == ""


def test_errors_on_stderr_with_dtab_caret() -> None:
    text = "routers:\n- protocol: http\n  dtab: |\n    /svc => /a b;\n  servers: [{port: 99999}]\n"
    proc = run("-", stdin=text)
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr == (
        "<stdin>:4: routers[0].dtab: invalid dtab at line 4, column 16: end of input expected but 'b' found\n"
        "    /svc => /a b;\n"
        "               ^\n"
        "<stdin>:5: routers[0].servers[0].port: must be a port number from 0 to 65535, got 99999\n"
        "-: 2 errors\n"
    )


def test_json_errors() -> None:
    proc = run("--json", str(DATA / "many_errors.yaml"))
    assert proc.returncode == 1
    doc = json.loads(proc.stdout)
    assert doc["ok"] is False
    assert len(doc["errors"]) == 6
    assert doc["errors"][0] == {
        "file": str(DATA / "many_errors.yaml"),
        "line": 3,
        "column": 3,
        "path": "admin.prot",
        "message": "unknown key 'prot'; did you mean 'port'?",
    }


def test_json_ok_from_stdin() -> None:
    proc = run("--json", "-", stdin='{"routers": [{"protocol": "h2", "servers": [{"ip": "0.0.0.0"}]}]}')
    assert proc.returncode == 0
    assert json.loads(proc.stdout) == {
        "ok": True,
        "files_read": True,
        "files_missing": [],
        "errors": [],
        "routers": [{"label": "h2", "protocol": "h2", "servers": ["0.0.0.0:4142"]}],
    }


def test_missing_file() -> None:
    proc = run("/nonexistent/hostproxy.yaml")
    assert proc.returncode == 1
    assert proc.stderr == (
        "/nonexistent/hostproxy.yaml: cannot read the config file: No such file or directory\n"
        "/nonexistent/hostproxy.yaml: 1 error\n"
    )


def test_a_config_past_16_mib_is_refused_not_read_without_end() -> None:
    """``hostproxy check /dev/zero`` read for ever (a device named by mistake, runaway generated
    output): a config past 16 MiB is now an error that asks whether it is the config file."""
    r = run("/dev/zero")
    assert r.returncode == 1
    assert r.stderr.splitlines()[0] == (
        "/dev/zero: the config is larger than 16 MiB; is this the config file? (a device such as "
        "/dev/zero, or generated output gone wrong)"
    )
