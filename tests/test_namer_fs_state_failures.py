"""How the fs namer, the shared name table and saved namer state behave when things go wrong: a namer
that fails keeps its last good state, bad input gets a clear error and loses nothing, diagnostics tell
the truth (how old an answer really is).

From the adversarial review of namer failures (the fs, name table and namer state part). Real files in
temporary directories, injected clocks; waits are bounded polls of observable state, never timings.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path as FsPath
from typing import Any

import pytest
import trio
from structlog.testing import capture_logs

from hostproxy.namerstate import NamerStateStore
from namers._dtab import Address, Leaf, NamerError, Path
from namers.base import NameTable, format_time
from namers.fs import RACY_WINDOW_NS, FileText, FsCore, FsNamer, ReadError, Unchanged, observe

KEY = (b"web",)
A1 = Address("10.0.0.1", 8080)


async def wait_for(pred: Callable[[], Any], timeout: float = 5.0) -> Any:
    """Poll ``pred`` until truthy; fail after ``timeout`` seconds (a bound, not a measurement)."""
    with trio.fail_after(timeout):
        while True:
            v = pred()
            if v:
                return v
            await trio.sleep(0.01)


def fs_hosts(n: FsNamer, name: str) -> list[tuple[str, int]] | None:
    st = n.table.get((name.encode(),))
    if st is None or st.addr is None:
        return None
    return [(a.host, a.port) for a in st.addr]


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


# == io.l5d.fs: half-written files ==================================================================


@pytest.mark.parametrize("partial", ["# web backends, managed by deploy.sh\n", "\n", "   \n\t\n"])
def test_fs_half_written_file_holding_only_its_header_is_not_believed_at_once(partial: str) -> None:
    """README: "a half-written file is never read as empty". A writer that truncates in place and
    writes its header comment (or a blank line) first shows a file with no addresses for a moment;
    it gets the same settle delay as an empty file instead of emptying the name at once."""
    table = NameTable(lambda: 1000.0)
    table.touch(KEY)
    core = FsCore(table, "/disco", settle=0.5)
    core.apply(KEY, FileText((1, 1, 40, 1, 1), "# web backends\n10.0.0.1 80\n10.0.0.2 80\n"), 0.0)
    assert table.get(KEY).state == "bound" and len(table.get(KEY).addr) == 2
    sig = (1, 1, len(partial), 2, 2)

    assert core.apply(KEY, FileText(sig, partial), 10.0) is False

    st = table.get(KEY)
    assert (st.state, [(a.host, a.port) for a in st.addr]) == ("bound", [("10.0.0.1", 80), ("10.0.0.2", 80)])
    assert core.settles == 1
    # the writer finishes within the settle delay: its content wins
    assert core.requests(10.2) == [(KEY, sig, False)]
    assert core.apply(KEY, FileText((1, 1, 30, 3, 3), partial + "10.0.0.9 80\n"), 10.2)
    assert [(a.host, a.port) for a in table.get(KEY).addr] == [("10.0.0.9", 80)]


def test_fs_file_without_addresses_is_believed_after_the_settle_delay() -> None:
    """An address-less file that stays so is deliberate ("no backends"), and is applied once the
    settle delay has passed; a name with no addresses yet takes it at once."""
    table = NameTable(lambda: 1000.0)
    table.touch(KEY)
    core = FsCore(table, "/disco", settle=0.5)
    core.apply(KEY, FileText((1, 1, 12, 1, 1), "10.0.0.1 80\n"), 0.0)
    sig = (1, 1, 9, 2, 2)
    assert core.apply(KEY, FileText(sig, "# empty\n"), 10.0) is False
    assert core.requests(10.5) == [(KEY, sig, True)]  # re-read when the delay is over
    assert core.apply(KEY, FileText(sig, "# empty\n"), 10.5)
    assert (table.get(KEY).state, table.get(KEY).addr) == ("bound", ())

    other = (b"other",)
    table.touch(other)
    assert core.apply(other, FileText((1, 2, 9, 1, 1), "# empty\n"), 10.5)
    assert (table.get(other).state, table.get(other).addr) == ("bound", ())
    assert core.settles == 1


# == io.l5d.fs: changes that keep size and mtime ====================================================


def rewrite_in_place_keeping_size_and_mtime(path: FsPath, text: str) -> None:
    before = os.stat(path)
    with open(path, "r+") as f:  # same inode, same size, new content
        f.write(text)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # as `cp -p`, `touch -r` do
    after = os.stat(path)
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (
        before.st_ino,
        before.st_size,
        before.st_mtime_ns,
    )


def test_fs_signature_sees_an_in_place_rewrite_that_keeps_size_and_mtime(tmp_path: FsPath) -> None:
    """The signature includes the ctime, which a rewrite changes and nothing can set back."""
    path = tmp_path / "web"
    path.write_text("10.0.0.1 8080\n")
    first = observe(str(tmp_path), KEY, None, False)
    assert isinstance(first, FileText) and first.text == "10.0.0.1 8080\n"
    assert isinstance(observe(str(tmp_path), KEY, first.sig, False), Unchanged)

    moved = observe(str(tmp_path), KEY, None, False)
    assert isinstance(moved, FileText)
    rewrite_in_place_keeping_size_and_mtime(path, "10.0.0.2 8080\n")
    while os.stat(path).st_ctime_ns == moved.sig[4]:  # the same ctime tick: wait for the next one
        time.sleep(0.001)
        os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns))

    again = observe(str(tmp_path), KEY, moved.sig, False)
    assert isinstance(again, FileText) and again.text == "10.0.0.2 8080\n"


def test_fs_file_read_within_its_timestamp_tick_is_read_again(tmp_path: FsPath) -> None:
    """The "racy git" rule: a read close to the file's last change could miss a write in the same
    timestamp tick, which changes no part of the signature; such a read is marked racy and the core
    forces re-reads until one is made clearly after the change."""
    path = tmp_path / "web"
    path.write_text("10.0.0.1 8080\n")
    os.utime(path, ns=(10**18, 10**18))
    stamp = max(os.stat(path).st_mtime_ns, os.stat(path).st_ctime_ns)

    just_after = observe(str(tmp_path), KEY, None, False, now_ns=lambda: 10**18 + RACY_WINDOW_NS // 4)
    assert isinstance(just_after, FileText) and just_after.racy
    later = observe(str(tmp_path), KEY, None, False, now_ns=lambda: stamp + RACY_WINDOW_NS * 10)
    assert isinstance(later, FileText) and not later.racy

    table = NameTable(lambda: 1000.0)
    table.touch(KEY)
    core = FsCore(table, str(tmp_path))
    core.apply(KEY, just_after, 0.0)
    assert core.requests(0.1) == [(KEY, just_after.sig, True)]  # read again, though unchanged
    core.apply(KEY, later, 0.2)
    assert core.requests(0.3) == [(KEY, later.sig, False)]
    assert [(a.host, a.port) for a in table.get(KEY).addr] == [("10.0.0.1", 8080)]


async def test_fs_in_place_rewrite_keeping_size_and_mtime_is_picked_up(tmp_path: FsPath) -> None:
    """End to end: the namer serves the new content of a file rewritten in place with the same size
    and mtime, instead of the old addresses forever with state ``bound`` and no error."""
    path = tmp_path / "web"
    path.write_text("10.0.0.1 8080\n")
    n = FsNamer(tmp_path, poll_interval=0.02)
    async with trio.open_nursery() as nursery:
        await nursery.start(n.run)
        n.lookup(Path.read("/web"))
        await wait_for(lambda: fs_hosts(n, "web") == [("10.0.0.1", 8080)])
        rewrite_in_place_keeping_size_and_mtime(path, "10.0.0.2 8080\n")
        await wait_for(lambda: fs_hosts(n, "web") == [("10.0.0.2", 8080)])
        nursery.cancel_scope.cancel()


# == io.l5d.fs: dangling symlinks ==================================================================


async def test_fs_dangling_symlink_keeps_the_last_good_answer_and_says_why(tmp_path: FsPath) -> None:
    """A symlink whose target is gone (a ConfigMap mount mid-update, a deploy that removed the target
    first) is an error, not a removed name: the name keeps serving its last good addresses, marked
    stale with an error naming the link. Removing the link itself makes the name negative."""
    target = tmp_path / "web.v1"
    target.write_text("10.0.0.1 8080\n")
    os.symlink("web.v1", tmp_path / "web")
    n = FsNamer(tmp_path, poll_interval=0.02)
    async with trio.open_nursery() as nursery:
        await nursery.start(n.run)
        n.lookup(Path.read("/web"))
        await wait_for(lambda: fs_hosts(n, "web") == [("10.0.0.1", 8080)])

        target.unlink()
        await wait_for(lambda: n.table.get(KEY).state != "bound")
        st = n.table.get(KEY)
        assert st.state == "stale" and fs_hosts(n, "web") == [("10.0.0.1", 8080)]
        assert st.last_error is not None and "is a symlink to 'web.v1', which does not exist" in st.last_error
        tree = n.lookup(Path.read("/web"))
        assert isinstance(tree, Leaf) and [a.host for a in tree.value.addr.addresses] == ["10.0.0.1"]

        (tmp_path / "web.v2").write_text("10.0.0.2 8080\n")
        os.remove(tmp_path / "web")
        os.symlink("web.v2", tmp_path / "web")
        await wait_for(lambda: n.table.get(KEY).state == "bound")
        assert fs_hosts(n, "web") == [("10.0.0.2", 8080)]

        os.remove(tmp_path / "web")  # the name is really gone
        await wait_for(lambda: n.table.get(KEY).state == "neg")
        nursery.cancel_scope.cancel()


def test_fs_dangling_symlink_observation(tmp_path: FsPath) -> None:
    os.symlink("nowhere", tmp_path / "web")
    obs = observe(str(tmp_path), KEY, None, False)
    assert isinstance(obs, ReadError)
    assert obs.message.startswith(f"{tmp_path / 'web'} is a symlink to 'nowhere', which does not exist")


# == the name table: who is evicted ================================================================


def test_table_evicts_names_without_an_answer_before_names_serving_one() -> None:
    """Names from untrusted input (per-request dtabs) evict each other, not a name holding a last good
    answer; when every name holds one, the least recently used goes."""
    table = NameTable(lambda: 1000.0, max_names=3)
    table.touch(KEY)
    table.apply_bound(KEY, [A1])
    table.apply_failure(KEY, "backend down")  # stale, serving 10.0.0.1
    evicted: list[bytes] = []
    for i in range(10):
        _, _, out = table.touch((f"junk-{i}".encode(),))
        evicted += [b"/".join(st.key) for st in out]
        if i % 2:
            table.apply_failure((f"junk-{i}".encode(),), "no such file")
    assert (b"web",) in table and table.get(KEY).addr == (A1,)
    assert evicted == [f"junk-{i}".encode() for i in range(8)]
    assert table.evictions == 8

    # a neg name is evicted before the bound one, though used more recently
    table = NameTable(lambda: 1000.0, max_names=2)
    for name in (b"a", b"b"):
        table.touch((name,))
    table.apply_bound((b"a",), [A1])
    table.apply_neg((b"b",))
    _, _, out = table.touch((b"c",))
    assert [st.key for st in out] == [(b"b",)]
    # with every name holding addresses, plain LRU
    table.apply_bound((b"c",), [A1])
    table.touch((b"a",))
    _, _, out = table.touch((b"d",))
    assert [st.key for st in out] == [(b"c",)]
    # a name that loses its addresses is evictable again
    table.apply_bound((b"d",), [A1])
    table.touch((b"a",))
    table.apply_neg((b"a",))
    _, _, out = table.touch((b"e",))
    assert [st.key for st in out] == [(b"a",)]
    assert sorted(table.watched()) == [(b"d",), (b"e",)]


async def test_fs_names_from_untrusted_dtabs_cannot_evict_a_good_answer_during_an_outage(
    tmp_path: FsPath,
) -> None:
    """While the backend (here rootDir) is gone, a client looking up ``max_names`` made-up names must
    not push out a name serving its last good answer."""
    root = tmp_path / "disco"
    root.mkdir()
    (root / "web").write_text("10.0.0.1 8080\n")
    n = FsNamer(root, poll_interval=0.02, max_names=4)
    async with trio.open_nursery() as nursery:
        await nursery.start(n.run)
        n.lookup(Path.read("/web"))
        await wait_for(lambda: fs_hosts(n, "web") == [("10.0.0.1", 8080)])
        (root / "web").unlink()
        root.rmdir()
        await wait_for(lambda: n.table.get(KEY).state == "stale")

        for i in range(8):  # e.g. l5d-dtab: /svc/x=>/#/io.l5d.fs/junk-0
            try:
                n.lookup(Path.read(f"/junk-{i}"))
            except NamerError:
                pass
        await wait_for(lambda: (st := n.table.get((b"junk-7",))) is not None and st.state == "failed")
        assert n.table.get(KEY) is not None
        tree = n.lookup(Path.read("/web"))
        assert isinstance(tree, Leaf) and [a.host for a in tree.value.addr.addresses] == ["10.0.0.1"]
        nursery.cancel_scope.cancel()


# == namerState: last good answers across restarts ================================================


def saved_state(names: dict[str, Any]) -> dict[str, Any]:
    return {"kind": "io.l5d.fs", "prefix": "/#/io.l5d.fs", "names": names}


def web_entry(last_update: Any) -> dict[str, Any]:
    return {"addrs": [{"host": "10.0.0.1", "port": 8080}], "meta": {}, "lastUpdate": last_update}


def test_restored_state_tells_how_old_the_saved_answer_is(tmp_path: FsPath) -> None:
    """After a restart with discovery down, /namer_state says when the served answer was last
    confirmed and how long it has been stale, not "updated just now"."""
    now = 1_800_000_000.0
    saved_at = now - 3 * 24 * 3600
    (tmp_path / "io.l5d.fs.json").write_text(json.dumps(saved_state({"/web": web_entry(saved_at)})))
    namer = FsNamer(tmp_path / "disco", clock=Clock(now))
    assert NamerStateStore(tmp_path, [namer]).load_all() == {"/io.l5d.fs": 1}
    entry = namer.state_json()["names"]["web"]
    assert entry["state"] == "stale"
    assert entry["lastUpdate"] == format_time(saved_at)
    assert entry["lastConfirmed"] == format_time(saved_at)
    assert entry["staleAgeSecs"] == 3 * 24 * 3600
    assert entry["lastError"] == "restored from saved state; not yet confirmed"
    # clients see the same age
    tree = namer.lookup(Path.read("/web"))
    assert tree.value.addr.meta["staleSince"] == saved_at


def test_restored_state_of_unknown_or_impossible_age(tmp_path: FsPath) -> None:
    """A saved time that is missing or not a number leaves the age unknown (the addresses are still
    restored); a time in the future is not believed."""
    now = 1_800_000_000.0
    namer = FsNamer(tmp_path / "disco", clock=Clock(now))
    names = {
        "/a": web_entry(None),
        "/b": web_entry("yesterday"),
        "/c": web_entry(math.inf),
        "/d": web_entry(now + 1e6),
    }
    assert namer.import_state(saved_state(names)) == 4
    body = namer.state_json()["names"]
    for name in "abc":
        assert (body[name]["state"], body[name]["lastConfirmed"]) == ("stale", None), name
        assert namer.export_state()["names"][f"/{name}"]["lastUpdate"] is None
    assert body["d"]["lastConfirmed"] == format_time(now) and body["d"]["staleAgeSecs"] == 0


def test_unconfirmed_restored_state_is_not_resaved_as_fresh(tmp_path: FsPath) -> None:
    """Restart, backend still down, restart again: each save carries the time the backend last
    confirmed the answer, not the restore time; once the backend answers, its time."""
    now = 1_800_000_000.0
    saved_at = now - 2 * 24 * 3600
    clock = Clock(now)
    namer = FsNamer(tmp_path / "disco", clock=clock)
    assert namer.import_state(saved_state({"/web": web_entry(saved_at)})) == 1
    clock.t += 60
    namer.table.apply_failure(KEY, "rootDir gone")  # a new error: a change, but no confirmation
    assert namer.export_state()["names"]["/web"]["lastUpdate"] == saved_at

    again = FsNamer(tmp_path / "disco", clock=clock)  # the next restart
    assert again.import_state(namer.export_state()) == 1
    assert again.state_json()["names"]["web"]["lastConfirmed"] == format_time(saved_at)

    clock.t += 60
    namer.table.apply_bound(KEY, [A1])
    assert namer.export_state()["names"]["/web"]["lastUpdate"] == clock.t


def test_restored_names_no_one_asks_for_expire_from_saved_state(tmp_path: FsPath) -> None:
    """A restored name never looked up again is not carried from restart to restart forever: once its
    answer is older than ``saved_state_max_age`` it is not saved again. A name asked for is kept."""
    now = 1_800_000_000.0
    day = 24 * 3600.0
    namer = FsNamer(tmp_path / "disco", clock=Clock(now))
    namer.saved_state_max_age = 7 * day
    names = {
        "/old": web_entry(now - 8 * day),
        "/wanted": web_entry(now - 8 * day),
        "/recent": web_entry(now - day),
    }
    assert namer.import_state(saved_state(names)) == 3
    namer.lookup(Path.read("/wanted"))
    assert sorted(namer.export_state()["names"]) == ["/recent", "/wanted"]
    assert namer.table.get((b"old",)) is not None  # still served meanwhile


def test_state_file_nested_too_deep_is_ignored_not_fatal(tmp_path: FsPath) -> None:
    """A corrupt file of nested brackets makes the JSON decoder raise RecursionError: reported,
    naming the file and why, and the namer starts empty."""
    path = tmp_path / "io.l5d.fs.json"
    path.write_text("[" * 200_000)
    namer = FsNamer(tmp_path / "disco")
    with capture_logs() as logs:
        assert NamerStateStore(tmp_path, [namer]).load_all() == {}
    failed = [e for e in logs if e["event"] == "namer_state.load_failed"]
    assert len(failed) == 1 and failed[0]["path"] == str(path)
    assert failed[0]["error"] == "not valid namer state: JSON nested too deeply to decode (a corrupt file)"
    assert len(namer.table) == 0


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        ({"host": "10.0.0.9", "port": 0}, "address 10.0.0.9:0 has a port out of range 1-65535"),
        ({"host": "10.0.0.9", "port": 70000}, "address 10.0.0.9:70000 has a port out of range 1-65535"),
        ({"host": "10.0.0.9", "port": "80"}, "address 10.0.0.9:'80' has a port out of range 1-65535"),
        ({"host": "10.0.0.9", "port": True}, "address 10.0.0.9:True has a port out of range 1-65535"),
        (
            {"host": "10.0.0.9", "port": 8080, "weight": -1},
            "address 10.0.0.9:8080 has weight -1; it must be a finite number >= 0",
        ),
        (
            {"host": "10.0.0.9", "port": 8080, "weight": math.nan},
            "address 10.0.0.9:8080 has weight nan; it must be a finite number >= 0",
        ),
        (
            {"host": "10.0.0.9", "port": 8080, "weight": math.inf},
            "address 10.0.0.9:8080 has weight inf; it must be a finite number >= 0",
        ),
        ({"host": 7, "port": 8080}, "address host 7 is not a string"),
    ],
    ids=["port0", "port70000", "portString", "portBool", "weight-1", "weightNaN", "weightInf", "hostInt"],
)
def test_saved_addresses_that_no_namer_could_produce_are_not_restored(
    tmp_path: FsPath, bad: dict[str, Any], why: str
) -> None:
    """The state file is input (hand-edited, from another version, bit-rotted). A name with an address
    no namer would produce is skipped with a warning naming it and why; the other names load."""
    good = {"host": "10.0.0.1", "port": 8080}
    (tmp_path / "io.l5d.fs.json").write_text(
        json.dumps(
            saved_state(
                {
                    "/bad": {"addrs": [good, bad], "meta": {}, "lastUpdate": 1.0},
                    "/good": {"addrs": [good], "meta": {}, "lastUpdate": 1.0},
                }
            )
        )
    )
    namer = FsNamer(tmp_path / "disco")
    with capture_logs() as logs:
        assert NamerStateStore(tmp_path, [namer]).load_all() == {"/io.l5d.fs": 1}
    assert isinstance(namer.lookup(Path.read("/good")), Leaf)
    assert namer.table.get((b"bad",)) is None or namer.table.get((b"bad",)).addr is None
    warnings = [e for e in logs if e["event"] == "namer.state.restore.failed"]
    assert [(e["name"], e["error"]) for e in warnings] == [("/bad", why)]
