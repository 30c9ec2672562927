"""namerState.dir: a namer's last good answers are saved and served (stale) after a restart."""

from __future__ import annotations

import json
from pathlib import Path

import trio

from dtab import Leaf
from dtab import Path as DPath
from dtab.bind import AddrBound
from hostproxy.namerstate import NamerStateStore, file_name
from namers.fs import FsNamer


def test_file_name_is_safe() -> None:
    assert file_name("/io.l5d.k8s") == "io.l5d.k8s.json"
    assert file_name("/a/../b") == "a_.._b.json"
    assert file_name("/") == "root.json"


async def wait_bound(namer: FsNamer, name: str) -> None:
    with trio.fail_after(5):
        while True:
            try:
                tree = namer.lookup(DPath.of(name))
            except Exception:
                tree = None
            if isinstance(tree, Leaf) and isinstance(tree.value.addr, AddrBound):
                return
            await trio.sleep(0.05)


async def test_saved_state_is_served_stale_after_restart_with_backend_gone(tmp_path: Path) -> None:
    disco = tmp_path / "disco"
    disco.mkdir()
    (disco / "web").write_text("127.0.0.1 8080\n127.0.0.1 8081\n")
    state_dir = tmp_path / "state"

    first = FsNamer(str(disco))
    store = NamerStateStore(state_dir, [first])
    async with trio.open_nursery() as nursery:
        await nursery.start(first.run)
        await nursery.start(store.run, 0.05)
        await wait_bound(first, "web")
        with trio.fail_after(5):  # the change is saved without being asked
            while not (state_dir / "io.l5d.fs.json").exists():
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    saved = json.loads((state_dir / "io.l5d.fs.json").read_text())
    assert saved["kind"] == "io.l5d.fs" and "/web" in saved["names"]

    # The restart: the directory the namer reads is gone (the backend is down).
    (disco / "web").unlink()
    disco.rmdir()
    second = FsNamer(str(disco))
    restored = NamerStateStore(state_dir, [second]).load_all()
    assert restored == {"/io.l5d.fs": 1}
    tree = second.lookup(DPath.of("web"))
    assert isinstance(tree, Leaf)
    assert sorted((a.host, a.port) for a in tree.value.addr.addresses) == [
        ("127.0.0.1", 8080),
        ("127.0.0.1", 8081),
    ]
    assert second.state_json()["names"]["web"]["state"] == "stale"


def test_unreadable_or_foreign_state_is_ignored_with_a_warning(tmp_path: Path) -> None:
    (tmp_path / "io.l5d.fs.json").write_text("{not json")
    namer = FsNamer(str(tmp_path / "disco"))
    assert NamerStateStore(tmp_path, [namer]).load_all() == {}
    (tmp_path / "io.l5d.fs.json").write_text(
        json.dumps({"kind": "io.l5d.k8s", "prefix": "/#/io.l5d.k8s", "names": {}})
    )
    assert NamerStateStore(tmp_path, [namer]).load_all() == {}


def test_save_failure_is_counted_not_raised(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    store = NamerStateStore(blocker / "sub", [FsNamer(str(tmp_path))])
    assert store.save(store.namers[0]) is False
    assert store.statistics()["save_failures"] == 1
