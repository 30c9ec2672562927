"""Generate the config reference (Markdown) from the model: ``python -m hostproxy.config.reference``.

Theory of operation: the reference is derived, never written by hand. Starting at
:class:`~hostproxy.config.model.Config`, every dataclass reached through a field becomes a section with a
table of its keys (YAML name, type, default, description); a plugin-typed key links to the list of kinds
of its category, and each registered kind gets its own table of the keys it adds, with its status
(implemented or planned). hostproxy-only keys are marked "(hostproxy)".
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from typing import Any

from hostproxy.config import model as m
from hostproxy.config import registry
from hostproxy.config.schema import yaml_name


def _type_name(hint: Any, meta: typing.Mapping[str, Any]) -> str:
    if meta.get("plugin"):
        noun = registry.CATEGORY_NOUN[meta["plugin"]]
        origin = typing.get_origin(hint)
        if origin is tuple or (
            origin in (types.UnionType, typing.Union) and typing.get_origin(typing.get_args(hint)[0]) is tuple
        ):
            return f"list of {noun}" + (" (or one)" if meta.get("one_or_many") else "")
        return noun
    if hint is m.ParamsSection:
        return "mapping (global or static)"
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        inner = [a for a in args if a is not type(None)]
        return _type_name(inner[0], meta)
    if origin is tuple:
        return f"list of {_type_name(args[0], {})}"
    if dataclasses.is_dataclass(hint):
        return "mapping"
    if meta.get("dtab"):
        return "dtab"
    if meta.get("path"):
        return "path"
    return {bool: "bool", int: "int", float: "float", str: "string"}.get(hint, str(hint))


def _default(f: dataclasses.Field[Any]) -> str:
    meta = f.metadata
    if meta.get("required"):
        return "**required**"
    if meta.get("default_doc"):
        return str(meta["default_doc"])
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:  # pragma: no cover
        return ""
    if value is None:
        return "none"
    if isinstance(value, m.PluginConfig):
        return f"`{value.kind}`"
    if dataclasses.is_dataclass(value):
        return "see below"
    return f"`{json.dumps(m.to_json(value))}`"


def _table(cls: type, skip: frozenset[str] = frozenset()) -> list[str]:
    hints = typing.get_type_hints(cls)
    rows = ["| key | type | default | description |", "|---|---|---|---|"]
    for f in dataclasses.fields(cls):
        if "doc" not in f.metadata or yaml_name(f) in skip:
            continue
        doc = f.metadata["doc"] + (" (hostproxy)" if f.metadata.get("extension") else "")
        rows.append(f"| `{yaml_name(f)}` | {_type_name(hints[f.name], f.metadata)} | {_default(f)} | {doc} |")
    return rows


def _nested(cls: type) -> list[tuple[str, type]]:
    out: list[tuple[str, type]] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if "doc" not in f.metadata or f.metadata.get("plugin"):
            continue
        hint = hints[f.name]
        for cand in [hint, *typing.get_args(hint)]:
            for c in [cand, *typing.get_args(cand)]:
                if dataclasses.is_dataclass(c) and c is not m.ParamsSection:
                    out.append((yaml_name(f), typing.cast(type, c)))
    return out


def render() -> str:
    lines = [
        "# hostproxy config reference",
        "",
        "Generated from the config model (`python -m hostproxy.config.reference`). The file uses Linkerd 1's",
        "`linkerd.yaml` schema; keys marked (hostproxy) are hostproxy extensions. `hostproxy check FILE`",
        "validates a file, and reads the files it names that are on the machine (dtab file, TLS files,",
        "`io.l5d.fs` `rootDir`; see *Command line*), without starting anything.",
        "",
    ]
    done: set[type] = set()

    def section(title: str, cls: type, skip: frozenset[str] = frozenset()) -> None:
        if cls in done:
            return
        done.add(cls)
        lines.extend(
            [
                f"## {title}",
                "",
                *(
                    [cls.__doc__.strip().splitlines()[0], ""]
                    if cls.__doc__
                    and cls.__module__ == m.__name__
                    and not cls.__doc__.startswith(cls.__name__ + "(")
                    else []
                ),
                *_table(cls, skip),
                "",
            ]
        )
        for name, sub in _nested(cls):
            section(f"{title} › `{name}`", sub)

    section("Top level", m.Config)
    section(
        "`client` / `client.configs[]` (per client name; also `prefix` in static configs)", m.ClientParams
    )
    section(
        "`service` / `service.configs[]` (per service name; also `prefix` in static configs)", m.ServiceParams
    )
    section("h2 `client` parameters", m.H2ClientParams)
    section("h2 `service` parameters", m.H2ServiceParams)
    lines += [
        "`client` and `service` take `kind: io.l5d.global` (default: the keys above apply to every name) or",
        "`kind: io.l5d.static` with `configs: [{prefix: /svc/foo, ...keys}]`: every entry whose prefix matches",
        "applies, later entries win; `*` matches one segment and `{var}` captures (greedy) can be used in",
        'string values, e.g. `tls.commonName: "{service}"`. A `/` at the end of a prefix is dropped, as in',
        "Linkerd (`/#/io.l5d.fs/` is `/#/io.l5d.fs`).",
        "",
    ]
    for category, noun in registry.CATEGORY_NOUN.items():
        base = registry.CATEGORY_BASE[category]
        disc = base.DISCRIMINATOR
        lines += [f"## {noun} kinds (`{disc}`)", ""]
        common = _table(base, frozenset({disc}))
        if len(common) > 2:
            lines += ["Keys every kind takes:", "", *common, ""]
        for (cat, kind), spec in registry.REGISTRY.items():
            if cat != category:
                continue
            flags: list[str] = [spec.status]
            if spec.experimental:
                flags.append("experimental: needs `experimental: true`")
            if spec.protocols:
                flags.append("for " + "/".join(sorted(spec.protocols)) + " routers")
            lines += [f"### `{kind}` ({', '.join(flags)})", "", spec.description, ""]
            base_names = {yaml_name(f) for f in dataclasses.fields(base)}
            own = [r for r in _table(spec.config_type, frozenset(base_names | {disc}))]
            if len(own) > 2:
                lines += [*own, ""]
            for name, sub in _nested(spec.config_type):
                section(f"`{kind}` › `{name}`", sub)
        unsupported = sorted(k for (c, k) in {**registry.UNSUPPORTED, **registry.NOT_YET} if c == category)
        if unsupported:
            lines += [f"Linkerd {noun} kinds not supported: " + ", ".join(f"`{k}`" for k in unsupported), ""]
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    print(render(), end="")
