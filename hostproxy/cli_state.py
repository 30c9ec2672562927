"""``hostproxy state``: the clients' and namers' state of a running daemon, as readable tables.

Theory of operation
-------------------
``state`` reads ``/client_state.json`` and ``/admin/namer_state.json`` (every namer's state keyed
by prefix; an older daemon without it is read through ``/namer_state/<prefix>.json`` for the
namers listed in ``/config.json``) from the admin server and prints, per client, its state and one
row per endpoint (weight, load, balancer status, failure-accrual state, open connections, connect
failures), then, per namer, one row per watched name (state, addresses, last update, staleness,
last error).  :func:`render_tables` is pure and takes the two documents.

``--json`` prints exactly one document on stdout: ``{"clients": <client_state.json>, "namers":
{<prefix>: <namer state>}}`` (with ``"error"`` and empty tables when the admin server cannot be
read; with ``"unreadable"``, a list of messages, when a namer state answered an error).  Exit status 0, or 1 when the admin server cannot be read.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from hostproxy.cli_wtf import (
    DEFAULT_ADMIN,
    AdminClient,
    AdminUnreachable,
    add_tls_arguments,
    admin_client,
    timeout_arg,
)
from hostproxy.diagnose import format_age

__all__ = ["add_parser", "fetch_state", "main", "render_tables", "table"]


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], indent: str = "  ") -> list[str]:
    """Aligned text columns (the last column is not padded)."""
    cells = [[str(h) for h in headers]] + [["-" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    out = []
    for r in cells:
        parts = [c.ljust(widths[i]) if i < len(r) - 1 else c for i, c in enumerate(r)]
        out.append((indent + "  ".join(parts)).rstrip())
    return out


def _accrual(ep: Mapping[str, Any]) -> str | None:
    acc = ep.get("accrual")
    if isinstance(acc, Mapping):
        acc = acc.get("state")
    return acc if isinstance(acc, str) else None


def _addrs(entry: Mapping[str, Any]) -> str:
    addrs = entry.get("addrs")
    if addrs is None:
        return "-"
    parts = []
    for a in addrs:
        if isinstance(a, Mapping):
            host, port, weight = a.get("host", a.get("ip")), a.get("port"), a.get("weight")
            text = str(host)
            if port is not None:
                text = f"[{host}]:{port}" if ":" in text else f"{host}:{port}"  # (IPv6 in brackets)
            if isinstance(weight, int | float) and weight != 1:
                text += f"*{weight:g}"  # (as hostproxy dtab delegate writes it)
            parts.append(text)
        else:
            parts.append(str(a))
    if len(parts) > 4:
        return ", ".join(parts[:4]) + f" (+{len(parts) - 4} more)"
    return ", ".join(parts) or "(none)"


def render_tables(clients: Mapping[str, Any], namers: Mapping[str, Any]) -> str:
    lines: list[str] = [f"CLIENTS ({len(clients)})"]
    if not clients:
        lines.append("  (no clients yet: none has been used since the daemon started)")
    for cid in sorted(clients):
        entry = clients[cid] if isinstance(clients[cid], Mapping) else {}
        flags = " (stale: namer failing, serving last known endpoints)" if entry.get("stale") else ""
        lines.append("")
        lines.append(f"{cid}  {entry.get('state', '?')}{flags}")
        eps: Mapping[str, Any] = entry.get("endpoints") or {}
        if eps:
            rows = []
            for key in sorted(eps):
                ep = eps[key] if isinstance(eps[key], Mapping) else {}
                pool = ep.get("pool") or {}
                raw_bal = ep.get("balancer")
                bal: Mapping[str, Any] = raw_bal if isinstance(raw_bal, Mapping) else {}
                rows.append(
                    [
                        key,
                        ep.get("weight"),
                        ep.get("load", bal.get("load")),
                        ep.get("status", bal.get("status")),
                        _accrual(ep) or "alive",
                        pool.get("open"),
                        pool.get("connect_failures"),
                    ]
                )
            lines += table(
                ["ENDPOINT", "WEIGHT", "LOAD", "STATUS", "ACCRUAL", "OPEN", "CONNECT_FAILURES"], rows
            )
        elif entry.get("addresses"):
            lines += table(["ADDRESS"], [[a] for a in entry["addresses"]])
        else:
            lines.append("  (no endpoints)")
    lines.append("")
    lines.append(f"NAMERS ({len(namers)})")
    for prefix in sorted(namers):
        doc = namers[prefix] if isinstance(namers[prefix], Mapping) else {}
        names: Mapping[str, Any] = doc.get("names") or {}
        kind = doc.get("kind") or prefix.strip("/")
        extra = ""
        if doc.get("rootError"):
            extra = f"  root error: {doc['rootError']}"
        scan = doc.get("scan")
        if isinstance(scan, Mapping) and scan.get("hung"):
            extra += f"  scan hung since {scan.get('startedAt')}"
        lines.append("")
        lines.append(f"{prefix} ({kind}, {len(names)} name{'s' if len(names) != 1 else ''}){extra}")
        if not names:
            lines.append("  (no names watched yet)")
            continue
        rows = []
        for name in sorted(names):
            e = names[name] if isinstance(names[name], Mapping) else {}
            age = e.get("staleAgeSecs")
            rows.append(
                [
                    name,
                    e.get("state"),
                    _addrs(e),
                    e.get("lastUpdate"),
                    format_age(float(age)) if isinstance(age, int | float) else None,
                    e.get("lastError"),
                ]
            )
        lines += table(["NAME", "STATE", "ADDRESSES", "LAST_UPDATE", "STALE_FOR", "LAST_ERROR"], rows)
    return "\n".join(lines) + "\n"


def fetch_state(admin: AdminClient) -> dict[str, Any]:
    clients = admin.get("/client_state.json")
    if clients is None or not all(isinstance(v, dict) for v in clients.values()):
        # (each client's state is an object: anything else is another service's document)
        what = "is missing" if clients is None else "is not a table of clients"
        raise AdminUnreachable(f"{admin.base}/client_state.json {what}: is this a hostproxy admin server?")
    # The namers' state is optional: one that answers an error (turned off by admin.security, a
    # namer in error) is named under "unreadable" and the clients are shown without it.
    unreadable: list[str] = []
    namers = admin.get_optional("/admin/namer_state.json", unreadable)
    if namers is None:  # (an older daemon, or that path turned off: each namer's own path)
        namers = {}
        each: list[str] = []
        config = admin.get_optional("/config.json", each) or {}
        for n in config.get("namers") or []:
            if not isinstance(n, dict):
                continue
            prefix = n.get("prefix") or "/" + str(n.get("kind", ""))
            doc = admin.get_optional(f"/namer_state{prefix}.json", each)
            if doc is not None:
                namers[prefix] = doc
        unreadable = each if namers else unreadable + each
    out: dict[str, Any] = {"clients": clients, "namers": namers or {}}
    if unreadable:
        out["unreadable"] = unreadable
    return out


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "state",
        help="show a running hostproxy's clients (endpoints and their state) and namers",
        description="Print /client_state.json and every namer's state from the admin server as tables.",
    )
    p.add_argument(
        "--admin", default=DEFAULT_ADMIN, metavar="URL", help=f"the admin server (default {DEFAULT_ADMIN})"
    )
    p.add_argument("--timeout", type=timeout_arg, default=5.0, metavar="SECONDS", help="per admin request")
    add_tls_arguments(p)
    p.add_argument(
        "--json", action="store_true", help='print {"clients": ..., "namers": ...} as one JSON document'
    )
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    try:
        admin = admin_client(args)
        doc = fetch_state(admin)
    except AdminUnreachable as e:
        if args.json:  # (still exactly one document on stdout)
            json.dump({"clients": {}, "namers": {}, "error": str(e)}, sys.stdout, ensure_ascii=False)
            sys.stdout.write("\n")
        print(f"hostproxy state: {e}", file=sys.stderr)
        return 1
    if args.json:
        json.dump(doc, sys.stdout, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(render_tables(doc["clients"], doc["namers"]))
        for note in doc.get("unreadable", ()):
            sys.stdout.write(f"\nnot read: {note}\n")
    return 0
