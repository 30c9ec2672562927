"""The ``hostproxy`` command line.

Each subcommand lives in its own module exposing ``add_parser(subparsers)`` and ``main(args) -> int``;
this file only dispatches, so that importing the CLI does not import the daemon's machinery.
Rule for every command: ``--json`` output is exactly one JSON document on stdout; logs and warnings go to
stderr.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# (subcommand, module) — modules are imported lazily, only for the command that runs.
SUBCOMMANDS: list[tuple[str, str]] = [
    ("run", "hostproxy.cli_run"),
    ("check", "hostproxy.cli_check"),
    ("dtab", "hostproxy.cli_dtab"),
    ("wtf", "hostproxy.cli_wtf"),
    ("state", "hostproxy.cli_state"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hostproxy",
        description="A per-host proxy in the Linkerd 1 style. `hostproxy FILE` is `hostproxy run FILE`.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for _command, module_name in SUBCOMMANDS:
        importlib.import_module(module_name).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    known = {name for name, _ in SUBCOMMANDS} | {"-h", "--help"}
    if argv and argv[0] not in known and (argv[0] == "-" or not argv[0].startswith("-")):
        argv = ["run", *argv]  # Linkerd was started as `linkerd config.yaml` (or `linkerd -`: stdin)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
