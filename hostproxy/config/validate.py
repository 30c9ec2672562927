"""Validation of a whole config file, before anything binds or starts.

Theory of operation: :func:`load_config` composes the text into a positioned YAML node tree
(:mod:`hostproxy.config.yamlpos`) and walks it against the model (:mod:`hostproxy.config.model`): for
each mapping, the dataclass's fields say which keys exist, what type each holds, its default and its
checks. A plugin-typed key looks its ``kind`` up in :mod:`hostproxy.config.registry`. Every problem is
recorded as a :class:`ConfigIssue` with the config path and file line, and the walk goes on, so one run
reports every error (a bad value becomes the field's default so later checks still run). After the walk
come the whole-file checks Linkerd makes at startup: at least one router, each with a server, unique
router labels, no two servers on the same socket (``0.0.0.0`` clashes with any IPv4 address on its port,
``::`` with any IPv6 one), unique namer prefixes, experimental plugins flagged ``experimental: true``,
overload marks in order. The plugins of each client and service entry are also built by the runtime's
own pure builders (balancer, failure accrual, backoff, retry budget, response classifier), so that a
value they refuse is reported here, with its place, rather than failing every request to the names it
applies to. Only when no issue was found is a :class:`~hostproxy.config.model.Config` returned;
otherwise :class:`ConfigError` is raised with the sorted list (each problem once). Nothing here reads
files named by the config, resolves names or binds.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path as FsPath
from typing import Any

from hostproxy.adminpaths import PROMETHEUS_PATHS, colliding_endpoint
from hostproxy.config import model as m
from hostproxy.config import registry
from hostproxy.config.errors import ConfigError, ConfigIssue
from hostproxy.config.params import PatternError, parse_pattern
from hostproxy.config.schema import yaml_name
from hostproxy.config.yamlpos import (
    MappingNode,
    Node,
    ScalarNode,
    SequenceNode,
    Unreadable,
    YamlSyntaxError,
    compose,
    scalar_position,
    scalar_value,
)

_BAD: Any = object()  # a value that failed validation (an issue has been recorded)

_NO_ANNOUNCE = (
    "is a Linkerd key that hostproxy does not support: hostproxy registers nothing with service discovery; "
    "register the service where its callers' namer looks (its io.l5d.fs file, a Kubernetes Service, DNS) "
    "and remove it"
)
# Linkerd keys hostproxy does not support: an error that says so rather than "unknown key".
LINKERD_ONLY_KEYS: dict[str, str] = {
    "maxRequestKB": "was removed in Linkerd 1.7.0; bodies are streamed (see streamAfterContentLengthKB)",
    "maxResponseKB": "was removed in Linkerd 1.7.0; bodies are streamed (see streamAfterContentLengthKB)",
    "announcers": _NO_ANNOUNCE,
    "announce": _NO_ANNOUNCE,
    "compressionLevel": "applies to protocol: http routers only (Linkerd's h2 router has no such key); "
    "remove it",
    "requestAuthorizers": "is a Linkerd key that hostproxy does not support: its one kind (io.l5d.k8s.istio) "
    "asks Istio's Mixer; authorize in the application, or admit only callers with a client certificate "
    "(servers[].tls.requireClientAuth), and remove it",
    "httpIdentifierPort": "is a Linkerd key that hostproxy does not support; use /delegator.json to see names",
    "workerThreads": "is a JVM setting of Linkerd that does not apply to hostproxy; remove it",
    "thriftMethodInDst": "is a thrift key; hostproxy proxies HTTP/1.1 and HTTP/2 only",
    "thriftProtocol": "is a thrift key; hostproxy proxies HTTP/1.1 and HTTP/2 only",
    "thriftFramed": "is a thrift key; hostproxy proxies HTTP/1.1 and HTTP/2 only",
}
# Linkerd keys of one section that hostproxy does not support, where the key is valid elsewhere.
LINKERD_ONLY_SECTION_KEYS: dict[tuple[str, str], str] = {
    ("ServerConfig", "label"): "(a server's own label) is a Linkerd key that hostproxy does not support: "
    "a server's metrics are scoped by its ip and port; remove it (the router's label is routers[].label)",
    # Linkerd 0.x's syntax, which Linkerd 1 refuses too but its config reference still shows.
    ("ClientParams", "prefix"): "is a key of a static client's entries: write client: {kind: io.l5d.static, "
    "configs: [{prefix: ..., <the other keys>}]}, or remove it to apply the keys to every client",
    (
        "ServiceParams",
        "prefix",
    ): "is a key of a static service's entries: write service: {kind: io.l5d.static, "
    "configs: [{prefix: ..., <the other keys>}]}, or remove it to apply the keys to every service",
    ("ClientTls", "kind"): "is Linkerd 0.x's client TLS syntax (io.l5d.noValidation, io.l5d.static, "
    "io.l5d.boundPath), which Linkerd 1 refuses too: remove it and write commonName (with {captures} of a "
    "static client prefix, for io.l5d.boundPath) and trustCertsBundle, or disableValidation: true",
    (
        "ClientTls",
        "caCertPath",
    ): "is Linkerd 0.x's name in a client's tls (a server's tls takes it): a client "
    "trusts the CAs of trustCertsBundle: FILE",
}
TOP_LEVEL_HINTS: dict[str, str] = {
    "interpreter": "is set per router (routers[].interpreter), not at the top level",
    "storage": "is a namerd key; hostproxy reads Linkerd's config (use a dtab file: interpreter: {kind: io.l5d.fs})",
    "interfaces": "is a namerd key; hostproxy reads Linkerd's config",
}

_TYPE_NAMES = {bool: "a boolean (true or false)", int: "an integer", float: "a number", str: "a string"}


@dataclass
class Ctx:
    path: str
    protocol: str | None = None
    router_cls: type[m.RouterConfig] | None = None

    def at(self, suffix: str) -> Ctx:
        sep = "" if not self.path or suffix.startswith("[") else "."
        return Ctx(self.path + sep + suffix, self.protocol, self.router_cls)


@dataclass
class Validator:
    source: str
    file: str
    issues: list[ConfigIssue] = field(default_factory=list)
    _seen: set[ConfigIssue] = field(default_factory=set)

    # -- reporting ----------------------------------------------------------------------------------
    def error(
        self,
        path: str,
        node: Node | None,
        message: str,
        *,
        line: int | None = None,
        column: int | None = None,
        detail: str | None = None,
    ) -> None:
        if line is None:
            line = node.start_mark.line + 1 if node is not None else 0
            column = node.start_mark.column + 1 if node is not None else 0
        issue = ConfigIssue(self.file, line, column or 0, path, message, detail)
        if issue not in self._seen:  # a mapping is read twice for a plugin (its kind, then its keys)
            self._seen.add(issue)
            self.issues.append(issue)

    def has_issue(self, path: str) -> bool:
        return any(
            i.path == path or i.path.startswith(path + ".") or i.path.startswith(path + "[")
            for i in self.issues
        )

    # -- mappings -----------------------------------------------------------------------------------
    def pairs(self, node: Node, ctx: Ctx, what: str) -> dict[str, tuple[Node, Node]] | None:
        """The keys of a mapping node; reports non-mappings, duplicate keys and merge keys."""
        if not isinstance(node, MappingNode):
            self.error(ctx.path or "(top level)", node, f"expected a mapping ({what}), got {_describe(node)}")
            return None
        out: dict[str, tuple[Node, Node]] = {}
        for k, v in node.value:
            if isinstance(k, ScalarNode) and k.tag == "tag:yaml.org,2002:merge":
                self.error(
                    ctx.path or "(top level)", k, "YAML merge keys (<<) are not supported; write the keys out"
                )
                continue
            if not isinstance(k, ScalarNode) or not isinstance(scalar_value(k), str):
                self.error(ctx.path, k, f"keys must be strings, got {_describe(k)}")
                continue
            name = k.value
            if name in out:
                first = out[name][0].start_mark.line + 1
                self.error(
                    ctx.at(name).path, k, f"duplicate key '{name}' (first set on line {first}); remove one"
                )
                continue
            out[name] = (k, v)
        return out

    def decode_dataclass(
        self, cls: type, node: Node, ctx: Ctx, *, skip: frozenset[str] = frozenset(), what: str | None = None
    ) -> tuple[Any, frozenset[str]]:
        """Decode a mapping into ``cls``; returns the object and the names of the fields set explicitly."""
        fields = {yaml_name(f): f for f in dataclasses.fields(cls) if "doc" in f.metadata}
        hints = typing.get_type_hints(cls)
        pairs = self.pairs(node, ctx, what or _what(cls))
        if pairs is None:
            return _BAD, frozenset()
        values: dict[str, Any] = {}
        for name, (knode, vnode) in pairs.items():
            if name in skip:
                continue
            f = fields.get(name)
            if f is None:
                self.unknown_key(name, knode, ctx, list(fields), top=cls is m.Config, cls=cls)
                continue
            v = self.decode_value(hints[f.name], f.metadata, vnode, ctx.at(name))
            if v is _BAD:
                continue
            values[f.name] = v
        for name, f in fields.items():
            if f.metadata.get("required") and f.name not in values and name not in skip and name not in pairs:
                self.error(
                    ctx.at(name).path, node, f"missing required key '{name}' ({_hint(f.metadata['doc'])})"
                )
        try:
            obj = cls(**values)
        except TypeError as e:  # pragma: no cover - a model bug, not a user error
            raise AssertionError(f"{cls.__name__}: {e}") from e
        return obj, frozenset(values)

    def unknown_key(
        self, name: str, knode: Node, ctx: Ctx, valid: list[str], *, top: bool, cls: type | None = None
    ) -> None:
        path = ctx.at(name).path
        if top and name in TOP_LEVEL_HINTS:
            self.error(path, knode, f"'{name}' {TOP_LEVEL_HINTS[name]}")
            return
        if name in LINKERD_ONLY_KEYS:
            self.error(path, knode, f"'{name}' {LINKERD_ONLY_KEYS[name]}")
            return
        for section in cls.__mro__ if cls is not None else ():
            hint = LINKERD_ONLY_SECTION_KEYS.get((section.__name__, name))
            if hint is not None:
                self.error(path, knode, f"'{name}' {hint}")
                return
        homes = _homes(name, cls, ctx)
        if homes:
            self.error(path, knode, f"'{name}' is not a key here; it belongs in {' or '.join(homes)}")
            return
        close = difflib.get_close_matches(name, valid, n=1, cutoff=0.75)
        if not close:
            lowered = {v.lower(): v for v in valid}
            if name.lower() in lowered:
                close = [lowered[name.lower()]]
        if close:
            self.error(path, knode, f"unknown key '{name}'; did you mean '{close[0]}'?")
        else:
            self.error(path, knode, f"unknown key '{name}'; valid keys here: {', '.join(valid)}")

    # -- values -------------------------------------------------------------------------------------
    def decode_value(self, hint: Any, meta: typing.Mapping[str, Any], node: Node, ctx: Ctx) -> Any:
        origin = typing.get_origin(hint)
        args = typing.get_args(hint)
        if origin in (types.UnionType, typing.Union):
            inner = [a for a in args if a is not type(None)]
            if isinstance(node, ScalarNode) and scalar_value(node) is None:
                if meta.get("required"):
                    self.error(ctx.path, node, "must not be null")
                    return _BAD
                return None
            return self.decode_value(inner[0], meta, node, ctx)
        if isinstance(node, ScalarNode) and node.tag == "tag:yaml.org,2002:null" and not meta.get("required"):
            return _BAD  # an explicit null means "use the default"
        if origin is tuple:
            item = args[0]
            if isinstance(node, MappingNode) and meta.get("one_or_many"):
                items = [node]
            elif isinstance(node, SequenceNode):
                items = node.value
            else:
                self.error(ctx.path, node, f"expected a list, got {_describe(node)}")
                return _BAD
            out = []
            for i, child in enumerate(items):
                v = self.decode_value(
                    item,
                    meta,
                    child,
                    ctx.at(f"[{i}]")
                    if not meta.get("one_or_many") or isinstance(node, SequenceNode)
                    else ctx,
                )
                if v is not _BAD:
                    out.append(v)
            return tuple(out)
        if hint is m.ParamsSection:
            return self.decode_section(ctx, node)
        if meta.get("plugin"):
            return self.decode_plugin(meta["plugin"], node, ctx)
        if dataclasses.is_dataclass(hint):
            obj, _ = self.decode_dataclass(typing.cast(type, hint), node, ctx)
            return self.check(obj, meta, node, ctx)
        if hint in _TYPE_NAMES:
            if not isinstance(node, ScalarNode):
                self.error(ctx.path, node, f"expected {_TYPE_NAMES[hint]}, got {_describe(node)}")
                return _BAD
            v = scalar_value(node)
            if hint is float and isinstance(v, int) and not isinstance(v, bool):
                v = float(v)
            if hint is str and meta.get("coerce_str") and isinstance(v, int) and not isinstance(v, bool):
                v = str(v)
            if type(v) is not hint:
                self.error(ctx.path, node, f"expected {_TYPE_NAMES[hint]}, got {_describe(node)}")
                return _BAD
            if hint is str and meta.get("dtab"):
                self.check_dtab(v, node, ctx)
            if hint is str and meta.get("path"):
                self.check_path(v, node, ctx)
            return self.check(v, meta, node, ctx)
        raise AssertionError(f"unsupported type in the config model: {hint!r}")  # pragma: no cover

    def check(self, v: Any, meta: typing.Mapping[str, Any], node: Node, ctx: Ctx) -> Any:
        chk = meta.get("check")
        if chk is not None and v is not _BAD:
            msg = chk(v)
            if msg:
                self.error(ctx.path, node, msg)
                return _BAD
        return v

    def check_path(self, text: str, node: ScalarNode, ctx: Ctx) -> None:
        parse_path = _dtab_api("parse_path")
        if not text.startswith("/"):
            self.error(ctx.path, node, f"expected a path starting with '/', got {text!r}")
            return
        if parse_path is None:
            return
        from dtab.errors import DtabSyntaxError

        try:
            parse_path(text)
        except DtabSyntaxError as e:
            pos = scalar_position(node, self.source, e.shown_offset)
            self.error(
                ctx.path,
                node,
                f"invalid path: {e.message}",
                line=pos.line,
                column=pos.column,
                detail=e.caret_display(),
            )

    def check_dtab(self, text: str, node: ScalarNode, ctx: Ctx) -> None:
        parse_dtab = _dtab_api("parse_dtab")
        if parse_dtab is None:
            return
        from dtab.errors import DtabSyntaxError

        try:
            parse_dtab(text)
        except DtabSyntaxError as e:
            pos = scalar_position(node, self.source, e.shown_offset)
            where = (
                f"line {pos.line}, column {pos.column}"
                if pos.exact
                else f"line {e.line}, column {e.column} of the dtab"
            )
            self.error(
                ctx.path,
                node,
                f"invalid dtab at {where}: {e.message}",
                line=pos.line,
                column=pos.column,
                detail=e.caret_display(),
            )

    # -- plugins ------------------------------------------------------------------------------------
    def decode_plugin(self, category: str, node: Node, ctx: Ctx) -> Any:
        base = registry.CATEGORY_BASE[category]
        disc = base.DISCRIMINATOR
        noun = registry.CATEGORY_NOUN[category]
        pairs = self.pairs(node, ctx, f"a {noun} with '{disc}'")
        if pairs is None:
            return _BAD
        kctx = ctx.at(disc)
        if disc not in pairs:
            default = _kind_default(base)
            if default is None:
                self.error(
                    kctx.path,
                    node,
                    f"missing required key '{disc}'; valid {noun} kinds: "
                    f"{', '.join(registry.kinds(category, status='implemented', protocol=ctx.protocol))}",
                )
                return _BAD
            kind, knode = default, node
        else:
            knode = pairs[disc][1]
            kind_value: Any = scalar_value(knode) if isinstance(knode, ScalarNode) else None
            if not isinstance(kind_value, str):
                self.error(kctx.path, knode, f"expected a string, got {_describe(knode)}")
                return _BAD
            kind = kind_value
        spec = registry.lookup(category, kind)
        if spec is None:
            self.report_bad_kind(category, kind, knode, kctx)
            return _BAD
        if spec.protocols is not None and ctx.protocol is not None and ctx.protocol not in spec.protocols:
            usable = registry.kinds(category, status="implemented", protocol=ctx.protocol)
            self.error(
                kctx.path,
                knode,
                f"{noun} kind '{kind}' is for {'/'.join(sorted(spec.protocols))} routers, "
                f"not {ctx.protocol}; {ctx.protocol} routers take: {', '.join(usable)}",
            )
            return _BAD
        if spec.status != "implemented":
            self.error(
                kctx.path,
                knode,
                f"kind '{kind}' ({kctx.path}) is not supported yet by this hostproxy "
                f"version; {spec.use_now or 'remove it'}",
            )
        sub = ctx
        if category == "protocol":
            sub = Ctx(ctx.path, kind, spec.config_type)
        obj, _ = self.decode_dataclass(spec.config_type, node, sub, skip=frozenset({disc}))
        if obj is _BAD:
            return _BAD
        obj = dataclasses.replace(obj, kind=kind)
        # (Only between keys that each passed their own check: one that did not is reported already.)
        conflict = None if self.has_issue(ctx.path) else obj.conflict()
        if conflict is not None:
            name, message = conflict
            self.error(ctx.at(name).path, pairs[name][1] if name in pairs else node, message)
            return _BAD
        if spec.experimental and not getattr(obj, "experimental", False):
            self.error(
                kctx.path, knode, f"{noun} '{kind}' is experimental; set experimental: true on it to use it"
            )
        if spec.status != "implemented":
            return _BAD
        return obj

    def report_bad_kind(self, category: str, kind: str, knode: Node, kctx: Ctx) -> None:
        noun = registry.CATEGORY_NOUN[category]
        later = registry.NOT_YET.get((category, kind))
        if later is not None:
            self.error(kctx.path, knode, f"{noun} kind '{kind}' is not supported yet by hostproxy; {later}")
            return
        advice = registry.UNSUPPORTED.get((category, kind))
        if advice is not None:
            self.error(
                kctx.path,
                knode,
                f"{noun} kind '{kind}' is a Linkerd {noun} that hostproxy does not support; {advice}",
            )
            return
        for _other, spec_cat in _other_categories(kind):
            self.error(
                kctx.path,
                knode,
                f"'{kind}' is a {registry.CATEGORY_NOUN[spec_cat]} kind, not a {noun} kind; "
                f"valid {noun} kinds: {', '.join(registry.kinds(category, status='implemented'))}",
            )
            return
        valid = registry.kinds(category, status="implemented", protocol=kctx.protocol)
        planned = [k for k in registry.kinds(category, status="planned", protocol=kctx.protocol)]
        close = difflib.get_close_matches(kind, valid + planned, n=1, cutoff=0.6)
        msg = f"unknown {noun} kind '{kind}'"
        if close:
            msg += f"; did you mean '{close[0]}'?"
        msg += f"; valid kinds: {', '.join(valid)}"
        if planned:
            msg += f" (planned: {', '.join(planned)})"
        self.error(kctx.path, knode, msg)

    # -- client and service sections ----------------------------------------------------------------
    def decode_section(self, ctx: Ctx, node: Node) -> Any:
        section = ctx.path.rsplit(".", 1)[-1]
        router_cls = ctx.router_cls or m.HttpRouterConfig
        params_type = router_cls.CLIENT_PARAMS if section == "client" else router_cls.SERVICE_PARAMS
        pairs = self.pairs(node, ctx, f"{section} parameters")
        if pairs is None:
            return _BAD
        kind: Any = "io.l5d.global"
        if "kind" in pairs:
            knode = pairs["kind"][1]
            kind = scalar_value(knode) if isinstance(knode, ScalarNode) else None
            if kind not in ("io.l5d.global", "io.l5d.static"):
                self.error(
                    ctx.at("kind").path,
                    knode,
                    f"unknown {section} kind {kind!r}; valid kinds: "
                    "io.l5d.global (one set of parameters), io.l5d.static (per-prefix configs)",
                )
                return _BAD
        if kind == "io.l5d.global":
            params, explicit = self.decode_dataclass(params_type, node, ctx, skip=frozenset({"kind"}))
            if params is _BAD:
                return _BAD
            self.check_params(params, explicit, pairs, ctx, section, captures=frozenset())
            return m.ParamsSection(
                kind,
                (m.ParamsEntry("/", params, m.all_fields(params_type), line=node.start_mark.line + 1),),
                params_type,
            )
        for name, (knode, _) in pairs.items():
            if name not in ("kind", "configs"):
                self.error(
                    ctx.at(name).path,
                    knode,
                    f"a {section} of kind io.l5d.static takes only 'configs' "
                    f"(a list of {{prefix: ..., <parameters>}}); move '{name}' into a configs entry",
                )
        if "configs" not in pairs:
            self.error(
                ctx.at("configs").path,
                node,
                "missing required key 'configs' (a list of {prefix: ..., <parameters>}, later entries win)",
            )
            return _BAD
        cnode = pairs["configs"][1]
        cctx = ctx.at("configs")
        if not isinstance(cnode, SequenceNode):
            self.error(cctx.path, cnode, f"expected a list, got {_describe(cnode)}")
            return _BAD
        entries = []
        for i, enode in enumerate(cnode.value):
            ectx = cctx.at(f"[{i}]")
            epairs = self.pairs(enode, ectx, f"a {section} config with 'prefix'")
            if epairs is None:
                continue
            params, explicit = self.decode_dataclass(params_type, enode, ectx, skip=frozenset({"prefix"}))
            if "prefix" not in epairs:
                self.error(
                    ectx.at("prefix").path,
                    enode,
                    "missing required key 'prefix' (the names this entry "
                    "applies to, e.g. /svc/foo, /#/io.l5d.fs/*, /$/io.buoyant.rinet/443/{host})",
                )
                continue
            pnode = epairs["prefix"][1]
            prefix = scalar_value(pnode) if isinstance(pnode, ScalarNode) else None
            if not isinstance(prefix, str):
                self.error(ectx.at("prefix").path, pnode, f"expected a string, got {_describe(pnode)}")
                continue
            try:
                pattern = parse_pattern(prefix)
            except PatternError as e:
                self.error(ectx.at("prefix").path, pnode, str(e))
                continue
            if params is _BAD:
                continue
            self.check_params(params, explicit, epairs, ectx, section, captures=frozenset(pattern.captures))
            entries.append(m.ParamsEntry(prefix, params, explicit, line=enode.start_mark.line + 1))
        return m.ParamsSection("io.l5d.static", tuple(entries), params_type)

    def check_params(
        self,
        params: Any,
        explicit: frozenset[str],
        pairs: dict[str, tuple[Node, Node]],
        ctx: Ctx,
        section: str,
        captures: frozenset[str],
    ) -> None:
        if section == "client" and params.tls is not None:
            tls: m.ClientTls = params.tls
            tnode = pairs["tls"][1]
            tctx = ctx.at("tls")
            if tls.disable_validation and tls.client_auth is not None:
                self.error(
                    tctx.path,
                    tnode,
                    "disableValidation: true cannot be combined with clientAuth; remove one of them",
                )
            if tls.enabled and not tls.disable_validation and not tls.common_name:
                self.error(
                    tctx.at("commonName").path,
                    tnode,
                    "missing required key 'commonName' (the name the "
                    "server certificate must carry); or set disableValidation: true for testing",
                )
        self.check_runtime(params, explicit, pairs, ctx, section)
        # every {var} used in a string value must be captured by the prefix
        for where, text, vnode in _strings(params, explicit, pairs, ctx):
            for var in re.findall(r"\{([^{}]*)\}", text):
                if var not in captures:
                    have = ", ".join("{" + c + "}" for c in sorted(captures)) or "none"
                    self.error(
                        where, vnode, f"'{{{var}}}' is not captured by this entry's prefix (captures: {have})"
                    )

    def check_runtime(
        self,
        params: Any,
        explicit: frozenset[str],
        pairs: dict[str, tuple[Node, Node]],
        ctx: Ctx,
        section: str,
    ) -> None:
        """Build what the runtime builds from this entry's plugins, so that a value it refuses (a
        jittered backoff whose maxMs is below its minMs, a budget's ttlSecs past 60, ...) is a config
        error here instead of a 502 on every request to the name. Only keys set explicitly are
        built: the defaults are valid."""
        import random

        from hostproxy.accrual import accrual_from_config
        from hostproxy.backoff import backoff_from_config
        from hostproxy.balancer import balancer_from_config
        from hostproxy.budget import BudgetConfig
        from hostproxy.classifier import classifier_from_config

        rng = random.Random(0)

        def budget(b: m.RetryBudget, where: str) -> None:
            try:
                BudgetConfig(b.ttl_secs, b.min_retries_per_sec, b.percent_can_retry)
            except ValueError as e:  # "ttlSecs must be ..."
                key, _, message = str(e).partition(" ")
                raise ValueError(f"{where}.{key}: {message}") from None

        def retries(r: m.Retries, where: str) -> None:
            budget(r.budget, where + ".budget")
            backoff_from_config(m.plugin_mapping(r.backoff), rng, where + ".backoff")

        builders: dict[str, Any] = {}
        if section == "client":
            builders = {
                "failure_accrual": lambda v, w: accrual_from_config(m.plugin_mapping(v), rng, w),
                "load_balancer": lambda v, w: balancer_from_config(
                    m.plugin_mapping(v), rng=rng, now=lambda: 0.0, where=w
                ),
                "requeue_budget": budget,
            }
        else:
            builders = {
                "retries": retries,
                "response_classifier": lambda v, w: classifier_from_config(m.plugin_mapping(v), w),
            }
        for f in dataclasses.fields(params):
            name = yaml_name(f)
            if f.name not in builders or f.name not in explicit or name not in pairs:
                continue
            where = ctx.at(name).path
            if self.has_issue(where):  # already reported (and the value replaced by its default)
                continue
            try:
                builders[f.name](getattr(params, f.name), where)
            except ValueError as e:
                path, _, message = str(e).partition(": ")
                if not path.startswith(where):
                    path, message = where, str(e)
                steps = _steps(path[len(where) :])
                self.error(path, _walk(pairs[name][1], steps), message)


def _homes(name: str, cls: type | None, ctx: Ctx) -> list[str]:
    """Where in this router ``name`` is a key, when it is one of a router, its client or service
    parameters or its servers but was written in another of them (Linkerd 1.1 moved retries,
    totalTimeoutMs and responseClassifier from the router and client to ``service``)."""
    found = re.match(r"routers\[\d+\]", ctx.path)
    if found is None or cls is None:
        return []
    router = found.group(0)
    rcls = ctx.router_cls or m.HttpRouterConfig
    server_cls = typing.get_args(typing.get_type_hints(rcls)["servers"])[0]
    sections = [
        (rcls, router),
        (rcls.CLIENT_PARAMS, f"{router}.client"),
        (rcls.SERVICE_PARAMS, f"{router}.service"),
        (server_cls, f"an entry of {router}.servers"),
    ]
    return [
        where
        for section, where in sections
        if section is not cls
        and name in {yaml_name(f) for f in dataclasses.fields(section) if "doc" in f.metadata}
    ]


def _steps(path: str) -> list[str | int]:
    """``.backoff.maxMs`` or ``[1].kind`` as the keys and indexes to walk."""
    return [int(p[1:-1]) if p.startswith("[") else p for p in re.findall(r"\[\d+\]|[^.\[\]]+", path)]


def _walk(node: Node, steps: list[str | int]) -> Node:
    """The node at ``steps`` below ``node``, or the deepest one that exists."""
    for s in steps:
        if isinstance(s, int) and isinstance(node, SequenceNode) and s < len(node.value):
            node = node.value[s]
        elif isinstance(s, str) and isinstance(node, MappingNode):
            found = [v for k, v in node.value if isinstance(k, ScalarNode) and k.value == s]
            if not found:
                return node
            node = found[0]
        else:
            return node
    return node


def config_line(path: str, steps: tuple[str | int, ...]) -> int:
    """The 1-based line of the value at ``steps`` in the config file ``path`` (of the deepest part of
    it that exists), or 0 when the file cannot be read or parsed."""
    try:
        with open(path, "rb") as f:
            text = _utf8(_bounded(f, path), path)
    except (OSError, ConfigError):
        return 0
    return config_position(text, steps)[0]


def config_position(text: str, steps: tuple[str | int, ...] | str) -> tuple[int, int]:
    """The 1-based ``(line, column)`` of the value at ``steps`` (or a config path such as
    ``routers[0].servers[1].tls.certPath``) in config ``text``, of the deepest part of it that
    exists; ``(0, 0)`` when the text does not parse."""
    try:
        root = compose(text.replace("\r\n", "\n").replace("\r", "\n"))
    except (ConfigError, YamlSyntaxError):
        return 0, 0
    if root is None:
        return 0, 0
    mark = _walk(root, _steps(steps) if isinstance(steps, str) else list(steps)).start_mark
    return mark.line + 1, mark.column + 1


def _strings(params: Any, explicit: frozenset[str], pairs: dict[str, tuple[Node, Node]], ctx: Ctx):
    """(path, text, node) for every string value set explicitly in a params entry."""

    def walk(obj: Any, path: str, node: Node):
        if isinstance(obj, str):
            yield path, obj, node
        elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            sub = {}
            if isinstance(node, MappingNode):
                sub = {k.value: v for k, v in node.value if isinstance(k, ScalarNode)}
            for f in dataclasses.fields(obj):
                if "doc" in f.metadata and yaml_name(f) in sub:
                    yield from walk(getattr(obj, f.name), f"{path}.{yaml_name(f)}", sub[yaml_name(f)])
        elif isinstance(obj, tuple) and isinstance(node, SequenceNode):
            for i, (x, n) in enumerate(zip(obj, node.value, strict=False)):
                yield from walk(x, f"{path}[{i}]", n)

    for f in dataclasses.fields(params):
        if f.name in explicit and yaml_name(f) in pairs:
            yield from walk(getattr(params, f.name), ctx.at(yaml_name(f)).path, pairs[yaml_name(f)][1])


def _hint(doc: str) -> str:
    doc = doc.rstrip(".")
    return doc[:1].lower() + doc[1:] if doc[1:2].islower() else doc


def _kind_default(base: type) -> str | None:
    for f in dataclasses.fields(base):
        if f.name == "kind":
            return None if f.metadata.get("required") else typing.cast(str, f.default)
    return None


def _other_categories(kind: str):
    for cat, k in registry.REGISTRY:
        if k == kind:
            yield k, cat


def _what(cls: type) -> str:
    return "a mapping of " + cls.__name__


def _describe(node: Node) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    v = scalar_value(typing.cast(ScalarNode, node))
    if isinstance(v, Unreadable):
        return v.what
    if v is None:
        return "null"
    if isinstance(v, bool):
        return f"a boolean ({node.value})"
    if isinstance(v, int):
        return f"an integer ({node.value})"
    if isinstance(v, float):
        return f"a number ({node.value})"
    if isinstance(v, str):
        return f"a string ({v if len(v) <= 60 else v[:60] + '...'!r})"
    return f"{type(v).__name__} ({node.value})"


def _dtab_api(name: str) -> Any:
    try:
        import dtab
    except ImportError:  # pragma: no cover
        return None
    return getattr(dtab, name, None)


# -- whole-file checks --------------------------------------------------------------------------------


def _finish(v: Validator, cfg: m.Config, root: MappingNode) -> m.Config:
    pairs = {k.value: (k, val) for k, val in root.value if isinstance(k, ScalarNode)}

    def node_at(*steps: str | int) -> Node:
        return _walk(root, list(steps))

    if "routers" in pairs and not cfg.routers and not v.has_issue("routers"):
        v.error(
            "routers",
            pairs["routers"][1],
            "no routers configured; add at least one, e.g. routers: "
            "[{protocol: http, dtab: '/svc => /#/io.l5d.fs', servers: [{port: 4140}]}]",
        )
    # namers: default prefix, unique prefixes
    namers = []
    seen_prefix: dict[str, int] = {}
    for i, n in enumerate(cfg.namers):
        if n.prefix is None:
            if isinstance(n, m.RewriteNamer):
                v.error(
                    f"namers[{i}].prefix",
                    node_at("namers", i),
                    "missing required key 'prefix' (an io.l5d.rewrite namer has no default prefix)",
                )
            n = dataclasses.replace(n, prefix="/" + n.kind)
        if n.prefix in seen_prefix:
            v.error(
                f"namers[{i}].prefix",
                node_at("namers", i),
                f"namer prefix '{n.prefix}' is already used by "
                f"namers[{seen_prefix[n.prefix]}]; give one of them another prefix",
            )
        seen_prefix[str(n.prefix)] = i
        namers.append(n)
        _check_namer(v, n, f"namers[{i}]", node_at("namers", i))
    # routers: defaults, labels, servers, sockets
    routers = []
    labels: dict[str, int] = {}
    sockets: list[tuple[str, int, str]] = [(cfg.admin.ip, cfg.admin.port, "admin")]
    admin_tls = cfg.admin.tls
    if admin_tls is not None and admin_tls.require_client_auth and not admin_tls.ca_cert_path:
        v.error(
            "admin.tls.requireClientAuth",
            node_at("admin", "tls", "requireClientAuth"),
            "requireClientAuth: true needs admin.tls.caCertPath, the CAs client certificates must chain to; "
            "set caCertPath or turn requireClientAuth off",
        )
    for i, r in enumerate(cfg.routers or ()):
        rnode = node_at("routers", i)
        label = r.label if r.label is not None else r.kind
        if label in labels:
            v.error(
                f"routers[{i}].label",
                node_at("routers", i, "label"),
                f"router label '{label}' is already "
                f"used by routers[{labels[label]}]; give each router a unique label",
            )
        if not v.has_issue(f"routers[{i}].label"):  # (a refused label is not one it would have)
            labels.setdefault(label, i)
        if not r.servers and not v.has_issue(f"routers[{i}].servers"):
            v.error(
                f"routers[{i}].servers",
                node_at("routers", i, "servers") if _has(rnode, "servers") else rnode,
                f"router '{label}' has no servers; add one, e.g. servers: [{{port: {type(r).DEFAULT_PORT}}}]",
            )
        servers = []
        for j, s in enumerate(r.servers):
            if s.port is None:
                s = dataclasses.replace(s, port=type(r).DEFAULT_PORT)
            where = f"routers[{i}].servers[{j}]"
            for ip, port, other in sockets:
                if port == s.port and port != 0 and _clash(ip, s.ip):
                    v.error(
                        where,
                        node_at("routers", i, "servers", j),
                        f"{_sock(s.ip, s.port)} clashes with {other} ({_sock(ip, port)}); use another port",
                    )
                    break
            sockets.append((s.ip, int(s.port or 0), where))
            if (
                getattr(s, "max_header_list_bytes", None) is not None
                and getattr(s, "max_header_list_byts", None) is not None
            ):
                v.error(
                    f"{where}.maxHeaderListBytes",
                    node_at("routers", i, "servers", j, "maxHeaderListBytes"),
                    "maxHeaderListBytes and maxHeaderListByts are the same setting (Linkerd's code and "
                    "docs spell it differently); remove one of them",
                )
            servers.append(s)
            tls = getattr(s, "tls", None)
            if tls is not None and tls.require_client_auth and not tls.ca_cert_path:
                v.error(
                    f"{where}.tls.requireClientAuth",
                    node_at("routers", i, "servers", j, "tls", "requireClientAuth"),
                    f"requireClientAuth: true needs {where}.tls.caCertPath, the CAs client certificates "
                    "must chain to; set caCertPath or turn requireClientAuth off",
                )
            fwd = s.add_forwarded_header
            for side, labeler in (("by", fwd.by), ("for", fwd.for_)) if fwd is not None else ():
                if labeler.kind == "static" and not labeler.label:
                    v.error(
                        f"{where}.addForwardedHeader.{side}.label",
                        node_at("routers", i, "servers", j, "addForwardedHeader", side),
                        "missing required key 'label' (a labeler of kind static sends this label, "
                        "e.g. _proxy1)",
                    )
        identifiers = r.identifier or (m.HeaderTokenIdentifier(kind="io.l5d.header.token"),)
        identifiers = tuple(
            dataclasses.replace(x, header="Host" if r.kind == "http" else ":authority")
            if isinstance(x, m.HeaderTokenIdentifier) and x.header is None
            else x
            for x in identifiers
        )
        changes: dict[str, Any] = {"label": label, "servers": tuple(servers), "identifier": identifiers}
        if r.client is None:
            changes["client"] = m.global_section(type(r).CLIENT_PARAMS)
        if r.service is None:
            changes["service"] = m.global_section(type(r).SERVICE_PARAMS)
        if isinstance(r, m.HttpRouterConfig):
            if not r.streaming_enabled and r.stream_after_content_length_kb is not None:
                v.error(
                    f"routers[{i}].streamAfterContentLengthKB",
                    node_at("routers", i, "streamAfterContentLengthKB"),
                    "streamAfterContentLengthKB cannot be set when streamingEnabled is false; remove one of them",
                )
            if r.stream_after_content_length_kb is None:
                changes["stream_after_content_length_kb"] = 5
        routers.append(dataclasses.replace(r, **changes))
    _check_overload(v, cfg.overload, node_at("overload"))
    # The daemonset transformer watches its Service through an io.l5d.k8s namer: the one at its
    # k8sHost:k8sPort (see DaemonSetTransformer.namer_index).
    placed: list[tuple[str, tuple[str | int, ...], tuple[m.TransformerConfig, ...]]] = [
        (f"namers[{i}]", ("namers", i), n.transformers) for i, n in enumerate(cfg.namers)
    ]
    placed += [
        (f"routers[{i}].interpreter", ("routers", i, "interpreter"), r.interpreter.transformers)
        for i, r in enumerate(cfg.routers or ())
    ]
    k8s_namers = [(i, n) for i, n in enumerate(cfg.namers) if isinstance(n, m.K8sNamer)]
    for where, steps, transformers in placed:
        for j, t in enumerate(transformers):
            if not isinstance(t, m.DaemonSetTransformer) or t.namer_index(cfg.namers) is not None:
                continue
            if not k8s_namers:
                v.error(
                    f"{where}.transformers[{j}].kind",
                    node_at(*steps, "transformers", j, "kind"),
                    "io.l5d.k8s.daemonset watches its Service through an io.l5d.k8s namer, and `namers` "
                    "has none; add one (e.g. {kind: io.l5d.k8s, host: localhost, port: 8001})",
                )
                continue
            at = f"{t.k8s_host}:{t.k8s_port}"
            have = ", ".join(f"namers[{i}]: {n.host or 'localhost'}:{n.port}" for i, n in k8s_namers)
            v.error(
                f"{where}.transformers[{j}].k8sHost",
                node_at(*steps, "transformers", j, "k8sHost"),
                "io.l5d.k8s.daemonset watches its Service through the io.l5d.k8s namer with its k8sHost and "
                f"k8sPort ({at}), and none has them ({have}); set k8sHost and k8sPort to a namer's host and "
                f"port, or add an io.l5d.k8s namer for {at}",
            )
    _check_telemeter_paths(v, cfg.telemetry, node_at)
    for i, ns in enumerate(cfg.dns.nameservers):
        if not _host_port(ns):
            v.error(
                f"dns.nameservers[{i}]",
                node_at("dns", "nameservers", i),
                f"expected an IP address or IP:port (e.g. 10.0.0.2, 10.0.0.2:53 or [fd00::2]:53), got {ns!r}",
            )
    return dataclasses.replace(cfg, namers=tuple(namers), routers=tuple(routers))  # type: ignore[arg-type]


def _check_telemeter_paths(
    v: Validator, telemetry: tuple[m.TelemeterConfig, ...], node_at: typing.Callable[..., Node]
) -> None:
    """A telemeter served on the admin server must have a path of its own: one that an admin endpoint
    or another telemeter already answers would never reach it (the admin server would answer, or the
    first telemeter would)."""
    taken: dict[str, str] = {}  # path -> the telemeter that serves there
    for i, t in enumerate(telemetry):
        where = f"telemetry[{i}]"
        if isinstance(t, m.RecentRequestsTelemeter):
            if "/requests" in taken:
                v.error(
                    where,
                    node_at("telemetry", i),
                    f"a second io.l5d.recentRequests telemeter: /requests is already served by "
                    f"{taken['/requests']}; keep one of them",
                )
            taken.setdefault("/requests", f"{where} (io.l5d.recentRequests)")
            continue
        if isinstance(t, m.InfluxDbTelemeter):
            if m.INFLUXDB_PATH in taken:
                v.error(
                    where,
                    node_at("telemetry", i),
                    f"{m.INFLUXDB_PATH}, which io.l5d.influxdb serves, is already served by "
                    f"{taken[m.INFLUXDB_PATH]}; keep one of them",
                )
            taken.setdefault(m.INFLUXDB_PATH, f"{where} (io.l5d.influxdb)")
            continue
        if not isinstance(t, m.PrometheusTelemeter) or v.has_issue(f"{where}.path"):
            continue
        tnode = node_at("telemetry", i)
        pnode = node_at("telemetry", i, "path") if _has(tnode, "path") else tnode
        default = m.PROMETHEUS_DEFAULT_PATH
        if "?" in t.path or "#" in t.path:
            v.error(
                f"{where}.path",
                pnode,
                f"{t.path!r} has a query or fragment ('?' or '#'), which a request path never matches; "
                f"use a plain path such as {default}",
            )
            continue
        endpoint = colliding_endpoint(t.path)
        if endpoint is not None and t.path not in PROMETHEUS_PATHS:
            v.error(
                f"{where}.path",
                pnode,
                f"{t.path} is the admin endpoint {endpoint}, which answers there instead of this "
                f"io.l5d.prometheus telemeter; choose a path no admin endpoint uses, or leave path out "
                f"for the default {default}",
            )
        elif t.path in taken:
            v.error(
                f"{where}.path",
                pnode,
                f"{t.path} is already the path of {taken[t.path]}, which answers there instead of this "
                "telemeter; give each telemeter its own path",
            )
        taken.setdefault(t.path, f"{where} (io.l5d.prometheus)")


def _check_namer(v: Validator, n: m.NamerConfig, where: str, node: Node) -> None:
    """What each namer's runtime refuses when it is built at startup (before anything binds), so that
    ``check`` refuses it too, at its place: an empty rootDir, a dnsHosts entry that is not an IP, a
    rewrite pattern or name that does not parse or uses a variable the pattern does not capture."""
    prefix = str(n.prefix)
    if prefix == "/#" or prefix.startswith("/#/"):
        bare = prefix[2:] or "/name"
        v.error(
            f"{where}.prefix",
            _walk(node, ["prefix"]),
            f"a namer prefix is written without '/#' (this one would serve /#{prefix}/...); write "
            f"prefix: {bare} to serve /#{bare}",
        )
    if isinstance(n, m.FsNamer) and n.root_dir == "":
        v.error(
            f"{where}.rootDir",
            _walk(node, ["rootDir"]),
            "must not be empty: give the directory of service files",
        )
    if isinstance(n, m.DnsSrvNamer):
        from namers.inet import parse_nameserver

        for j, host in enumerate(n.dns_hosts):
            try:
                parse_nameserver(host, names=True)
            except ValueError:
                v.error(
                    f"{where}.dnsHosts[{j}]",
                    _walk(node, ["dnsHosts", j]),
                    "expected an IP address, a host name, or either with :port (e.g. 10.0.0.2, "
                    f"ns0.example.org, 10.0.0.2:53 or [fd00::2]:53), got {host!r}",
                )
    if isinstance(n, m.RewriteNamer) and n.pattern and n.name and not v.has_issue(where):
        from namers.rewrite import NameTemplate, PathPattern, RewriteConfigError

        try:
            NameTemplate(n.name, PathPattern(n.pattern).variables)
        except RewriteConfigError as e:
            found = re.match(r"namers\[\]\.(pattern|name):? (.*)", str(e), re.DOTALL)
            key, message = (found.group(1), found.group(2)) if found else ("pattern", str(e))
            v.error(f"{where}.{key}", _walk(node, [key]), message)


def _check_overload(v: Validator, o: m.OverloadSection, node: Node) -> None:
    """The marks the overload manager needs: above 0, in order, and hysteresis below the first."""
    marks = {"noKeepalive": o.no_keepalive, "shed": o.shed, "stopAccept": o.stop_accept}
    for name, value in [*marks.items(), ("fdStopAccept", o.fd_stop_accept)]:
        if value == 0:
            v.error(f"overload.{name}", _walk(node, [name]), "must be greater than 0 (a fraction up to 1.0)")
    if not o.no_keepalive <= o.shed <= o.stop_accept:
        v.error(
            "overload",
            node,
            f"the memory marks must be in order noKeepalive ({o.no_keepalive}) <= shed ({o.shed}) "
            f"<= stopAccept ({o.stop_accept}); change the one out of order",
        )
    elif o.no_keepalive > 0 and o.hysteresis >= o.no_keepalive:
        v.error(
            "overload.hysteresis",
            _walk(node, ["hysteresis"]),
            f"must be below noKeepalive ({o.no_keepalive}), got {o.hysteresis}",
        )


def _has(node: Node, key: str) -> bool:
    return isinstance(node, MappingNode) and any(
        isinstance(k, ScalarNode) and k.value == key for k, _ in node.value
    )


def _clash(a: str, b: str) -> bool:
    """Whether two listeners on one port would take the same connections. IPv6 listeners are
    IPv6-only, so an IPv4 and an IPv6 address never clash ([::] and 0.0.0.0 together listen on both
    families); within a family the wildcard clashes with every address. This must be caught here: with
    SO_REUSEPORT the second bind succeeds and the kernel spreads connections over both routers."""
    a, b = _canonical_ip(a), _canonical_ip(b)
    if (":" in a) != (":" in b):
        return False
    return a == b or a in ("0.0.0.0", "::") or b in ("0.0.0.0", "::")


def _sock(ip: str, port: object) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def _canonical_ip(ip: str) -> str:
    """One spelling per address (``0:0:0:0:0:0:0:1`` is ``::1``; ``localhost`` is ``127.0.0.1``)."""
    import ipaddress

    if ip == "localhost":
        return "127.0.0.1"
    try:
        return ipaddress.ip_address(ip).compressed
    except ValueError:
        return ip


def _host_port(text: str) -> bool:
    """An IP address, IP:port or [IPv6]:port (a nameserver, as the resolver takes it)."""
    import ipaddress

    host, port = text, None
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else (None if not rest else "x")
    elif text.count(":") == 1:
        host, port = text.split(":")
    if port is not None and not (port.isdigit() and 0 < int(port) < 65536):
        return False
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


# -- entry point -------------------------------------------------------------------------------------


def validate_text(text: str, source: str, *, check_client_prefixes: bool = True) -> m.Config:
    """Validate config text; raise :class:`ConfigError` listing every problem.

    ``check_client_prefixes=False`` skips only the static-client-prefix check (for tests of that
    check itself, which need the config that has the mistake)."""
    # One line break (YAML reads CRLF and CR as LF too): a file saved with CRLF line ends gets the same
    # positions, in particular inside a dtab block, whose lines are matched back to the file.
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    v = Validator(text, source)
    try:
        root = compose(text)
    except YamlSyntaxError as e:
        raise ConfigError([ConfigIssue(source, e.line, e.column, "", e.message)]) from None
    if root is None:
        raise ConfigError(
            [ConfigIssue(source, 1, 1, "", "the config is empty; it needs at least a routers list")]
        )
    if not isinstance(root, MappingNode):
        v.error(
            "",
            root,
            f"the config must be a mapping with keys such as routers and namers, got {_describe(root)}",
        )
        raise ConfigError(v.issues)
    cfg, _ = v.decode_dataclass(m.Config, root, Ctx(""))
    if cfg is _BAD:  # pragma: no cover - root is a mapping
        raise ConfigError(v.issues)
    cfg = _finish(v, cfg, root)
    static_clients = any(r.client is not None and r.client.kind == "io.l5d.static" for r in cfg.routers)
    if not v.issues and check_client_prefixes and static_clients:
        # Static client prefixes that a transformer makes unmatchable: their settings (tls, most
        # often) would silently never apply. Imported here: hostproxy.tls imports the config model.
        from hostproxy.tls.check import check_tls_prefixes

        v.issues.extend(check_tls_prefixes(cfg, file=source))
    if v.issues:
        raise ConfigError(sorted(v.issues, key=lambda i: (i.line, i.column)))
    return cfg


def load_config(
    path_or_text: str | FsPath, *, source: str | None = None, check_client_prefixes: bool = True
) -> m.Config:
    """Load and validate a config.

    ``path_or_text`` is a file path (``str`` or ``pathlib.Path``), ``"-"`` for stdin, or the config
    text itself when ``source`` names where it came from (or when it contains a newline or starts with
    ``{``). Raises :class:`ConfigError` with every problem found (``check_client_prefixes``: see
    :func:`validate_text`).
    """
    ck = check_client_prefixes
    if source is not None:
        return validate_text(str(path_or_text), source, check_client_prefixes=ck)
    if isinstance(path_or_text, str) and ("\n" in path_or_text or path_or_text.lstrip().startswith("{")):
        return validate_text(path_or_text, "<config>", check_client_prefixes=ck)
    text, source = read_config_text(str(path_or_text))
    return validate_text(text, source, check_client_prefixes=ck)


def read_config_text(name: str) -> tuple[str, str]:
    """``(text, source)`` of the config file ``name`` (``"-"``: stdin, whose source is ``<stdin>``);
    raises :class:`ConfigError` when it cannot be read, is too large or is not UTF-8."""
    if name == "-":
        data = _bounded(sys.stdin.buffer, "<stdin>")
        return _utf8(data, "<stdin>"), "<stdin>"
    try:
        with open(name, "rb") as f:
            data = _bounded(f, name)
    except OSError as e:
        raise ConfigError(
            [ConfigIssue(name, 0, 0, "", f"cannot read the config file: {e.strerror or e}")]
        ) from None
    return _utf8(data, name), name


#: The largest config read, in bytes: a path such as /dev/zero, or a runaway generator's output, is
#: refused instead of read without end (Linkerd configs of thousands of routers are a few MiB).
MAX_CONFIG_BYTES = 16 * 1024 * 1024


def _bounded(f: Any, name: str) -> bytes:
    """At most ``MAX_CONFIG_BYTES`` of ``f``; a ConfigError when there is more."""
    data = f.read(MAX_CONFIG_BYTES + 1)
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(
            [
                ConfigIssue(
                    name,
                    0,
                    0,
                    "",
                    f"the config is larger than {MAX_CONFIG_BYTES // (1024 * 1024)} MiB; is this the config "
                    "file? (a device such as /dev/zero, or generated output gone wrong)",
                )
            ]
        )
    return bytes(data)


def _utf8(data: bytes, name: str) -> str:
    """The config's text; bytes that are not UTF-8 are an error at their line and column."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        head = data[: e.start]
        line = head.count(b"\n") + 1
        column = len(head[head.rfind(b"\n") + 1 :].decode("utf-8", "replace")) + 1
        raise ConfigError(
            [
                ConfigIssue(
                    name,
                    line,
                    column,
                    "",
                    f"the config is not UTF-8 text: byte 0x{data[e.start]:02x} cannot be decoded ({e.reason}); "
                    "save the file as UTF-8",
                )
            ]
        ) from None
