"""``hostproxy check FILE``: validate a config, and the files it names, without binding, starting or
resolving anything.

Exit 0 with a one-line summary (each router, its protocol and its sockets); exit 1 with every error as
``FILE:LINE: config.path: message`` on stderr (dtab errors add the offending line with a caret). With
``--json``, stdout carries exactly one document: ``{"ok": bool, "files_read": bool, "errors": [{file,
line, column, path, message}], "routers": [...]}``. ``FILE`` may be ``-`` for stdin.

A config that validates has the files it names read and checked next, with the code the daemon runs
when it starts (:func:`check_files`): each ``io.l5d.fs`` interpreter's ``dtabFile`` parsed (its errors
at ``DTABFILE:LINE:COL`` with a caret), every server and client ``tls`` section's certificates, keys
and CAs loaded (a key that does not belong to its certificate is an error), each ``io.l5d.fs``
namer's ``rootDir`` found to be a readable directory, each router's access log file found appendable or
creatable by this user (asked of the file modes: nothing is created or opened), ``namerState.dir``
found to be a directory this user can write, or creatable (the daemon creates it), and the service account
an in-cluster ``io.l5d.k8s`` namer reads (no ``host``, ``KUBERNETES_SERVICE_HOST`` set) checked as the
namer's start and first request would. A file that is not on this machine (for an access log: its
directory) is not an error: a config is often checked where it is written, not where it runs (the daemon checks it when it
starts); the summary names each such file and its key (``files_missing`` in the JSON).
``--require-files`` makes a missing file an error (run it on the host that will run the config);
``--no-files`` skips the reads altogether and says so in the summary.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from typing import Any

#: What the summary says when ``--no-files`` skipped the files.
NOT_READ = "the files it names were not read (--no-files)"


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "check",
        help="validate a config file (Linkerd 1 linkerd.yaml schema) and the files it names, without starting anything",
        description="Validate a config file and the files it names (dtab file, TLS certificates and keys, "
        "io.l5d.fs rootDir, access log, io.l5d.k8s service account) without binding ports, starting namers "
        "or touching the network.",
    )
    p.add_argument("file", metavar="FILE", help="config file (YAML or JSON), or - for stdin")
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    files = p.add_mutually_exclusive_group()
    files.add_argument(
        "--no-files",
        action="store_true",
        help="do not read the files the config names (to check a config for another machine)",
    )
    files.add_argument(
        "--require-files",
        action="store_true",
        help="a file the config names that is not on this machine is an error (on the host that runs it)",
    )
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


_TLS_FILE_KEYS = (
    ("cert_path", "certPath"),
    ("key_path", "keyPath"),
    ("intermediate_certs_path", "intermediateCertsPath"),
    ("ca_cert_path", "caCertPath"),
    ("trust_certs_bundle", "trustCertsBundle"),
)


def _tls_files(base: str, tls: Any) -> list[tuple[str, str]]:
    """``(config key, file)`` of every file a server or client ``tls`` section names."""
    out = [(f"{base}.{key}", v) for attr, key in _TLS_FILE_KEYS if (v := getattr(tls, attr, None))]
    out += [(f"{base}.trustCerts[{i}]", p) for i, p in enumerate(getattr(tls, "trust_certs", ()) or ())]
    auth = getattr(tls, "client_auth", None)
    if auth is not None:
        out += _tls_files(f"{base}.clientAuth", auth)
    return out


def _access_logs(cfg: Any) -> list[tuple[str, str, str]]:
    """``(config key, key name, path)`` of each router's access log file (``-``: log events, no file)."""
    from hostproxy.accesslog import STRUCTLOG_TARGETS

    out = []
    for ri, rcfg in enumerate(cfg.routers):
        # (the router's own choice: an h2 router's h2AccessLog, else httpAccessLog, as the daemon reads it)
        if getattr(rcfg, "h2_access_log", None) is not None:
            name, path = "h2AccessLog", rcfg.h2_access_log
        else:
            name, path = "httpAccessLog", getattr(rcfg, "http_access_log", None)
        if path is not None and path not in STRUCTLOG_TARGETS:
            out.append((f"routers[{ri}].{name}", name, path))
    return out


def _access_log_dir(path: str) -> str:
    """The directory the access log ``path`` is created in (a symbolic link's target's)."""
    return os.path.dirname(os.path.realpath(path)) or "."


def _access_log_problem(path: str, name: str) -> str | None:
    """What keeps the daemon from opening the access log ``path`` (key ``name``) for appending as
    this user, or None. Nothing is created, opened or truncated: the modes are asked (``access``)."""
    if not path.strip():
        return "empty path; give a file path, '-' for log events, or leave it out"
    target = os.path.realpath(path)
    uid = os.geteuid()
    if os.path.isdir(target):
        return f"the access log {path} is a directory; give a file path in {name}"
    if os.path.exists(target):
        if not _may(target, os.W_OK):
            return (
                f"cannot append to the access log {path}: it is not writable by this user (uid {uid}); "
                f"let the user hostproxy runs as write it, or fix {name}"
            )
        return None
    parent = _access_log_dir(path)
    if not os.path.lexists(parent):
        return (
            f"the directory {parent} of the access log {path} does not exist; create it (hostproxy creates "
            f"the log file, not its directory) or fix {name}"
        )
    if not os.path.isdir(parent):
        return f"cannot create the access log {path}: {parent} is not a directory; fix {name}"
    if not _may(parent, os.W_OK | os.X_OK):
        return (
            f"cannot create the access log {path}: the directory {parent} is not writable by this user "
            f"(uid {uid}); create the file writable for the user hostproxy runs as, or fix {name}"
        )
    return None


def _may(path: str, mode: int) -> bool:
    """Whether this process (its effective user) may access ``path`` in ``mode``."""
    if os.access in os.supports_effective_ids:
        return os.access(path, mode, effective_ids=True)
    return os.access(path, mode)


#: The namer kinds that read a service account in a pod (``namers.k8s.client.api_from_config``).
_IN_CLUSTER_KINDS = ("io.l5d.k8s", "io.l5d.k8s.external")


def _service_account_dirs(cfg: Any) -> list[tuple[str, str, str]]:
    """``(config key, directory, kind)`` of the service account of each Kubernetes namer that reads
    it: one with no ``host`` where ``KUBERNETES_SERVICE_HOST`` is set (in a pod), as the namer decides
    (``namers.k8s.from_config``)."""
    if not os.environ.get("KUBERNETES_SERVICE_HOST"):
        return []
    return [
        (f"namers[{i}].serviceAccountDir", n.service_account_dir, n.kind)
        for i, n in enumerate(cfg.namers)
        if n.kind in _IN_CLUSTER_KINDS and not getattr(n, "host", None)
    ]


#: The service account files an in-cluster ``io.l5d.k8s`` namer reads (``namers.k8s.in_cluster``).
_SERVICE_ACCOUNT_FILES = ("ca.crt", "token")


def missing_files(cfg: Any) -> list[tuple[str, str]]:
    """``(config key, file)`` of every file ``cfg`` names that is not on this machine (a path with
    a ``{capture}`` of a static client prefix is read as written, as the daemon reads it; an access
    log whose directory is not here)."""
    from hostproxy.config.params import client_tls_sections

    named: list[tuple[str, str]] = []
    if cfg.admin.tls is not None:
        named += _tls_files("admin.tls", cfg.admin.tls)
    for i, n in enumerate(cfg.namers):
        if n.kind == "io.l5d.fs" and n.root_dir:
            named.append((f"namers[{i}].rootDir", n.root_dir))
    for key, sa_dir, _kind in _service_account_dirs(cfg):
        named += [(key, os.path.join(sa_dir, f)) for f in _SERVICE_ACCOUNT_FILES]
    for ri, rcfg in enumerate(cfg.routers):
        path = getattr(rcfg.interpreter, "dtab_file", None)
        if rcfg.interpreter.kind == "io.l5d.fs" and path:
            named.append((f"routers[{ri}].interpreter.dtabFile", path))
        for j, scfg in enumerate(rcfg.servers):
            if scfg.tls is not None:
                named += _tls_files(f"routers[{ri}].servers[{j}].tls", scfg.tls)
        for key, tls in client_tls_sections(rcfg, ri):
            named += _tls_files(key, tls)
    missing = [(key, f) for key, f in named if not os.path.lexists(f)]
    # An access log need not exist (the daemon creates it): its directory must.
    missing += [
        (key, path)
        for key, _, path in _access_logs(cfg)
        if path.strip() and not os.path.lexists(_access_log_dir(path))
    ]
    return missing


def check_files(cfg: Any, text: str, source: str, skip: frozenset[str] = frozenset()) -> list[Any]:
    """A :class:`~hostproxy.config.ConfigIssue` for every file named by ``cfg`` (read from ``text``,
    from ``source``) that the daemon could not use when it starts; reads the files, binds nothing.
    A section (a namer, an interpreter, a ``tls`` section) with a key in ``skip`` (files not on this
    machine: :func:`missing_files`) is not read."""

    def skipped(prefix: str) -> bool:
        return any(k == prefix or k.startswith(prefix + ".") or k.startswith(prefix + "[") for k in skip)

    from hostproxy.config import ConfigIssue
    from hostproxy.config.params import client_tls_sections
    from hostproxy.config.validate import config_position
    from hostproxy.dtabfile import DtabFileError, load_dtab_file
    from namers.fs import check_root

    def issue(path: str, message: str, detail: str | None = None) -> ConfigIssue:
        line, column = config_position(text, path)
        return ConfigIssue(source, line, column, path, message, detail)

    issues: list[ConfigIssue] = []
    for i, n in enumerate(cfg.namers):
        if n.kind == "io.l5d.fs" and n.root_dir and not skipped(f"namers[{i}].rootDir"):
            problem = check_root(n.root_dir)
            if problem is not None:
                issues.append(issue(f"namers[{i}].rootDir", problem))
    for ri, rcfg in enumerate(cfg.routers):
        label = rcfg.label or rcfg.kind
        path = getattr(rcfg.interpreter, "dtab_file", None)
        if (
            rcfg.interpreter.kind == "io.l5d.fs"
            and path
            and not skipped(f"routers[{ri}].interpreter.dtabFile")
        ):
            try:
                load_dtab_file(path, router=label, then="check again")
            except DtabFileError as e:
                issues.append(issue(f"routers[{ri}].interpreter.dtabFile", e.summary, e.detail))
    if cfg.namer_state.dir is not None:
        problem = namer_state_dir_problem(cfg.namer_state.dir)
        if problem is not None:
            issues.append(issue("namerState.dir", problem))
    for key, sa_dir, kind in _service_account_dirs(cfg):
        if not skipped(key):
            problem = _service_account_problem(sa_dir, kind)
            if problem is not None:
                issues.append(issue(key, problem))
    for key, name, path in _access_logs(cfg):
        if not skipped(key):
            problem = _access_log_problem(path, name)
            if problem is not None:
                issues.append(issue(key, problem))
    if (
        cfg.admin.tls is not None
        or any(s.tls is not None for r in cfg.routers for s in r.servers)
        or any(client_tls_sections(r, ri) for ri, r in enumerate(cfg.routers))
    ):
        issues += _check_tls(cfg, issue, skipped)
    return sorted(issues, key=lambda i: (i.line, i.column))


def namer_state_dir_problem(path: str) -> str | None:
    """What keeps the daemon from saving namer state in ``path`` as this user, or None. The daemon
    creates the directory (and its parents) when it first saves; nothing is created here."""
    uid = os.geteuid()
    if os.path.lexists(path):
        if not os.path.isdir(path):
            return (
                f"namerState.dir {path} is not a directory; point it at a directory the daemon can write "
                "(it is created if missing)"
            )
        if not _may(path, os.W_OK | os.X_OK):
            return (
                f"cannot save namer state in {path}: the directory is not writable by this user (uid {uid}); "
                "let the user hostproxy runs as write it, or fix namerState.dir"
            )
        return None
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.lexists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        return f"cannot create namerState.dir {path}: {parent} is not a directory; fix namerState.dir"
    if not _may(parent, os.W_OK | os.X_OK):
        return (
            f"cannot create namerState.dir {path}: {parent} is not writable by this user (uid {uid}); "
            "create the directory writable for the user hostproxy runs as, or fix namerState.dir"
        )
    return None


def _service_account_problem(sa_dir: str, kind: str = "io.l5d.k8s") -> str | None:
    """What keeps an in-cluster ``io.l5d.k8s`` namer from using the service account in ``sa_dir``,
    or None: the checks its start makes (``in_cluster``: the CA loads, the files are not empty), then
    the token read as each request reads it."""
    from namers.k8s.client import ApiUnavailable, InClusterConfigError, TokenFile, in_cluster

    try:
        in_cluster(os.environ, sa_dir, kind=kind)
        TokenFile(os.path.join(sa_dir, "token")).get()
    except (InClusterConfigError, ApiUnavailable) as e:
        return str(e)
    except UnicodeDecodeError:
        return (
            f"{kind}: the service account token {os.path.join(sa_dir, 'token')} is not UTF-8 text; "
            "check the pod's token volume"
        )
    return None


def _check_tls(cfg: Any, issue: Any, skipped: Any) -> list[Any]:
    """Every server, admin and client ``tls`` section loaded as the daemon loads it at start."""
    from hostproxy.config.params import client_tls_sections
    from hostproxy.tls import ClientTlsCache, ServerTls, TlsConfigError, alpn_for_protocol
    from hostproxy.tls.client import load_client_tls

    def tls_issue(base: str, message: str, trust: tuple[str, ...] = ()) -> Any:
        # The message starts with the config key of the setting at fault (the section or one of its
        # keys, ``...tls.certPath``): it becomes the issue's path, placed on that key's line (for a
        # ``trustCerts`` file, on its item's).
        m = re.match(re.escape(base) + r"(?:\.[A-Za-z]+)*", message)
        path = m.group(0) if m else base
        rest = message[len(path) :] if m else message
        rest = rest[2:] if rest.startswith(": ") else rest.lstrip()
        if path == f"{base}.trustCerts":
            item = next((i for i, p in enumerate(trust) if re.search(re.escape(p) + r"[: ]", rest)), None)
            path += "" if item is None else f"[{item}]"
        return issue(path, rest)

    out: list[Any] = []
    if cfg.admin.tls is not None and not skipped("admin.tls"):
        try:
            ServerTls(cfg.admin.tls, alpn=alpn_for_protocol("http"), router="admin", key="admin.tls")
        except TlsConfigError as e:
            out.append(tls_issue("admin.tls", str(e)))
    for ri, rcfg in enumerate(cfg.routers):
        label = rcfg.label or rcfg.kind
        for j, scfg in enumerate(rcfg.servers):
            if scfg.tls is None:
                continue
            key = f"routers[{ri}].servers[{j}].tls"
            if skipped(key):
                continue
            try:
                ServerTls(scfg.tls, alpn=alpn_for_protocol(rcfg.kind), router=label, key=key)
            except TlsConfigError as e:
                out.append(tls_issue(key, str(e)))
        cache = ClientTlsCache()
        for key, tls in client_tls_sections(rcfg, ri):
            if skipped(key):
                continue
            try:
                load_client_tls(cache, tls, router=label, key=key, protocol=rcfg.kind)
            except TlsConfigError as e:
                out.append(tls_issue(key, str(e), tuple(tls.trust_certs)))
    return out


def main(args: argparse.Namespace) -> int:
    from hostproxy import log
    from hostproxy.config import ConfigError, validate_text
    from hostproxy.config.validate import read_config_text

    # The start-up code run on the files logs what it loads (``dtab.applied``): not check's output.
    log.configure("error")
    read_files = not args.no_files
    files_read = False  # the files are read once the config itself is valid
    missing: list[tuple[str, str]] = []
    try:
        text, source = read_config_text(args.file)
        cfg = validate_text(text, source)
        if read_files:
            if not args.require_files:
                missing = missing_files(cfg)
            errors = check_files(cfg, text, source, frozenset(key for key, _ in missing))
            files_read = True
            if errors:
                raise ConfigError(errors)
    except ConfigError as e:
        if args.json:
            doc = {
                "ok": False,
                "files_read": files_read,
                "files_missing": [{"path": k, "file": f} for k, f in missing],
                "errors": [i.to_json() for i in e.errors],
            }
            print(json.dumps(doc, indent=2))
        else:
            for issue in e.errors:
                print(issue.format(), file=sys.stderr)
            n = len(e.errors)
            print(f"{args.file}: {n} error{'s' if n != 1 else ''}", file=sys.stderr)
        return 1
    routers = summary(cfg)
    if args.json:
        doc = {
            "ok": True,
            "files_read": files_read,
            "files_missing": [{"path": k, "file": f} for k, f in missing],
            "errors": [],
            "routers": routers,
        }
        print(json.dumps(doc, indent=2))
    else:
        parts = [f"{r['label']} ({r['protocol']}) on {', '.join(r['servers'])}" for r in routers]
        n = len(routers)
        note = "" if read_files else f"; {NOT_READ}"
        if missing:
            shown = ", ".join(f"{f} ({k})" for k, f in missing)
            note += (
                f"; not on this machine, so read when the daemon starts (--require-files: an error): {shown}"
            )
        print(f"{args.file}: OK: {n} router{'s' if n != 1 else ''}: {'; '.join(parts)}{note}")
    return 0
