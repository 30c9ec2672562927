"""The /delegator page's script, run by node against a minimal DOM: it POSTs and draws the tree.

The page is served by the real handler; its inline script runs unchanged in node with just enough
of ``document`` and ``fetch`` for it (createElement, getElementById, textContent, appendChild,
addEventListener), and the resulting element tree is dumped as JSON for the assertions.
"""

from __future__ import annotations

import json
import shutil
from typing import Any

import pytest
import trio
from test_admin_handlers import call
from test_admin_server import WEB_TREE, FakeAdminContext

from hostproxy.admin import AdminHandler

NODE = shutil.which("node")

SHIM = r"""
class El {
  constructor(tag) { this.tag = tag; this.className = ""; this.own = ""; this.childNodes = [];
                     this.value = ""; this.listeners = {}; }
  set textContent(t) { this.own = String(t); this.childNodes = []; }
  get textContent() { return this.own + this.childNodes.map(c => c.textContent).join(""); }
  appendChild(c) { this.childNodes.push(c); return c; }
  addEventListener(ev, fn) { this.listeners[ev] = fn; }
}
const input = JSON.parse(require("fs").readFileSync(0, "utf8"));
const els = {routers: {textContent: input.data}, router: new El("select"), dtab: new El("textarea"),
             path: new El("input"), result: new El("div"), form: new El("form")};
globalThis.document = {getElementById: id => els[id], createElement: t => new El(t)};
let sent = null;
globalThis.fetch = async (url, opts) => {
  sent = {url, method: opts.method, headers: opts.headers, body: JSON.parse(opts.body)};
  return {ok: input.status === 200, status: input.status, text: async () => input.response};
};
function dump(e) {
  return {tag: e.tag, cls: e.className, text: e.own, kids: e.childNodes.map(dump)};
}
(async () => {
  (0, eval)(input.script);
  const prefilled = els.dtab.value;
  const options = els.router.childNodes.map(o => o.value);
  if (input.pick !== null) { els.router.value = input.pick; els.router.listeners.change(); }
  els.path.value = input.path;
  await els.form.listeners.submit({preventDefault() {}});
  console.log(JSON.stringify({prefilled, options, dtab: els.dtab.value, sent, result: dump(els.result)}));
})();
"""


async def run_page(
    page: str, *, pick: str | None, path: str, response: Any, status: int = 200
) -> dict[str, Any]:
    assert NODE is not None, "node is part of this project's test environment"
    data = page.split('<script type="application/json" id="routers">', 1)[1].split("</script>", 1)[0]
    script = page.split("<script>", 1)[1].split("</script>", 1)[0]
    stdin = json.dumps(
        {
            "data": data,
            "script": script,
            "pick": pick,
            "path": path,
            "status": status,
            "response": response if isinstance(response, str) else json.dumps(response),
        }
    ).encode()
    with trio.fail_after(30):
        proc = await trio.run_process([NODE, "-e", SHIM], stdin=stdin, capture_stdout=True)
    out: dict[str, Any] = json.loads(proc.stdout)
    return out


def texts(node: dict[str, Any], cls: str) -> list[str]:
    """Own text of every element of class ``cls``, depth first."""
    found = [node["text"]] if cls in node["cls"].split() else []
    for kid in node["kids"]:
        found.extend(texts(kid, cls))
    return found


async def page_of(ctx: FakeAdminContext, target: str = "/delegator") -> str:
    response, body = await call(AdminHandler(ctx), "GET", target)
    assert response.status == 200
    return body.decode()


async def test_page_prefills_the_router_dtab_posts_and_draws_the_tree() -> None:
    ctx = FakeAdminContext()
    page = await page_of(ctx)
    out = await run_page(page, pick="outgoing", path="/svc/web", response=WEB_TREE)
    assert out["prefilled"] == "/svc=>/$/inet/127.1/9999;\n/ph=>/$/inet/127.1/1;\n"
    assert out["options"] == ["outgoing", "incoming", ""]
    assert out["sent"] == {
        "url": "/delegator.json",
        "method": "POST",
        "headers": {"Content-Type": "application/json"},
        "body": {
            "namespace": "outgoing",
            "dtab": "/svc=>/$/inet/127.1/9999;\n/ph=>/$/inet/127.1/1;\n",
            "path": "/svc/web",
        },
    }
    result = out["result"]
    assert texts(result, "type") == ["delegate", "leaf"]
    assert texts(result, "path") == ["/svc/web", "/$/inet/127.1/9999/web"]
    assert texts(result, "dentry") == ["/svc => /$/inet/127.1/9999"]
    assert texts(result, "bound") == ["id /$/inet/127.1/9999 residual /web : bound [127.0.0.1:9999]"]


async def test_page_draws_alt_union_neg_and_exception_nodes() -> None:
    tree = {
        "type": "alt",
        "path": "/a",
        "alt": [
            {"type": "neg", "path": "/b", "dentry": {"prefix": "/a", "dst": "/b"}},
            {"type": "exception", "path": "/#/x/a", "message": "error naming /#/x/a"},
            {
                "type": "union",
                "path": "/c",
                "union": [
                    {"weight": 0.9, "tree": {"type": "fail", "path": "!"}},
                    {
                        "weight": 0.1,
                        "tree": {
                            "type": "leaf",
                            "path": "/$/inet/1/2",
                            "bound": {
                                "addr": {"type": "failed", "cause": "boom"},
                                "id": "/$/inet/1/2",
                                "path": "/",
                            },
                        },
                    },
                ],
            },
        ],
    }
    page = await page_of(FakeAdminContext(), "/delegator?router=incoming")
    out = await run_page(page, pick=None, path="/a", response=tree)
    assert out["prefilled"] == "/svc=>/#/io.l5d.fs;\n"
    assert out["sent"]["body"]["namespace"] == "incoming"
    result = out["result"]
    assert texts(result, "type") == ["alt", "neg", "exception", "union", "fail", "leaf"]
    assert texts(result, "weight") == ["0.9 * ", "0.1 * "]
    assert texts(result, "message") == ["error naming /#/x/a"]
    assert texts(result, "bound") == ["id /$/inet/1/2 residual / : failed: boom"]


async def test_page_shows_the_error_of_a_refused_request() -> None:
    page = await page_of(FakeAdminContext())
    out = await run_page(page, pick="", path="bad", response="Invalid path: 1:1: ...", status=400)
    assert out["sent"]["body"]["namespace"] is None
    assert out["sent"]["body"]["dtab"] == ""
    assert texts(out["result"], "error") == ["400 Invalid path: 1:1: ..."]


@pytest.mark.parametrize("target", ["/delegator", "/delegator?router="])
async def test_missing_router_selects_the_first(target: str) -> None:
    page = await page_of(FakeAdminContext(), target)
    out = await run_page(page, pick=None, path="/svc/x", response=WEB_TREE)
    assert out["sent"]["body"]["namespace"] == "outgoing"


async def test_an_unknown_router_is_a_404_that_lists_the_routers() -> None:
    """``/delegator?router=<typo>`` showed the first router's dtab under no sign of the mix-up, so an
    operator following a link with a mistyped label explained a path through another router's dtab.
    It is now a 404 naming the routers there are (as ``/delegator.json`` answers an unknown
    namespace)."""
    response, body = await call(AdminHandler(FakeAdminContext()), "GET", "/delegator?router=outgoin")
    assert response.status == 404
    text = body.decode()
    assert text.startswith("Unknown router outgoin: "), text
    assert "outgoing, incoming" in text and "/delegator?router=outgoing" in text, text
