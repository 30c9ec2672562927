"""``io.l5d.dnssrv``: service discovery from DNS SRV records, polled.

Theory of operation
-------------------
``/#/io.l5d.dnssrv/<record>/rest...`` names the SRV record ``<record>`` (one path label that may hold
dots, e.g. ``_http._tcp.web.example.org``; it is always taken as a fully qualified name, with or without
the trailing dot). It binds to ``BoundName(id=/#/io.l5d.dnssrv/<record>, residual=/rest...,
addr=AddrBound(addresses))``. A label that cannot be a DNS name is ``NEG`` and is never queried.

Three parts, as in :mod:`namers.fs`:

* :func:`srv_addresses` (pure) turns SRV records plus the addresses of their targets into
  :class:`Address` es: one per (target IP, SRV port), the SRV weight as the address weight, the SRV
  priority and target in the address metadata. Priority is not used to choose (as in Linkerd); an SRV
  weight of 0 (RFC 2782: "a very small chance of being selected") becomes weight 1.0 when every record
  has weight 0, and 1/100 of the smallest positive weight otherwise, so that no record is silently
  unroutable. A target of ``.`` ("service decidedly not available"), targets that do not resolve
  (NXDOMAIN, no A/AAAA) and records with port 0 (no TCP port) are skipped and listed in the name's
  state.
* :class:`SrvCore` (pure; monotonic ``now`` passed in) keeps each watched name's refresh schedule over
  the namer's :class:`~namers.base.NameTable` and applies outcomes to it: :class:`SrvFound` -> ``bound``
  (possibly with no addresses); :class:`SrvNegative` (NXDOMAIN, NOERROR with no SRV records) -> ``neg``,
  so dtab alternates apply; :class:`SrvFailure` (timeout, SERVFAIL, REFUSED, unreachable server, or
  the target lookups failing that way with no address answered) -> the last good addresses are kept
  and the name is ``stale``, or, with nothing to keep, ``failed`` (lookups then raise
  :class:`NamerError` at once instead of waiting).
  :class:`SrvPartial` (some targets' A or AAAA queries failed while others answered) is not the
  whole truth: the fresh addresses replace those of the lookups that answered, each failed (target,
  family) keeps its last good addresses, and the name is ``stale`` with the error (as ``/$/inet``
  does); so one target whose lookups fail does not hold back changes to the others. With no address
  answered at all it is an :class:`SrvFailure`.
  Answers are refreshed every ``refresh_interval`` seconds (Linkerd's ``refreshIntervalSeconds``) or,
  when that is ``None``, at the answer's TTL clamped to ``[ttl_floor, ttl_ceiling]`` (negative answers
  after ``negative_ttl``); failures are retried with exponential backoff from ``retry_base`` up to
  ``retry_max`` (never later than the refresh interval).
* :class:`DnsSrvNamer` wires them on trio: :meth:`~DnsSrvNamer.run` queries due names concurrently
  (at most ``max_concurrency`` at once) with dnspython's asynchronous resolver against ``dns_hosts``
  (``host`` or ``host:port``, an IP or a host name, which is resolved once by the system resolver when
  the first lookup needs it, as Linkerd does; empty means the system's ``/etc/resolv.conf``), with its cache off and
  EDNS (payload 2048). SRV targets are resolved through the same servers; the answer's additional
  section is used when it holds the target's A/AAAA records, so usually one query suffices; the
  others are looked up at most :data:`MAX_TARGET_QUERIES` at once.

One name's trouble never stops the others, and a bug in handling one answer marks only that name.
"""

from __future__ import annotations

import math
import re
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver
import structlog
import trio

from namers._dtab import NEG, Address, Path
from namers.base import DEFAULT_MAX_NAMES, Key, Namer, NameTable, config_value, key_text
from namers.inet import describe_dns_error, is_ip, make_resolver, parse_nameserver, refresh_loop

__all__ = [
    "KIND",
    "DnsSrvNamer",
    "SrvCore",
    "SrvFailure",
    "SrvFound",
    "SrvNegative",
    "SrvPartial",
    "SrvRecord",
    "from_config",
    "record_name",
    "srv_addresses",
]

KIND = "io.l5d.dnssrv"

#: Address lookups of SRV targets in flight at once, across all names: an answer may list hundreds
#: of targets (each lookup a socket), and the daemon's descriptors are shared with its connections.
MAX_TARGET_QUERIES = 32
log = structlog.get_logger("namers.dnssrv")

_DNS_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")


def record_name(label: bytes) -> str | None:
    """The SRV record name a path label stands for, or ``None`` when it cannot be a DNS name.

    Letters, digits, ``_`` and ``-`` in dot-separated labels of 1-63 characters, 253 in all; one
    trailing dot is allowed and dropped (every name is fully qualified anyway).
    """
    try:
        text = label.decode("ascii")
    except UnicodeDecodeError:
        return None
    if text.endswith("."):
        text = text[:-1]
    if not text or len(text) > 253:
        return None
    if not all(_DNS_LABEL.fullmatch(part) for part in text.split(".")):
        return None
    return text


# -- the pure half ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SrvRecord:
    priority: int
    weight: int
    port: int
    target: str  # without the trailing dot; "." for "not available"


@dataclass(frozen=True)
class SrvFound:
    """A good answer: these addresses (possibly none), valid for ``ttl`` seconds."""

    addrs: tuple[Address, ...]
    ttl: float
    skipped: tuple[str, ...] = ()


@dataclass(frozen=True)
class SrvNegative:
    """An authoritative "no such record" (NXDOMAIN, or no SRV records at that name)."""

    reason: str


@dataclass(frozen=True)
class SrvFailure:
    """The lookup could not be answered (timeout, SERVFAIL, REFUSED, unreachable server)."""

    message: str


@dataclass(frozen=True)
class SrvPartial:
    """The SRV answer came, but the address lookups of some targets failed (AAAA SERVFAIL while A
    answered, or both for one target while the others answered): ``addrs`` are what did answer;
    ``failed`` maps each such target to its failed families ("A", "AAAA"), whose last good addresses
    are kept beside the fresh ones; ``message`` says why."""

    addrs: tuple[Address, ...]
    ttl: float
    skipped: tuple[str, ...]
    failed: Mapping[str, tuple[str, ...]]
    message: str


SrvOutcome = SrvFound | SrvNegative | SrvFailure | SrvPartial


def _family(host: str) -> str:
    return "AAAA" if ":" in host else "A"


def kept_addresses(
    last_good: Sequence[Address] | None, fresh: Sequence[Address], failed: Mapping[str, Sequence[str]]
) -> tuple[Address, ...]:
    """``fresh`` plus the ``last_good`` addresses of the (target, family) pairs that ``failed``."""
    out = list(fresh)
    seen = {(a.host, a.port) for a in fresh}
    for a in last_good or ():
        target = (a.meta or {}).get("srv_target")
        if _family(a.host) in failed.get(str(target), ()) and (a.host, a.port) not in seen:
            seen.add((a.host, a.port))
            out.append(a)
    return tuple(out)


def srv_addresses(
    records: Sequence[SrvRecord], ips: Mapping[str, Sequence[str]]
) -> tuple[tuple[Address, ...], tuple[str, ...]]:
    """Addresses for ``records`` given each target's IPs (``ips`` keyed by target, lowercase, no trailing
    dot); returns ``(addresses, skipped targets)``. See the module docstring for the weight rules."""
    positive = [r.weight for r in records if r.weight > 0]
    zero_weight = 1.0 if not positive else min(positive) / 100.0
    out: list[Address] = []
    seen: set[tuple[str, int]] = set()
    skipped: list[str] = []
    for r in records:
        target = r.target.lower()
        if r.port == 0 and target != ".":
            # Port 0 is no TCP port: connecting would fail, and saved state could not restore it.
            if f"{target} (port 0)" not in skipped:
                skipped.append(f"{target} (port 0)")
            continue
        target_ips = ips.get(target, ()) if target != "." else ()
        if not target_ips:
            if target not in skipped:
                skipped.append(target)
            continue
        weight = float(r.weight) if r.weight > 0 else zero_weight
        for ip in target_ips:
            if (ip, r.port) in seen:
                continue
            seen.add((ip, r.port))
            out.append(Address(ip, r.port, weight, {"srv_target": target, "srv_priority": r.priority}))
    return tuple(out), tuple(skipped)


@dataclass
class _Schedule:
    next_refresh: float = -math.inf  # monotonic; -inf = due now
    in_flight: bool = False
    failures: int = 0
    ttl: float | None = None
    skipped: tuple[str, ...] = ()
    refreshes: int = 0


class SrvCore:
    """Refresh schedule and outcome rules for every watched record. No I/O."""

    def __init__(
        self,
        table: NameTable,
        *,
        refresh_interval: float | None = 5.0,
        ttl_floor: float = 1.0,
        ttl_ceiling: float = 60.0,
        negative_ttl: float = 5.0,
        retry_base: float = 0.5,
        retry_max: float = 30.0,
    ) -> None:
        if refresh_interval is not None and refresh_interval <= 0:
            raise ValueError(f"refreshIntervalSeconds must be positive, got {refresh_interval}")
        if not 0 < ttl_floor <= ttl_ceiling:
            raise ValueError(f"need 0 < ttl_floor <= ttl_ceiling, got {ttl_floor} and {ttl_ceiling}")
        if retry_base <= 0 or retry_max < retry_base:
            raise ValueError(f"need 0 < retry_base <= retry_max, got {retry_base} and {retry_max}")
        self.table = table
        self.refresh_interval = refresh_interval
        self.ttl_floor = ttl_floor
        self.ttl_ceiling = ttl_ceiling
        self.negative_ttl = negative_ttl
        self.retry_base = retry_base
        self.retry_max = retry_max
        self._sched: dict[Key, _Schedule] = {}

    def schedule(self, key: Key) -> _Schedule | None:
        return self._sched.get(key)

    def _sync(self) -> None:
        keys = self.table.watched()
        for gone in set(self._sched) - set(keys):
            del self._sched[gone]
        for key in keys:
            self._sched.setdefault(key, _Schedule())

    def due(self, now: float) -> list[Key]:
        """Names to look up now; each is in flight until its outcome is applied."""
        self._sync()
        out = []
        for key, s in self._sched.items():
            if not s.in_flight and s.next_refresh <= now:
                s.in_flight = True
                out.append(key)
        return out

    def next_deadline(self) -> float | None:
        times = [s.next_refresh for s in self._sched.values() if not s.in_flight]
        return min(times) if times else None

    def _refresh_after(self, ttl: float | None, negative: bool) -> float:
        if self.refresh_interval is not None:
            return self.refresh_interval
        if negative:
            return min(max(self.negative_ttl, self.ttl_floor), self.ttl_ceiling)
        return min(max(ttl if ttl is not None else self.ttl_ceiling, self.ttl_floor), self.ttl_ceiling)

    def apply(self, key: Key, outcome: SrvOutcome, now: float) -> bool:
        """Apply one lookup's outcome; return whether the name's observable state changed."""
        s = self._sched.get(key)
        if s is None or key not in self.table:
            return False
        s.in_flight = False
        s.refreshes += 1
        if isinstance(outcome, SrvFailure | SrvPartial):
            backoff = min(self.retry_base * (2**s.failures), self.retry_max)
            if self.refresh_interval is not None:
                backoff = min(backoff, self.refresh_interval)
            s.next_refresh = now + backoff
            s.failures += 1
            if isinstance(outcome, SrvPartial):
                # Not the whole truth: the families that answered are fresh, the failed ones keep
                # their last good addresses, and the name is stale with the error.
                st = self.table.get(key)
                s.ttl = outcome.ttl
                s.skipped = outcome.skipped
                merged = kept_addresses(st.addr if st is not None else None, outcome.addrs, outcome.failed)
                return self.table.apply_partial(key, self._in_known_order(key, merged), outcome.message)
            return self.table.apply_failure(key, outcome.message)
        s.failures = 0
        if isinstance(outcome, SrvNegative):
            s.ttl = None
            s.skipped = ()
            s.next_refresh = now + self._refresh_after(None, negative=True)
            return self.table.apply_neg(key)
        s.ttl = outcome.ttl
        s.skipped = outcome.skipped
        s.next_refresh = now + self._refresh_after(outcome.ttl, negative=False)
        return self.table.apply_bound(key, self._in_known_order(key, outcome.addrs))

    def _in_known_order(self, key: Key, addrs: Sequence[Address]) -> Sequence[Address]:
        """``addrs`` as the name holds them when they are the same addresses in another order: many
        nameservers (Consul, CoreDNS) shuffle the records of every answer, and a new order is no
        change of the name (no new version, no rebinding)."""
        st = self.table.get(key)
        if st is not None and st.addr is not None and Counter(st.addr) == Counter(addrs):
            return st.addr
        return addrs


# -- the trio shell -------------------------------------------------------------------------------------
def _target_text(name: dns.name.Name) -> str:
    text: str = name.to_text(omit_final_dot=True).lower()
    return text or "."


class DnsSrvNamer(Namer):
    """The ``io.l5d.dnssrv`` namer; see the module docstring."""

    kind: ClassVar[str] = KIND

    def __init__(
        self,
        dns_hosts: Sequence[str] = (),
        *,
        prefix: str | Path | None = None,
        clock: Callable[[], float] = time.time,
        max_names: int = DEFAULT_MAX_NAMES,
        transformers: Iterable[Any] = (),
        refresh_interval: float | None = 5.0,
        timeout: float = 2.0,
        ttl_floor: float = 1.0,
        ttl_ceiling: float = 60.0,
        negative_ttl: float = 5.0,
        retry_base: float = 0.5,
        retry_max: float = 30.0,
        max_concurrency: int = 16,
    ) -> None:
        super().__init__(prefix=prefix, clock=clock, max_names=max_names, transformers=transformers)
        # (host, port): a host given by name is resolved when the first lookup needs the resolver
        self.nameservers = [parse_nameserver(h, names=True) for h in dns_hosts]
        if timeout <= 0:
            raise ValueError(f"DNS timeout must be positive, got {timeout}")
        self.timeout = timeout
        self.max_concurrency = max_concurrency
        self.core = SrvCore(
            self.table,
            refresh_interval=refresh_interval,
            ttl_floor=ttl_floor,
            ttl_ceiling=ttl_ceiling,
            negative_ttl=negative_ttl,
            retry_base=retry_base,
            retry_max=retry_max,
        )
        self._resolver: dns.asyncresolver.Resolver | None = None
        self._target_limiter = trio.CapacityLimiter(MAX_TARGET_QUERIES)
        self.queries = 0
        self.lookup_successes = 0
        self.lookup_failures = 0
        self.lookup_zero_results = 0
        self.unknown_srv_hosts = 0
        self.internal_errors = 0

    @property
    def where(self) -> str:
        return ", ".join(f"{a}:{p}" for a, p in self.nameservers) or "the system resolver"

    # -- binding side ----------------------------------------------------------------------------
    def split(self, residual: Path) -> tuple[Key, Path] | None:
        labels = tuple(residual.labels)
        if not labels or record_name(labels[0]) is None:
            return None
        return labels[:1], Path(labels[1:])

    def lookup(self, residual: Path) -> Any:
        """``/<record>/rest``: the record's current addresses; ``NEG`` for a label that is no DNS name."""
        if self.split(residual) is None:
            self.lookups += 1
            return NEG
        return super().lookup(residual)

    # -- the runner --------------------------------------------------------------------------------
    def _make_resolver(self, servers: Sequence[tuple[str, int]] | None = None) -> dns.asyncresolver.Resolver:
        """The resolver asking ``servers`` (IP, port), by default ``nameservers`` (all IPs)."""
        r = make_resolver(self.nameservers if servers is None else servers, self.timeout)
        r.use_edns(0, 0, 2048)
        return r

    async def _build_resolver(self) -> dns.asyncresolver.Resolver | str:
        """The resolver, each ``dnsHosts`` entry given by name resolved first (by the system resolver,
        an IPv4 address preferred, as Linkerd's JVM does); a name that does not resolve gives why."""
        servers: list[tuple[str, int]] = []
        for host, port in self.nameservers:
            if is_ip(host):
                servers.append((host, port))
                continue
            try:
                infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
            except OSError as e:
                return f"dnsHosts entry {host!r} does not resolve ({e.strerror or e})"
            ips = [str(info[4][0]) for info in infos]
            if not ips:  # pragma: no cover - getaddrinfo raises rather than answer nothing
                return f"dnsHosts entry {host!r} does not resolve (no address)"
            v4 = [ip for ip in ips if ":" not in ip]
            servers.append(((v4 or ips)[0], port))
        return self._make_resolver(servers)

    async def run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Look up due records until cancelled."""
        self._bind_runner()
        if all(is_ip(host) for host, _ in self.nameservers):
            self._resolver = self._make_resolver()
        log.info("namer.dnssrv.started", prefix=str(self.bound_prefix), nameservers=self.where)
        await refresh_loop(
            due=self.core.due,
            next_deadline=self.core.next_deadline,
            refresh=self._refresh,
            wait=self._wait_for_wake,
            max_concurrency=self.max_concurrency,
            task_status=task_status,
        )

    async def _refresh(self, key: Key, limiter: trio.CapacityLimiter) -> None:
        name = record_name(key[0]) or ""
        try:
            async with limiter:
                started = trio.current_time()
                outcome = await self.query(name)
            self._count(outcome)
            changed = self.core.apply(key, outcome, trio.current_time())
        except Exception as exc:  # a bug handling one answer must not stop the other names
            self.internal_errors += 1
            log.exception("namer.dnssrv.lookup.failed", name=name)
            outcome = SrvFailure(f"SRV lookup of {name!r}: internal error {exc!r}")
            changed = self.core.apply(key, outcome, trio.current_time())
            started = trio.current_time()
        self._wake()  # the runner recomputes its next deadline
        if changed:
            st = self.table.get(key)
            if st is not None:
                log.info(
                    "namer.dnssrv.update.complete",
                    name=name,
                    state=st.state,
                    addrs=[str(a) for a in st.addr or ()],
                    error=st.last_error,
                    duration_ms=round((trio.current_time() - started) * 1000, 1),
                )
            self._notify(key)

    def _count(self, outcome: SrvOutcome) -> None:
        if isinstance(outcome, SrvPartial):
            self.lookup_failures += 1
            self.unknown_srv_hosts += len(outcome.skipped)
        elif isinstance(outcome, SrvFound):
            self.lookup_successes += 1
            self.unknown_srv_hosts += len(outcome.skipped)
        elif isinstance(outcome, SrvNegative):
            self.lookup_zero_results += 1
        else:
            self.lookup_failures += 1

    async def query(self, name: str) -> SrvOutcome:
        """One SRV lookup of ``name`` (fully qualified) and of its targets' addresses."""
        if self._resolver is None:
            built = await self._build_resolver()
            if isinstance(built, str):  # asked again at the next lookup
                self.queries += 1
                return SrvFailure(f"SRV lookup of {name!r} via {self.where} failed: {built}")
            self._resolver = built
        resolver = self._resolver
        qname = dns.name.from_text(name)
        self.queries += 1
        try:
            answer = await resolver.resolve(qname, "SRV", search=False, raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN:
            return SrvNegative("NXDOMAIN")
        except (dns.exception.DNSException, OSError) as e:
            return SrvFailure(f"SRV lookup of {name!r} via {self.where} failed: {describe_dns_error(e)}")
        if answer.rrset is None or len(answer.rrset) == 0:
            return SrvNegative("no SRV records")
        # (TTLs: the shortest along each answer's CNAME chain, as any resolver caches it)
        ttls: list[float] = [answer.chaining_result.minimum_ttl]
        records = [SrvRecord(rd.priority, rd.weight, rd.port, _target_text(rd.target)) for rd in answer.rrset]
        ips: dict[str, list[str]] = {}
        for rrset in answer.response.additional:
            if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
                target = _target_text(rrset.name)
                ips.setdefault(target, []).extend(rd.address for rd in rrset)
                ttls.append(rrset.ttl)
        missing = sorted({r.target for r in records if r.target != "." and r.port and r.target not in ips})
        failed: dict[str, tuple[tuple[str, ...], str]] = {}
        if missing:
            async with trio.open_nursery() as nursery:
                for target in missing:
                    nursery.start_soon(self._resolve_target, target, ips, ttls, failed)
        addrs, skipped = srv_addresses(records, ips)
        if failed:
            why = "; ".join(f"target {t!r}: {failed[t][1]}" for t in sorted(failed))
            if not addrs:  # nothing answered: keep the whole last good set
                return SrvFailure(f"SRV lookup of {name!r} via {self.where} failed: {why}")
            return SrvPartial(
                addrs,
                float(min(ttls)),
                tuple(t for t in skipped if t not in failed),  # failed is not "does not resolve"
                {t: failed[t][0] for t in failed},
                f"SRV lookup of {name!r} via {self.where} failed in part (the failed lookups' last good "
                f"addresses are kept): {why}",
            )
        return SrvFound(addrs, float(min(ttls)), skipped)

    async def _resolve_target(
        self,
        target: str,
        ips: dict[str, list[str]],
        ttls: list[float],
        failures: dict[str, tuple[tuple[str, ...], str]],
    ) -> None:
        """Look up ``target``'s A and AAAA records into ``ips``; a family whose query failed (not
        NXDOMAIN) goes into ``failures`` with why."""
        assert self._resolver is not None
        qname = dns.name.from_text(target)
        found: list[str] = []
        failed: list[str] = []
        failed_types: list[str] = []
        for rdtype in ("A", "AAAA"):
            self.queries += 1
            try:
                async with self._target_limiter:
                    r = await self._resolver.resolve(qname, rdtype, search=False, raise_on_no_answer=False)
            except dns.resolver.NXDOMAIN:
                continue
            except (dns.exception.DNSException, OSError) as e:
                failed.append(f"{rdtype}: {describe_dns_error(e)}")
                failed_types.append(rdtype)
                continue
            if r.rrset is not None:
                ttls.append(r.chaining_result.minimum_ttl)
                found.extend(rd.address for rd in r.rrset)
        if found:
            ips[target] = found
        if failed:
            failures[target] = (tuple(failed_types), ", ".join(failed))

    # -- admin -------------------------------------------------------------------------------------
    def state_json(self) -> dict[str, Any]:
        body = super().state_json()
        body["dnsHosts"] = [f"{a}:{p}" for a, p in self.nameservers] or ["system"]
        body["refreshIntervalSecs"] = self.core.refresh_interval
        for st in self.table.states():
            s = self.core.schedule(st.key)
            entry = body["names"][key_text(st.key)]
            entry["ttlSecs"] = s.ttl if s is not None else None
            entry["skippedTargets"] = list(s.skipped) if s is not None else []
        return body

    def statistics(self) -> dict[str, Any]:
        stats = super().statistics()
        stats.update(
            nameservers=self.where,
            queries=self.queries,
            lookup_successes_total=self.lookup_successes,
            lookup_failures_total=self.lookup_failures,
            lookup_zero_results_total=self.lookup_zero_results,
            unknown_srv_hosts_results_total=self.unknown_srv_hosts,
            internal_errors=self.internal_errors,
        )
        return stats


def from_config(cfg: Any) -> DnsSrvNamer:
    """Build the namer from a ``namers[]`` entry (a mapping or :class:`DnsSrvNamer` config dataclass):
    ``refreshIntervalSeconds`` (default 5), ``refreshFromTtl`` (default false: when true, each answer
    is refreshed at its TTL instead), ``dnsHosts``, ``prefix``, ``transformers``."""
    refresh = config_value(cfg, "refreshIntervalSeconds", "refresh_interval_seconds")
    refresh = 5 if refresh is None else refresh
    if isinstance(refresh, bool) or not isinstance(refresh, int | float) or refresh <= 0:
        raise ValueError(
            f"namers[].refreshIntervalSeconds must be a positive number of seconds for kind {KIND}, "
            f"got {refresh!r}"
        )
    from_ttl = config_value(cfg, "refreshFromTtl", "refresh_from_ttl")
    from_ttl = False if from_ttl is None else from_ttl
    if not isinstance(from_ttl, bool):
        raise ValueError(f"namers[].refreshFromTtl must be true or false for kind {KIND}, got {from_ttl!r}")
    hosts = config_value(cfg, "dnsHosts", "dns_hosts") or ()
    if isinstance(hosts, str):
        hosts = (hosts,)
    hosts = tuple(str(h) for h in hosts)
    for h in hosts:
        try:
            parse_nameserver(h, names=True)
        except ValueError as e:
            raise ValueError(f"namers[].dnsHosts for kind {KIND}: {e}") from e
    return DnsSrvNamer(
        hosts,
        prefix=config_value(cfg, "prefix"),
        transformers=config_value(cfg, "transformers") or (),
        refresh_interval=None if from_ttl else float(refresh),
    )
