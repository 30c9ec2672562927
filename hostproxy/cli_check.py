"""``hostproxy check FILE``: validate a config without binding, starting or resolving anything.

Exit 0 with a one-line summary (each router, its protocol and its sockets); exit 1 with every error as
``FILE:LINE: config.path: message`` on stderr (dtab errors add the offending line with a caret). With
``--json``, stdout carries exactly one document: ``{"ok": bool, "errors": [{file, line, column, path,
message}], "routers": [...]}``. ``FILE`` may be ``-`` for stdin.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "check",
        help="validate a config file (Linkerd 1 linkerd.yaml schema) without starting anything",
        description="Validate a config file without binding ports, starting namers or touching the network.",
    )
    p.add_argument("file", metavar="FILE", help="config file (YAML or JSON), or - for stdin")
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    p.set_defaults(func=main)


def summary(cfg: Any) -> list[dict[str, Any]]:
    return [
        {
            "label": r.label,
            "protocol": r.kind,
            "servers": [f"[{s.ip}]:{s.port}" if ":" in s.ip else f"{s.ip}:{s.port}" for s in r.servers],
        }
        for r in cfg.routers
    ]


def main(args: argparse.Namespace) -> int:
    from hostproxy.config import ConfigError, load_config

    try:
        cfg = load_config(args.file)
    except ConfigError as e:
        if args.json:
            print(json.dumps({"ok": False, "errors": [i.to_json() for i in e.errors]}, indent=2))
        else:
            for issue in e.errors:
                print(issue.format(), file=sys.stderr)
            n = len(e.errors)
            print(f"{args.file}: {n} error{'s' if n != 1 else ''}", file=sys.stderr)
        return 1
    routers = summary(cfg)
    if args.json:
        print(json.dumps({"ok": True, "errors": [], "routers": routers}, indent=2))
    else:
        parts = [f"{r['label']} ({r['protocol']}) on {', '.join(r['servers'])}" for r in routers]
        n = len(routers)
        print(f"{args.file}: OK: {n} router{'s' if n != 1 else ''}: {'; '.join(parts)}")
    return 0
