"""The dtab language: paths, name trees, dtabs, parsing, printing, lookup, binding, delegation. Pure.

Modules: :mod:`dtab.path` (Path, Prefix), :mod:`dtab.tree` (name trees, simplify, eval, printing),
:mod:`dtab.table` (Dentry, Dtab, lookup), :mod:`dtab.parser`, :mod:`dtab.bind` (binding through the dtab
and namers), :mod:`dtab.system` (the ``/$/`` system namers), :mod:`dtab.delegate` (the explanation tree
served by ``/delegator.json``) and :mod:`dtab.conformance` (runs ``dtab-vectors.json`` cases).
"""

from dtab.addr import (
    ADDR_NEG,
    ADDR_PENDING,
    Addr,
    AddrBound,
    Address,
    AddrFailed,
    AddrNeg,
    AddrPending,
    BoundName,
)
from dtab.bind import PENDING, BindResult, bind
from dtab.delegate import DelegateNode, delegate
from dtab.errors import (
    BindError,
    BindTooLarge,
    DelegationCycle,
    DelegationTooLarge,
    DepthExceeded,
    DtabError,
    DtabSyntaxError,
    NamerError,
    UnknownNamer,
)
from dtab.parser import parse_dentry, parse_dtab, parse_path, parse_prefix, parse_tree
from dtab.path import ANY, Path, Prefix, show_label
from dtab.table import Dentry, Dtab
from dtab.tree import (
    EMPTY,
    FAIL,
    NEG,
    Alt,
    Empty,
    Fail,
    Leaf,
    NameTree,
    Neg,
    Union,
    Weighted,
    equivalent,
    eval_tree,
    format_weight,
    show_tree,
    simplified,
)

__all__ = [
    "ADDR_NEG",
    "ADDR_PENDING",
    "Addr",
    "AddrBound",
    "AddrFailed",
    "AddrNeg",
    "AddrPending",
    "Address",
    "BindError",
    "BindResult",
    "BindTooLarge",
    "BoundName",
    "DelegateNode",
    "DelegationCycle",
    "DelegationTooLarge",
    "DepthExceeded",
    "NamerError",
    "PENDING",
    "UnknownNamer",
    "bind",
    "delegate",
    "ANY",
    "EMPTY",
    "FAIL",
    "NEG",
    "Alt",
    "Dentry",
    "Dtab",
    "DtabError",
    "DtabSyntaxError",
    "Empty",
    "Fail",
    "Leaf",
    "NameTree",
    "Neg",
    "Path",
    "Prefix",
    "Union",
    "Weighted",
    "equivalent",
    "eval_tree",
    "format_weight",
    "parse_dentry",
    "parse_dtab",
    "parse_path",
    "parse_prefix",
    "parse_tree",
    "show_label",
    "show_tree",
    "simplified",
]
