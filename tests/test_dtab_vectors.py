"""Every conformance vector of ``dtab-vectors.json`` (or of the file named by ``DTAB_VECTORS``)."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import pytest
from sharedpath import SPEC

from dtab.conformance import run_vector

DEFAULT_VECTORS = SPEC / "dtab-vectors.json"


def _load() -> list[tuple[str, dict[str, Any]]]:
    files = [DEFAULT_VECTORS]
    extra = os.environ.get("DTAB_VECTORS")
    if extra:
        files.append(Path(extra))
    vectors: list[tuple[str, dict[str, Any]]] = []
    for i, f in enumerate(files):
        data = json.loads(f.read_text(encoding="utf-8"))
        for v in data["vectors"]:
            vectors.append((v["id"] if i == 0 else f"{f.name}:{v['id']}", v))
    return vectors


VECTORS = _load()
BY_ID = {v["id"]: v for name, v in VECTORS if name == v["id"]}


def test_vector_file_is_not_empty() -> None:
    kinds = {v["kind"] for _, v in VECTORS}
    assert {"parse_ok", "parse_error", "show", "lookup", "eval", "bind"} <= kinds


@pytest.mark.parametrize("vector", [v for _, v in VECTORS], ids=[name for name, _ in VECTORS])
def test_vector(vector: dict[str, Any]) -> None:
    run_vector(vector)


# -- the runner must detect a wrong expectation (it does not skip or loosen checks) -----------------


def _mutated(vid: str, mutate: Any) -> dict[str, Any]:
    v = copy.deepcopy(BY_ID[vid])
    mutate(v)
    return v


MUTATIONS = {
    "parse_ok value": ("parse_ok-002", lambda v: v["expected"]["value"]["labels_hex"].append("00")),
    "parse_ok show": ("parse_ok-025", lambda v: v["expected"].__setitem__("show", "0.3*/a & 0.7*/b")),
    "parse_error position": (
        "parse_error-009",
        lambda v: v["expected"].__setitem__("message", "end of input expected but ' ' found at '/foo[ ]bar'"),
    ),
    "parse_error token": (
        "parse_error-022",
        lambda v: v["expected"].__setitem__("message", "simple expected but '/' found at '0.5 [/]a'"),
    ),
    "parse_error on valid input": ("parse_error-001", lambda v: v.__setitem__("input", "/a")),
    "show": ("show-011", lambda v: v["expected"].__setitem__("show", "0.12*/a & /b")),
    "reparse_equal": ("show-011", lambda v: v["expected"].__setitem__("reparse_equal", True)),
    "lookup": ("lookup-006", lambda v: v["expected"]["tree"]["trees"].reverse()),
    "eval": ("eval-008", lambda v: v["expected"].__setitem__("eval", None)),
    "simplified": ("eval-020", lambda v: v["expected"]["simplified"]["trees"][0].__setitem__("weight", 0.4)),
    "bind tree weight": ("bind-056", lambda v: v["expected"]["tree"]["trees"][0]["tree"].pop("weight")),
    "bind error subject": ("bind-002", lambda v: v.__setitem__("max_depth", 3)),
    "bind error class": (
        "bind-015",
        lambda v: v["expected"].__setitem__(
            "error", {"class": "UnknownNamer", "message": "Unknown namer: first for path: /p"}
        ),
    ),
    "bind expected error but got tree": (
        "bind-028",
        lambda v: v["expected"].__setitem__("error", {"class": "Exception", "message": "x"}),
    ),
    "delegate key order": (
        "bind-064",
        lambda v: v["expected"].__setitem__(
            "delegate_tree", dict(reversed(list(v["expected"]["delegate_tree"].items())))
        ),
    ),
    "delegate tree": ("bind-076", lambda v: v["expected"]["delegate_tree"]["alt"].pop()),
    "unknown kind": ("eval-001", lambda v: v.__setitem__("kind", "evaluate")),
}


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_runner_rejects_wrong_expectations(name: str) -> None:
    vid, mutate = MUTATIONS[name]
    if vid not in BY_ID:
        pytest.fail(f"vector {vid} missing from the vector file")
    with pytest.raises(AssertionError):
        run_vector(_mutated(vid, mutate))
