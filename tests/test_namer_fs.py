"""io.l5d.fs: the pure core, and the watching namer over real files in a temporary directory."""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable
from pathlib import Path as FsPath
from typing import Any

import pytest
import trio

from namers import fs as fsmod
from namers._dtab import NEG, PENDING, AddrBound, Address, BoundName, Leaf, NamerError, Path
from namers.base import NameTable
from namers.fs import FileText, FsCore, FsNamer, IsDir, Missing, ReadError, Unchanged, from_config
from namers.fsformat import MAX_FILE_SIZE

HINT = "write each line as 'host port' or 'host port * weight', e.g. '10.0.0.7 8080 * 2.0'"
K = (b"users",)
SIG1 = (1, 1, 10, 1)
SIG2 = (1, 1, 0, 2)


def write(path: FsPath, text: str) -> None:
    """Write the way careful writers do: a temporary file renamed over the target."""
    tmp = path.with_name("." + path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def hosts(addr: Any) -> list[tuple[str, int]]:
    return [(a.host, a.port) for a in addr.addresses]


async def wait_for(pred: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Poll ``pred`` until it is truthy; fail after ``timeout`` seconds (a bound, not a measurement)."""
    with trio.fail_after(timeout):
        while True:
            v = pred()
            if v:
                return v
            await trio.sleep(0.01)


# -- FsCore (pure) -------------------------------------------------------------------------------
def core(settle: float = 0.5) -> tuple[FsCore, NameTable]:
    t = NameTable(lambda: 1000.0)
    t.touch(K)
    return FsCore(t, "/disco", settle), t


def test_core_text_missing_dir_and_errors():
    c, t = core()
    assert c.requests(0.0) == [(K, None, False)]
    assert c.apply(K, FileText(SIG1, "a 1\nb 2\n"), 0.0)
    assert (t.get(K).state, [(a.host, a.port) for a in t.get(K).addr]) == ("bound", [("a", 1), ("b", 2)])
    assert c.requests(0.0) == [(K, SIG1, False)]
    assert not c.apply(K, Unchanged(), 0.0)
    assert c.apply(K, FileText(SIG2, "a 1\nb\n"), 0.0)
    st = t.get(K)
    assert st.state == "stale" and len(st.addr) == 2
    assert st.last_error == f"/disco/users:2: 'b' has a host but no port; {HINT}"
    assert c.apply(K, ReadError("/disco/users: cannot read (Permission denied); fix its permissions"), 0.0)
    assert t.get(K).last_error.startswith("/disco/users: cannot read")
    assert c.apply(K, Missing(), 0.0)
    assert t.get(K).state == "neg" and not c.is_dir(K)
    assert not c.apply(K, IsDir(), 0.0)  # still neg, now known to be a directory
    assert c.is_dir(K)


def test_core_empty_file_after_content_settles_before_it_is_believed():
    c, t = core(settle=0.5)
    c.apply(K, FileText(SIG1, "a 1\n"), 0.0)
    assert not c.apply(K, FileText(SIG2, ""), 10.0)
    assert t.get(K).state == "bound" and c.settles == 1
    assert c.requests(10.2) == [(K, SIG2, False)]  # not yet: no forced re-read
    assert c.requests(10.5) == [(K, SIG2, True)]  # settle delay passed: re-read even if unchanged
    assert c.apply(K, FileText(SIG2, ""), 10.5)
    assert (t.get(K).state, t.get(K).addr) == ("bound", ())
    assert c.requests(11.0) == [(K, SIG2, False)]


def test_core_content_during_settle_wins():
    c, t = core(settle=0.5)
    c.apply(K, FileText(SIG1, "a 1\n"), 0.0)
    c.apply(K, FileText(SIG2, ""), 1.0)
    assert c.apply(K, FileText((1, 2, 4, 3), "b 2\n"), 1.1)
    assert [a.host for a in t.get(K).addr] == ["b"]
    assert c.requests(5.0) == [(K, (1, 2, 4, 3), False)]


def test_core_first_empty_file_is_believed_at_once():
    c, t = core()
    assert c.apply(K, FileText(SIG2, ""), 0.0)
    assert (t.get(K).state, t.get(K).addr) == ("bound", ())


def test_core_root_error_fails_every_name_and_recovers():
    c, t = core()
    c.apply(K, FileText(SIG1, "a 1\n"), 0.0)
    t.touch((b"other",))
    err = "io.l5d.fs rootDir '/disco' does not exist; create it or fix namers[].rootDir"
    assert sorted(c.apply_scan(err, [], 0.0)) == [(b"other",), K]
    assert (t.get(K).state, t.get((b"other",)).state) == ("stale", "failed")
    assert c.root_error == err
    assert c.requests(0.0) == [(K, None, False), ((b"other",), None, False)]  # everything re-read
    assert c.apply_scan(None, [(K, FileText(SIG1, "a 1\n"))], 0.0) == [K]
    assert c.root_error is None and t.get(K).state == "bound"


# -- the blocking scan -------------------------------------------------------------------------
def test_scan_observations(tmp_path: FsPath):
    (tmp_path / "users").write_text("a 1\n")
    (tmp_path / "dir").mkdir()
    (tmp_path / "big").write_text("x" * (MAX_FILE_SIZE + 1))
    (tmp_path / "latin1").write_bytes(b"a 1\nh\xe9 2\n")
    err, obs = fsmod.scan(
        str(tmp_path),
        [
            (K, None, False),
            ((b"dir",), None, False),
            ((b"nope",), None, False),
            ((b"users", b"x"), None, False),
        ],
    )
    assert err is None
    (k0, o0), (k1, o1), (k2, o2), (k3, o3) = obs
    assert isinstance(o0, FileText) and o0.text == "a 1\n"
    assert isinstance(o1, IsDir) and isinstance(o2, Missing) and isinstance(o3, Missing)
    assert isinstance(fsmod.scan(str(tmp_path), [(K, o0.sig, False)])[1][0][1], Unchanged)
    assert isinstance(fsmod.scan(str(tmp_path), [(K, o0.sig, True)])[1][0][1], FileText)
    _, [(_, big), (_, latin)] = fsmod.scan(
        str(tmp_path), [((b"big",), None, False), ((b"latin1",), None, False)]
    )
    assert big == ReadError(
        f"{tmp_path}/big: file is {MAX_FILE_SIZE + 1} bytes, larger than the {MAX_FILE_SIZE}-byte limit; "
        "split the addresses into several files or remove unused lines"
    )
    assert latin == ReadError(f"{tmp_path}/latin1:2: not UTF-8 text; save the file as UTF-8")


def test_check_root(tmp_path: FsPath):
    assert fsmod.check_root(str(tmp_path)) is None
    missing = str(tmp_path / "missing")
    assert fsmod.check_root(missing) == (
        f"io.l5d.fs rootDir {missing!r} does not exist; create it or fix namers[].rootDir"
    )
    (tmp_path / "file").write_text("")
    assert fsmod.check_root(str(tmp_path / "file")) == (
        f"io.l5d.fs rootDir {str(tmp_path / 'file')!r} is not a directory; point namers[].rootDir at a directory"
    )


# -- the watching namer ----------------------------------------------------------------------------
class Recorder:
    def __init__(self) -> None:
        self.events: list[Path] = []

    def __call__(self, namer: Any, key: Path) -> None:
        self.events.append(key)

    def count(self, text: str) -> int:
        return self.events.count(Path.read(text))


def state(n: FsNamer, name: str) -> Any:
    return n.table.get(tuple(Path.read("/" + name).labels))


async def test_add_change_malformed_remove(tmp_path: FsPath):
    n = FsNamer(tmp_path, poll_interval=0.05)
    rec = Recorder()
    n.subscribe(rec)
    write(tmp_path / "users", "10.0.0.1 80\n")
    write(tmp_path / "orders", "10.0.1.1 81\n")
    async with trio.open_nursery() as nursery:
        await nursery.start(n.run)
        assert n.lookup(Path.read("/users/v1")) is PENDING
        assert n.lookup(Path.read("/orders")) is PENDING
        await wait_for(lambda: rec.count("/users") and rec.count("/orders"))
        leaf = n.lookup(Path.read("/users/v1"))
        assert leaf == Leaf(BoundName(id=Path.read("/#/io.l5d.fs/users"), residual=Path.read("/v1")))
        assert leaf.value.addr == AddrBound((Address("10.0.0.1", 80),), {})
        assert state(n, "users").version == 1

        # a change applies, bumps the version and tells subscribers
        write(tmp_path / "users", "10.0.0.1 80\n10.0.0.2 80 * 3\n")
        await wait_for(lambda: rec.count("/users") == 2)
        assert hosts(n.addr(Path.read("/users"))) == [("10.0.0.1", 80), ("10.0.0.2", 80)]
        assert n.addr(Path.read("/users")).addresses[1].weight == 3.0
        assert state(n, "users").version == 2

        # a malformed line fails THAT name with file:line, keeping the last good set as stale
        write(tmp_path / "users", "10.0.0.3 80\n10.0.0.4 eighty\n")
        await wait_for(lambda: rec.count("/users") == 3)
        st = state(n, "users")
        assert st.state == "stale"
        assert st.last_error == f"{tmp_path}/users:2: port 'eighty' is not a number; {HINT}"
        assert hosts(n.addr(Path.read("/users"))) == [("10.0.0.1", 80), ("10.0.0.2", 80)]
        assert state(n, "orders").state == "bound" and rec.count("/orders") == 1
        body = n.state_json()
        assert body["names"]["users"]["state"] == "stale"
        assert body["names"]["users"]["staleAgeSecs"] >= 0
        assert body["rootDir"] == str(tmp_path) and body["rootError"] is None

        # fixed: bound again
        write(tmp_path / "users", "10.0.0.3 80\n")
        await wait_for(lambda: rec.count("/users") == 4)
        assert state(n, "users").state == "bound"
        assert hosts(n.addr(Path.read("/users"))) == [("10.0.0.3", 80)]

        # removed: negative, so a dtab alternate can take over
        os.unlink(tmp_path / "users")
        await wait_for(lambda: rec.count("/users") == 5)
        assert n.lookup(Path.read("/users")) is NEG
        assert state(n, "users").version == 5
        nursery.cancel_scope.cancel()


async def test_malformed_file_with_no_good_answer_fails_lookup(tmp_path: FsPath):
    n = FsNamer(tmp_path, poll_interval=0.05)
    write(tmp_path / "bad", "# comment\n10.0.0.1\n")
    async with trio.open_nursery() as nursery:
        await nursery.start(n.run)
        n.lookup(Path.read("/bad"))
        await wait_for(lambda: state(n, "bad").state != "pending")
        with pytest.raises(
            NamerError,
            match="^"
            + re.escape(f"/#/io.l5d.fs/bad: {tmp_path}/bad:2: '10.0.0.1' has a host but no port; {HINT}")
            + "$",
        ):
            n.lookup(Path.read("/bad"))
        nursery.cancel_scope.cancel()


async def test_partial_write_is_not_read_as_empty(tmp_path: FsPath):
    n = FsNamer(tmp_path, poll_interval=0.05, settle=1000.0)
    write(tmp_path / "users", "10.0.0.1 80\n")
    async with trio.open_nursery() as nursery:
        await nursery.start(n.run)
        n.lookup(Path.read("/users"))
        await wait_for(lambda: state(n, "users").state == "bound")
        with open(tmp_path / "users", "w"):  # truncate in place, as a non-atomic writer does first
            pass
        await wait_for(lambda: n.core.settles == 1)
        # the empty file has been read, but not believed
        assert state(n, "users").state == "bound" and state(n, "users").version == 1
        assert hosts(n.addr(Path.read("/users"))) == [("10.0.0.1", 80)]
        (tmp_path / "users").write_text("10.0.0.9 80\n")  # the writer finishes
        await wait_for(lambda: state(n, "users").version == 2)
        assert hosts(n.addr(Path.read("/users"))) == [("10.0.0.9", 80)]
        nursery.cancel_scope.cancel()


async def test_empty_file_believed_after_settle(tmp_path: FsPath):
    n = FsNamer(tmp_path, poll_interval=0.05, settle=0.1)
    write(tmp_path / "users", "10.0.0.1 80\n")
    async with trio.open_nursery() as nursery:
        await nursery.start(n.run)
        n.lookup(Path.read("/users"))
        await wait_for(lambda: state(n, "users").state == "bound")
        write(tmp_path / "users", "")
        await wait_for(lambda: state(n, "users").version == 2)
        assert n.core.settles == 1
        assert n.addr(Path.read("/users")) == AddrBound((), {})
        nursery.cancel_scope.cancel()


async def test_subdirectories_nest(tmp_path: FsPath):
    (tmp_path / "prod").mkdir()
    write(tmp_path / "prod" / "users", "10.0.0.1 80\n")
    n = FsNamer(tmp_path, poll_interval=0.05)
    async with trio.open_nursery() as nursery:
        await nursery.start(n.run)

        def look() -> Any:
            return n.lookup(Path.read("/prod/users/rest"))

        leaf = await wait_for(lambda: (r := look()) is not PENDING and r)
        assert leaf.value.id == Path.read("/#/io.l5d.fs/prod/users")
        assert leaf.value.residual == Path.read("/rest")
        assert n.lookup(Path.read("/prod")) is NEG  # a directory is not a service
        for bad in ("/..", "/.", "/a\\x2fb", "/a\\x00b"):
            assert n.lookup(Path.read(bad)) is NEG
        assert sorted(n.table.watched()) == [(b"prod",), (b"prod", b"users")]
        nursery.cancel_scope.cancel()


async def test_missing_root_is_reported_and_names_fail_until_it_appears(tmp_path: FsPath):
    root = tmp_path / "disco"
    n = FsNamer(root, poll_interval=0.05)
    n.lookup(Path.read("/users"))  # looked up before the runner starts
    async with trio.open_nursery() as nursery:
        await nursery.start(n.run)
        expected = f"io.l5d.fs rootDir {str(root)!r} does not exist; create it or fix namers[].rootDir"
        assert n.statistics()["root_error"] == expected  # known as soon as run() has started
        assert n.state_json()["rootError"] == expected
        with pytest.raises(NamerError, match="^" + re.escape(f"/#/io.l5d.fs/users: {expected}") + "$"):
            n.lookup(Path.read("/users"))
        root.mkdir()
        write(root / "users", "10.0.0.1 80\n")
        await wait_for(lambda: state(n, "users").state == "bound")
        assert n.statistics()["root_error"] is None
        nursery.cancel_scope.cancel()


async def test_names_are_bounded(tmp_path: FsPath):
    n = FsNamer(tmp_path, poll_interval=0.05, max_names=3)
    rec = Recorder()
    n.subscribe(rec)
    async with trio.open_nursery() as nursery:
        await nursery.start(n.run)
        for i in range(10):
            assert n.lookup(Path.of(f"attacker-{i}")) is PENDING
        assert len(n.table) == 3
        assert n.table.watched() == [(b"attacker-7",), (b"attacker-8",), (b"attacker-9",)]
        assert n.statistics()["evictions"] == 7
        assert rec.events[:7] == [Path.of(f"attacker-{i}") for i in range(7)]
        await wait_for(lambda: all(st.state == "neg" for st in n.table.states()))
        nursery.cancel_scope.cancel()


# -- registration and config -------------------------------------------------------------------
def test_registration_and_config(tmp_path: FsPath):
    assert fsmod.KIND == "io.l5d.fs" == FsNamer.kind
    n = from_config({"kind": "io.l5d.fs", "rootDir": str(tmp_path)})
    assert isinstance(n, FsNamer) and n.root_dir == str(tmp_path)
    assert n.bound_prefix == Path.read("/#/io.l5d.fs")

    @dataclasses.dataclass(frozen=True)
    class Cfg:
        rootDir: str
        prefix: str | None = None
        transformers: tuple[Any, ...] = ()

    n2 = from_config(Cfg(str(tmp_path), prefix="/disco", transformers=("t",)))
    assert n2.bound_prefix == Path.read("/#/disco") and n2.transformers == ("t",)
    with pytest.raises(
        ValueError,
        match=r"^namers\[\]\.rootDir is required for kind io\.l5d\.fs: set it to the directory of service files$",
    ):
        from_config({"kind": "io.l5d.fs"})


# -- consulted during binding ----------------------------------------------------------------------
async def test_binding_through_dtab_and_fallback(tmp_path: FsPath):
    from dtab import parse_dtab
    from dtab.bind import bind
    from namers.inet import InetResolver

    n = FsNamer(tmp_path, poll_interval=0.05)
    inet = InetResolver()
    dtab = parse_dtab("/svc => /#/io.l5d.fs | /$/inet/127.1/9")
    namers = [(n.bound_prefix, n.lookup)]

    def bind_users() -> Any:
        return bind(dtab, Path.read("/svc/users/x"), namers, system=inet.system).tree

    write(tmp_path / "users", "10.0.0.1 80\n")
    async with trio.open_nursery() as nursery:
        await nursery.start(n.run)
        assert bind_users() is PENDING
        await wait_for(lambda: state(n, "users").state == "bound")
        tree = bind_users()
        assert tree == Leaf(BoundName(id=Path.read("/#/io.l5d.fs/users"), residual=Path.read("/x")))
        assert tree.value.addr == AddrBound((Address("10.0.0.1", 80),), {})
        os.unlink(tmp_path / "users")
        await wait_for(lambda: state(n, "users").state == "neg")
        tree = bind_users()  # negative: the alternate takes over
        assert tree.value.id == Path.read("/$/inet/127.1/9")
        assert tree.value.addr == AddrBound((Address("127.0.0.1", 9),), {})
        write(tmp_path / "users", "10.0.0.1 eighty\n")
        await wait_for(lambda: state(n, "users").state == "failed")
        with pytest.raises(
            NamerError, match=re.escape(f"/#/io.l5d.fs/users: {tmp_path}/users:1: port 'eighty'")
        ):
            bind_users()
        nursery.cancel_scope.cancel()


async def test_restored_state_survives_a_missing_root(tmp_path: FsPath):
    root = tmp_path / "disco"
    root.mkdir()
    write(root / "users", "10.0.0.1 80\n")
    first = FsNamer(root, poll_interval=0.05)
    async with trio.open_nursery() as nursery:
        await nursery.start(first.run)
        first.lookup(Path.read("/users"))
        await wait_for(lambda: state(first, "users").state == "bound")
        nursery.cancel_scope.cancel()
    saved = first.export_state()

    # restart while the directory is gone: the saved addresses are served, marked stale
    os.unlink(root / "users")
    root.rmdir()
    second = FsNamer(root, poll_interval=0.05)
    assert second.import_state(saved) == 1
    async with trio.open_nursery() as nursery:
        await nursery.start(second.run)
        st = state(second, "users")
        assert st.state == "stale" and st.last_error.startswith(
            f"io.l5d.fs rootDir {str(root)!r} does not exist"
        )
        restored = second.addr(Path.read("/users"))
        assert restored.addresses == (Address("10.0.0.1", 80),) and "staleSince" in restored.meta
        nursery.cancel_scope.cancel()


def test_from_config_accepts_snake_case_dataclass(tmp_path: FsPath):
    @dataclasses.dataclass(frozen=True)
    class Cfg:
        root_dir: str
        kind: str = "io.l5d.fs"
        prefix: str | None = None

    assert from_config(Cfg(str(tmp_path))).root_dir == str(tmp_path)


def test_a_file_unreadable_for_want_of_descriptors_says_so_not_permissions(tmp_path: FsPath) -> None:
    """Out of file descriptors (EMFILE), a read fails for the daemon's reason, not the file's: the
    advice is the descriptor limit, and a name keeps its last good addresses meanwhile (stale)."""
    import resource

    (tmp_path / "web").write_text("127.0.0.1 8080\n")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    held: list[int] = []
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 8, hard))
        with pytest.raises(OSError):
            while True:
                held.append(os.open(os.devnull, os.O_RDONLY))
        obs = fsmod.observe(str(tmp_path), (b"web",), None, False)
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert isinstance(obs, ReadError)
    assert obs.message == (
        f"{tmp_path / 'web'}: cannot read (Too many open files): hostproxy is out of file descriptors; "
        "raise its limit (LimitNOFILE= in the systemd unit, ulimit -n) or look for a connection leak "
        "(/admin/metrics.json …/connections)"
    )
    table = NameTable(lambda: 1000.0)
    table.touch((b"web",))
    fs_core = FsCore(table, str(tmp_path))
    assert fs_core.apply((b"web",), fsmod.observe(str(tmp_path), (b"web",), None, False), 0.0)
    assert fs_core.apply((b"web",), obs, 1.0)
    state = table.get((b"web",))
    assert state is not None and state.state == "stale" and [a.port for a in state.addr] == [8080]
    assert "out of file descriptors" in (state.last_error or "")
