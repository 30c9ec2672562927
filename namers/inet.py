"""Host resolution for ``/$/inet``, ``/$/fixedinet`` and ``/$/io.buoyant.rinet``.

Theory of operation
-------------------
``/$/inet/<host>/<port>/rest`` (or ``/$/inet/<port>/rest`` for the local host) binds to
``BoundName(id=/$/inet/<host>/<port>, residual=/rest, addr=...)``; ``/$/io.buoyant.rinet/<port>/<host>``
is the same with the arguments swapped; ``/$/fixedinet`` resolves once and keeps the answer.

* Literal hosts answer synchronously: IPv4 in ``inet_aton`` form (``127.1`` is ``127.0.0.1``,
  ``10.1.2`` is ``10.1.0.2``), IPv6 (with or without ``[]``), and ``localhost`` or the empty host
  (``127.0.0.1``). A host that cannot be a DNS name (an empty label, a label longer than 63 octets)
  is negative at once, as NXDOMAIN would be, and never queried.
* Other names go through a :class:`HostTable` (pure; the monotonic time is passed in): the first
  :meth:`InetResolver.resolve` of a host creates a ``pending`` entry and wakes the runner. A name
  the hosts file lists (``/etc/hosts``: Docker's ``--add-host``, Kubernetes ``hostAliases``, the
  host's own name) is answered from it, before DNS, as the system's resolver (and so Linkerd's JVM)
  does, and looked at again every :data:`HOSTS_TTL` seconds; any other name is queried for A and
  AAAA concurrently with dnspython's async resolver (it runs on trio), which knows no hosts file,
  against the configured nameservers or the system's ``/etc/resolv.conf``. An answer is cached for
  its TTL (the shortest along its CNAME chain) clamped to ``[ttl_floor, ttl_ceiling]`` and then
  re-resolved in the background; NXDOMAIN (or no A/AAAA records) is negative and cached for
  ``negative_ttl``; a resolver failure (timeout, SERVFAIL, refused) keeps the last good addresses,
  marked ``stale``, and is retried with exponential backoff up to ``retry_max``. A failure of one
  family only (AAAA SERVFAIL while A answers) is the same failure for that family: the fresh
  addresses of the family that answered replace its old ones, the failed family keeps its last good
  addresses, and the host is ``stale`` with the error. The table holds at most ``max_hosts`` hosts
  (the least recently used one without addresses evicted first, as in
  :class:`namers.base.NameTable`), so names from untrusted input cannot grow it without bound nor
  push out a host's last good answer; at most ``max_concurrency`` queries run at once.
* Subscribers, ``callback(resolver, host)``, are called in the trio thread whenever a host's
  answer changes, so binders and clients can re-read :meth:`InetResolver.resolve`.
* With ``namerState.dir`` the daemon saves the hosts' last good DNS answers as it saves a namer's
  (:meth:`InetResolver.export_state`, in ``@inet.json``) and restores them at start
  (:meth:`InetResolver.import_state`, :meth:`HostTable.restore`): a restored host is ``stale``,
  aged from when DNS last gave its answer (``confirmed_at``, moved on by every answer, an unchanged
  one included), and due at once, until DNS answers for it; a negative answer replaces it like any
  other. Answers from the hosts file are not saved (the file answers again), nor negative ones. The
  saved ``source`` is the set of nameservers, or the system resolver and its search domains.

``InetResolver.system`` is the ``system=`` callback for binding: it answers ``/$/inet``-family paths
with a bound leaf (whose ``addr`` is bound, negative or failed), :data:`PENDING` while the first
resolution of a host is in flight, and ``None`` for every other path.
"""

from __future__ import annotations

import errno
import ipaddress
import math
import os
import re
import socket
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # dnspython is imported only when a name needs DNS (it costs ~40 ms at start)
    import dns.asyncresolver
import structlog
import trio

from namers._dtab import (
    NEG,
    PENDING,
    AddrBound,
    Address,
    AddrFailed,
    AddrNeg,
    BoundName,
    Leaf,
    NamerError,
    Path,
)
from namers.base import (
    RESTORED_ERROR,
    SAVED_STATE_MAX_AGE,
    STALE_SINCE,
    STATE_FORMAT_VERSION,
    RestoreSkips,
    Waker,
    check_saved_state,
    format_time,
    saved_time,
)

__all__ = [
    "HostEntry",
    "HostTable",
    "InetResolver",
    "is_ip",
    "literal_ip",
    "parse_nameserver",
]

log = structlog.get_logger("namers.inet")

HostState = Literal["pending", "bound", "neg", "failed", "stale"]

_INET_ATON_PART = r"(?:0[xX][0-9a-fA-F]+|[0-9]+)"
_INET_ATON = re.compile(rf"{_INET_ATON_PART}(?:\.{_INET_ATON_PART}){{0,3}}")
_JAVA_INT = re.compile(r"[+-]?[0-9]+")


def literal_ip(host: str) -> str | None:
    """The IP address a literal host stands for, or ``None`` when ``host`` is a name to resolve."""
    if host in ("", "localhost"):
        return "127.0.0.1"
    h = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if ":" in h:
        try:
            return str(ipaddress.IPv6Address(h))
        except ValueError:
            return None
    if _INET_ATON.fullmatch(h):
        try:
            return socket.inet_ntoa(socket.inet_aton(h))
        except OSError:
            return None
    return None


_HOST_NAME = re.compile(
    r"(?=.{1,253}\.?$)(?:[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.)*"
    r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.?"
)


def is_ip(host: str) -> bool:
    """``host`` is an IP address (as :func:`parse_nameserver` returns one), not a host name."""
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def parse_nameserver(spec: str, *, names: bool = False) -> tuple[str, int]:
    """``host`` or ``host:port`` (``[v6]:port`` for IPv6 with a port) -> (address, port). ``names``: a
    host name is taken too (returned as written, to be resolved when the server is first asked), as
    Linkerd takes an ``io.l5d.dnssrv`` ``dnsHosts`` entry."""
    s = spec.strip()
    if s.startswith("["):
        addr, sep, rest = s[1:].partition("]")
        port_s = rest[1:] if rest.startswith(":") else ""
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"nameserver {spec!r} is not 'host', 'host:port' or '[v6]:port'")
    elif s.count(":") == 1:
        addr, port_s = s.split(":")
    else:
        addr, port_s = s, ""
    if not is_ip(addr):
        if names and not s.startswith("[") and _HOST_NAME.fullmatch(addr) and not _INET_ATON.fullmatch(addr):
            pass
        elif names:
            raise ValueError(f"nameserver {spec!r}: {addr!r} is neither an IP address nor a host name")
        else:
            raise ValueError(f"nameserver {spec!r}: {addr!r} is not an IP address; give the server's IP")
    if port_s == "":
        return addr, 53
    if not port_s.isdigit() or not 1 <= int(port_s) <= 65535:
        raise ValueError(f"nameserver {spec!r}: port {port_s!r} is not 1-65535")
    return addr, int(port_s)


def make_resolver(nameservers: Sequence[tuple[str, int]], timeout: float) -> dns.asyncresolver.Resolver:
    """An uncached async resolver for ``(host, port)`` nameservers (none: the system's resolv.conf)
    that gives up after ``timeout`` seconds."""
    import dns.asyncresolver
    import dns.nameserver

    if nameservers:
        r = dns.asyncresolver.Resolver(configure=False)
        r.nameservers = [dns.nameserver.Do53Nameserver(addr, port) for addr, port in nameservers]
    else:
        r = dns.asyncresolver.Resolver(configure=True)
    r.cache = None
    r.lifetime = timeout
    # Each server gets two tries within the query's time, so a lost UDP packet is sent again and
    # a dead first server (it never answers: UDP sockets are not connected, so not even a closed
    # port is refused) leaves time to ask the others; with the whole time for one try, a lost
    # packet failed the lookup and the first server's silence used it all up.
    r.timeout = timeout / (2 * max(len(r.nameservers), 1))
    return r


@dataclass
class HostEntry:
    host: str
    fixed: bool = False
    state: HostState = "pending"
    ips: tuple[str, ...] | None = None  # last good answer
    last_update: float | None = None  # wall time
    last_error: str | None = None
    stale_since: float | None = None  # wall time
    version: int = 0
    next_refresh: float = -math.inf  # monotonic; -inf = due now
    in_flight: bool = False
    failures: int = 0
    #: Wall time DNS last gave this answer (``None``: never, or unknown for a restored answer); what
    #: saved state is aged from.
    confirmed_at: float | None = None
    #: False for an answer restored from saved state until a lookup asks for the host.
    used: bool = True
    #: The answer came from the hosts file (not saved: the file answers again after a restart).
    static: bool = False

    def to_json(self, now_wall: float) -> dict[str, Any]:
        age = now_wall - self.stale_since if self.state == "stale" and self.stale_since is not None else None
        return {
            "state": self.state,
            "addrs": list(self.ips) if self.ips is not None else None,
            "lastUpdate": format_time(self.last_update),
            "lastConfirmed": format_time(self.confirmed_at),
            "lastError": self.last_error,
            "staleAgeSecs": round(max(age, 0.0), 3) if age is not None else None,
            "version": self.version,
        }


_NO_DESCRIPTORS = (errno.EMFILE, errno.ENFILE)
# not the nameserver's fault: no socket could be opened to ask it
_NO_DESCRIPTORS_TEXT = (
    "no socket could be opened to query the nameserver (out of file descriptors); raise hostproxy's "
    "limit (LimitNOFILE= in the systemd unit, ulimit -n) or look for a connection leak"
)


def describe_dns_error(exc: BaseException) -> str:
    """A stable, short description of a resolver failure (no timings, so repeated identical failures
    compare equal and do not count as state changes)."""
    import dns.exception
    import dns.message
    import dns.resolver

    errors = getattr(exc, "kwargs", {}).get("errors") or ()
    if any(isinstance(e[3], dns.message.Truncated) for e in errors):
        # a large answer (many SRV records): UDP was truncated, and TCP is blocked or not served
        tcp = [e[3] for e in errors if e[1] and isinstance(e[3], OSError | dns.exception.Timeout)]
        if tcp or isinstance(exc, dns.exception.Timeout):
            e = tcp[0] if tcp else exc
            why = "timed out" if not isinstance(e, OSError) else os.strerror(e.errno) if e.errno else "failed"
            return (
                f"the answer was too large for UDP (truncated) and asking again over TCP failed ({why}); "
                "let DNS over TCP (port 53) through to the nameserver"
            )
    if isinstance(exc, dns.exception.Timeout):
        return "timed out"
    if any(isinstance(e[3], dns.message.ChainTooLong) for e in errors):
        # the server did answer, with a chain dnspython will not follow
        return (
            f"the answer's CNAME chain loops or is longer than {dns.message.MAX_CHAIN} names; fix the "
            "name's CNAME records"
        )
    if isinstance(exc, dns.resolver.NoNameservers):
        if any(isinstance(e[3], OSError) and e[3].errno in _NO_DESCRIPTORS for e in errors):
            return _NO_DESCRIPTORS_TEXT
        return "no nameserver gave an answer (SERVFAIL, REFUSED or unreachable)"
    if isinstance(exc, OSError) and exc.errno in _NO_DESCRIPTORS:
        return _NO_DESCRIPTORS_TEXT
    if isinstance(exc, dns.resolver.NoResolverConfiguration):
        return "no nameservers configured (empty /etc/resolv.conf?); configure nameservers"
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return type(exc).__name__


# The longest a refresh loop sleeps when nothing is due (a wake-up ends the sleep sooner).
MAX_IDLE_WAIT_S = 60.0


async def refresh_loop(
    *,
    due: Callable[[float], Sequence[Any]],
    next_deadline: Callable[[], float | None],
    refresh: Callable[[Any, trio.CapacityLimiter], Awaitable[None]],
    wait: Callable[[float], Awaitable[object]],
    max_concurrency: int,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """The runner of a DNS-backed namer, until cancelled: start ``refresh(item, limiter)`` for every
    item ``due`` now (at most ``max_concurrency`` querying at once), then ``wait`` until the next
    deadline — a refresh wakes the loop early so that it recomputes it."""
    limiter = trio.CapacityLimiter(max_concurrency)
    async with trio.open_nursery() as nursery:
        task_status.started()
        while True:
            for item in due(trio.current_time()):
                nursery.start_soon(refresh, item, limiter)
            deadline = next_deadline()
            if deadline is None:
                await wait(MAX_IDLE_WAIT_S)
            else:
                await wait(min(max(deadline - trio.current_time(), 0.0), MAX_IDLE_WAIT_S))


class HostTable:
    """Per-host resolution state and refresh schedule. No I/O: ``now`` is monotonic time passed in,
    ``clock`` gives wall time for display."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        max_hosts: int = 1000,
        ttl_floor: float = 1.0,
        ttl_ceiling: float = 60.0,
        negative_ttl: float = 5.0,
        retry_base: float = 0.5,
        retry_max: float = 30.0,
    ) -> None:
        if max_hosts < 1:
            raise ValueError(f"max_hosts must be at least 1, got {max_hosts}")
        if not 0 <= ttl_floor <= ttl_ceiling:
            raise ValueError(f"need 0 <= ttl_floor <= ttl_ceiling, got {ttl_floor} and {ttl_ceiling}")
        self.clock = clock
        self.max_hosts = max_hosts
        self.ttl_floor = ttl_floor
        self.ttl_ceiling = ttl_ceiling
        self.negative_ttl = min(negative_ttl, ttl_ceiling)
        self.retry_base = retry_base
        self.retry_max = retry_max
        self._hosts: OrderedDict[str, HostEntry] = OrderedDict()
        #: The hosts of ``_hosts`` without addresses (``ips is None``: pending, negative, failed), least
        #: recently used first: evicted before any host that has addresses (see :meth:`touch`).
        self._bare: OrderedDict[str, None] = OrderedDict()
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._hosts)

    def get(self, host: str) -> HostEntry | None:
        return self._hosts.get(host)

    def entries(self) -> list[HostEntry]:
        return list(self._hosts.values())

    def touch(self, host: str, fixed: bool = False) -> tuple[HostEntry, bool, list[HostEntry]]:
        """Mark ``host`` used; create it pending (due now) if new. Returns (entry, created, evicted).

        When the table is full, the least recently used host *without* addresses is evicted, and only
        when every host has addresses the least recently used one: made-up names (from request
        headers) evict each other, never a host serving its last good answer while DNS is down."""
        e = self._hosts.get(host)
        if e is not None:
            self._hosts.move_to_end(host)
            if host in self._bare:
                self._bare.move_to_end(host)
            return e, False, []
        evicted: list[HostEntry] = []
        while len(self._hosts) >= self.max_hosts:
            if self._bare:
                old = self._hosts.pop(self._bare.popitem(last=False)[0])
            else:
                old = self._hosts.popitem(last=False)[1]
            evicted.append(old)
            self.evictions += 1
        e = HostEntry(host, fixed=fixed)
        self._hosts[host] = e
        self._bare[host] = None
        return e, True, evicted

    def _track(self, e: HostEntry) -> None:
        """Keep :attr:`_bare` in step with ``e.ips``."""
        if e.ips is None:
            self._bare.setdefault(e.host, None)
        else:
            self._bare.pop(e.host, None)

    def due(self, now: float) -> list[str]:
        """Hosts to resolve now; they are marked in flight until an answer is applied."""
        out = []
        for e in self._hosts.values():
            if not e.in_flight and e.next_refresh <= now:
                e.in_flight = True
                out.append(e.host)
        return out

    def next_deadline(self) -> float | None:
        times = [e.next_refresh for e in self._hosts.values() if not e.in_flight]
        return min(times) if times else None

    def _changed(self, e: HostEntry) -> bool:
        e.version += 1
        e.last_update = self.clock()
        return True

    def apply_answer(
        self, host: str, ips: Sequence[str], ttl: float, now: float, *, static: bool = False
    ) -> bool:
        """A good answer (``static``: from the hosts file), confirmed now even when unchanged."""
        e = self._hosts.get(host)
        if e is None:
            return False
        e.in_flight = False
        e.failures = 0
        e.confirmed_at = self.clock()
        e.static = static
        ttl = min(max(ttl, self.ttl_floor), self.ttl_ceiling)
        e.next_refresh = math.inf if e.fixed else now + ttl
        new = tuple(ips)
        if e.state == "bound" and e.ips is not None and sorted(e.ips) == sorted(new):
            # The same addresses, perhaps in another order (round-robin nameservers rotate them on
            # every query): the same answer, kept in the order first seen.
            return False
        e.state = "bound"
        e.ips = new
        e.last_error = None
        e.stale_since = None
        self._track(e)
        return self._changed(e)

    def apply_negative(self, host: str, now: float, ttl: float | None = None) -> bool:
        """An authoritative "no such host" (NXDOMAIN, or no A/AAAA records), asked again after its
        negative ``ttl`` (the SOA's, RFC 2308) clamped to ``[negative_ttl, ttl_ceiling]``, or after
        ``negative_ttl`` when the answer had no SOA."""
        e = self._hosts.get(host)
        if e is None:
            return False
        e.in_flight = False
        e.failures = 0
        after = self.negative_ttl if ttl is None else min(max(ttl, self.negative_ttl), self.ttl_ceiling)
        e.next_refresh = now + max(after, self.ttl_floor)
        if e.state == "neg":
            return False
        e.state = "neg"
        e.ips = None
        e.last_error = None
        e.stale_since = None
        self._track(e)
        return self._changed(e)

    def apply_partial(
        self, host: str, ips: Sequence[str], failed: Sequence[str], error: str, now: float
    ) -> bool:
        """Some families answered ``ips``, the ``failed`` ones ("A", "AAAA") did not: keep the last
        good addresses of the failed families beside the fresh ones; stale, retried with backoff."""
        e = self._hosts.get(host)
        if e is None:
            return False
        kept = tuple(ip for ip in e.ips or () if _family(ip) in failed)
        merged = tuple(ips) + kept
        moved = e.ips is None or sorted(merged) != sorted(e.ips)
        if moved:  # (the same addresses in another order are not a change, as in apply_answer)
            e.ips = merged
            self._track(e)
        changed = self.apply_error(host, error, now)
        if moved and not changed:
            changed = self._changed(e)
        return changed

    def restore(
        self, host: str, ips: Sequence[str], confirmed_at: float | None, *, fixed: bool = False
    ) -> bool:
        """Seed a host known to no one yet with a saved answer: ``stale`` (served) until DNS answers
        for it, and due now. ``confirmed_at`` (when DNS last gave that answer; ``None`` when unknown)
        is kept as its ``last_update``, ``confirmed_at`` and ``stale_since``, so it shows the age of
        the answer, not of the restart. Nothing is evicted for a restored answer: a full table (or
        a host already known) takes no more."""
        if host in self._hosts or len(self._hosts) >= self.max_hosts:
            return False
        e, _created, _evicted = self.touch(host, fixed)
        now = self.clock()
        if confirmed_at is not None:
            confirmed_at = min(confirmed_at, now)  # a time from the future is not believed
        e.state = "stale"
        e.ips = tuple(ips)
        e.last_error = RESTORED_ERROR
        e.confirmed_at = confirmed_at
        e.used = False
        e.stale_since = confirmed_at if confirmed_at is not None else now
        e.version += 1
        e.last_update = confirmed_at
        self._track(e)
        return True

    def apply_error(self, host: str, error: str, now: float) -> bool:
        """The resolver failed: keep the last good answer (stale) or fail; retry with backoff."""
        e = self._hosts.get(host)
        if e is None:
            return False
        e.in_flight = False
        e.next_refresh = now + min(self.retry_base * (2**e.failures), self.retry_max)
        e.failures += 1
        if e.ips is not None:
            if e.state == "stale" and e.last_error == error:
                return False
            if e.state != "stale":
                e.stale_since = self.clock()
            e.state = "stale"
        else:
            if e.state == "failed" and e.last_error == error:
                return False
            e.state = "failed"
        e.last_error = error
        return self._changed(e)


def _negative_ttl(responses: Iterable[Any]) -> float | None:
    """How long a negative answer holds (RFC 2308: the lesser of its SOA record's TTL and the SOA's
    minimum field), the least over ``responses``; ``None`` when none carries an SOA record."""
    import dns.rdatatype

    ttls = [
        min(rrset.ttl, rrset[0].minimum)
        for response in responses
        for rrset in response.authority
        if rrset.rdtype == dns.rdatatype.SOA and len(rrset)
    ]
    return float(min(ttls)) if ttls else None


def _addr_of(e: HostEntry, port: int) -> Any:
    """The ``Addr`` a host's entry stands for at ``port`` (:data:`PENDING` before its first answer)."""
    if e.state in ("bound", "stale"):
        # A stale host's set says since when, as a namer's does, so clients show it stale.
        meta = {STALE_SINCE: e.stale_since} if e.state == "stale" else {}
        return AddrBound(tuple(Address(ip, port) for ip in e.ips or ()), meta)
    if e.state == "neg":
        return AddrNeg()
    if e.state == "failed":
        return AddrFailed(e.last_error or "resolution failed")
    return PENDING


def _family(ip: str) -> str:
    return "AAAA" if ":" in ip else "A"


def _can_be_dns_name(host: str) -> bool:
    """Whether ``host`` can be a DNS name at all (dnspython's own rules: labels of 1-63 octets, 255
    in all, non-ASCII as IDNA)."""
    import dns.exception
    import dns.name

    try:
        dns.name.from_text(host)
    except (dns.exception.DNSException, UnicodeError, ValueError):
        return False
    return True


def _java_int(label: bytes) -> int | None:
    try:
        text = label.decode("ascii")
    except UnicodeDecodeError:
        return None
    if not _JAVA_INT.fullmatch(text):
        return None
    v = int(text)
    return v if -(2**31) <= v < 2**31 else None


#: Where the host's static names are (Docker's --add-host, Kubernetes hostAliases, the hostname).
HOSTS_FILE = "/etc/hosts"
#: How often a name answered from the hosts file is looked at again (the file is stat'ed, not re-read).
HOSTS_TTL = 5.0


class HostsFile:
    """The names of an ``/etc/hosts`` file (``ip name [alias...]`` lines, ``#`` comments), re-read
    whenever its signature changes; a missing or unreadable file has no names."""

    def __init__(self, path: str = HOSTS_FILE) -> None:
        self.path = path
        self._sig: tuple[int, int, int] | None = None
        self._names: dict[str, list[str]] = {}
        self._loading = trio.Lock()
        self.reads = 0

    def _signature(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def _load(self, sig: tuple[int, int, int]) -> None:
        try:
            with open(self.path, "rb") as f:
                text = f.read(16 * 1024 * 1024).decode("utf-8", "replace")
        except OSError:
            self._names, self._sig = {}, None
            return
        self._names, self._sig = _parse_hosts(text), sig
        self.reads += 1

    def lookup(self, host: str) -> list[str]:
        """The IPs ``host`` has in the file, in file order (empty when it has none)."""
        sig = self._signature()
        if sig is None:
            self._names, self._sig = {}, None
        elif sig != self._sig:
            self._load(sig)
        return self._names.get(host.lower().rstrip("."), [])

    async def lookup_async(self, host: str) -> list[str]:
        """:meth:`lookup` for the trio thread: a changed file is read and parsed in a worker thread
        (an ad-blocking hosts file of 150,000 names takes most of a second to parse), one read at a
        time; only the ``stat`` runs in the caller's thread."""
        sig = self._signature()
        if sig is None:
            self._names, self._sig = {}, None
        elif sig != self._sig:
            async with self._loading:
                if sig != self._sig:
                    await trio.to_thread.run_sync(self._load, sig)
        return self._names.get(host.lower().rstrip("."), [])


def _parse_hosts(text: str) -> dict[str, list[str]]:
    names: dict[str, list[str]] = {}
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) < 2:
            continue
        try:
            ip = str(ipaddress.ip_address(fields[0].split("%", 1)[0]))
        except ValueError:
            continue
        for name in fields[1:]:
            ips = names.setdefault(name.lower().rstrip("."), [])
            if ip not in ips:
                ips.append(ip)
    return names


#: The system resolver's configuration (its search domains decide what a short name means).
RESOLV_CONF = "/etc/resolv.conf"


def resolv_conf_search(path: str) -> str:
    """The search domains of the resolv.conf at ``path``, space-separated, lowercased (the last
    ``search`` or ``domain`` line wins, as in the system's resolver); ``""`` when none or unreadable."""
    try:
        with open(path, "rb") as f:
            text = f.read(64 * 1024).decode("utf-8", "replace")
    except OSError:
        return ""
    domains: list[str] = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "search":
            domains = fields[1:]
        elif len(fields) >= 2 and fields[0] == "domain":
            domains = fields[1:2]
    return " ".join(d.lower().rstrip(".") for d in domains)


def _saved_host(name: str) -> str:
    """A host name from saved state, checked: one DNS could answer for (not a literal address)."""
    if literal_ip(name) is not None:
        raise ValueError(f"{name!r} is an IP address, never looked up")
    if not _can_be_dns_name(name):
        raise ValueError(f"{name!r} is not a host name DNS could answer for")
    return name.lower()


def _saved_ip(ip: Any) -> str:
    if not isinstance(ip, str):
        raise ValueError(f"{ip!r} is not an IP address")
    try:
        return str(ipaddress.ip_address(ip))
    except ValueError:
        raise ValueError(f"{ip!r} is not an IP address") from None


class InetResolver:
    """Resolves hosts for the ``/$/inet`` family; see the module docstring.

    ``nameservers``: ``host`` or ``host:port`` strings; empty means the system's resolv.conf.
    ``hosts_file``: consulted before DNS, as the system's resolver does (``files dns``).
    ``resolv_conf``: read once, for its search domains, when ``nameservers`` is empty (they are part
    of what saved state was saved for: see :meth:`state_source`).

    With ``namerState.dir`` the daemon's :class:`hostproxy.namerstate.NamerStateStore` saves and
    restores the resolver's last good DNS answers as it does a namer's (:meth:`export_state`,
    :meth:`import_state`, :meth:`subscribe`), in :attr:`state_file`.
    """

    kind = "inet"
    #: The names this resolver answers, as saved state and ``namerState`` statistics name them.
    prefix = Path.read("/$/inet")
    #: Its file in ``namerState.dir``: no namer prefix maps to it (``file_name`` keeps only
    #: ``[A-Za-z0-9._-]``).
    state_file = "@inet.json"

    def __init__(
        self,
        nameservers: Sequence[str] = (),
        *,
        clock: Callable[[], float] = time.time,
        timeout: float = 2.0,
        max_hosts: int = 1000,
        max_concurrency: int = 16,
        ttl_floor: float = 1.0,
        ttl_ceiling: float = 60.0,
        negative_ttl: float = 5.0,
        retry_base: float = 0.5,
        retry_max: float = 30.0,
        hosts_file: str | None = HOSTS_FILE,
        resolv_conf: str = RESOLV_CONF,
    ) -> None:
        self.nameservers = [parse_nameserver(ns) for ns in nameservers]
        self._search = "" if self.nameservers else resolv_conf_search(resolv_conf)
        self.timeout = timeout
        self.hosts = HostsFile(hosts_file) if hosts_file else None
        self.table = HostTable(
            clock=clock,
            max_hosts=max_hosts,
            ttl_floor=ttl_floor,
            ttl_ceiling=ttl_ceiling,
            negative_ttl=negative_ttl,
            retry_base=retry_base,
            retry_max=retry_max,
        )
        self.clock = clock
        self.max_concurrency = max_concurrency
        self.waker = Waker()
        self._subscribers: list[Callable[[Any, str], None]] = []
        self._resolver: dns.asyncresolver.Resolver | None = None
        self.queries = 0
        self.query_failures = 0
        self.callback_errors = 0
        self.invalid_hosts = 0

    # -- synchronous side ------------------------------------------------------------------------
    def resolve(self, host: str, port: int, *, fixed: bool = False) -> Any:
        """Current addresses of ``host`` at ``port``: ``AddrBound`` (also while stale), ``AddrNeg``,
        ``AddrFailed``, or :data:`PENDING` while the first resolution is in flight."""
        ip = literal_ip(host)
        if ip is not None:
            return AddrBound((Address(ip, port),), {})
        key = host.lower()
        if self.table.get(key) is None and not _can_be_dns_name(key):
            # No such host can exist (an empty label, a label or name too long): negative, as an
            # NXDOMAIN would be, so dtab alternates apply; never queried, never takes a table slot.
            self.invalid_hosts += 1
            return AddrNeg()
        e, created, evicted = self.table.touch(key, fixed)
        e.used = True
        for old in evicted:
            self._notify(old.host)
        if created:
            self.waker.wake()
        return _addr_of(e, port)

    def current(self, client_id: str, host: str) -> Any:
        """The address set of the client named ``client_id`` (a bound ``/$/inet/<host>/<port>``,
        ``/$/fixedinet/…`` or ``/$/io.buoyant.rinet/<port>/<host>``) when it names ``host`` and the
        host has an answer; ``None`` otherwise. Touches nothing: for pushing a changed answer to
        clients that send no request."""
        if host not in client_id.lower():
            return None
        try:
            labels = tuple(Path.read(client_id).labels)
        except Exception:
            return None
        if len(labels) != 4 or labels[0] != b"$":
            return None
        if labels[1] in (b"inet", b"fixedinet"):
            host_label, port = labels[2], _java_int(labels[3])
        elif labels[1] == b"io.buoyant.rinet":
            host_label, port = labels[3], _java_int(labels[2])
        else:
            return None
        if port is None or host_label.decode("utf-8", "replace").lower() != host:
            return None
        e = self.table.get(host)
        return None if e is None or e.state == "pending" else _addr_of(e, port)

    def system(self, path: Path) -> Any:
        """The ``system=`` callback for binding: answers ``/$/inet``, ``/$/fixedinet`` and
        ``/$/io.buoyant.rinet`` paths, ``None`` for anything else."""
        labels = tuple(path.labels)
        if len(labels) < 2 or labels[0] != b"$":
            return None
        scheme, rest = labels[1], labels[2:]
        if scheme in (b"inet", b"fixedinet"):
            if len(rest) >= 2 and _java_int(rest[1]) is not None:
                host_label, port, n = rest[0], _java_int(rest[1]), 4
            elif len(rest) >= 1 and _java_int(rest[0]) is not None:
                host_label, port, n = b"", _java_int(rest[0]), 3
            else:
                return None
        elif scheme == b"io.buoyant.rinet":
            if len(rest) < 2:
                return NEG
            port = _java_int(rest[0])
            if port is None:
                raise NamerError(
                    f"{Path(labels[:4])}: port {rest[0].decode('utf-8', 'backslashreplace')!r} is not a "
                    "number; write /$/io.buoyant.rinet/<port>/<host>"
                )
            host_label, n = rest[1], 4
        else:
            return None
        assert port is not None
        bid = Path(labels[:n])
        if not 1 <= port <= 65535:
            raise NamerError(f"{bid}: port {port} is out of range 1-65535")
        try:
            host = host_label.decode("utf-8")
        except UnicodeDecodeError:
            raise NamerError(f"{bid}: host is not UTF-8 text") from None
        addr = self.resolve(host, port, fixed=scheme == b"fixedinet")
        if addr is PENDING:
            return PENDING
        return Leaf(BoundName(id=bid, residual=Path(labels[n:]), addr=addr))

    def subscribe(self, callback: Callable[[Any, str], None]) -> Callable[[], None]:
        """Call ``callback(resolver, host)`` when a host's answer changes or it is evicted."""
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

        return unsubscribe

    def _notify(self, host: str) -> None:
        for cb in list(self._subscribers):
            try:
                cb(self, host)
            except Exception:
                self.callback_errors += 1
                log.exception("inet.subscriber.failed", host=host)

    # -- the trio runner -------------------------------------------------------------------------
    def _make_resolver(self) -> dns.asyncresolver.Resolver:
        return make_resolver(self.nameservers, self.timeout)

    async def run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Resolve due hosts until cancelled; one host's failure never affects the others."""
        self.waker.bind()
        self._resolver = self._make_resolver()
        await refresh_loop(
            due=self.table.due,
            next_deadline=self.table.next_deadline,
            refresh=self._resolve_one,
            wait=self.waker.wait,
            max_concurrency=self.max_concurrency,
            task_status=task_status,
        )

    async def _resolve_one(self, host: str, limiter: trio.CapacityLimiter) -> None:
        try:
            async with limiter:
                outcome = await self._query(host)
            now = trio.current_time()
            kind = outcome[0]
            if kind == "answer":
                changed = self.table.apply_answer(host, outcome[1], outcome[2], now, static=outcome[3])
            elif kind == "negative":
                changed = self.table.apply_negative(host, now, outcome[1])
            elif kind == "partial":
                self.query_failures += 1
                changed = self.table.apply_partial(host, outcome[1], outcome[2], outcome[3], now)
            else:
                self.query_failures += 1
                changed = self.table.apply_error(host, outcome[1], now)
        except Exception as exc:  # a bug here must not stop other hosts
            log.exception("inet.resolve.failed", host=host)
            changed = self.table.apply_error(host, f"internal error: {exc!r}", trio.current_time())
        self.waker.wake()  # the runner recomputes when the next refresh is due
        if changed:
            e = self.table.get(host)
            if e is not None:
                log.info("inet.resolve.complete", host=host, state=e.state, addrs=e.ips, error=e.last_error)
            self._notify(host)

    async def _query(self, host: str) -> tuple[Any, ...]:
        """Query A and AAAA concurrently -> ("answer", ips, ttl, from the hosts file) | ("negative", ttl or None) | ("error", message)
        | ("partial", ips, failed families, message). A name in the hosts file is answered from it."""
        assert self._resolver is not None
        import dns.exception
        import dns.resolver

        if self.hosts is not None and (static := await self.hosts.lookup_async(host)):
            return ("answer", tuple(static), HOSTS_TTL, True)

        results: dict[str, Any] = {}
        negative_ttls: list[float | None] = []  # of the families that answered "no such address"

        async def one(rdtype: str) -> None:
            assert self._resolver is not None
            self.queries += 1
            try:
                results[rdtype] = r = await self._resolver.resolve(
                    host, rdtype, search=True, raise_on_no_answer=False
                )
                if r.rrset is None:
                    negative_ttls.append(_negative_ttl([r.response]))
            except dns.resolver.NXDOMAIN as e:
                results[rdtype] = "nxdomain"
                negative_ttls.append(_negative_ttl(e.responses().values()))
            except (dns.exception.DNSException, OSError) as e:
                results[rdtype] = e

        async with trio.open_nursery() as nursery:
            nursery.start_soon(one, "A")
            nursery.start_soon(one, "AAAA")
        ips: list[str] = []
        ttls: list[float] = []
        errors: list[str] = []
        failed: list[str] = []
        answered = False
        for rdtype in ("A", "AAAA"):
            r = results.get(rdtype)
            if r == "nxdomain":
                answered = True
            elif isinstance(r, BaseException) or r is None:
                failed.append(rdtype)
                errors.append(f"{rdtype}: {describe_dns_error(r) if r is not None else 'no answer'}")
            else:
                answered = True
                if r.rrset is not None:
                    # the shortest TTL along the CNAME chain, as any resolver caches it
                    ttls.append(r.chaining_result.minimum_ttl)
                    ips.extend(rd.address for rd in r.rrset)
        where = ", ".join(f"{a}:{p}" for a, p in self.nameservers) or "system resolver"
        error = f"resolving {host!r} via {where} failed: {'; '.join(errors)}"
        if ips and failed:
            # One family answered, the other failed: not the whole truth (see the module docstring).
            return ("partial", tuple(ips), tuple(failed), error)
        if ips:
            return ("answer", tuple(ips), min(ttls), False)
        if answered and not errors:
            known = [t for t in negative_ttls if t is not None]
            return ("negative", min(known) if known else None)
        return ("error", error)

    # -- persistence (namerState.dir) -------------------------------------------------------------
    def state_source(self) -> dict[str, str]:
        """What decides the meaning of a saved answer: the configured nameservers (as a set: their
        order says which is asked first, not what they answer), or the system resolver and its search
        domains (which make ``web`` into ``web.prod.example``). Another nameserver address in
        resolv.conf alone (DHCP, a VPN) is the same view of the names."""
        if self.nameservers:
            servers = {f"[{a}]:{p}" if ":" in a else f"{a}:{p}" for a, p in self.nameservers}
            return {"nameservers": " ".join(sorted(servers))}
        return {"nameservers": "system", "search": self._search}

    def export_state(self) -> dict[str, Any]:
        """The hosts' last good DNS answers, JSON-serialisable, in the namers' saved-state format.
        Left out: hosts without addresses (negative, failed, pending), answers from the hosts file
        (it answers again after a restart), and a restored answer no lookup asked for since and
        last confirmed longer ago than :data:`namers.base.SAVED_STATE_MAX_AGE`. Literal addresses
        are never in the table."""
        names: dict[str, Any] = {}
        now = self.clock()
        for e in self.table.entries():
            if e.ips is None or e.static:
                continue
            if not e.used and e.confirmed_at is not None and now - e.confirmed_at > SAVED_STATE_MAX_AGE:
                continue
            entry: dict[str, Any] = {"ips": list(e.ips), "lastUpdate": e.confirmed_at}
            if e.fixed:
                entry["fixed"] = True
            names[e.host] = entry
        return {
            "version": STATE_FORMAT_VERSION,
            "kind": self.kind,
            "prefix": str(self.prefix),
            "source": self.state_source(),
            "names": names,
        }

    def import_state(self, data: Any) -> int:
        """Seed hosts from :meth:`export_state` output, ``stale`` until DNS answers for them (see
        :meth:`HostTable.restore`); at most the table's ``max_hosts``, the most recently used. A
        host or address that could not have been saved is skipped with a warning naming it.
        ``ValueError`` for state saved by another version, for another kind, or for another
        :meth:`state_source`."""
        check_saved_state(data, self.kind, str(self.prefix), self.state_source())
        restored = 0
        skips = RestoreSkips(
            self.kind,
            "hosts",
            "this host is resolved afresh; the other saved hosts are restored",
            "these hosts are resolved afresh; the other saved hosts are restored",
        )
        for name, entry in list(data["names"].items())[-self.table.max_hosts :]:
            try:
                host = _saved_host(name)
                if not isinstance(entry, dict) or not isinstance(entry.get("ips"), list) or not entry["ips"]:
                    raise ValueError("the entry has no 'ips' list of addresses")
                ips = tuple(_saved_ip(ip) for ip in entry["ips"])
            except Exception as e:
                skips.skip(name, e)
                continue
            fixed = entry.get("fixed") is True
            if self.table.restore(host, ips, saved_time(entry.get("lastUpdate")), fixed=fixed):
                restored += 1
        skips.done()
        return restored

    # -- admin -------------------------------------------------------------------------------------
    def state_json(self) -> dict[str, Any]:
        now = self.clock()
        return {
            "kind": "inet",
            "nameservers": [f"{a}:{p}" for a, p in self.nameservers] or ["system"],
            "names": {e.host: e.to_json(now) for e in self.table.entries()},
        }

    def statistics(self) -> dict[str, Any]:
        counts = {s: 0 for s in ("pending", "bound", "neg", "failed", "stale")}
        for e in self.table.entries():
            counts[e.state] += 1
        return {
            "hosts": len(self.table),
            "max_hosts": self.table.max_hosts,
            "states": counts,
            "queries": self.queries,
            "query_failures": self.query_failures,
            "invalid_hosts": self.invalid_hosts,
            "evictions": self.table.evictions,
            "callback_errors": self.callback_errors,
        }

    def __repr__(self) -> str:
        return f"<InetResolver {len(self.table)} hosts>"
