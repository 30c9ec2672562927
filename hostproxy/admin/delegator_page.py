"""The ``/delegator`` page: a self-contained dtab playground (no external scripts, styles or fonts).

The page embeds the routers and their dtabs as JSON in a ``<script type="application/json">``
element (with ``<``, ``>`` and ``&`` escaped so that no dtab text can close the element), lets the
operator pick a router, type a path and edit the dtab, POSTs ``{"namespace", "dtab", "path"}`` to
``/delegator.json`` and draws the answer as nested lists: each node's type, path, dentry, and for
leaves the bound id and addresses.  Everything is built with DOM calls and ``textContent`` (never
``innerHTML``), so names and dtabs from the config cannot inject markup.  The inline script is
allowed by its SHA-256 in the ``Content-Security-Policy`` the handler sends with the page.
"""

from __future__ import annotations

import base64
import hashlib
import json

__all__ = ["CONTENT_SECURITY_POLICY", "render_page"]

_SCRIPT = r"""
"use strict";
const data = JSON.parse(document.getElementById("routers").textContent);
const picker = document.getElementById("router");
const dtabBox = document.getElementById("dtab");
const pathBox = document.getElementById("path");
const out = document.getElementById("result");
function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}
function fillDtab() {
  const label = picker.value;
  dtabBox.value = label in data.routers ? data.routers[label] : "";
}
function addrText(addr) {
  if (!addr) return "";
  if (addr.type === "bound") {
    const list = (addr.addrs || []).map(a => a.ip + ":" + a.port);
    return "bound [" + list.join(", ") + "]";
  }
  if (addr.type === "failed") return "failed: " + addr.cause;
  return addr.type;
}
function node(n, weight) {
  const li = el("li", "node " + n.type);
  const head = el("div", "head");
  if (weight !== undefined) head.appendChild(el("span", "weight", weight + " * "));
  head.appendChild(el("span", "type", n.type));
  head.appendChild(el("code", "path", n.path));
  if (n.dentry) head.appendChild(el("span", "dentry", n.dentry.prefix + " => " + n.dentry.dst));
  li.appendChild(head);
  if (n.type === "leaf" && n.bound) {
    li.appendChild(el("div", "bound", "id " + n.bound.id + " residual " + n.bound.path + " : " +
      addrText(n.bound.addr)));
  }
  if (n.type === "exception") li.appendChild(el("div", "message", n.message));
  if (n.type === "transformation") {
    li.appendChild(el("div", "bound", "transformer " + n.name + " of " +
      (n.bound ? n.bound.id + " : " + addrText(n.bound.addr) : "")));
  }
  const kids = el("ul");
  if (n.delegate) kids.appendChild(node(n.delegate));
  if (n.tree) kids.appendChild(node(n.tree));
  for (const c of n.alt || []) kids.appendChild(node(c));
  for (const w of n.union || []) kids.appendChild(node(w.tree, w.weight));
  if (kids.childNodes.length) li.appendChild(kids);
  return li;
}
async function run(ev) {
  ev.preventDefault();
  out.textContent = "";
  const body = {namespace: picker.value || null, dtab: dtabBox.value, path: pathBox.value};
  let resp;
  try {
    resp = await fetch("/delegator.json", {method: "POST",
      headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
  } catch (err) {
    out.appendChild(el("pre", "error", "request failed: " + err));
    return;
  }
  const text = await resp.text();
  if (!resp.ok) {
    out.appendChild(el("pre", "error", resp.status + " " + text));
    return;
  }
  const ul = el("ul", "tree");
  ul.appendChild(node(JSON.parse(text)));
  out.appendChild(ul);
}
for (const label of Object.keys(data.routers)) {
  const opt = el("option", "", label);
  opt.value = label;
  picker.appendChild(opt);
}
const none = el("option", "", "(no router: system namers only)");
none.value = "";
picker.appendChild(none);
if (data.selected !== null) picker.value = data.selected;
picker.addEventListener("change", fillDtab);
document.getElementById("form").addEventListener("submit", run);
fillDtab();
"""

_STYLE = """
body { font-family: sans-serif; margin: 1.5em; }
textarea { width: 100%; font-family: monospace; }
input[type=text] { width: 40em; font-family: monospace; }
ul.tree, ul.tree ul { list-style: none; padding-left: 1.5em; border-left: 1px solid #ccc; }
.type { font-weight: bold; margin-right: 0.5em; }
.dentry { color: #666; margin-left: 1em; font-family: monospace; }
.neg > .head .type, .fail > .head .type, .exception > .head .type, .error { color: #b00; }
.leaf > .head .type { color: #070; }
.bound, .message { font-family: monospace; margin-left: 1em; }
"""

_SCRIPT_HASH = base64.b64encode(hashlib.sha256(_SCRIPT.encode("utf-8")).digest()).decode("ascii")

#: Sent with the page: only the inline script above may run, and it may only call this server.
CONTENT_SECURITY_POLICY = (
    f"default-src 'none'; script-src 'sha256-{_SCRIPT_HASH}'; style-src 'unsafe-inline'; "
    "connect-src 'self'; form-action 'none'; frame-ancestors 'none'"
)


def _embed_json(obj: object) -> str:
    text = json.dumps(obj, ensure_ascii=True)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render_page(routers: dict[str, str], selected: str | None) -> str:
    """The page for ``routers`` (label -> dtab text, one dentry per line), ``selected`` preselected."""
    if selected is not None and selected not in routers:
        selected = None
    if selected is None and routers:
        selected = next(iter(routers))
    data = _embed_json({"routers": routers, "selected": selected})
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>hostproxy delegator</title>
<style>{_STYLE}</style>
</head>
<body>
<h1>Delegator</h1>
<p>Explains how a path resolves through a dtab and the router's namers
(<code>POST /delegator.json</code>). The dtab below is the router's dtab: edit it to try overrides
(a router whose interpreter reads a dtab file puts that file's rules before it, as it does when routing).</p>
<form id="form">
<p><label>Router <select id="router"></select></label></p>
<p><label>Path <input type="text" id="path" value="/svc/" spellcheck="false"></label>
<button type="submit">Delegate</button></p>
<p><label>Dtab<br><textarea id="dtab" rows="12" spellcheck="false"></textarea></label></p>
</form>
<div id="result"></div>
<script type="application/json" id="routers">{data}</script>
<script>{_SCRIPT}</script>
<noscript>This page needs JavaScript; <code>/delegator.json</code> answers without it.</noscript>
</body>
</html>
"""
