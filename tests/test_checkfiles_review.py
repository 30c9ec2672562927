"""``hostproxy check`` reads the files a config names (dtab file, TLS files, io.l5d.fs rootDir) with
the daemon's own start-up code, and a malformed per-request dtab header shows its bytes as escapes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.parse
from pathlib import Path

import pytest
import trio
from certs import TestCA, make_pki

from tests.daemonutil import fs_config, running_daemon
from tests.test_lifecycle_helpers import write_disco
from tests.upstreams import running_upstream

REPO = Path(__file__).resolve().parent.parent


def check(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hostproxy", "check", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )


def dtab_file_config(tmp_path: Path, dtab_file: Path | str) -> Path:
    disco = tmp_path / "disco"
    disco.mkdir(exist_ok=True)
    cfg = tmp_path / "hostproxy.yaml"
    cfg.write_text(
        "admin: {ip: 127.0.0.1, port: 0}\n"
        "namers:\n"
        "- kind: io.l5d.fs\n"
        f"  rootDir: {disco}\n"
        "routers:\n"
        "- protocol: http\n"
        "  label: out\n"
        "  interpreter:\n"
        "    kind: io.l5d.fs\n"
        f"    dtabFile: {dtab_file}\n"
        "  servers:\n"
        "  - {ip: 127.0.0.1, port: 0}\n"
    )
    return cfg


# -- the interpreter's dtab file ----------------------------------------------------------------------


def test_a_bad_dtab_file_fails_check_at_its_line_and_column_as_it_fails_the_start(tmp_path: Path) -> None:
    """A config whose ``interpreter.dtabFile`` holds a bad dtab passed ``check`` ("OK") and then
    failed at ``hostproxy run``. ``check`` now refuses it, on the config line of ``dtabFile``, with
    the dtab file's own FILE:LINE:COL and caret: the position the daemon gives when it refuses to
    start."""
    dtab = tmp_path / "routes.dtab"
    dtab.write_text("/svc => /#/io.l5d.fs;\n/svc/web => /#/io.l5d.fs/web b;\n")
    cfg = dtab_file_config(tmp_path, dtab)
    r = check(str(cfg))
    assert r.returncode == 1
    assert r.stdout == ""
    assert r.stderr == (
        f"{cfg}:10: routers[0].interpreter.dtabFile: dtab file {dtab} is not a valid dtab: "
        f"{dtab}:2:30: end of input expected but 'b' found; fix it and check again\n"
        "    /svc/web => /#/io.l5d.fs/web b;\n"
        "                                 ^\n"
        f"{cfg}: 1 error\n"
    )
    run = subprocess.run(
        [sys.executable, "-m", "hostproxy", "run", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert run.returncode == 1
    assert f"{dtab}:2:30: end of input expected but 'b' found" in run.stderr
    # Fixed, the same config passes.
    dtab.write_text("/svc => /#/io.l5d.fs;\n")
    r = check(str(cfg))
    assert (r.returncode, r.stderr) == (0, ""), r.stderr
    assert r.stdout == f"{cfg}: OK: 1 router: out (http) on 127.0.0.1:0\n"


def test_a_missing_dtab_file_is_noted_an_error_with_require_files_and_no_files_skips_it(
    tmp_path: Path,
) -> None:
    """A file that is not on this machine is not an error by default (a config is often checked where it
    is written; the Linkerd example configs name files of the hosts they ran on): the summary names it.
    ``--require-files`` makes it an error; ``--no-files`` reads nothing."""
    cfg = dtab_file_config(tmp_path, tmp_path / "nope.dtab")
    r = check(str(cfg))
    assert (r.returncode, r.stderr) == (0, ""), r.stderr
    assert r.stdout == (
        f"{cfg}: OK: 1 router: out (http) on 127.0.0.1:0; not on this machine, so read when the daemon starts "
        f"(--require-files: an error): {tmp_path / 'nope.dtab'} (routers[0].interpreter.dtabFile)\n"
    )
    doc = json.loads(check("--json", str(cfg)).stdout)
    assert doc["ok"] is True and doc["files_read"] is True
    assert doc["files_missing"] == [
        {"path": "routers[0].interpreter.dtabFile", "file": str(tmp_path / "nope.dtab")}
    ]
    r = check("--require-files", str(cfg))
    assert r.returncode == 1
    assert r.stderr == (
        f"{cfg}:10: routers[0].interpreter.dtabFile: dtab file {tmp_path / 'nope.dtab'} does not exist: "
        "create it (an empty file is an empty dtab) or fix interpreter.dtabFile\n"
        f"{cfg}: 1 error\n"
    )
    doc = json.loads(check("--json", "--require-files", str(cfg)).stdout)
    assert doc["ok"] is False and doc["files_read"] is True and doc["files_missing"] == []
    assert doc["errors"][0]["path"] == "routers[0].interpreter.dtabFile"
    assert (doc["errors"][0]["line"], doc["errors"][0]["column"]) == (10, 15)
    r = check("--no-files", str(cfg))
    assert (r.returncode, r.stderr) == (0, "")
    assert r.stdout == (
        f"{cfg}: OK: 1 router: out (http) on 127.0.0.1:0; the files it names were not read (--no-files)\n"
    )
    doc = json.loads(check("--json", "--no-files", str(cfg)).stdout)
    assert doc["ok"] is True and doc["files_read"] is False
    r = check("--no-files", "--require-files", str(cfg))
    assert r.returncode == 2 and "not allowed with argument" in r.stderr


def test_a_dtab_file_that_is_a_directory_or_not_utf8(tmp_path: Path) -> None:
    cfg = dtab_file_config(tmp_path, tmp_path)
    r = check(str(cfg))
    assert r.returncode == 1
    assert r.stderr.splitlines()[0] == (
        f"{cfg}:10: routers[0].interpreter.dtabFile: dtab file {tmp_path} of router out is a directory; "
        "point interpreter.dtabFile at a file"
    )
    dtab = tmp_path / "latin1.dtab"
    dtab.write_bytes(b"/svc => /#/io.l5d.fs;\n/caf\xe9 => /x;\n")
    cfg = dtab_file_config(tmp_path, dtab)
    r = check(str(cfg))
    assert r.returncode == 1
    assert r.stderr.splitlines()[0] == (
        f"{cfg}:10: routers[0].interpreter.dtabFile: dtab file {dtab} is not a valid dtab: "
        f"{dtab}:2: not UTF-8 text (byte 26); save the file as UTF-8; fix it and check again"
    )


def test_config_from_stdin_has_its_file_errors_at_stdin_lines(tmp_path: Path) -> None:
    cfg = dtab_file_config(tmp_path, tmp_path / "nope.dtab")
    r = check("--require-files", "-", stdin=cfg.read_text())
    assert r.returncode == 1
    assert r.stderr.startswith("<stdin>:10: routers[0].interpreter.dtabFile: dtab file ")
    assert r.stderr.endswith("-: 1 error\n")


def test_relative_paths_are_taken_from_the_working_directory(tmp_path: Path) -> None:
    (tmp_path / "disco").mkdir()
    (tmp_path / "routes.dtab").write_text("/svc => /#/io.l5d.fs;\n")
    text = dtab_file_config(tmp_path, "routes.dtab").read_text().replace(str(tmp_path / "disco"), "disco")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = [sys.executable, "-m", "hostproxy", "check", "--require-files", "-"]
    r = subprocess.run(args, input=text, capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env)
    assert (r.returncode, r.stderr) == (0, ""), r.stderr
    r = subprocess.run(args, input=text, capture_output=True, text=True, timeout=60, cwd=REPO)
    assert r.returncode == 1
    assert r.stderr.splitlines()[0] == (
        "<stdin>:4: namers[0].rootDir: io.l5d.fs rootDir 'disco' does not exist; create it or fix namers[].rootDir"
    )
    assert r.stderr.splitlines()[1].startswith(
        "<stdin>:10: routers[0].interpreter.dtabFile: dtab file routes.dtab does not exist"
    )


# -- the io.l5d.fs namer's rootDir --------------------------------------------------------------------


def test_fs_namer_root_dir_must_be_a_directory(tmp_path: Path) -> None:
    text = (
        "namers:\n"
        "- kind: io.l5d.fs\n"
        f"  rootDir: {tmp_path / 'disco'}\n"
        "- kind: io.l5d.fs\n"
        "  prefix: /other\n"
        f"  rootDir: {tmp_path / 'afile'}\n"
        "routers:\n"
        "- protocol: http\n"
        "  dtab: /svc => /#/io.l5d.fs;\n"
        "  servers: [{port: 0}]\n"
    )
    (tmp_path / "afile").write_text("")
    r = check("-", stdin=text)  # a rootDir not on this machine is noted; one that is a file is an error
    assert r.returncode == 1
    assert r.stderr == (
        f"<stdin>:6: namers[1].rootDir: io.l5d.fs rootDir '{tmp_path / 'afile'}' is not a directory; point "
        "namers[].rootDir at a directory\n"
        "-: 1 error\n"
    )
    r = check("--require-files", "-", stdin=text)
    assert r.returncode == 1
    assert r.stderr == (
        f"<stdin>:3: namers[0].rootDir: io.l5d.fs rootDir '{tmp_path / 'disco'}' does not exist; create it "
        "or fix namers[].rootDir\n"
        f"<stdin>:6: namers[1].rootDir: io.l5d.fs rootDir '{tmp_path / 'afile'}' is not a directory; point "
        "namers[].rootDir at a directory\n"
        "-: 2 errors\n"
    )
    (tmp_path / "disco").mkdir()
    (tmp_path / "afile").unlink()
    (tmp_path / "afile").mkdir()
    r = check("-", stdin=text)
    assert (r.returncode, r.stderr) == (0, ""), r.stderr
    r = check("--no-files", "-", stdin=text.replace("disco", "gone"))
    assert r.returncode == 0, r.stderr


# -- TLS files ----------------------------------------------------------------------------------------


def tls_config(server_tls: str, client_tls: str = "") -> str:
    return (
        "routers:\n"
        "- protocol: h2\n"
        "  dtab: /svc => /$/inet/127.0.0.1/1;\n"
        + (f"  client:\n    tls:\n{client_tls}" if client_tls else "")
        + "  servers:\n"
        "  - port: 0\n"
        "    tls:\n" + server_tls
    )


def test_server_tls_files_are_loaded_key_must_match_cert(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    good = f"      certPath: {pki.server_cert}\n      keyPath: {pki.server_key}\n"
    r = check("-", stdin=tls_config(good))
    assert (r.returncode, r.stderr) == (0, ""), r.stderr
    # The client's key with the server's certificate: the daemon would refuse to start.
    mismatched = f"      certPath: {pki.server_cert}\n      keyPath: {pki.client_key}\n"
    r = check("-", stdin=tls_config(mismatched))
    assert r.returncode == 1
    assert r.stderr == (
        f"<stdin>:7: routers[0].servers[0].tls: the key {pki.client_key} does not belong to the certificate "
        f"{pki.server_cert}; install the key the certificate was issued for (renew both together)\n"
        "-: 1 error\n"
    )
    missing = (
        f"      certPath: {pki.server_cert}\n      keyPath: {tmp_path / 'gone.key'}\n"
        f"      caCertPath: {pki.ca_path}\n"
    )
    r = check("-", stdin=tls_config(missing))
    assert r.returncode == 0 and r.stdout.endswith(
        f"(--require-files: an error): {tmp_path / 'gone.key'} (routers[0].servers[0].tls.keyPath)\n"
    ), r.stdout
    r = check("--require-files", "-", stdin=tls_config(missing))
    assert r.stderr == (
        f"<stdin>:8: routers[0].servers[0].tls.keyPath: cannot read {tmp_path / 'gone.key'}: No such file or "
        "directory; check the path and that hostproxy may read it\n"
        "-: 1 error\n"
    )
    r = check("--no-files", "-", stdin=tls_config(missing))
    assert r.returncode == 0, r.stderr


def test_client_tls_files_are_loaded(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    server = f"      certPath: {pki.server_cert}\n      keyPath: {pki.server_key}\n"
    not_pem = tmp_path / "notes.txt"
    not_pem.write_text("not a certificate\n")
    client = f"      commonName: server.test\n      trustCerts:\n      - {pki.ca_path}\n      - {not_pem}\n"
    r = check("-", stdin=tls_config(server, client))
    assert r.returncode == 1
    assert r.stderr == (
        f"<stdin>:9: routers[0].client.tls.trustCerts[1]: {not_pem} holds no PEM certificate (expected "
        "'-----BEGIN CERTIFICATE-----' blocks)\n"
        "-: 1 error\n"
    )
    other = TestCA("another CA").issue("client.test", client=True, server=False)
    cc, _ = other.write(tmp_path, "other")
    client = (
        f"      commonName: server.test\n      trustCerts: [{pki.ca_path}]\n"
        f"      clientAuth:\n        certPath: {cc}\n        keyPath: {pki.client_key}\n"
    )
    r = check("--json", "-", stdin=tls_config(server, client))
    assert r.returncode == 1
    (err,) = json.loads(r.stdout)["errors"]
    assert (err["line"], err["path"]) == (9, "routers[0].client.tls.clientAuth")
    assert err["message"].startswith(f"the key {pki.client_key} does not belong to the certificate {cc}")


def test_a_static_client_entry_with_a_capture_has_its_files_read(tmp_path: Path) -> None:
    text = (
        "routers:\n"
        "- protocol: http\n"
        "  dtab: /svc => /$/inet/127.0.0.1/1;\n"
        "  client:\n"
        "    kind: io.l5d.static\n"
        "    configs:\n"
        "    - prefix: /$/inet/{host}\n"
        "      tls:\n"
        "        commonName: '{host}'\n"
        f"        trustCerts: [{tmp_path / 'ca.pem'}]\n"
        "  servers: [{port: 0}]\n"
    )
    r = check("--require-files", "-", stdin=text)
    assert r.returncode == 1
    assert r.stderr.startswith(
        f"<stdin>:10: routers[0].client.configs[0].tls.trustCerts[0]: cannot read {tmp_path / 'ca.pem'}: "
    )
    r = check("-", stdin=text)
    assert r.returncode == 0 and "(routers[0].client.configs[0].tls.trustCerts[0])" in r.stdout, r.stdout
    make_pki(tmp_path)
    r = check("-", stdin=text)
    assert (r.returncode, r.stderr) == (0, ""), r.stderr


# -- a malformed per-request dtab header with bytes that are not ASCII --------------------------------


async def raw_request(port: int, request: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
    """Send ``request`` as is (its header bytes untouched) and read the whole answer."""
    with trio.fail_after(20):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(request)
            data = b""
            while chunk := await stream.receive_some(65536):
                data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body


@pytest.mark.parametrize("header", ["l5d-dtab", "l5d-ctx-dtab"])
async def test_non_ascii_bytes_in_a_bad_dtab_header_are_shown_as_escapes(tmp_path: Path, header: str) -> None:
    """``l5d-dtab: /svc/café => ...`` sent as UTF-8 got a 400 whose message showed the bytes decoded
    as ISO-8859-1 (``cafÃ©``, in the body and in ``l5d-err``): not what was sent. They are now shown
    as ``\\xHH`` escapes, with the byte offset, and ``l5d-err`` stays visible ASCII."""
    disco = tmp_path / "disco"
    async with running_upstream() as up:
        write_disco(disco, "web", up.port)
        async with running_daemon(fs_config(disco)) as d:
            value = "/svc/café => /#/io.l5d.fs/web".encode()
            request = (
                b"GET / HTTP/1.1\r\nHost: web\r\n"
                + header.encode()
                + b": "
                + value
                + b"\r\nConnection: close\r\n\r\n"
            )
            status, headers, body = await raw_request(d.port("out"), request)
    assert status == 400
    err = headers[b"l5d-err"]
    assert all(0x21 <= b <= 0x7E for b in err), err
    message = urllib.parse.unquote_plus(err.decode("ascii"), encoding="iso-8859-1")
    assert body.decode("utf-8") == message  # the body is the same message, all ASCII
    assert body.isascii()
    assert message == (
        f"Invalid {header} header: '=>' expected but '\\xc3' found at line 1 column 9 (byte 8)\n"
        "/svc/caf\\xc3\\xa9 => /#/io.l5d.fs/web\n"
        "        ^\n"
        "Bytes that are not visible ASCII are shown as \\xHH; in a dtab, write a character that is not "
        "ASCII as the \\xHH escapes of its UTF-8 bytes.\n"
        "Fix the dentries ('/prefix => /destination', separated by ';')."
    )


async def test_an_ascii_bad_dtab_header_keeps_its_message_with_the_byte_offset(tmp_path: Path) -> None:
    disco = tmp_path / "disco"
    async with running_upstream() as up:
        write_disco(disco, "web", up.port)
        async with running_daemon(fs_config(disco)) as d:
            request = b"GET / HTTP/1.1\r\nHost: web\r\nl5d-dtab: /svc => /a b\r\nConnection: close\r\n\r\n"
            status, headers, body = await raw_request(d.port("out"), request)
    assert status == 400
    assert body == (
        b"Invalid l5d-dtab header: end of input expected but 'b' found at line 1 column 12 (byte 11)\n"
        b"/svc => /a b\n"
        b"           ^\n"
        b"Fix the dentries ('/prefix => /destination', separated by ';')."
    )
