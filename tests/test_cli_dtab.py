"""Tests of ``hostproxy dtab``: the real CLI in a subprocess, plus the pure formatter and linter."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dtab import parse_dtab
from hostproxy import dtabtools

DATA = Path(__file__).parent / "data" / "dtab"
REPO = Path(__file__).resolve().parent.parent


def run(*args: str, cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-m", "hostproxy", "dtab", *args],
        cwd=cwd,
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """A scratch copy of the fixtures (fmt rewrites files in place)."""
    dst = tmp_path / "dtab"
    shutil.copytree(DATA, dst)
    return dst


# ------------------------------------------------------------------------------------------------
# check
# ------------------------------------------------------------------------------------------------


def test_check_ok_is_silent(work: Path) -> None:
    r = run("check", "routes.dtab", "clean.dtab", "messy.dtab", cwd=work)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")


def test_check_reports_every_failing_file_with_caret(work: Path) -> None:
    r = run("check", "missing_semicolon.dtab", "routes.dtab", "missing_term.dtab", "nope.dtab", cwd=work)
    assert r.returncode == 1
    assert r.stderr == ""
    assert r.stdout == (
        "missing_semicolon.dtab:4:1: end of input expected but '/' found "
        "(dentries are separated by ';' — a newline is not a separator)\n"
        "/svc/api => /#/io.l5d.fs/api;\n"
        "^\n"
        "missing_term.dtab:1:24: a name ('/path', '!', '~', '$' or '(') expected but ';' found "
        "(a name tree term is missing)\n"
        "/svc => /#/io.l5d.fs | ;\n"
        "                       ^\n"
        "nope.dtab: cannot read: No such file or directory\n"
    )


def test_check_stdin(work: Path) -> None:
    r = run("check", "-", cwd=work, stdin="/a => /b;\n/c => /d /e;\n")
    assert r.returncode == 1
    assert r.stdout.splitlines()[0].startswith("<stdin>:2:10: end of input expected but '/' found")
    assert r.stdout.splitlines()[1:] == ["/c => /d /e;", "         ^"]
    assert run("check", "-", cwd=work, stdin="/a => /b;").returncode == 0


def test_check_takes_a_file_with_a_byte_order_mark(work: Path) -> None:
    (work / "bom.dtab").write_bytes(b"\xef\xbb\xbf/a => /b;\n")
    r = run("check", "bom.dtab", cwd=work)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    (work / "bom_bad.dtab").write_bytes(b"\xef\xbb\xbf/a => /b /c;\n")
    r = run("check", "bom_bad.dtab", cwd=work)
    assert r.returncode == 1 and r.stdout.startswith("bom_bad.dtab:1:10: "), (
        r.stdout
    )  # columns as an editor shows them
    assert run("check", "-", cwd=work, stdin="\ufeff/a => /b;").returncode == 0


def test_check_rejects_non_utf8(work: Path) -> None:
    (work / "latin1.dtab").write_bytes(b"# caf\xe9\n/a => /b;\n")
    r = run("check", "latin1.dtab", cwd=work)
    assert r.returncode == 1
    assert r.stdout == (
        "latin1.dtab: cannot read: not UTF-8 text (invalid continuation byte at byte 5); "
        "save the file as UTF-8\n"
    )


def test_check_json(work: Path) -> None:
    r = run("check", "--json", "routes.dtab", "missing_term.dtab", cwd=work)
    assert r.returncode == 1
    assert r.stderr == ""
    doc = json.loads(r.stdout)
    assert doc == {
        "ok": False,
        "files": [
            {"file": "routes.dtab", "ok": True, "dentries": 3},
            {
                "file": "missing_term.dtab",
                "ok": False,
                "error": {
                    "line": 1,
                    "column": 24,
                    "message": "a name ('/path', '!', '~', '$' or '(') expected but ';' found "
                    "(a name tree term is missing)",
                    "expected": "a name ('/path', '!', '~', '$' or '(')",
                    "found": "';'",
                },
            },
        ],
    }
    ok = run("check", "--json", "routes.dtab", cwd=work)
    assert ok.returncode == 0 and json.loads(ok.stdout)["ok"] is True


def test_dtab_without_subcommand_is_usage_error(work: Path) -> None:
    r = run(cwd=work)
    assert r.returncode == 2
    assert r.stdout == ""
    assert "usage: hostproxy dtab" in r.stderr


# ------------------------------------------------------------------------------------------------
# fmt
# ------------------------------------------------------------------------------------------------


def test_fmt_rewrites_in_place_keeping_comments(work: Path) -> None:
    original = (work / "messy.dtab").read_text()
    r = run("fmt", "messy.dtab", cwd=work)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "reformatted messy.dtab\n")
    formatted = (work / "messy.dtab").read_text()
    assert formatted == (DATA / "messy.formatted.dtab").read_text()
    assert parse_dtab(formatted) == parse_dtab(original)
    # Idempotent: a second run changes nothing and says nothing.
    again = run("fmt", "messy.dtab", cwd=work)
    assert (again.returncode, again.stdout, again.stderr) == (0, "", "")
    assert (work / "messy.dtab").read_text() == formatted


def test_fmt_check_lists_files_and_writes_nothing(work: Path) -> None:
    before = (work / "messy.dtab").read_bytes()
    r = run("fmt", "--check", "messy.dtab", "messy.formatted.dtab", cwd=work)
    assert (r.returncode, r.stdout, r.stderr) == (1, "would reformat messy.dtab\n", "")
    assert (work / "messy.dtab").read_bytes() == before
    clean = run("fmt", "--check", "messy.formatted.dtab", cwd=work)
    assert (clean.returncode, clean.stdout, clean.stderr) == (0, "", "")


def test_fmt_never_writes_a_file_that_does_not_parse(work: Path) -> None:
    before = (work / "missing_semicolon.dtab").read_bytes()
    r = run("fmt", "missing_semicolon.dtab", "messy.dtab", cwd=work)
    assert r.returncode == 1
    assert r.stdout == ""
    assert r.stderr == (
        "missing_semicolon.dtab:4:1: end of input expected but '/' found "
        "(dentries are separated by ';' — a newline is not a separator)\n"
        "/svc/api => /#/io.l5d.fs/api;\n"
        "^\n"
        "missing_semicolon.dtab: not formatted: fix the syntax error first\n"
        "reformatted messy.dtab\n"
    )
    assert (work / "missing_semicolon.dtab").read_bytes() == before


def test_fmt_stdin_to_stdout(work: Path) -> None:
    r = run("fmt", "-", cwd=work, stdin="/a=>/b|(/c|/d)&2*/e;/f=>0.125*/g&/h # note\n")
    assert r.returncode == 0
    assert r.stdout == "/a => /b | (/c | /d) & 2 * /e;\n/f => 0.125 * /g & /h;  # note\n"
    assert r.stderr == ""


def test_fmt_keeps_file_mode(work: Path) -> None:
    target = work / "messy.dtab"
    target.chmod(0o640)
    assert run("fmt", "messy.dtab", cwd=work).returncode == 0
    assert target.stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in work.iterdir() if p.name.startswith(".dtabfmt-")) == []


# -- the formatter itself ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("", ""),
        ("  \n\n", ""),
        ("# only a comment", "# only a comment\n"),
        ("/a=>/b", "/a => /b;\n"),
        ("/a=>/b;", "/a => /b;\n"),
        # '#' glued to a label is part of it; after whitespace it is a comment.
        ("/a=>/b#c # real", "/a => /b#c;  # real\n"),
        ("/#/io.l5d.fs=>/x", "/#/io.l5d.fs => /x;\n"),
        # Nesting that must stay nested, and parentheses that vanish.
        ("/a=>/a|(/b|/c)", "/a => /a | (/b | /c);\n"),
        ("/a=>(/a&/b)&/c", "/a => (/a & /b) & /c;\n"),
        ("/a=>((/a))", "/a => /a;\n"),
        ("/a=>(/a|/b)&/c", "/a => (/a | /b) & /c;\n"),
        ("/a=>/a&/b|/c", "/a => /a & /b | /c;\n"),
        # Weights: exact, shortest; 1 is implicit; a lone weight is dropped by the parser.
        ("/a=>0.125*/a&1.0*/b&007.50*/c&0*/d", "/a => 0.125 * /a & /b & 7.5 * /c & 0 * /d;\n"),
        ("/a=>0.5*/x", "/a => /x;\n"),
        # Escapes and wildcards.
        ("/a/*/\\x2a=>/\\x41", "/a/*/\\x2a => /A;\n"),
        ("/a=>/x\\x20y", "/a => /\\x78\\x20\\x79;\n"),
        ("/a/*#c\n=>/b", "#c\n/a/* => /b;\n"),
        # Comments inside a dentry move above it; several dentries on a line are split.
        (
            "/a => # one\n /b | # two\n /c; /d => !; # three",
            "# one\n# two\n/a => /b | /c;\n/d => !;  # three\n",
        ),
        # An own-line comment between a dentry and its ';' goes above the next dentry.
        ("/a => /b\n# own\n; /c => /d", "/a => /b;\n# own\n/c => /d;\n"),
        # Blank lines: one kept where there were several; none at the start or end.
        ("\n\n/a=>/b;\n\n\n\n/c=>/d;\n\n", "/a => /b;\n\n/c => /d;\n"),
        ("# head\n\n/a=>/b;\n# tail 1\n\n# tail 2\n", "# head\n\n/a => /b;\n# tail 1\n\n# tail 2\n"),
        ("/a=>/b;\r\n/c=>/d; # crlf\r\n", "/a => /b;\n/c => /d;  # crlf\n"),
    ],
)
def test_format_dtab(source: str, expected: str) -> None:
    out = dtabtools.format_dtab(source)
    assert out == expected
    assert dtabtools.format_dtab(out) == out
    assert parse_dtab(out) == parse_dtab(source)


def test_exact_weight() -> None:
    assert [dtabtools.exact_weight(w) for w in (0.0, 1.0, 3.0, 0.125, 2.675, 1e22, 1e-7)] == [
        "0",
        "1",
        "3",
        "0.125",
        "2.675",
        "10000000000000000000000",
        "0.0000001",
    ]
    assert float(dtabtools.exact_weight(float("inf"))) == float("inf")


_labels = st.sampled_from(["a", "b", "svc", "#", "io.l5d.fs", "$", "x-1", "\\x2a", "\\x20"])
_paths = st.lists(_labels, min_size=0, max_size=3).map(lambda ls: "/" + "/".join(ls))
_weights = st.sampled_from(["", "0*", "1*", "0.5 * ", "2.675*", ".25 *", "10*"])


def _trees(depth: int) -> st.SearchStrategy[str]:
    simple = st.one_of(_paths, st.sampled_from(["~", "!", "$"]))
    if depth == 0:
        return simple
    sub = _trees(depth - 1)
    paren = sub.map(lambda t: f"({t})")
    term = st.tuples(_weights, st.one_of(simple, paren)).map("".join)
    union = st.lists(term, min_size=1, max_size=3).map(" & ".join)
    return st.lists(union, min_size=1, max_size=3).map(" | ".join)


_gaps = st.sampled_from([" ", "", "\n", " # c\n", "\n\n", "\t#x #y\n  "])
_dentry = st.tuples(_paths, _gaps, _trees(2), _gaps).map(lambda t: f"{t[0]}{t[1]}=>{t[2]}{t[3]}")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(_dentry, _gaps), max_size=5), _gaps)
def test_format_round_trips_and_is_idempotent(parts: list[tuple[str, str]], lead: str) -> None:
    text = lead + ";".join(d + g for d, g in parts)
    out = dtabtools.format_dtab(text)
    assert parse_dtab(out) == parse_dtab(text)
    assert dtabtools.format_dtab(out) == out
    # every comment survives (trailing ones may share a line)
    layout = dtabtools.scan_layout(text)
    comments = [c.text for d in layout.dentries for c in d.leading + d.trailing] + [
        c.text for c in layout.tail
    ]
    after = dtabtools.scan_layout(out)

    def count(lay: dtabtools.Layout) -> int:  # trailing comments of one dentry share its line
        return sum(len(d.leading) + bool(d.trailing) for d in lay.dentries) + len(lay.tail)

    assert count(after) == count(layout)
    assert all(len(d.trailing) <= 1 for d in after.dentries)
    for c in comments:
        assert c in out


# ------------------------------------------------------------------------------------------------
# lint
# ------------------------------------------------------------------------------------------------


def test_lint_reports_each_problem(work: Path) -> None:
    r = run("lint", "lint.dtab", cwd=work)
    assert r.returncode == 1
    assert r.stderr == ""
    assert r.stdout.splitlines() == [
        "lint.dtab:2:1: warning: dentry '/svc/web => /#/io.l5d.fs/web' is never used: the later dentry "
        "'/svc/web => /$/inet/127.0.0.1/8080' (line 4) has the same prefix and its destination can never "
        "be '~', so lookups never fall back to this one; delete this dentry, or move it after line 4 if "
        "it should win [shadowed]",
        "lint.dtab:5:1: warning: rewrite cycle /a -> /b -> /a (lines 5, 6) consumes no label: a name that "
        "nothing else binds loops until the recursion limit and fails instead of falling back; point one "
        "of these dentries at a namer (/#/...) or an address (/$/inet/...) instead [cycle]",
        "lint.dtab:7:13: warning: union branch '/#/io.l5d.fs/api-v1' has weight 0 and gets no traffic "
        "(unless every branch has weight 0, when traffic is split evenly); remove the branch, or give it "
        "a positive weight [zero-weight]",
    ]


def test_lint_clean_file(work: Path) -> None:
    r = run("lint", "clean.dtab", "routes.dtab", cwd=work)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")


def test_lint_json(work: Path) -> None:
    r = run("lint", "--json", "lint.dtab", "clean.dtab", "missing_term.dtab", cwd=work)
    assert r.returncode == 1
    doc = json.loads(r.stdout)
    assert doc["ok"] is False
    files = {f["file"]: f for f in doc["files"]}
    assert [(w["code"], w["line"], w["column"]) for w in files["lint.dtab"]["warnings"]] == [
        ("shadowed", 2, 1),
        ("cycle", 5, 1),
        ("zero-weight", 7, 13),
    ]
    assert files["clean.dtab"] == {"file": "clean.dtab", "ok": True, "warnings": [], "error": None}
    assert files["missing_term.dtab"]["error"]["line"] == 1
    assert files["missing_term.dtab"]["error"]["column"] == 24


def _codes(text: str) -> list[tuple[str, int, int]]:
    return [(w.code, w.line, w.column) for w in dtabtools.lint_dtab(text)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # A leaf may be ~ (nothing binds it): the earlier dentry is a real fall-back.
        ("/s => /x;\n/s => /y;", []),
        ("/s => /x;\n/s => ~;", []),
        # ! and $ never fall back.
        ("/s => /x;\n/s => !;", [("shadowed", 1, 1)]),
        ("/s => /x;\n/s => $;", [("shadowed", 1, 1)]),
        # A more general later prefix shadows too; a more specific one does not.
        ("/s/web => /x;\n/s => !;", [("shadowed", 1, 1)]),
        ("/s/web => /x;\n/* => !;", [("shadowed", 1, 1)]),
        ("/s => /x;\n/s/web => !;", []),
        ("/*/web => /x;\n/s/web => !;", []),
        # Alternatives: one never-~ child is enough; unions need a branch that is neither ~ nor !.
        ("/s => /x;\n/s => /y | !;", [("shadowed", 1, 1)]),
        ("/s => /x;\n/s => /y & !;", []),
        ("/s => /x;\n/s => /y & $;", [("shadowed", 1, 1)]),
        ("/s => /x;\n/s => /y & (~ | $);", [("shadowed", 1, 1)]),
        ("/s => /x;\n/s => /y & (! | $);", []),
        # System paths are known only when no dentry could rewrite them.
        ("/s => /x;\n/s => /$/inet/10.0.0.1/80;", [("shadowed", 1, 1)]),
        ("/s => /x;\n/s => /$/inet/8080;", [("shadowed", 1, 1)]),
        ("/s => /x;\n/s => /$/inet/host/http;", []),
        ("/s => /x;\n/s => /$/nil;", [("shadowed", 1, 1)]),
        ("/$/inet => /z;\n/s => /x;\n/s => /$/inet/10.0.0.1/80;", []),
        # Cycles: returning to the prefix without consuming, directly, through a chain, or growing.
        ("/a => /a/v1;", [("cycle", 1, 1)]),
        ("/a => /b;\n/b => /c;\n/c => /a/x;", [("cycle", 1, 1)]),
        ("/ => /p;\n/p => /#/io.l5d.fs;", [("cycle", 1, 1)]),
        # ... but a chain that consumes a label ends.
        ("/a/b => /a;", []),
        ("/a/* => /a;", []),
        ("/a => /b;\n/b/c => /a;", []),
        ("/a => /b;\n/b/c => /a/c;", [("cycle", 1, 1)]),
        # Weights.
        ("/s => 0 * /a & /b;", [("zero-weight", 1, 7)]),
        ("/s => 0.0 * /a & 0 * /b;", [("zero-weight", 1, 7), ("zero-weight", 1, 18)]),
        ("/s => 0 * /a;", [("lone-weight", 1, 7)]),
        ("/s => (2 * /a) & /b | 3 * /c;", [("lone-weight", 1, 8), ("lone-weight", 1, 23)]),
        ("/s => 0.5 * /a & 0.5 * /b;", []),
        ("", []),
    ],
)
def test_lint_rules(text: str, expected: list[tuple[str, int, int]]) -> None:
    assert _codes(text) == expected


def test_lint_syntax_error_is_reported_like_check(work: Path) -> None:
    r = run("lint", "missing_term.dtab", cwd=work)
    assert r.returncode == 1
    assert r.stdout.startswith("missing_term.dtab:1:24: a name ('/path', '!', '~', '$' or '(') expected")


# ------------------------------------------------------------------------------------------------
# delegate
# ------------------------------------------------------------------------------------------------


def test_delegate_text_tree_with_fs_namer(work: Path) -> None:
    r = run("delegate", "--dtab", "routes.dtab", "--namer", "io.l5d.fs=disco", "/svc/web", cwd=work)
    assert (r.returncode, r.stderr) == (0, "")
    assert r.stdout == (
        "/svc/web  -> alternatives, the first that is not ~ wins:\n"
        "|-- /#/io.l5d.fs/web-v2  [/svc/web => /#/io.l5d.fs/web-v2 | /#/io.l5d.fs/web]  "
        "-> ~ (neg: nothing binds this path)\n"
        "|-- /#/io.l5d.fs/web  [/svc/web => /#/io.l5d.fs/web-v2 | /#/io.l5d.fs/web]  "
        "-> bound /#/io.l5d.fs/web: 127.0.0.1:8080, 127.0.0.1:8081*2\n"
        "`-- /#/io.l5d.fs/web  [/svc => /#/io.l5d.fs]  "
        "-> bound /#/io.l5d.fs/web: 127.0.0.1:8080, 127.0.0.1:8081*2\n"
        "binds to: /#/io.l5d.fs/web (127.0.0.1:8080, 127.0.0.1:8081*2)\n"
    )


def test_delegate_union_residual_and_text_dtab_appended(work: Path) -> None:
    r = run(
        "delegate",
        "--dtab",
        "messy.dtab",
        "--dtab",
        "/svc/api => 3 * /svc/web & /$/inet/127.1/9999",
        "--namer",
        "io.l5d.fs=disco",
        "/svc/api/v1",
        cwd=work,
    )
    assert (r.returncode, r.stderr) == (0, "")
    assert r.stdout.splitlines() == [
        "/svc/api/v1  -> alternatives, the first that is not ~ wins:",
        "|-- /svc/api/v1  [/svc/api => 3 * /svc/web & /$/inet/127.1/9999]  -> weighted union of:",
        "|   |-- 3 * /svc/web/v1  -> alternatives, the first that is not ~ wins:",
        "|   |   |-- /#/io.l5d.fs/web-v2/v1  [/svc/web => /#/io.l5d.fs/web-v2 | /#/io.l5d.fs/web]  "
        "-> ~ (neg: nothing binds this path)",
        "|   |   |-- /#/io.l5d.fs/web/v1  [/svc/web => /#/io.l5d.fs/web-v2 | /#/io.l5d.fs/web]  "
        "-> bound /#/io.l5d.fs/web (residual /v1): 127.0.0.1:8080, 127.0.0.1:8081*2",
        "|   |   `-- /#/io.l5d.fs/web/v1  [/svc => /#/io.l5d.fs]  "
        "-> bound /#/io.l5d.fs/web (residual /v1): 127.0.0.1:8080, 127.0.0.1:8081*2",
        "|   `-- 1 * /$/inet/127.1/9999/v1  -> bound /$/inet/127.1/9999 (residual /v1): 127.0.0.1:9999",
        "|-- /svc/api/v1  [/svc/api => 0.95 * /#/io.l5d.fs/api & 0.05 * /#/io.l5d.fs/api-v3]  "
        "-> weighted union of:",
        "|   |-- 0.95 * /#/io.l5d.fs/api/v1  -> bound /#/io.l5d.fs/api (residual /v1): 10.0.0.7:9090",
        "|   `-- 0.05 * /#/io.l5d.fs/api-v3/v1  -> ~ (neg: nothing binds this path)",
        "`-- /#/io.l5d.fs/api/v1  [/svc => /#/io.l5d.fs]  "
        "-> bound /#/io.l5d.fs/api (residual /v1): 10.0.0.7:9090",
        "binds to: 3 * /#/io.l5d.fs/web (127.0.0.1:8080, 127.0.0.1:8081*2) & /$/inet/127.1/9999 (127.0.0.1:9999)",
    ]


def test_delegate_json_is_the_delegator_shape(work: Path) -> None:
    r = run("delegate", "--json", "--dtab", "routes.dtab", "--namer", "io.l5d.fs=disco", "/svc/pay", cwd=work)
    assert (r.returncode, r.stderr) == (0, "")
    assert json.loads(r.stdout) == {
        "type": "alt",
        "path": "/svc/pay",
        "alt": [
            {
                "type": "leaf",
                "path": "/$/inet/127.0.0.1/9000",
                "dentry": {"prefix": "/svc/pay", "dst": "/$/inet/127.0.0.1/9000"},
                "bound": {
                    "addr": {
                        "type": "bound",
                        "addrs": [{"ip": "127.0.0.1", "port": 9000, "meta": {}}],
                        "meta": {},
                    },
                    "id": "/$/inet/127.0.0.1/9000",
                    "path": "/",
                },
            },
            {"type": "neg", "path": "/#/io.l5d.fs/pay", "dentry": {"prefix": "/svc", "dst": "/#/io.l5d.fs"}},
        ],
    }


def test_delegate_later_namer_wins(work: Path) -> None:
    both = ("--namer", "io.l5d.fs=disco", "--namer", "io.l5d.fs=disco2")
    r = run("delegate", "--dtab", "/svc => /#/io.l5d.fs", *both, "/svc/web", cwd=work)
    assert r.stdout.splitlines()[-1] == "binds to: /#/io.l5d.fs/web (10.9.9.9:80)"
    swapped = ("--namer", "io.l5d.fs=disco2", "--namer", "io.l5d.fs=disco")
    r = run("delegate", "--dtab", "/svc => /#/io.l5d.fs", *swapped, "/svc/web", cwd=work)
    assert r.stdout.splitlines()[-1] == "binds to: /#/io.l5d.fs/web (127.0.0.1:8080, 127.0.0.1:8081*2)"
    # A name the preferred namer lacks falls through to the other one.
    r = run("delegate", "--dtab", "/svc => /#/io.l5d.fs", *both, "/svc/api", cwd=work)
    assert r.stdout.splitlines()[-1] == "binds to: /#/io.l5d.fs/api (10.0.0.7:9090)"


def test_delegate_namer_with_custom_name(work: Path) -> None:
    r = run(
        "delegate", "--dtab", "/svc => /#/disco/prod", "--namer", "/#/disco/prod=disco", "/svc/api", cwd=work
    )
    assert r.returncode == 0
    assert r.stdout.splitlines()[-1] == "binds to: /#/disco/prod/api (10.0.0.7:9090)"


def test_delegate_broken_file_shows_the_error(work: Path) -> None:
    r = run("delegate", "--dtab", "routes.dtab", "--namer", "io.l5d.fs=disco", "/svc/broken", cwd=work)
    assert r.returncode == 0
    message = (
        "disco/broken:1: port 'http' is not a number; write each line as 'host port' or "
        "'host port * weight', e.g. '10.0.0.7 8080 * 2.0' (namer /#/io.l5d.fs, looking up /#/io.l5d.fs/broken)"
    )
    assert r.stdout.splitlines() == [
        "/svc/broken",
        f"`-- /#/io.l5d.fs/broken  [/svc => /#/io.l5d.fs]  -> error: {message}",
        f"binding fails: {message}",
    ]


def test_delegate_system_namers_without_dns(work: Path) -> None:
    dtab = "/a => /$/inet/localhost/80 | /$/nil; /b => /$/fail; /c => ~"
    r = run("delegate", "--dtab", dtab, "/a", cwd=work)
    assert r.stdout.splitlines() == [
        "/a  -> alternatives, the first that is not ~ wins:",
        "|-- /$/inet/localhost/80  [/a => /$/inet/localhost/80 | /$/nil]  -> bound /$/inet/localhost/80: "
        "localhost:80: a host name, not resolved here; the daemon asks DNS",
        "`-- /$/nil  [/a => /$/inet/localhost/80 | /$/nil]  -> $ (empty: exists but has no endpoints)",
        "binds to: /$/inet/localhost/80 (localhost:80: a host name, not resolved here; the daemon asks DNS)",
    ]
    r = run("delegate", "--dtab", dtab, "/b", cwd=work)
    assert r.stdout.splitlines()[-1] == "binds to: ! (requests to this name fail)"
    r = run("delegate", "--dtab", dtab, "/c", cwd=work)
    assert r.stdout.splitlines() == [
        "/c",
        "`-- ~  [/c => ~]  -> ~ (neg: nothing binds this path)",
        "binds to: ~ (no route: requests to this name fail)",
    ]


def test_delegate_cycle_fails_with_one_json_document(work: Path) -> None:
    message = (
        "cannot explain /a: explaining /a exceeded 100 rewrite steps (Max recursion level reached.): "
        "the dtab has a rewrite cycle; run 'hostproxy dtab lint' on the dtab to find it"
    )
    r = run("delegate", "--json", "--dtab", "/a => /b; /b => /a", "/a", cwd=work)
    assert r.returncode == 1
    assert json.loads(r.stdout) == {"error": {"message": message}}
    assert r.stderr == message + "\n"
    r = run("delegate", "--dtab", "/a => /b; /b => /a", "/a", cwd=work)
    assert (r.returncode, r.stdout, r.stderr) == (1, "", message + "\n")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--dtab", "nofile", "/a"],
            "--dtab 'nofile': no such file, and not dtab text (a dtab looks like '/svc => /#/io.l5d.fs')",
        ),
        (
            ["--dtab", "/a=>/b /c", "/a"],
            "--dtab:1:8: end of input expected but '/' found (whitespace ends a path; join alternatives with "
            "'|' or '&')\n/a=>/b /c\n       ^",
        ),
        (
            ["--dtab", "missing_term.dtab", "/a"],
            "missing_term.dtab:1:24: a name ('/path', '!', '~', '$' or '(') expected but ';' found "
            "(a name tree term is missing)\n/svc => /#/io.l5d.fs | ;\n                       ^",
        ),
        (["--dtab", "/a=>/b", "a/b"], "PATH:1:1: '/' expected but 'a' found\na/b\n^"),
        (
            ["--dtab", "/a=>/b", "--namer", "io.l5d.fs", "/a"],
            "--namer 'io.l5d.fs': write NAME=DIR, e.g. --namer io.l5d.fs=configs/disco",
        ),
        (
            ["--dtab", "/a=>/b", "--namer", "io.l5d.fs=nodir", "/a"],
            "--namer 'io.l5d.fs=nodir': io.l5d.fs rootDir 'nodir' does not exist; create it or fix the --namer DIR",
        ),
    ],
)
def test_delegate_bad_arguments(work: Path, args: list[str], message: str) -> None:
    r = run("delegate", *args, cwd=work)
    assert (r.returncode, r.stdout, r.stderr) == (1, "", message + "\n")
