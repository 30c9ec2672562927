"""Linkerd's small UI pages ``/logging`` and ``/admin/metrics``: static HTML, no script.

``logging_page(levels)`` is Linkerd's ``/logging``: a table of the loggers and their levels (what
``/logging.json`` lists), each row with a form that POSTs ``logger`` and ``level`` to
``/logging.json`` (the control endpoint that changes it, with its loopback and same-origin rules), and
one more form for a logger not listed yet.  ``metrics_page(values)`` is TwitterServer's
``/admin/metrics`` without a query: every metric name with its value, each name a link to
``/admin/metrics?m=<name>``.  Every name and value is HTML-escaped; the pages load nothing and run
no script (``LOGGING_PAGE_CSP``), and the forms may only post to this origin.
"""

from __future__ import annotations

from collections.abc import Mapping
from html import escape
from urllib.parse import quote

__all__ = ["LEVELS", "LOGGING_PAGE_CSP", "logging_page", "metrics_page"]

#: The levels the ``/logging`` forms offer (``/logging.json`` also takes TRACE and ALL, as DEBUG).
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL", "OFF")

LOGGING_PAGE_CSP = "default-src 'none'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"


def _head(title: str) -> list[str]:
    return [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>hostproxy: {escape(title)}</title></head><body>",
        f"<h1>{escape(title)}</h1>",
    ]


def _select(current: str) -> str:
    options = "".join(
        f"<option{' selected' if level == current else ''}>{level}</option>" for level in LEVELS
    )
    return f'<select name="level">{options}</select>'


def logging_page(levels: Mapping[str, str], *, logging_json: bool = True) -> bytes:
    """The ``/logging`` page for ``levels`` (logger name -> level name, as ``/logging.json``).
    ``logging_json=False`` (``admin.security`` does not serve ``/logging.json``) leaves the forms out."""
    lines = _head("Log levels")
    head = "<th>logger</th><th>level</th>" + ("<th>set to</th>" if logging_json else "")
    lines += ['<table id="loggers">', f"<thead><tr>{head}</tr></thead>", "<tbody>"]
    for name, level in levels.items():
        row = f'<tr><td class="logger">{escape(name)}</td><td class="level">{escape(level)}</td>'
        if logging_json:
            row += (
                '<td><form method="post" action="/logging.json">'
                f'<input type="hidden" name="logger" value="{escape(name)}">'
                f'{_select(level)} <button type="submit">set</button></form></td>'
            )
        lines.append(row + "</tr>")
    lines += ["</tbody></table>"]
    if logging_json:
        lines += [
            "<h2>Another logger</h2>",
            '<form method="post" action="/logging.json" id="other">',
            '<input name="logger" required placeholder="hostproxy.http" pattern="[A-Za-z0-9_.\\-]{1,200}"> ',
            f'{_select("DEBUG")} <button type="submit">set</button></form>',
            "<p>Each form posts <code>logger</code> and <code>level</code> to <code>/logging.json</code>, "
            "which answers with the new levels as JSON. Changes last until the process restarts.</p>",
        ]
    else:
        lines.append("<p>Changing levels is turned off by admin.security.</p>")
    lines.append("</body></html>")
    return ("\n".join(lines) + "\n").encode("utf-8")


def metrics_page(values: Mapping[str, float | int], *, metrics_json: bool = True) -> bytes:
    """The ``/admin/metrics`` page: every metric name (flat ``/admin/metrics.json`` keys) and value."""
    lines = _head("Metrics")
    lines.append(
        "<p>Each name links to <code>/admin/metrics?m=&lt;name&gt;</code>, its value as JSON"
        + (" (all of them: <code>/admin/metrics.json</code>)" if metrics_json else "")
        + ".</p>"
    )
    lines += ['<table id="metrics">', "<thead><tr><th>name</th><th>value</th></tr></thead>", "<tbody>"]
    for name, value in values.items():
        href = "/admin/metrics?m=" + quote(name, safe="/")
        lines.append(
            f'<tr><td class="name"><a href="{escape(href)}">{escape(name)}</a></td>'
            f'<td class="value">{escape(str(value))}</td></tr>'
        )
    lines += ["</tbody></table>", "</body></html>"]
    return ("\n".join(lines) + "\n").encode("utf-8")
