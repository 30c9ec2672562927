"""Logging: structlog everywhere.

JSON lines when stderr is not a terminal (journald, kubectl logs), ``key=value`` lines on a terminal.
Events are named ``<thing>.<happened>`` (``namer.fs.update.complete``, ``client.endpoint_removed``,
``daemon.reloaded``). Levels can be changed at runtime per logger name (``/logging.json``).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

_configured = False


def configure(level: str = "info", *, json: bool | None = None, stream: Any = None) -> None:
    """Configure structlog and stdlib logging once; later calls only change the level."""
    global _configured
    stream = stream or sys.stderr
    lvl = getattr(logging, level.upper(), logging.INFO)
    root = logging.getLogger()
    root.setLevel(lvl)
    if _configured:
        return
    if json is None:
        json = not (hasattr(stream, "isatty") and stream.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=[
                structlog.stdlib.add_log_level,
                structlog.processors.TimeStamper(fmt="iso"),
            ],
        )
    )
    root.handlers[:] = [handler]
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.add_logger_name,
            structlog.stdlib.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            structlog.processors.format_exc_info,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    _configured = True


def get(name: str) -> Any:
    return structlog.get_logger(name)


#: Past CRITICAL: a logger at this level logs nothing (Linkerd's ``OFF``).
OFF = logging.CRITICAL + 10
#: Linkerd's level names (``com.twitter.logging``) that Python lacks, so that Linkerd's
#: ``POST /logging.json?level=...`` works: TRACE and ALL log all that there is (DEBUG), OFF nothing.
#: (FATAL is Python's CRITICAL already.)
_LINKERD_LEVELS = {"TRACE": logging.DEBUG, "ALL": logging.DEBUG, "OFF": OFF}


def _level_name(level: int) -> str:
    return "OFF" if level == OFF else logging.getLevelName(level)


def levels() -> dict[str, str]:
    """Current level of the root logger and every named logger that has one set."""
    out = {"root": _level_name(logging.getLogger().level)}
    for name, obj in sorted(logging.Logger.manager.loggerDict.items()):
        if isinstance(obj, logging.Logger) and obj.level != logging.NOTSET:
            out[name] = _level_name(obj.level)
    return out


def set_level(logger: str, level: str) -> None:
    lvl = _LINKERD_LEVELS.get(level.upper()) or logging.getLevelName(level.upper())
    if not isinstance(lvl, int):
        raise ValueError(f"unknown log level {level!r}: use one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
    logging.getLogger(None if logger in ("", "root") else logger).setLevel(lvl)
