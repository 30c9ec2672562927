"""``hostproxy run FILE`` (and ``hostproxy FILE``): validate the whole config, then start the daemon.

Any config error is printed (every one, with file line and config path) and nothing starts: no port
is bound and no namer contacted. The same goes for a missing or invalid ``io.l5d.fs`` dtab file
(``FILE:LINE:COL``) and for a transformer its environment cannot serve (``io.l5d.k8s.localnode``
without ``POD_IP``, an ``io.l5d.specificHost`` host that does not resolve): one line, no traceback. The file's path is kept so that ``SIGHUP`` and ``POST /admin/reload`` re-read it.
"""

from __future__ import annotations

import argparse
import sys

from hostproxy import log


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("run", help="start the daemon on a linkerd.yaml-style config ('-' reads stdin)")
    p.add_argument("config", help="config file (YAML or JSON), or '-' for stdin")
    p.add_argument(
        "--log-level",
        default="info",
        type=str.lower,
        choices=["debug", "info", "warning", "error", "critical"],
        help="root log level (default info)",
    )
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from hostproxy.config import ConfigError, load_config

    log.configure(args.log_level)
    try:
        config = load_config(args.config)
    except ConfigError as e:
        print(f"hostproxy: refusing to start: {len(e.errors)} error(s) in the config", file=sys.stderr)
        for issue in e.errors:
            print(issue.format(), file=sys.stderr)
        return 1
    except OSError as e:
        print(f"hostproxy: cannot read config {args.config}: {e.strerror or e}", file=sys.stderr)
        return 1
    import trio

    from hostproxy.daemon import run_daemon
    from hostproxy.dtabfile import DtabFileError
    from namers.transformers import TransformerConfigError

    # What the environment decides at startup: files, sockets, a transformer's environment variables
    # (POD_IP, NODE_NAME) or its host's name resolving.
    startup_errors = (OSError, DtabFileError, TransformerConfigError)
    try:
        trio.run(run_daemon, config, None if args.config == "-" else args.config)
    except startup_errors as e:
        print(f"hostproxy: failed to start: {e}", file=sys.stderr)
        return 1
    except BaseExceptionGroup as eg:  # raised from inside the daemon's nurseries
        startup, rest = eg.split(startup_errors)
        if startup is None or rest is not None:
            raise
        for leaf in _leaves(startup):
            print(f"hostproxy: failed to start: {leaf}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


def _leaves(eg: BaseException) -> list[BaseException]:
    if isinstance(eg, BaseExceptionGroup):
        return [leaf for e in eg.exceptions for leaf in _leaves(e)]
    return [eg]
