"""The admin server: Linkerd 1's admin endpoints and JSON shapes over an ``AdminContext``.

- ``context``: ``AdminContext``, the protocol the daemon implements;
- ``handlers``: ``AdminHandler`` (every endpoint, control-endpoint policy, size bounds);
- ``server``: ``AdminServer(ctx, ip, port, allow_remote_control)`` with ``serve(task_status)``;
- ``delegator_page``: the self-contained ``/delegator`` HTML page;
- ``pages``: Linkerd's ``/logging`` and TwitterServer's ``/admin/metrics`` pages (static HTML).
"""

from hostproxy.admin.context import AdminContext
from hostproxy.admin.handlers import AdminHandler, Endpoint, is_loopback
from hostproxy.admin.server import AdminServer

__all__ = ["AdminContext", "AdminHandler", "AdminServer", "Endpoint", "is_loopback"]
