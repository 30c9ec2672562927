"""namerState.dir: saved namer state is input, and must never be worse than no state.

From the adversarial review of last-known-good namer state across restarts: state saved for another
backend (another rootDir, another API server) is not served under the same prefix; a file from a newer
format or an empty file is reported clearly and ignored; an unchanged state is not rewritten;
``hostproxy check`` reports a namerState.dir the daemon could not save into. Real files in temporary
directories, injected clocks; no timings.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import threading
from pathlib import Path as FsPath
from typing import Any

import pytest
import trio
from structlog.testing import capture_logs

from hostproxy.config import load_config
from hostproxy.daemon import Daemon
from hostproxy.namerstate import NamerStateStore
from namers._dtab import Address, Leaf, Path
from namers.fs import FsNamer
from namers.k8s.client import ApiServer
from namers.k8s.namer import K8sNamer

REPO = FsPath(__file__).resolve().parent.parent
KEY = (b"web",)
A1 = Address("10.0.0.1", 8080)


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def fs_namer_with_web(root: FsPath, clock: Clock) -> FsNamer:
    n = FsNamer(root, clock=clock)
    n.touch(KEY)
    n.table.apply_bound(KEY, [A1])
    return n


def load_failures(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == "namer_state.load_failed"]


# -- state saved for another backend --------------------------------------------------------------


def test_fs_state_saved_for_another_root_dir_is_not_served(tmp_path: FsPath) -> None:
    """The same prefix and kind over another rootDir (another config sharing namerState.dir, or the
    namer repointed): its saved names mean other services, so they are not restored; the warning
    names the file, both backends and what to do."""
    state = tmp_path / "state"
    clock = Clock(1_800_000_000.0)
    first = fs_namer_with_web(tmp_path / "staging", clock)
    store = NamerStateStore(state, [first])
    assert store.save(first)
    saved = json.loads((state / "io.l5d.fs.json").read_text())
    assert saved["source"] == {"rootDir": str(tmp_path / "staging")}

    other = FsNamer(tmp_path / "prod", clock=clock)
    with capture_logs() as logs:
        assert NamerStateStore(state, [other]).load_all() == {}
    assert other.table.get(KEY) is None
    [failed] = load_failures(logs)
    assert failed["path"] == str(state / "io.l5d.fs.json")
    assert failed["error"] == (
        f"saved for io.l5d.fs with rootDir={tmp_path / 'staging'!s}, not rootDir={tmp_path / 'prod'!s}: "
        "its names mean other services here"
    )
    assert "replaced at the next save" in failed["hint"]

    same = FsNamer(tmp_path / "staging", clock=clock)
    assert NamerStateStore(state, [same]).load_all() == {"/io.l5d.fs": 1}
    assert isinstance(same.lookup(Path.read("/web")), Leaf)


def test_k8s_state_saved_from_another_api_server_is_not_served(tmp_path: FsPath) -> None:
    """A Kubernetes namer at the same prefix pointed at another cluster's API server must not start
    by routing to the first cluster's pod IPs."""
    clock = Clock(1_800_000_000.0)
    key = (b"default", b"http", b"web")
    first = K8sNamer(ApiServer("127.0.0.1", 6443), clock=clock)
    first.touch(key)
    first.table.apply_bound(key, [A1])
    store = NamerStateStore(tmp_path, [first])
    assert store.save(first)

    other = K8sNamer(ApiServer("127.0.0.2", 6443), clock=clock)
    with capture_logs() as logs:
        assert NamerStateStore(tmp_path, [other]).load_all() == {}
    assert other.table.get(key) is None
    [failed] = load_failures(logs)
    assert "api=http://127.0.0.1:6443, not api=http://127.0.0.2:6443" in failed["error"]

    same = K8sNamer(ApiServer("127.0.0.1", 6443), clock=clock)
    assert NamerStateStore(tmp_path, [same]).load_all() == {"/io.l5d.k8s": 1}


def test_state_saved_without_a_source_or_version_is_still_restored(tmp_path: FsPath) -> None:
    """Files written before the source and the format version were saved stay readable."""
    (tmp_path / "io.l5d.fs.json").write_text(
        json.dumps(
            {
                "kind": "io.l5d.fs",
                "prefix": "/#/io.l5d.fs",
                "names": {"/web": {"addrs": [{"host": "10.0.0.1", "port": 8080}], "lastUpdate": 1.0}},
            }
        )
    )
    namer = FsNamer(tmp_path / "disco")
    assert NamerStateStore(tmp_path, [namer]).load_all() == {"/io.l5d.fs": 1}


# -- files that are not namer state of this version -----------------------------------------------


def test_state_file_of_a_newer_format_is_ignored_with_what_to_do(tmp_path: FsPath) -> None:
    clock = Clock(1_800_000_000.0)
    n = fs_namer_with_web(tmp_path / "disco", clock)
    store = NamerStateStore(tmp_path, [n])
    assert store.save(n)
    path = tmp_path / "io.l5d.fs.json"
    doc = json.loads(path.read_text())
    assert doc["version"] == 1
    doc["version"] = 2
    path.write_text(json.dumps(doc))
    fresh = FsNamer(tmp_path / "disco", clock=clock)
    with capture_logs() as logs:
        assert NamerStateStore(tmp_path, [fresh]).load_all() == {}
    assert len(fresh.table) == 0
    [failed] = load_failures(logs)
    assert (
        failed["error"]
        == "saved in format version 2; this hostproxy reads version 1 (a newer hostproxy wrote it)"
    )


def test_empty_state_file_says_it_is_empty(tmp_path: FsPath) -> None:
    """A file cut short to nothing (a disk that filled, a copy that failed) is named as empty, not
    as a JSON parser's 'Expecting value'."""
    (tmp_path / "io.l5d.fs.json").write_bytes(b"")
    namer = FsNamer(tmp_path / "disco")
    with capture_logs() as logs:
        assert NamerStateStore(tmp_path, [namer]).load_all() == {}
    [failed] = load_failures(logs)
    assert failed["error"] == "the file is empty (a write cut short, or made by hand)"
    assert failed["hint"] == (
        "the namer starts without saved state (names wait for their backend); the file is replaced "
        "at the next save"
    )


def test_truncated_or_binary_state_file_names_the_offset(tmp_path: FsPath) -> None:
    path = tmp_path / "io.l5d.fs.json"
    namer = FsNamer(tmp_path / "disco")
    path.write_text('{"kind": "io.l5d.fs", "prefix": "/#/io.l5d.fs", "names": {"/web": {"addrs": [')
    with capture_logs() as logs:
        assert NamerStateStore(tmp_path, [namer]).load_all() == {}
    [failed] = load_failures(logs)
    assert failed["error"].startswith("not JSON (cut short?): ")
    assert "(char 77)" in failed["error"]
    path.write_bytes(b"\x00\xff\xfe binary")
    with capture_logs() as logs:
        assert NamerStateStore(tmp_path, [namer]).load_all() == {}
    [failed] = load_failures(logs)
    assert failed["error"].startswith("not UTF-8 text at byte 1")


# -- writes -------------------------------------------------------------------------------------------


def test_state_that_did_not_change_is_not_rewritten(tmp_path: FsPath) -> None:
    """A backend that flaps (each new error is a change subscribers hear about) changes nothing that
    is saved: the file is not rewritten (and fsynced) every interval."""
    clock = Clock(1_800_000_000.0)
    n = fs_namer_with_web(tmp_path / "disco", clock)
    store = NamerStateStore(tmp_path / "state", [n])
    assert store.save(n)
    path = tmp_path / "state" / "io.l5d.fs.json"
    inode = path.stat().st_ino
    clock.t += 10
    n.table.apply_failure(KEY, "rootDir gone")
    n.table.apply_failure(KEY, "rootDir unreadable")
    assert store.save(n)
    assert path.stat().st_ino == inode
    assert store.statistics()["saves"] == 1
    clock.t += 10
    n.table.apply_bound(KEY, [A1, Address("10.0.0.2", 8080)])
    assert store.save(n)
    assert path.stat().st_ino != inode
    assert store.statistics()["saves"] == 2


def test_a_file_removed_behind_the_store_is_written_again(tmp_path: FsPath) -> None:
    clock = Clock(1_800_000_000.0)
    n = fs_namer_with_web(tmp_path / "disco", clock)
    store = NamerStateStore(tmp_path, [n])
    assert store.save(n)
    (tmp_path / "io.l5d.fs.json").unlink()
    assert store.save(n)
    assert (tmp_path / "io.l5d.fs.json").exists()


# -- hostproxy check ----------------------------------------------------------------------------------


def check(stdin: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hostproxy", "check", "-"],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )


def state_config(state_dir: FsPath) -> str:
    return (
        f"namerState: {{dir: {state_dir}}}\n"
        "routers:\n"
        "- protocol: http\n"
        "  dtab: /svc => /$/inet/127.0.0.1/1;\n"
        "  servers: [{port: 0}]\n"
    )


def test_check_reports_a_namer_state_dir_the_daemon_cannot_save_into(tmp_path: FsPath) -> None:
    afile = tmp_path / "afile"
    afile.write_text("")
    r = check(state_config(afile))
    assert r.returncode == 1
    assert r.stderr == (
        f"<stdin>:1: namerState.dir: namerState.dir {afile} is not a directory; point it at a "
        "directory the daemon can write (it is created if missing)\n"
        "-: 1 error\n"
    )
    r = check(state_config(afile / "sub" / "state"))
    assert r.returncode == 1
    assert r.stderr.startswith(
        f"<stdin>:1: namerState.dir: cannot create namerState.dir {afile / 'sub' / 'state'}: {afile} is not "
        "a directory"
    )
    # a directory that does not exist yet is created by the daemon (with its parents)
    r = check(state_config(tmp_path / "new" / "state"))
    assert (r.returncode, r.stderr) == (0, ""), r.stderr
    (tmp_path / "state").mkdir()
    r = check(state_config(tmp_path / "state"))
    assert (r.returncode, r.stderr) == (0, ""), r.stderr


def test_state_file_that_is_a_fifo_or_a_device_does_not_hold_the_start(tmp_path: FsPath) -> None:
    """``open`` on a named pipe waits for a writer and /dev/zero never ends: a state file that is
    either (a mistake, or a symlink to elsewhere) is reported, and the start goes on."""
    import os
    import threading

    path = tmp_path / "io.l5d.fs.json"
    results: list[Any] = []

    def load() -> None:
        with capture_logs() as logs:
            results.append((NamerStateStore(tmp_path, [FsNamer(tmp_path / "disco")]).load_all(), logs))

    for make in (lambda: os.mkfifo(path), lambda: path.symlink_to("/dev/zero")):
        make()
        results.clear()
        t = threading.Thread(target=load, daemon=True)
        t.start()
        t.join(30)  # a bound, not a measurement: the load returns at once when it does not block
        assert not t.is_alive(), "loading the state file blocked the start"
        [(restored, logs)] = results
        assert restored == {}
        [failed] = load_failures(logs)
        assert "not a regular file" in failed["error"]
        path.unlink()


# -- reload --------------------------------------------------------------------------------------------


async def wait_for(pred: Any, timeout: float = 30.0) -> Any:
    """Poll ``pred`` until truthy; fail after ``timeout`` seconds (a bound, not a measurement)."""
    import trio

    with trio.fail_after(timeout):
        while True:
            v = pred()
            if v:
                return v
            await trio.sleep(0.05)


def reload_config(root: FsPath, state: FsPath) -> str:
    return f"""
admin: {{ip: 127.0.0.1, port: 0, shutdownGraceMs: 60000}}
namerState: {{dir: {state}}}
namers:
- kind: io.l5d.fs
  rootDir: {root}
routers:
- protocol: http
  label: out
  dtab: /svc => /#/io.l5d.fs;
  servers: [{{ip: 127.0.0.1, port: 0}}]
"""


def saved_source(path: FsPath) -> Any:
    try:
        return json.loads(path.read_text()).get("source")
    except (OSError, ValueError):
        return None


async def test_namers_retired_by_a_reload_do_not_overwrite_the_new_namers_state(tmp_path: FsPath) -> None:
    """A reload that rebuilds the namers (here: a new rootDir) leaves the old ones running while
    requests that started on them finish; their store must not write their state over the file the
    new namers now own, or a crash after the reload restarts on the old backend's state."""
    import trio

    from hostproxy.config import load_config
    from hostproxy.daemon import Daemon
    from tests.daemonutil import curl
    from tests.upstreams import running_upstream

    got, release = trio.Event(), trio.Event()

    async def held(stream: trio.SocketStream) -> None:
        buf = b""
        while b"\r\n\r\n" not in buf:
            data = await stream.receive_some(4096)
            if not data:
                return
            buf += data
        got.set()
        await release.wait()
        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
        await stream.aclose()

    state = tmp_path / "state"
    saved = state / "io.l5d.fs.json"
    old_root, new_root = tmp_path / "old", tmp_path / "new"
    old_root.mkdir()
    new_root.mkdir()
    cfg = tmp_path / "hostproxy.yaml"
    async with trio.open_nursery() as outer, running_upstream() as app:
        [listener] = await outer.start(functools.partial(trio.serve_tcp, held, 0, host="127.0.0.1"))
        (old_root / "web").write_text(f"127.0.0.1 {listener.socket.getsockname()[1]}\n")
        (new_root / "web").write_text(f"127.0.0.1 {app.port}\n")
        cfg.write_text(reload_config(old_root, state))
        daemon = Daemon(load_config(cfg.read_text(), source=str(cfg)), config_path=str(cfg))
        async with trio.open_nursery() as nursery:
            await nursery.start(daemon.run)
            port = daemon.addresses["out"][0][1]
            results: list[Any] = []

            async def slow() -> None:
                results.append(await curl(f"http://127.0.0.1:{port}/", "-H", "Host: web", timeout=120))

            nursery.start_soon(slow)
            await wait_for(got.is_set)
            await wait_for(lambda: saved_source(saved) == {"rootDir": str(old_root)})
            old = daemon._namers

            cfg.write_text(reload_config(new_root, state))
            ok, message = await daemon.reload()
            assert ok, message
            r = await curl(f"http://127.0.0.1:{port}/", "-H", "Host: web")
            assert r.status == 200
            await wait_for(lambda: saved_source(saved) == {"rootDir": str(new_root)})

            release.set()  # the request on the old namers finishes: they are retired
            await wait_for(lambda: results)
            assert results[0].status == 200
            await wait_for(lambda: old.scope.cancelled_caught)
            assert saved_source(saved) == {"rootDir": str(new_root)}
            daemon.request_shutdown()
        outer.cancel_scope.cancel()
    assert saved_source(saved) == {"rootDir": str(new_root)}


# -- fresh answers replace restored ones -------------------------------------------------------------


async def test_a_service_deleted_while_the_daemon_was_down_is_not_kept_alive_by_saved_state(
    tmp_path: FsPath,
) -> None:
    """Restart with the API server up and the Service gone: the backend's "no such service" replaces
    the restored endpoints at once; no request goes to them, and the next save drops them."""
    from k8s_api.objects import endpoints, service
    from k8s_api.server import open_fake_api

    from tests.daemonutil import curl, running_daemon
    from tests.test_namer_state_e2e import config
    from tests.upstreams import running_upstream

    state = tmp_path / "state"
    async with open_fake_api() as api, running_upstream() as app:
        api.put("services", service("web", [("http", 80, "http")], ns="default"))
        api.put("endpoints", endpoints("web", ready=["127.0.0.1"], ports={"http": app.port}, ns="default"))
        async with running_daemon(config(api.port, state)) as d:
            r = await curl(f"http://127.0.0.1:{d.port('out')}/", "-H", "Host: web")
            assert r.status == 200
        saved = json.loads((state / "io.l5d.k8s.json").read_text())
        assert list(saved["names"]) == ["/default/http/web"]
        assert oct((state / "io.l5d.k8s.json").stat().st_mode & 0o777) == "0o600"

        api.delete("endpoints", "default", "web")
        api.delete("services", "default", "web")
        async with running_daemon(config(api.port, state)) as d:
            r = await curl(f"http://127.0.0.1:{d.port('out')}/", "-H", "Host: web")
            assert r.status != 200
            names = (await curl(f"{d.admin}/namer_state/io.l5d.k8s.json")).json()["names"]  # type: ignore[index]
            assert names["default/http/web"]["state"] == "neg"
        assert len(app.requests) == 1
        assert json.loads((state / "io.l5d.k8s.json").read_text())["names"] == {}


def test_fs_file_removed_while_the_daemon_was_down_is_negative_at_the_first_scan(tmp_path: FsPath) -> None:
    """The fs namer's first look at a restored name whose file is gone (rootDir there) is negative:
    no settle delay keeps the restored addresses (that delay is for a file it saw being rewritten)."""
    from namers.fs import Missing

    root = tmp_path / "disco"
    root.mkdir()
    clock = Clock(1_800_000_000.0)
    first = fs_namer_with_web(root, clock)
    NamerStateStore(tmp_path / "state", [first]).save(first)
    again = FsNamer(root, clock=clock)
    assert NamerStateStore(tmp_path / "state", [again]).load_all() == {"/io.l5d.fs": 1}
    assert again.core.apply(KEY, Missing(), clock.t)
    assert again.table.get(KEY).state == "neg"  # type: ignore[union-attr]


# -- confirmation times: the age a restart shows ------------------------------------------------------


def test_fs_scan_that_finds_a_file_unchanged_confirms_its_answer(tmp_path: FsPath) -> None:
    """``lastConfirmed`` (and the saved ``lastUpdate`` a restart ages a restored answer from) is
    when the namer last saw the answer hold, not when the file last changed: a file untouched for
    months is not "stale for 90d" after a restart, nor dropped from saved state as expired."""
    import time

    from namers.base import NameTable, format_time
    from namers.fs import RACY_WINDOW_NS, FsCore, observe

    (tmp_path / "web").write_text("10.0.0.1 8080\n")
    later = time.time_ns() + 10 * RACY_WINDOW_NS  # read well after the write: not racy
    clock = Clock(1_800_000_000.0)
    table = NameTable(clock)
    table.touch(KEY)
    core = FsCore(table, str(tmp_path))
    first = observe(str(tmp_path), KEY, None, False, now_ns=lambda: later)
    assert core.apply(KEY, first, 0.0)
    clock.t += 90 * 24 * 3600
    [(key, sig, force)] = core.requests(1.0)
    assert not force
    again = observe(str(tmp_path), key, sig, force, now_ns=lambda: later)
    assert not core.apply(KEY, again, 1.0)  # unchanged: no change
    st = table.get(KEY)
    assert st is not None and st.state == "bound"
    assert st.confirmed_at == clock.t
    assert st.to_json(clock.t)["lastConfirmed"] == format_time(clock.t)


async def test_confirmations_reach_the_file_though_nothing_changes(
    tmp_path: FsPath, autojump_clock: Any
) -> None:
    """A stable answer notifies no one, so without a periodic save the file keeps the time of the
    last change, and a restart after a crash (no final save) shows the answer older than it is."""
    import trio

    from hostproxy.namerstate import REFRESH_S

    clock = Clock(1_800_000_000.0)
    n = fs_namer_with_web(tmp_path / "disco", clock)
    store = NamerStateStore(tmp_path / "state", [n])
    assert store.save(n)
    path = tmp_path / "state" / "io.l5d.fs.json"
    clock.t += 3600
    assert not n.table.apply_bound(KEY, [A1])  # confirmed, unchanged: no notification
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        await trio.sleep(REFRESH_S / 2)
        assert store.saves == 1
        assert json.loads(path.read_text())["names"]["/web"]["lastUpdate"] == clock.t - 3600
        await trio.sleep(REFRESH_S / 2)
        with trio.fail_after(REFRESH_S * 5):  # virtual seconds
            while store.saves == 1:  # the write runs in a worker thread, outside the virtual clock
                await trio.sleep(1)
        assert json.loads(path.read_text())["names"]["/web"]["lastUpdate"] == clock.t
        saves = store.saves
        await trio.sleep(REFRESH_S * 3)  # nothing new confirmed: nothing rewritten
        assert store.saves == saves
        nursery.cancel_scope.cancel()


async def test_a_reload_reads_the_state_files_off_the_event_loop(
    tmp_path: FsPath, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reload that rebuilds the namers loads their saved state; a large file takes seconds to
    decode (64 MiB: about 4 s), which on the event loop would stall every proxied request. The
    start may read it there (nothing is served yet); a reload must not."""
    threads: list[bool] = []
    load_all = NamerStateStore.load_all

    def recording(self: NamerStateStore) -> dict[str, int]:
        threads.append(threading.current_thread() is threading.main_thread())
        return load_all(self)

    monkeypatch.setattr(NamerStateStore, "load_all", recording)
    old_root, new_root = tmp_path / "old", tmp_path / "new"
    old_root.mkdir()
    new_root.mkdir()
    cfg = tmp_path / "hostproxy.yaml"
    cfg.write_text(reload_config(old_root, tmp_path / "state"))
    daemon = Daemon(load_config(cfg.read_text(), source=str(cfg)), config_path=str(cfg))
    assert threads == [True]  # the start
    async with trio.open_nursery() as nursery:
        await nursery.start(daemon.run)
        cfg.write_text(reload_config(new_root, tmp_path / "state"))
        ok, message = await daemon.reload()
        assert ok, message
        assert daemon._namers.state_store is not None
        assert daemon._namers.state_store.namers[0].root_dir == str(new_root)
        daemon.request_shutdown()
    assert threads == [True, False]


def test_an_answer_json_cannot_encode_is_a_failed_save_not_a_crash(tmp_path: FsPath) -> None:
    """The store's task runs beside the namers: an exception out of a save would end them all."""
    clock = Clock(1_800_000_000.0)
    n = fs_namer_with_web(tmp_path / "disco", clock)
    store = NamerStateStore(tmp_path, [n])
    assert store.save(n)
    before = (tmp_path / "io.l5d.fs.json").read_bytes()
    n.table.apply_bound(KEY, [Address("10.0.0.1", 8080, 1.0, {"zone": {1, 2}})])
    with capture_logs() as logs:
        assert store.save(n) is False
    assert (tmp_path / "io.l5d.fs.json").read_bytes() == before
    [failed] = [e for e in logs if e["event"] == "namer_state.save_failed"]
    assert "JSON cannot encode" in failed["hint"]


def test_temporary_files_left_by_a_crash_mid_write_are_removed_at_start(tmp_path: FsPath) -> None:
    """A crash between creating the temporary file and renaming it leaves the temporary file (the
    state file itself is intact); a daemon in a crash loop must not fill the disk with them. One
    older than an hour is removed at start; a recent one may be another writer's, and stays."""
    import os
    import time

    clock = Clock(1_800_000_000.0)
    n = fs_namer_with_web(tmp_path / "disco", clock)
    assert NamerStateStore(tmp_path, [n]).save(n)
    old = tmp_path / ".io.l5d.fs.json.k2j3h4"
    recent = tmp_path / ".io.l5d.fs.json.a8s7d6"
    other = tmp_path / ".notes.json.q1w2e3"
    for f in (old, recent, other):
        f.write_text('{"kind": "io.l5d.fs", "pre')
    hours_ago = time.time() - 2 * 3600
    for f in (old, other):
        os.utime(f, (hours_ago, hours_ago))
    again = FsNamer(tmp_path / "disco", clock=clock)
    with capture_logs() as logs:
        assert NamerStateStore(tmp_path, [again]).load_all() == {"/io.l5d.fs": 1}
    assert not old.exists()
    assert recent.exists() and other.exists()
    [removed] = [e for e in logs if e["event"] == "namer_state.temporary_removed"]
    assert removed["path"] == str(old)


def test_a_state_file_that_is_a_symlink_is_replaced_not_written_through(tmp_path: FsPath) -> None:
    """A save never writes into whatever a symlink at the state file's path points at: the rename
    replaces the link itself."""
    target = tmp_path / "elsewhere"
    target.write_text("not namer state\n")
    state = tmp_path / "state"
    state.mkdir()
    (state / "io.l5d.fs.json").symlink_to(target)
    clock = Clock(1_800_000_000.0)
    n = fs_namer_with_web(tmp_path / "disco", clock)
    store = NamerStateStore(state, [n])
    with capture_logs() as logs:
        assert store.load_all() == {}  # read through the link: not namer state, reported
    assert load_failures(logs)
    assert store.save(n)
    assert target.read_text() == "not namer state\n"
    assert not (state / "io.l5d.fs.json").is_symlink()


def test_many_bad_names_in_one_file_are_summarised_not_logged_one_by_one(tmp_path: FsPath) -> None:
    """A file from a broken writer can hold a thousand bad names: ten warnings name the first, one
    more says how many others were skipped."""
    names: dict[str, Any] = {f"/bad{i}": {"addrs": [{"host": "10.0.0.1", "port": 0}]} for i in range(50)}
    names["/good"] = {"addrs": [{"host": "10.0.0.1", "port": 8080}]}
    (tmp_path / "io.l5d.fs.json").write_text(
        json.dumps({"kind": "io.l5d.fs", "prefix": "/#/io.l5d.fs", "names": names})
    )
    namer = FsNamer(tmp_path / "disco")
    with capture_logs() as logs:
        assert NamerStateStore(tmp_path, [namer]).load_all() == {"/io.l5d.fs": 1}
    warnings = [e for e in logs if e["event"] == "namer.state.restore.failed"]
    assert [e["name"] for e in warnings[:10]] == [f"/bad{i}" for i in range(10)]
    assert len(warnings) == 11
    assert warnings[10]["name"] is None
    assert (
        warnings[10]["error"] == "40 more saved names were skipped as invalid (only the first 10 are named)"
    )
