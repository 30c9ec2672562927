"""Config errors: every problem found in a config file, each with its place.

Theory of operation: validation never stops at the first problem. Each problem becomes a
:class:`ConfigIssue` (file, 1-based line and column, the config path such as
``routers[1].client.loadBalancer.maxEffort``, a message that says what is wrong and what to do, and for a
dtab error the caret display of the offending line). :class:`ConfigError` carries the whole list; its
``str()`` is the list formatted one issue per line, ``FILE:LINE: path: message``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ConfigIssue:
    file: str
    line: int
    column: int
    path: str
    message: str
    detail: str | None = None  # caret display of a dtab error

    def format(self) -> str:
        where = f"{self.file}:{self.line}:" if self.line else f"{self.file}:"
        text = f"{where} {self.path}: {self.message}" if self.path else f"{where} {self.message}"
        if self.detail:
            text += "\n" + "\n".join("    " + ln for ln in self.detail.split("\n"))
        return text

    def to_json(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "line": self.line,
            "column": self.column,
            "path": self.path,
            "message": self.message,
        }


class ConfigError(ValueError):
    """The config is invalid; ``errors`` lists every problem found, in file order."""

    def __init__(self, errors: list[ConfigIssue]) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(e.format() for e in self.errors))
