"""The io.l5d.fs interpreter's dtab file: pure watcher core, then the trio poller on a real file."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import trio
import trio.testing
from structlog.testing import capture_logs

from dtab import Dtab, parse_dtab
from hostproxy.dtabfile import DtabFileError, DtabFileWatcher, Outcome, watch_dtab_file

PATH = "/etc/hostproxy/dtab"
V1 = b"/svc => /#/io.l5d.fs;\n"
V2 = b"# routing for the web tier\n/svc => /#/io.l5d.fs;\n/svc/web => /$/inet/127.0.0.1/8080;\n"
BAD = b"/svc => /#/io.l5d.fs;\n/host => /svc =>;\n"


class Recorder:
    def __init__(self) -> None:
        self.changes: list[tuple[Dtab, int]] = []

    def __call__(self, dtab: Dtab, version: int) -> None:
        self.changes.append((dtab, version))


def make(**kw: object) -> tuple[DtabFileWatcher, Recorder]:
    rec = Recorder()
    w = DtabFileWatcher(PATH, on_change=rec, settle_s=0.5, wall_clock=lambda: 1700000000.0, **kw)  # type: ignore[arg-type]
    return w, rec


def test_missing_file_at_startup_names_the_path() -> None:
    w, _ = make()
    with pytest.raises(
        DtabFileError, match=r"^dtab file /etc/hostproxy/dtab does not exist: create it \(an empty file"
    ):
        w.load_initial(None)


def test_invalid_file_at_startup_points_at_line_and_column() -> None:
    w, rec = make()
    with pytest.raises(DtabFileError) as ei:
        w.load_initial(BAD)
    assert str(ei.value) == (
        "dtab file /etc/hostproxy/dtab is not a valid dtab: fix it and start again\n"
        "/etc/hostproxy/dtab:2:15: end of input expected but '=' found\n"
        "/host => /svc =>;\n"
        "              ^"
    )
    assert rec.changes == []


def test_initial_load_is_version_one() -> None:
    w, rec = make()
    assert w.load_initial(V1) == parse_dtab(V1.decode())
    assert w.version == 1
    assert rec.changes == [(parse_dtab(V1.decode()), 1)]


def test_a_byte_order_mark_is_no_part_of_the_dtab() -> None:
    """A dtab file saved with a UTF-8 byte order mark (Windows Notepad writes one) was refused at its
    first byte ("'/' expected but '\ufeff' found"), a character no editor shows."""
    w, _ = make()
    assert w.load_initial(b"\xef\xbb\xbf" + V1) == parse_dtab(V1.decode())


def test_empty_file_is_an_empty_dtab() -> None:
    w, _ = make()
    assert w.load_initial(b"") == Dtab.EMPTY


def test_change_applies_only_after_settling() -> None:
    w, rec = make()
    w.load_initial(V1)
    assert w.observe(10.0, V2) is None
    assert w.tick(10.25) is None
    out = w.observe(10.5, V2)
    assert out == Outcome(True, 2, added=("/svc/web=>/$/inet/127.0.0.1/8080",), removed=())
    assert w.dtab == parse_dtab(V2.decode())
    assert rec.changes[-1] == (parse_dtab(V2.decode()), 2)


def test_half_written_file_is_never_applied() -> None:
    w, rec = make()
    w.load_initial(V1)
    # A slow writer: every poll sees a longer prefix. None of them settles.
    for i, n in enumerate(range(5, len(V2), 5)):
        assert w.observe(10.0 + 0.25 * i, V2[:n]) is None
    assert w.version == 1 and len(rec.changes) == 1
    assert w.last_error is None
    # The complete file then settles and applies.
    t = 10.0 + 0.25 * len(range(5, len(V2), 5))
    assert w.observe(t, V2) is None
    assert w.tick(t + 0.5) is not None
    assert w.version == 2


def test_invalid_change_is_rejected_and_last_good_stays() -> None:
    w, rec = make()
    w.load_initial(V1)
    with capture_logs() as logs:
        w.observe(1.0, BAD)
        out = w.tick(1.5)
    expected = (
        "/etc/hostproxy/dtab:2:15: end of input expected but '=' found\n/host => /svc =>;\n              ^"
    )
    assert out == Outcome(False, 1, error=expected)
    assert w.dtab == parse_dtab(V1.decode())
    assert len(rec.changes) == 1
    assert w.state_json()["last_error"] == {"message": expected, "at": 1700000000.0}
    assert [e["event"] for e in logs] == ["dtab.rejected"]
    assert logs[0]["error"] == expected
    # The same bad content is not rejected (and logged) again on every poll.
    with capture_logs() as logs:
        assert w.observe(2.0, BAD) is None
        assert w.tick(3.0) is None
    assert logs == []
    # Fixing the file applies it and clears the error.
    w.observe(4.0, V2)
    assert w.tick(4.5) is not None
    assert w.version == 2 and w.last_error is None


def test_reverting_a_bad_edit_clears_the_error() -> None:
    w, _ = make()
    w.load_initial(V1)
    w.observe(1.0, BAD)
    w.tick(2.0)
    assert w.last_error is not None
    assert w.observe(3.0, V1) is None
    assert w.last_error is None and w.version == 1


def test_non_utf8_is_rejected_with_line() -> None:
    w, _ = make()
    w.load_initial(V1)
    w.observe(1.0, b"/svc => /#/io.l5d.fs;\n/a => /\xff;\n")
    out = w.tick(2.0)
    assert out is not None and out.error == (
        "/etc/hostproxy/dtab:2: not UTF-8 text (byte 29); save the file as UTF-8"
    )


def test_missing_file_keeps_last_good() -> None:
    w, rec = make()
    w.load_initial(V1)
    with capture_logs() as logs:
        assert w.observe(1.0, None) is None
        assert w.observe(1.25, None) is None
    assert [e["event"] for e in logs] == ["dtab.file_missing"]
    assert w.dtab == parse_dtab(V1.decode()) and len(rec.changes) == 1
    state = w.state_json()
    assert state["missing"] is True
    assert (
        state["last_error"]["message"] == "dtab file /etc/hostproxy/dtab is missing; keeping dtab version 1"
    )
    # It comes back unchanged: nothing is applied and the error clears.
    assert w.observe(2.0, V1) is None
    assert w.last_error is None and w.state_json()["missing"] is False


def test_diff_counts_duplicates_and_order() -> None:
    w, _ = make()
    w.load_initial(b"/a => /b;\n/a => /b;\n/c => /d;\n")
    w.observe(0.0, b"/c => /d;\n/a => /b;\n/e => /f;\n")
    out = w.tick(1.0)
    assert out is not None
    assert (out.added, out.removed) == (("/e=>/f",), ("/a=>/b",))


def test_history_is_bounded_and_newest_first() -> None:
    w, _ = make(history=3)
    w.load_initial(b"")
    for i in range(5):
        w.observe(float(i), f"/v => /{i};".encode())
        w.tick(float(i) + 0.5)
    state = w.state_json()
    assert [h["version"] for h in state["history"]] == [6, 5, 4]
    assert state["history"][0] == {
        "version": 6,
        "applied_at": 1700000000.0,
        "added": ["/v=>/4"],
        "removed": ["/v=>/3"],
    }


def test_state_json_shape() -> None:
    w, _ = make()
    w.load_initial(V2)
    state = w.state_json()
    assert state == {
        "path": PATH,
        "version": 1,
        "applied_at": 1700000000.0,
        "dtab": V2.decode(),
        "dentries": ["/svc=>/#/io.l5d.fs", "/svc/web=>/$/inet/127.0.0.1/8080"],
        "pending": False,
        "missing": False,
        "last_error": None,
        "history": [
            {
                "version": 1,
                "applied_at": 1700000000.0,
                "added": ["/svc=>/#/io.l5d.fs", "/svc/web=>/$/inet/127.0.0.1/8080"],
                "removed": [],
            }
        ],
    }


def test_applied_change_is_logged_with_diff() -> None:
    w, _ = make()
    w.load_initial(V1)
    w.observe(0.0, V2)
    with capture_logs() as logs:
        w.tick(1.0)
    assert logs == [
        {
            "event": "dtab.applied",
            "log_level": "info",
            "path": PATH,
            "version": 2,
            "added": ["/svc/web=>/$/inet/127.0.0.1/8080"],
            "removed": [],
        }
    ]


# -- the trio poller on a real file, under an autojump clock ----------------------------------------


async def test_poller_applies_valid_change_within_a_second(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    f = tmp_path / "dtab"
    f.write_bytes(V1)
    rec = Recorder()
    w = DtabFileWatcher(str(f), on_change=rec)
    w.load_initial(f.read_bytes())
    async with trio.open_nursery() as nursery:
        await nursery.start(functools.partial(watch_dtab_file, w))
        await trio.sleep(0.3)
        f.write_bytes(V2)
        t0 = trio.current_time()
        while w.version < 2:
            await trio.sleep(0.05)
            assert trio.current_time() - t0 < 1.0, "the change was not applied within a second"
        assert rec.changes[-1] == (parse_dtab(V2.decode()), 2)
        # A broken edit is rejected and the good dtab stays in force.
        f.write_bytes(BAD)
        while w.last_error is None:
            await trio.sleep(0.05)
            assert trio.current_time() - t0 < 5.0
        assert w.version == 2 and w.dtab == parse_dtab(V2.decode())
        assert w.last_error["message"].startswith(f"{f}:2:15: end of input expected but '=' found\n")
        # Deleting the file keeps the dtab too.
        f.unlink()
        while not w.missing:
            await trio.sleep(0.05)
            assert trio.current_time() - t0 < 10.0
        assert w.version == 2
        # An atomic replace (write a temp file, rename over) is seen.
        tmp = tmp_path / "dtab.tmp"
        tmp.write_bytes(V1)
        tmp.rename(f)
        while w.version < 3:
            await trio.sleep(0.05)
            assert trio.current_time() - t0 < 15.0
        assert w.dtab == parse_dtab(V1.decode()) and w.last_error is None
        nursery.cancel_scope.cancel()


async def test_poller_picks_up_a_change_made_before_it_started(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    f = tmp_path / "dtab"
    f.write_bytes(V1)
    w = DtabFileWatcher(str(f))
    w.load_initial(f.read_bytes())
    f.write_bytes(V2)
    async with trio.open_nursery() as nursery:
        await nursery.start(functools.partial(watch_dtab_file, w))
        await trio.sleep(1.0)
        nursery.cancel_scope.cancel()
    assert w.version == 2
