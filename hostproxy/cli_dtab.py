"""``hostproxy dtab``: check, format, lint and explain dtab files from the command line.

Theory of operation
-------------------
Four subcommands for operators who keep dtabs in files (and in CI, pre-commit hooks, on a laptop):

* ``check FILE...`` parses every file and prints each syntax error as ``FILE:LINE:COL: message``
  followed by the offending line and a caret; exit 1 if any file failed. ``-`` reads stdin.
* ``fmt [--check] FILE...`` rewrites files in the canonical layout of :mod:`hostproxy.dtabtools`
  (comments kept). A file that does not parse is reported like ``check`` and left alone; the formatted
  text is re-parsed and compared with the original before anything is written. ``-`` formats stdin to
  stdout. ``--check`` writes nothing and lists the files that would change (exit 1 if any).
* ``lint FILE...`` reports the findings of :func:`hostproxy.dtabtools.lint_dtab` as
  ``FILE:LINE:COL: warning: message``; exit 1 if there is any finding or syntax error.
* ``delegate --dtab FILE_OR_TEXT [--namer NAME=DIR ...] PATH`` prints the delegation explanation of
  ``PATH`` (the tree served by ``/delegator.json``) as an indented tree, or with ``--json`` as that JSON.
  ``--namer NAME=DIR`` serves ``/#/NAME/<file>/...`` from a directory of ``io.l5d.fs`` files; the
  ``/$/`` system namers (``inet`` with literal addresses, no DNS; ``nil``, ``fail``, the rewriting
  ``io.buoyant.*`` namers) are always there.

Output rules: the result goes to stdout (diagnostics for ``check`` and ``lint``, the tree for
``delegate``, the formatted text for ``fmt -``, the list of files for ``fmt --check``); everything else
(``fmt``'s progress and its errors, read errors in ``delegate``) goes to stderr. With ``--json`` stdout
carries exactly one JSON document and nothing else.
Exit codes: 0 success, 1 findings or errors (a file that cannot be read counts as an error), 2 usage.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from dtab import DtabSyntaxError, parse_dtab
from hostproxy import dtabtools

STDIN_NAME = "<stdin>"


# ------------------------------------------------------------------------------------------------
# Reading inputs
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """One input: its display name and its text, or why it could not be read."""

    name: str
    text: str | None
    problem: str | None = None


def read_source(arg: str, stdin: TextIO | None = None) -> Source:
    """Read ``arg`` as UTF-8 (``-`` is stdin); never raises for a bad file, reports it instead."""
    if arg == "-":
        stream = stdin if stdin is not None else sys.stdin
        try:
            return Source(STDIN_NAME, stream.read().removeprefix("\ufeff"))
        except UnicodeDecodeError as e:
            return Source(STDIN_NAME, None, f"not UTF-8 text ({e.reason} at byte {e.start})")
    try:
        with open(arg, "rb") as f:
            data = f.read()
    except IsADirectoryError:
        return Source(arg, None, "is a directory; give the dtab files in it")
    except OSError as e:
        return Source(arg, None, e.strerror or str(e))
    try:
        return Source(arg, data.decode("utf-8-sig"))  # (a byte order mark is no part of the dtab)
    except UnicodeDecodeError as e:
        return Source(arg, None, f"not UTF-8 text ({e.reason} at byte {e.start}); save the file as UTF-8")


def read_problem_line(src: Source) -> str:
    return f"{src.name}: cannot read: {src.problem}"


def syntax_error_json(err: DtabSyntaxError) -> dict[str, Any]:
    return {
        "line": err.file_line,
        "column": err.file_column,
        "message": err.message,
        "expected": err.expected,
        "found": err.found,
    }


def _located(err: DtabSyntaxError, name: str) -> DtabSyntaxError:
    return err.relocated(name, 0)


def _emit_json(doc: Any, out: TextIO) -> None:
    out.write(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")


# ------------------------------------------------------------------------------------------------
# check
# ------------------------------------------------------------------------------------------------


def cmd_check(args: argparse.Namespace) -> int:
    out = sys.stdout
    results: list[dict[str, Any]] = []
    failed = False
    for arg in args.files:
        src = read_source(arg)
        if src.text is None:
            failed = True
            results.append(
                {
                    "file": src.name,
                    "ok": False,
                    "error": {"line": None, "column": None, "message": f"cannot read: {src.problem}"},
                }
            )
            if not args.json:
                print(read_problem_line(src), file=out)
            continue
        try:
            table = parse_dtab(src.text)
        except DtabSyntaxError as e:
            failed = True
            err = _located(e, src.name)
            results.append({"file": src.name, "ok": False, "error": syntax_error_json(err)})
            if not args.json:
                print(str(err), file=out)
            continue
        results.append({"file": src.name, "ok": True, "dentries": len(table)})
    if args.json:
        _emit_json({"ok": not failed, "files": results}, out)
    return 1 if failed else 0


# ------------------------------------------------------------------------------------------------
# fmt
# ------------------------------------------------------------------------------------------------


def _write_atomically(path: str, text: str) -> None:
    """Replace ``path`` by ``text`` without ever leaving a half-written file; keeps the file's mode."""
    directory = os.path.dirname(os.path.abspath(path))
    mode = os.stat(path).st_mode & 0o7777
    fd, tmp = tempfile.mkstemp(prefix=".dtabfmt-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def format_checked(text: str) -> str:
    """Format ``text`` and prove the result means the same Dtab; raises DtabSyntaxError if it does not parse."""
    formatted = dtabtools.format_dtab(text)
    if parse_dtab(formatted) != parse_dtab(text):  # a formatter bug must never change routing
        raise RuntimeError("formatting would change the meaning of this dtab; the file is left unchanged")
    return formatted


def cmd_fmt(args: argparse.Namespace) -> int:
    out, err_out = sys.stdout, sys.stderr
    failed = False
    changed: list[str] = []
    for arg in args.files:
        src = read_source(arg)
        if src.text is None:
            failed = True
            print(read_problem_line(src), file=err_out)
            continue
        try:
            formatted = format_checked(src.text)
        except DtabSyntaxError as e:
            failed = True
            print(str(_located(e, src.name)), file=err_out)
            print(f"{src.name}: not formatted: fix the syntax error first", file=err_out)
            continue
        except RuntimeError as e:
            failed = True
            print(f"{src.name}: {e}", file=err_out)
            continue
        if formatted != src.text:
            changed.append(src.name)
        if args.check:
            continue
        if arg == "-":
            out.write(formatted)
        elif formatted != src.text:
            try:
                _write_atomically(arg, formatted)
            except OSError as e:
                failed = True
                print(f"{src.name}: cannot write: {e.strerror or e}", file=err_out)
                continue
            print(f"reformatted {src.name}", file=err_out)
    if args.check:
        for name in changed:
            print(f"would reformat {name}", file=out)
        return 1 if failed or changed else 0
    return 1 if failed else 0


# ------------------------------------------------------------------------------------------------
# lint
# ------------------------------------------------------------------------------------------------


def cmd_lint(args: argparse.Namespace) -> int:
    out = sys.stdout
    results: list[dict[str, Any]] = []
    dirty = False
    for arg in args.files:
        src = read_source(arg)
        if src.text is None:
            dirty = True
            results.append(
                {
                    "file": src.name,
                    "ok": False,
                    "warnings": [],
                    "error": {"line": None, "column": None, "message": f"cannot read: {src.problem}"},
                }
            )
            if not args.json:
                print(read_problem_line(src), file=out)
            continue
        try:
            found = dtabtools.lint_dtab(src.text)
        except DtabSyntaxError as e:
            dirty = True
            err = _located(e, src.name)
            results.append({"file": src.name, "ok": False, "warnings": [], "error": syntax_error_json(err)})
            if not args.json:
                print(str(err), file=out)
            continue
        dirty = dirty or bool(found)
        results.append(
            {"file": src.name, "ok": not found, "warnings": [w.to_json() for w in found], "error": None}
        )
        if not args.json:
            for w in found:
                print(f"{src.name}:{w.line}:{w.column}: warning: {w.message} [{w.code}]", file=out)
    if args.json:
        _emit_json({"ok": not dirty, "files": results}, out)
    return 1 if dirty else 0


# ------------------------------------------------------------------------------------------------
# Wiring
# ------------------------------------------------------------------------------------------------


def add_parser(subparsers: Any) -> None:
    """Register ``hostproxy dtab`` and its subcommands on the top-level CLI's subparsers."""
    p = subparsers.add_parser(
        "dtab",
        help="check, format, lint and explain dtab files",
        description="Work with dtab files: check syntax, format, lint, explain a delegation.",
    )
    p.set_defaults(func=main, dtab_func=None, _dtab_parser=p)
    sub = p.add_subparsers(dest="dtab_command", metavar="SUBCOMMAND")

    c = sub.add_parser(
        "check",
        help="parse dtab files and report syntax errors",
        description="Parse each FILE ('-' is stdin); print every syntax error as "
        "FILE:LINE:COL: message with the line and a caret. Exit 1 if any failed.",
    )
    c.add_argument("files", nargs="+", metavar="FILE")
    c.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    c.set_defaults(dtab_func=cmd_check)

    f = sub.add_parser(
        "fmt",
        help="rewrite dtab files in the canonical layout, keeping comments",
        description="Rewrite each FILE as one '/prefix => dst;' per line, comments kept. "
        "'-' formats stdin to stdout. A file that does not parse is not touched.",
    )
    f.add_argument("files", nargs="+", metavar="FILE")
    f.add_argument(
        "--check",
        action="store_true",
        help="write nothing; list the files that would change and exit 1 if there are any",
    )
    f.set_defaults(dtab_func=cmd_fmt)

    lint = sub.add_parser(
        "lint",
        help="warn about unusable dentries, rewrite cycles and zero weights",
        description="Print FILE:LINE:COL: warning: ... for each finding; exit 1 if any.",
    )
    lint.add_argument("files", nargs="+", metavar="FILE")
    lint.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    lint.set_defaults(dtab_func=cmd_lint)

    _add_delegate_parser(sub)


def _add_delegate_parser(sub: Any) -> None:
    d = sub.add_parser(
        "delegate",
        help="explain how a path is routed by a dtab (the /delegator.json tree)",
        description="Explain the delegation of PATH through the dtab, as an indented tree or as the "
        "/delegator.json document (--json). --namer NAME=DIR serves /#/NAME/<file>/... from a "
        "directory of io.l5d.fs files (one file per name, lines 'host port [* weight]').",
    )
    d.add_argument("path", metavar="PATH", help="the path to delegate, e.g. /svc/web")
    d.add_argument(
        "--dtab",
        action="append",
        default=[],
        metavar="FILE_OR_TEXT",
        required=True,
        help="a dtab file, '-' for stdin, or dtab text; repeat to append (later dentries win)",
    )
    d.add_argument(
        "--namer",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="serve /#/NAME from DIR in the io.l5d.fs format; repeatable, a later --namer is tried first",
    )
    d.add_argument("--json", action="store_true", help="print the /delegator.json document")
    d.set_defaults(dtab_func=cmd_delegate)


def main(args: argparse.Namespace) -> int:
    func = getattr(args, "dtab_func", None)
    if func is None:
        args._dtab_parser.print_help(sys.stderr)
        return 2
    return int(func(args))


def run(argv: Sequence[str]) -> int:
    """Run ``hostproxy dtab ARGV`` in-process (for embedding and tests)."""
    from hostproxy.cli import main as cli_main

    return cli_main(["dtab", *argv])


# ------------------------------------------------------------------------------------------------
# delegate
# ------------------------------------------------------------------------------------------------


class UsageError(Exception):
    """A bad ``--dtab``/``--namer``/PATH argument; the message says which and how to fix it."""


class DirectoryNamer:
    """A one-shot ``io.l5d.fs`` namer over a directory: every lookup reads the files as they are now.

    ``/<file>/rest`` binds to ``BoundName(id=<prefix>/<file>, residual=/rest)`` with the addresses of
    ``DIR/<file>`` (subdirectories nest, as in the daemon's namer); a missing file is ``~``; a file
    that cannot be read or parsed fails the lookup with a message naming the file and line.
    """

    def __init__(self, prefix: Any, root: str) -> None:
        self.prefix = prefix
        self.root = root

    def __call__(self, residual: Any) -> Any:
        from dtab import NEG, Leaf, Path
        from dtab.addr import AddrBound, BoundName
        from namers.fs import MAX_DEPTH, FileText, IsDir, Missing, observe, safe_label
        from namers.fsformat import parse_addresses

        labels = tuple(residual.labels)
        for i in range(1, min(len(labels), MAX_DEPTH) + 1):
            if not safe_label(labels[i - 1]):
                return NEG
            key = labels[:i]
            obs = observe(self.root, key, None, True)
            if isinstance(obs, IsDir):
                continue
            if isinstance(obs, Missing):
                return NEG
            if not isinstance(obs, FileText):
                raise RuntimeError(getattr(obs, "error", None) or getattr(obs, "message", None) or str(obs))
            source = os.path.join(self.root, *(os.fsdecode(lab) for lab in key))
            addresses = parse_addresses(obs.text, source)
            return Leaf(BoundName(self.prefix + Path(key), Path(labels[i:]), AddrBound(addresses)))
        return NEG


def parse_namer_option(value: str) -> tuple[Any, DirectoryNamer]:
    """``NAME=DIR`` -> (``/#/NAME``, a namer over DIR). NAME may be ``io.l5d.fs``, ``/io.l5d.fs`` or
    ``/#/io.l5d.fs``; several labels (``disco/prod``) are allowed."""
    from dtab import Path, parse_path
    from namers.fs import check_root

    name, sep, root = value.partition("=")
    if not sep or not name or not root:
        raise UsageError(f"--namer {value!r}: write NAME=DIR, e.g. --namer io.l5d.fs=configs/disco")
    text = name.removeprefix("/#").removeprefix("/")
    try:
        label_path = parse_path("/" + text)
    except DtabSyntaxError as e:
        raise UsageError(f"--namer {value!r}: {name!r} is not a namer name: {e.message}") from None
    if not label_path:
        raise UsageError(f"--namer {value!r}: the namer name is empty; write e.g. io.l5d.fs=DIR")
    problem = check_root(root)
    if problem is not None:
        raise UsageError(f"--namer {value!r}: {problem.replace('namers[].rootDir', 'the --namer DIR')}")
    prefix = Path((b"#",)) + label_path
    return prefix, DirectoryNamer(prefix, root)


def load_dtab_option(value: str) -> tuple[Any, str]:
    """``--dtab`` value -> (Dtab, where it came from). A file if one exists there, '-' is stdin, else text."""
    from dtab import parse_dtab as parse

    if value == "-" or os.path.exists(value):
        src = read_source(value)
        if src.text is None:
            raise UsageError(f"--dtab {read_problem_line(src)}")
        name, text = src.name, src.text
    elif "=>" in value or not value.strip():
        name, text = "--dtab", value
    else:
        raise UsageError(
            f"--dtab {value!r}: no such file, and not dtab text (a dtab looks like '/svc => /#/io.l5d.fs')"
        )
    try:
        return parse(text), name
    except DtabSyntaxError as e:
        raise UsageError(str(_located(e, name))) from None


def _addresses_text(bound: Any) -> str:
    from dtab.addr import AddrBound, AddrFailed, AddrNeg, AddrPending

    addr = bound.addr
    if addr is None or isinstance(addr, AddrPending):
        return "addresses pending"
    if isinstance(addr, AddrNeg):
        return "no such address"
    if isinstance(addr, AddrFailed):
        return f"address failed: {addr.cause}"
    if isinstance(addr, AddrBound):
        if not addr.addresses:
            return "no addresses"
        parts = []
        for a in addr.addresses:
            # As /delegator.json shows it: an IP literal normalised (Linkerd's 127.1 is 127.0.0.1).
            ip = a.ip()
            host = ip or a.host or "localhost"
            hp = f"[{host}]:{a.port}" if ":" in host else f"{host}:{a.port}"
            if ip is None and a.host:
                hp += ": a host name, not resolved here; the daemon asks DNS"
            parts.append(hp if a.weight == 1.0 else f"{hp}*{dtabtools.exact_weight(a.weight)}")
        return ", ".join(parts)
    return str(addr)


def _bound_text(bound: Any) -> str:
    residual = f" (residual {bound.residual})" if bound.residual else ""
    return f"{bound.id}{residual}: {_addresses_text(bound)}"


def render_delegation(node: Any, namers: Sequence[Any] | None = None) -> str:
    """The explanation as an indented tree, one node per line.

    Each line is ``PATH  [PREFIX => DST]  OUTCOME``: the path looked up at that step, the dentry that
    produced it (shown where it differs from the parent's) and what happened there. Children follow,
    indented; a union branch starts with its weight. ``namers``: the ``/#/NAME`` prefixes given with
    ``--namer`` (a ``/#/`` path none of them serves is negative for want of one, and said so).
    """
    lines: list[str] = []
    served = [str(p) for p in namers] if namers is not None else None

    def outcome(n: Any) -> str:
        kind = n.type_name
        if kind == "leaf":
            return "-> bound " + _bound_text(n.bound)
        if kind == "neg":
            path = str(n.path) if n.path else ""
            if (
                served is not None
                and path.startswith("/#/")
                and not any(path == p or path.startswith(p + "/") for p in served)
            ):
                name = path.split("/")[2]
                return f"-> ~ (neg: no namer /#/{name} here: give --namer {name}=DIR)"
            return "-> ~ (neg: nothing binds this path)"
        if kind == "fail":
            return "-> ! (fail: stop, no fall-back)"
        if kind == "empty":
            return "-> $ (empty: exists but has no endpoints)"
        if kind == "exception":
            return f"-> error: {n.error}"
        if kind == "alt":
            return "-> alternatives, the first that is not ~ wins:"
        if kind == "union":
            return "-> weighted union of:"
        if kind == "transformation":
            return f"-> transformed by {n.name}: " + _bound_text(n.bound)
        return ""

    def children(n: Any) -> list[tuple[str, Any]]:
        kind = n.type_name
        if kind in ("delegate",) and n.child is not None:
            return [("", n.child)]
        if kind == "transformation" and n.child is not None:
            return [("", n.child)]
        if kind == "alt":
            return [("", c) for c in n.children]
        if kind == "union":
            return [(f"{dtabtools.exact_weight(w)} * ", c) for w, c in n.branches]
        return []

    def walk(n: Any, label: str, head: str, tail: str, parent_dentry: Any) -> None:
        parts = [label + (str(n.path) if n.type_name != "neg" or n.path else "~")]
        if n.dentry != parent_dentry and not n.dentry.equivalent(_nop()):
            parts.append(f"[{n.dentry.prefix} => {dtabtools.format_tree(n.dentry.dst)}]")
        text = outcome(n)
        if text:
            parts.append(text)
        lines.append(head + "  ".join(parts))
        kids = children(n)
        for k, (lab, child) in enumerate(kids):
            last = k == len(kids) - 1
            walk(
                child, lab, tail + ("`-- " if last else "|-- "), tail + ("    " if last else "|   "), n.dentry
            )

    walk(node, "", "", "", None)
    return "\n".join(lines) + "\n"


def _nop() -> Any:
    from dtab import Dentry

    return Dentry.NOP


def cmd_delegate(args: argparse.Namespace) -> int:
    from dtab import Dtab, DtabError, parse_path
    from dtab.bind import PENDING, bind
    from dtab.delegate import delegate
    from dtab.errors import DelegationCycle

    out, err_out = sys.stdout, sys.stderr

    def fail(message: str, **extra: Any) -> int:
        print(message, file=err_out)
        if args.json:
            _emit_json({"error": {"message": message, **extra}}, out)
        return 1

    try:
        table = Dtab()
        for value in args.dtab:
            more, _ = load_dtab_option(value)
            table = table + more
        namers = [parse_namer_option(v) for v in args.namer]
        try:
            path = parse_path(args.path)
        except DtabSyntaxError as e:
            raise UsageError(str(_located(e, "PATH"))) from None
    except UsageError as e:
        return fail(str(e))
    # Linkerd tries the last-configured namer first.
    ordered = list(reversed(namers))
    try:
        tree = delegate(table, path, ordered)
    except DtabError as e:
        return fail(
            f"cannot explain {path}: {e}; run 'hostproxy dtab lint' on the dtab to find it"
            if isinstance(e, DelegationCycle)
            else f"cannot explain {path}: {e}"
        )
    if tree is PENDING:  # pragma: no cover - directory namers always answer at once
        return fail(f"cannot explain {path}: a namer has not answered yet")
    if args.json:
        _emit_json(tree.to_json(), out)
        return 0
    out.write(render_delegation(tree, [prefix for prefix, _ in namers]))
    # The explanation shows every alternative; binding says which one requests actually use.
    try:
        bound = bind(table, path, ordered).tree
    except DtabError as e:
        out.write(f"binding fails: {e}\n")
    else:
        out.write(f"binds to: {bound_tree_text(bound)}\n")
    return 0


def bound_tree_text(tree: Any) -> str:
    """A bound tree on one line: ``id (addresses)`` leaves, ``W * t & ...`` unions, atoms explained."""
    from dtab import Empty, Fail, Leaf, Neg, Union

    if isinstance(tree, Leaf):
        return f"{tree.value.id} ({_addresses_text(tree.value)})"
    if isinstance(tree, Union):
        parts = []
        for b in tree.branches:
            body = bound_tree_text(b.tree)
            body = f"({body})" if isinstance(b.tree, Union) else body
            parts.append(body if b.weight == 1.0 else f"{dtabtools.exact_weight(b.weight)} * {body}")
        return " & ".join(parts)
    if isinstance(tree, Neg):
        return "~ (no route: requests to this name fail)"
    if isinstance(tree, Fail):
        return "! (requests to this name fail)"
    if isinstance(tree, Empty):
        return "$ (no endpoints: requests to this name fail)"
    return str(tree)
