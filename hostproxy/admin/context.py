"""What the admin server needs from the running daemon: the ``AdminContext`` protocol.

The daemon implements this protocol over its live state (routers, namers, metrics, lifecycle) and
hands one object to :class:`hostproxy.admin.server.AdminServer`.  Every method is cheap and
synchronous except ``reload``; the admin handlers only serialise what these methods return, so
the daemon decides what each snapshot contains and the admin package never reaches into routers.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, Protocol

from dtab import Dtab, Path
from hostproxy.metrics import MetricsRegistry

__all__ = ["AdminContext"]


class AdminContext(Protocol):
    metrics: MetricsRegistry

    def config_json(self) -> dict[str, Any]:
        """The ``/config.json`` content (the parsed config, re-serialised)."""
        ...

    def client_state(self) -> dict[str, Any]:
        """The ``/client_state.json`` content, already in Linkerd's shape."""
        ...

    def bound_names(self) -> list[str]:
        """The ``/bound-names.json`` content: names the enumerating namers know."""
        ...

    def namer_states(self) -> dict[str, dict[str, Any]]:
        """Namer prefix (``"/io.l5d.fs"``) -> that namer's ``state_json()``."""
        ...

    def router_labels(self) -> list[str]: ...

    def router_dtab(self, label: str) -> Dtab:
        """The router's base dtab; raises ``KeyError`` for an unknown label."""
        ...

    def delegate(
        self, label: str | None, dtab: Dtab, path: Path
    ) -> dict[str, Any] | Awaitable[dict[str, Any]]:
        """The ``to_json()`` of the delegation tree of ``path`` through ``dtab`` (the whole dtab).

        ``label`` selects the router's namers and interpreter; ``None`` means no configured namers. An
        interpreter with a dtab of its own (a dtab file) puts it before ``dtab``; a context that has
        one also offers ``interpreter_dtab(label)``, which the ``/delegator`` page leaves out of the
        router dtab it prefills.
        May return an awaitable (e.g. to wait until a pending namer answers); the admin server then
        gives it ``delegate_timeout_s`` (2 s) before answering 503 ``Request timed out.``.  Raises
        ``dtab.errors.BindError`` (e.g. ``DelegationCycle``) when the explanation as a whole fails.
        """
        ...

    def is_ready(self) -> bool: ...

    def set_ready(self, ready: bool) -> None:
        """Operator override: ``False`` takes the daemon out of rotation (``/ready`` answers 503)."""
        ...

    def request_shutdown(self) -> None:
        """Start the graceful drain; returns at once."""
        ...

    async def reload(self) -> tuple[bool, str]:
        """Reload the config: ``(ok, message)``; a failed reload keeps the old config."""
        ...

    def recent_requests(self) -> list[dict[str, Any]] | None:
        """The ``/requests`` content, oldest first; None when no ``io.l5d.recentRequests`` telemeter
        is configured (nothing is recorded)."""
        ...
