"""The one place where ``namers`` imports the dtab language (paths, name trees, binding types).

Theory of operation: every namer module imports from here, so the dependency on ``dtab`` is spelled
once and can be followed if ``dtab`` moves a name between its modules.
"""

from __future__ import annotations

from dtab import EMPTY, FAIL, NEG, Alt, Leaf, Path, Union, Weighted
from dtab.bind import (
    PENDING,
    AddrBound,
    Address,
    AddrFailed,
    AddrNeg,
    AddrPending,
    BoundName,
    NamerError,
)

__all__ = [
    "EMPTY",
    "FAIL",
    "NEG",
    "PENDING",
    "AddrBound",
    "AddrFailed",
    "AddrNeg",
    "AddrPending",
    "Address",
    "Alt",
    "BoundName",
    "Leaf",
    "NamerError",
    "Path",
    "Union",
    "Weighted",
]
