"""A filesystem that stops answering, and a reload that takes long to validate.

io.l5d.fs: a scan that has not finished within its bound (a hung NFS mount) marks the names as a
namer failure does (stale, last good addresses served, the error in the namer state, in
``/client_state.json`` and in ``hostproxy wtf``), starts no second scan, and is cleared when the scan
returns. The pure part runs on an injected clock; the trio part and the daemon run a scan held in a
real blocking ``open(2)`` of a FIFO (a reader waits there until a writer comes), released by the test.
Waits are bounded polls of observable state, never timings.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path as FsPath
from typing import Any

import pytest
import trio

import namers.fs as fsmod
from hostproxy.daemon import prepare_reload
from hostproxy.dtabfile import DtabFileError, DtabFileWatcher
from namers._dtab import PENDING, Leaf, NamerError, Path
from namers.base import NameTable
from namers.fs import (
    FileText,
    FsCore,
    FsNamer,
    Missing,
    Unchanged,
    default_scan_timeout,
    scan,
)
from tests.daemonutil import curl, fs_config, running_daemon
from tests.test_lifecycle_helpers import config as lifecycle_config
from tests.test_lifecycle_helpers import daemon_proc, get
from tests.test_lifecycle_helpers import write_disco as write_disco_ports
from tests.upstreams import running_upstream

WEB, API, GONE, BAD, NEW = (b"web",), (b"api",), (b"gone",), (b"bad",), (b"new",)


async def wait_for(pred: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Poll ``pred`` until truthy; fail after ``timeout`` seconds (a bound, not a measurement)."""
    with trio.fail_after(timeout):
        while True:
            v = pred()
            if v:
                return v
            await trio.sleep(0.01)


def hosts(table: NameTable, key: tuple[bytes, ...]) -> list[tuple[str, int]] | None:
    st = table.get(key)
    return None if st is None or st.addr is None else [(a.host, a.port) for a in st.addr]


# == the pure part: FsCore on an injected clock =====================================================


def test_default_bound_is_a_multiple_of_the_poll_interval_with_a_floor() -> None:
    assert default_scan_timeout(0.25) == 10.0  # the default poll interval
    assert default_scan_timeout(0.01) == 10.0  # the floor
    assert default_scan_timeout(1.0) == 40.0


def make_core() -> tuple[NameTable, FsCore]:
    """Names in each state a hang can meet: web bound, gone negative, bad stale (malformed after a
    good read), api pending (never answered)."""
    table = NameTable(lambda: 1000.0)
    for key in (WEB, GONE, BAD, API):
        table.touch(key)
    core = FsCore(table, "/disco", settle=0.5, scan_timeout=10.0)
    core.begin_scan(0.0)
    core.apply_scan(
        None,
        [
            (WEB, FileText((1, 1, 12, 1, 1), "10.0.0.1 80\n")),
            (GONE, Missing()),
            (BAD, FileText((1, 2, 12, 1, 1), "10.0.0.2 80\n")),
        ],
        0.0,
    )
    core.apply_scan(None, [(BAD, FileText((1, 2, 9, 2, 2), "not an address\n"))], 1.0)
    assert [table.get(k).state for k in (WEB, GONE, BAD, API)] == ["bound", "neg", "stale", "pending"]
    return table, core


def test_scan_past_its_bound_marks_names_failed_keeping_last_good_answers() -> None:
    table, core = make_core()
    malformed = table.get(BAD).last_error
    assert malformed is not None and malformed.startswith("/disco/bad:1:")
    core.begin_scan(100.0)
    assert core.deadline() == 110.0
    assert core.mark_hung(109.999) == [] and not core.hung  # within the bound: nothing happens

    changed = core.mark_hung(110.0)

    assert set(changed) == {WEB, BAD, API} and core.hung and core.hangs == 1
    web = table.get(WEB)
    assert (web.state, hosts(table, WEB)) == ("stale", [("10.0.0.1", 80)])
    assert web.last_error == core.hang_error
    assert "a scan has not finished within 10s" in core.hang_error and "/disco" in core.hang_error
    assert table.get(BAD).state == "stale" and table.get(BAD).last_error == core.hang_error
    assert table.get(API).state == "failed"  # nothing to keep: fails at once instead of waiting
    assert table.get(GONE).state == "neg"  # its last good answer: a dtab alternative still applies
    # repeating it changes nothing; a name looked up during the hang fails the same way
    assert core.mark_hung(111.0) == []
    table.touch(NEW)
    assert core.mark_hung(112.0) == [NEW] and table.get(NEW).last_error == core.hang_error
    assert core.hangs == 1


def test_completed_scan_clears_the_hang_and_unchanged_files_get_their_answer_back() -> None:
    table, core = make_core()
    malformed = table.get(BAD).last_error
    web_version = table.get(WEB).version
    core.begin_scan(100.0)
    core.mark_hung(110.0)

    changed = core.apply_scan(
        None,
        [
            (WEB, Unchanged()),
            (GONE, Missing()),
            (BAD, Unchanged()),
            (API, FileText((1, 3, 12, 1, 1), "10.0.0.3 80\n")),
        ],
        130.0,
    )

    assert not core.hung and core.deadline() is None
    assert set(changed) == {WEB, BAD, API}
    assert (table.get(WEB).state, hosts(table, WEB)) == ("bound", [("10.0.0.1", 80)])
    assert table.get(WEB).last_error is None and table.get(WEB).version > web_version
    assert (table.get(BAD).state, table.get(BAD).last_error) == ("stale", malformed)
    assert (table.get(API).state, hosts(table, API)) == ("bound", [("10.0.0.3", 80)])
    assert table.get(GONE).state == "neg"
    # the next scan has nothing to restore
    core.begin_scan(131.0)
    assert core.apply_scan(None, [(WEB, Unchanged()), (BAD, Unchanged())], 131.0) == []


def test_name_looked_up_during_the_hang_and_missing_from_the_scan_is_read_next() -> None:
    table, core = make_core()
    core.begin_scan(100.0)
    table.touch(NEW)
    core.mark_hung(110.0)
    assert table.get(NEW).state == "failed"
    core.apply_scan(None, [(WEB, Unchanged())], 120.0)  # a scan that started before NEW was asked for
    assert (NEW, None, False) in core.requests(120.0)


# == the trio part: a scan held in a real blocking open(2) ==========================================


class FifoGate:
    """The real :func:`scan`, made to wait first in ``open(2)`` of a FIFO for reading while
    :attr:`blocked`; :meth:`release` opens the FIFO for writing, which lets it through. Counts how
    many scans ran at once."""

    def __init__(self, fifo: FsPath) -> None:
        os.mkfifo(fifo)
        self.fifo = fifo
        self.blocked = threading.Event()
        self.waiting = threading.Event()
        self.lock = threading.Lock()
        self.entered = self.active = self.max_active = 0
        self.scan = scan  # the real one, even when the module's is replaced by this gate

    def __call__(self, root: str, requests: Sequence[Any]) -> Any:
        with self.lock:
            self.entered += 1
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            if self.blocked.is_set():
                self.waiting.set()
                with open(self.fifo, "rb") as f:  # blocks in open(2) until a writer opens it
                    f.read()
                self.waiting.clear()
            return self.scan(root, requests)
        finally:
            with self.lock:
                self.active -= 1

    def release(self) -> None:
        """Let a waiting scan through (blocking until it has opened the FIFO: run in a thread)."""
        self.blocked.clear()
        os.close(os.open(self.fifo, os.O_WRONLY))

    def release_if_waiting(self) -> None:
        """Cleanup: never leave a thread behind in open(2)."""
        self.blocked.clear()
        try:
            os.close(os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass  # ENXIO: no reader waiting


def write(root: FsPath, name: str, text: str) -> None:
    tmp = root / f".{name}.tmp"
    tmp.write_text(text)
    tmp.rename(root / name)


async def test_hung_scan_marks_names_stale_serves_last_good_and_starts_no_other_scan(
    tmp_path: FsPath,
) -> None:
    root = tmp_path / "disco"
    root.mkdir()
    write(root, "web", "127.0.0.1 8080\n")
    gate = FifoGate(tmp_path / "hang.fifo")
    n = FsNamer(root, poll_interval=0.02, scan_timeout=0.3, scanner=gate)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(n.run)
            n.lookup(Path.read("/web"))
            await wait_for(lambda: hosts(n.table, WEB) == [("127.0.0.1", 8080)])

            gate.blocked.set()
            await wait_for(lambda: n.table.get(WEB).state == "stale")
            scans = gate.entered

            st = n.table.get(WEB)
            assert st.last_error == n.core.hang_error and hosts(n.table, WEB) == [("127.0.0.1", 8080)]
            tree = n.lookup(Path.read("/web/rest"))
            assert isinstance(tree, Leaf)
            assert [(a.host, a.port) for a in tree.value.addr.addresses] == [("127.0.0.1", 8080)]
            body = n.state_json()
            assert body["names"]["web"]["state"] == "stale"
            assert body["names"]["web"]["lastError"] == n.core.hang_error
            assert body["scan"]["hung"] is True and body["scan"]["running"] is True
            assert body["scan"]["lastError"] == n.core.hang_error and body["scan"]["timeoutSecs"] == 0.3
            assert n.statistics()["scan_hung"] is True
            # a name asked for during the hang fails (on the wake-up its lookup gives) instead of
            # waiting for a scan
            assert n.lookup(Path.read("/api")) is PENDING
            await wait_for(lambda: n.table.get(API).state == "failed")
            with pytest.raises(NamerError, match="has not finished within"):
                n.lookup(Path.read("/api"))
            # many poll intervals (and wake-ups by new names) later, still the one scan thread
            for i in range(20):
                if i < 3:
                    n.lookup(Path.read(f"/more{i}"))
                await trio.sleep(0.02)
            assert gate.waiting.is_set() and gate.entered == scans and gate.max_active == 1

            write(root, "web", "127.0.0.1 8081\n")  # changed while the filesystem hung
            write(root, "api", "127.0.0.1 9090\n")
            await trio.to_thread.run_sync(gate.release)

            await wait_for(lambda: hosts(n.table, WEB) == [("127.0.0.1", 8081)])
            await wait_for(lambda: hosts(n.table, API) == [("127.0.0.1", 9090)])
            assert n.table.get(WEB).state == "bound" and n.table.get(WEB).last_error is None
            await wait_for(lambda: n.table.get((b"more0",)).state == "neg")  # no such file
            body = n.state_json()
            assert body["scan"]["hung"] is False and body["scan"]["hangs"] == 1
            assert body["scan"]["lastError"] is None
            assert gate.max_active == 1
            nursery.cancel_scope.cancel()
    finally:
        gate.release_if_waiting()


async def test_first_scan_hanging_does_not_hold_the_start_forever(tmp_path: FsPath) -> None:
    """The daemon waits for each namer's first scan before it serves; a first scan that hangs ends
    that wait at the bound, with the names failed rather than pending."""
    root = tmp_path / "disco"
    root.mkdir()
    gate = FifoGate(tmp_path / "hang.fifo")
    gate.blocked.set()
    n = FsNamer(root, poll_interval=0.02, scan_timeout=0.2, scanner=gate)
    n.table.touch(WEB)  # looked up before the namer started
    try:
        async with trio.open_nursery() as nursery:
            with trio.fail_after(10):
                await nursery.start(n.run)
            assert n.core.hung and n.table.get(WEB).state == "failed"
            await trio.to_thread.run_sync(gate.release)
            await wait_for(lambda: n.table.get(WEB).state == "neg")
            nursery.cancel_scope.cancel()
    finally:
        gate.release_if_waiting()


async def test_cancelling_a_namer_with_a_hung_scan_returns(tmp_path: FsPath) -> None:
    """Shutdown (or a reload retiring the namer) is not held by a scan stuck in the kernel."""
    root = tmp_path / "disco"
    root.mkdir()
    gate = FifoGate(tmp_path / "hang.fifo")
    n = FsNamer(root, poll_interval=0.02, scan_timeout=0.2, scanner=gate)
    try:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                await nursery.start(n.run)
                gate.blocked.set()
                await wait_for(lambda: n.core.hung)
                nursery.cancel_scope.cancel()
    finally:
        gate.release_if_waiting()


# == the daemon: the admin API, /client_state.json and hostproxy wtf ================================


async def wtf_json(admin: str) -> dict[str, Any]:
    proc = await trio.run_process(
        [sys.executable, "-m", "hostproxy", "wtf", "--admin", admin, "--json"],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    doc = json.loads(proc.stdout)
    assert isinstance(doc, dict)
    return doc


async def test_daemon_serves_last_good_and_reports_the_hang_until_the_filesystem_answers(
    tmp_path: FsPath, monkeypatch: pytest.MonkeyPatch
) -> None:
    disco = tmp_path / "disco"
    disco.mkdir()
    gate = FifoGate(tmp_path / "hang.fifo")
    monkeypatch.setattr(fsmod, "scan", gate)  # the namer the daemon builds scans through the gate
    monkeypatch.setattr(fsmod, "SCAN_TIMEOUT_FLOOR", 0.5)
    monkeypatch.setattr(fsmod, "SCAN_TIMEOUT_POLLS", 1)
    try:
        async with running_upstream() as up:
            write(disco, "web", f"127.0.0.1 {up.port}\n")
            async with running_daemon(fs_config(disco)) as d:
                base = f"http://127.0.0.1:{d.port('out')}"
                assert (await curl(base, "-H", "Host: web")).status == 200

                gate.blocked.set()

                async def namer_state() -> dict[str, Any]:
                    doc = (await curl(f"{d.admin}/namer_state/io.l5d.fs.json")).json()
                    assert isinstance(doc, dict)
                    return doc

                with trio.fail_after(15):
                    while (await namer_state())["names"]["web"]["state"] != "stale":
                        await trio.sleep(0.05)
                doc = await namer_state()
                scans = gate.entered
                hang = doc["scan"]["lastError"]
                assert doc["scan"]["hung"] is True and "a scan has not finished within 0.5s" in hang
                assert doc["names"]["web"]["lastError"] == hang
                assert doc["names"]["web"]["addrs"][0]["port"] == up.port

                # traffic still goes to the last good address
                assert [(await curl(base, "-H", "Host: web")).status for _ in range(3)] == [200] * 3
                clients = (await curl(f"{d.admin}/client_state.json")).json()
                assert isinstance(clients, dict)
                assert clients["/#/io.l5d.fs/web"]["stale"] is True

                found = {(f["service"], f["cause"]): f for f in (await wtf_json(d.admin))["findings"]}
                f = found[("/svc/web", "naming/stale")]
                assert f["client"] == "/#/io.l5d.fs/web"
                assert "a scan has not finished within 0.5s" in f["verdict"]
                proc = await trio.run_process(
                    [sys.executable, "-m", "hostproxy", "state", "--admin", d.admin],
                    capture_stdout=True,
                    check=False,
                )
                out = proc.stdout.decode()
                assert "/io.l5d.fs (io.l5d.fs, 1 name)  scan hung since " in out, out
                assert "a scan has not finished within 0.5s" in out
                # seconds of poll intervals later: no scan started beside the hung one
                assert gate.entered == scans and gate.max_active == 1

                await trio.to_thread.run_sync(gate.release)
                with trio.fail_after(15):
                    while (await namer_state())["names"]["web"]["state"] != "bound":
                        await trio.sleep(0.05)
                assert (await namer_state())["scan"]["hung"] is False
                found = {(f["service"], f["cause"]) for f in (await wtf_json(d.admin))["findings"]}
                assert ("/svc/web", "naming/stale") not in found
                assert (await curl(base, "-H", "Host: web")).status == 200
    finally:
        gate.release_if_waiting()


def test_scan_refuses_a_fifo_without_opening_it(tmp_path: FsPath) -> None:
    """What the namer does with a FIFO in rootDir: refuses it as not a regular file (opening it would
    wait for a writer), keeping the name's last good addresses."""
    os.mkfifo(tmp_path / "web")
    root_error, obs = scan(str(tmp_path), [(WEB, None, False)])
    assert root_error is None
    ((key, o),) = obs
    assert key == WEB and "is not a regular file" in getattr(o, "message", "")


# == reload: reading and validating off the event loop ================================================


async def feed_fifo(path: FsPath, text: str, timeout: float = 20) -> None:
    """Write ``text`` to the FIFO at ``path`` once a reader has it open (waiting in open(2)), then
    close it (the reader sees the end). Opening for writing without blocking fails with ENXIO while
    no reader is there, so this polls, bounded."""
    with trio.fail_after(timeout):
        while True:
            try:
                fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as e:
                if e.errno != errno.ENXIO:
                    raise
                await trio.sleep(0.02)
                continue
            break
    try:
        os.set_blocking(fd, True)
        await trio.to_thread.run_sync(os.write, fd, text.encode())
    finally:
        os.close(fd)


async def test_reload_reads_and_validates_off_the_loop_in_order_last_wins(tmp_path: FsPath) -> None:
    """The config file is replaced by a FIFO, so each reload's read waits in open(2) until the test
    writes the config into it: a real blocking read, as a config on a hung filesystem would be (or
    a large one that takes long to validate). While two reloads wait, requests (and the admin
    server) are answered on the running config; then the first applies, then the second (the last
    asked for is in force); an invalid config through the same path is rejected with FILE:LINE."""
    async with running_upstream() as a, running_upstream() as b, running_upstream() as c:
        disco = tmp_path / "disco"
        for name, up in (("a", a), ("b", b), ("c", c)):
            write_disco_ports(disco, name, up.port)
        cfg = tmp_path / "hostproxy.yaml"

        def route(to: str) -> str:
            return lifecycle_config(disco, dtab=f"/svc/web => /#/io.l5d.fs/{to};")

        cfg.write_text(route("a"))
        async with daemon_proc(cfg) as d:
            port = d.port("out")

            async def served_by(up: Any, n: int = 3) -> None:
                before = len(up.requests)
                for _ in range(n):
                    r = await get(port, "/")
                    assert (r.outcome, r.status) == ("ok", 200), r
                assert len(up.requests) == before + n

            await served_by(a)
            fifo = tmp_path / "cfg.fifo"
            os.mkfifo(fifo)
            os.rename(fifo, cfg)  # from now on a reload's read of the config waits for a writer

            d.send(signal.SIGHUP)
            await d.wait_event("daemon.signal", where=lambda e: e.get("signal") == "SIGHUP")
            await served_by(a)  # the first reload is waiting in open(2): traffic goes on
            d.send(signal.SIGHUP)
            await d.wait_event("daemon.signal", count=2, where=lambda e: e.get("signal") == "SIGHUP")
            await served_by(a)
            admin = await get(d.admin_port, "/admin/ping", host="admin")
            assert (admin.outcome, admin.status) == ("ok", 200)
            assert d.events("daemon.reloaded") == []

            await feed_fifo(cfg, route("b"))  # the first reload reads this
            first = await d.wait_event("daemon.reloaded")
            assert first["generation"] == 2
            await served_by(b)
            await feed_fifo(cfg, route("c"))  # the second one, queued behind it, reads this
            second = await d.wait_event("daemon.reloaded", count=2)
            assert second["generation"] == 3
            await served_by(c)

            d.send(signal.SIGHUP)
            await feed_fifo(cfg, route("b") + "bogusKey: 1\n")
            failed = await d.wait_event("daemon.reload_failed")
            line = route("b").count("\n") + 1
            assert f"{cfg}:{line}:" in failed["error"] and "bogusKey" in failed["error"]
            assert failed["error"].startswith("reload rejected, the running config stays: 1 error(s)")
            await served_by(c)


def test_prepare_reload_parses_what_the_config_names_and_reports_errors_at_their_line(
    tmp_path: FsPath,
) -> None:
    """The part of a reload that runs in the worker thread: it reads only the paths it is given,
    loads the dtab files not already watched, keeps the ones that are, and reports a dtab file that
    cannot be used at the config line that names it."""
    disco = tmp_path / "disco"
    disco.mkdir()
    kept, new, bad = tmp_path / "kept.dtab", tmp_path / "new.dtab", tmp_path / "bad.dtab"
    kept.write_text("/svc/k => /#/io.l5d.fs/k;\n")
    new.write_text("/svc/n => /#/io.l5d.fs/n;\n")
    bad.write_text("/svc/x => ;\n")

    def router(label: str, dtab_file: FsPath) -> str:
        return (
            f"- protocol: http\n  label: {label}\n  dtab: /svc/own => /#/io.l5d.fs/own;\n"
            f"  interpreter: {{kind: io.l5d.fs, dtabFile: {dtab_file}}}\n"
            "  servers: [{ip: 127.0.0.1, port: 0}]\n"
        )

    cfg = tmp_path / "hostproxy.yaml"
    text = (
        f"admin: {{ip: 127.0.0.1, port: 0}}\nnamers:\n- kind: io.l5d.fs\n  rootDir: {disco}\nrouters:\n"
        + router("one", kept)
        + router("two", new)
        + router("three", bad)
    )
    cfg.write_text(text)

    p = prepare_reload(str(cfg), {"one": str(kept)})

    assert p.error is None and p.config is not None
    assert [str(d) for d in p.own_dtabs.values()] == ["/svc/own=>/#/io.l5d.fs/own"] * 3
    assert "one" not in p.dtab_files  # watched already: its watcher (and last good dtab) stays
    two = p.dtab_files["two"]
    assert isinstance(two, DtabFileWatcher) and str(two.dtab) == "/svc/n=>/#/io.l5d.fs/n"
    three = p.dtab_files["three"]
    line = text.splitlines().index(f"  interpreter: {{kind: io.l5d.fs, dtabFile: {bad}}}") + 1
    assert isinstance(three, DtabFileError)
    assert f"{cfg}:{line}: routers[2].interpreter.dtabFile: " in str(three)
    assert f"{bad}:1:" in str(three) and "reload again" in str(three)

    cfg.write_text(text + "bogusKey: 1\n")
    p = prepare_reload(str(cfg), {})
    assert p.config is None and p.error is not None
    assert [(i.line, "bogusKey" in i.format()) for i in p.error.errors] == [(text.count("\n") + 1, True)]


def test_file_replaced_by_a_fifo_between_stat_and_open_is_refused_without_waiting(
    tmp_path: FsPath, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A name's file swapped for a FIFO after the scan's stat saw a regular file: ``open`` would wait
    for a writer, holding the scan for good. The file is opened without blocking and refused as not a
    regular file. (The stat is made to report the regular file the path held a moment before; a timer
    opens the FIFO for writing after 10 s so that a scan that does wait returns, and fails.)"""
    regular = tmp_path / "regular"
    regular.write_text("10.0.0.1 80\n")
    fifo = tmp_path / "web"
    os.mkfifo(fifo)
    real_stat = os.stat

    def stat_before_the_swap(path: Any, *args: Any, **kw: Any) -> os.stat_result:
        return real_stat(regular if os.fspath(path) == str(fifo) else path, *args, **kw)

    def unblock() -> None:
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass

    timer = threading.Timer(10.0, unblock)
    timer.start()
    try:
        monkeypatch.setattr(os, "stat", stat_before_the_swap)
        obs = fsmod.observe(str(tmp_path), WEB, None, False)
        monkeypatch.undo()
    finally:
        timer.cancel()
    assert isinstance(obs, fsmod.ReadError), obs
    assert obs.message == f"{fifo} is not a regular file; replace it with a file of 'host port' lines"
