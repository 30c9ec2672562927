"""``hostproxy run FILE`` (and ``hostproxy FILE``): validate the whole config, then start the daemon.

Any config error is printed (every one, with file line and config path) and nothing starts: no port
is bound and no namer contacted.
"""

from __future__ import annotations

import argparse
import sys

from hostproxy import log


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("run", help="start the daemon on a linkerd.yaml-style config ('-' reads stdin)")
    p.add_argument("config", help="config file (YAML or JSON), or '-' for stdin")
    p.add_argument("--log-level", default="info", help="root log level (default info)")
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

    try:
        trio.run(run_daemon, config)
    except OSError as e:
        print(f"hostproxy: failed to start: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
