"""``make bench``'s instructions part (``--only instructions``, not in the default run): the user-space
instructions one proxied request costs, counted by ``valgrind --tool=callgrind``.

Why a count beside the timings: the 1,000 req/s runs move by 10-20% between runs on a shared host, so
a change to the request path worth a few percent cannot be told from the noise by timing it, and an
interleaved A/B of two trees has misled before (a change that timed 12% cheaper one minute and no
cheaper the next). An instruction count of the same load is repeatable to a few percent (1-4% here:
how many reads find their bytes already there depends on timing), whatever else the machine does. It is no latency: it leaves out the kernel (the socket calls), and a request whose
caches went cold while the CPU idled costs more time for the same instructions. Use it to compare
trees and to say where a request's work goes; the timings say what that costs.

Each target runs alone under callgrind with instrumentation off, answers ``--instr-warmup`` requests
(connections made, caches filled), then is counted for ``--instr-requests`` requests of ``h2load --h1
-c10`` (closed loop: ten requests in flight, on ten new client connections, whose setup the count
includes: about 1% at the default size), the upstream being nginx returning a small body, as in the
http part. The targets are the trio floor, the http layers (:mod:`hostproxy.bench_floor`) and
hostproxy with the bench's config; the last column is each against the floor.

``--only instructions-h2`` (:func:`run_h2`) counts hostproxy's ``protocol: h2`` router the same way:
h2c from ``h2load -c10 -m10`` (ten connections of ten concurrent streams), h2c to an nginx h2c origin
returning the same small body (as in the ``h2`` part of :mod:`hostproxy.bench_proto`), the same
warm-up and number of requests.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["add_arguments", "callgrind_total", "run"]

#: What runs under valgrind for each target (after ``python``): its module and arguments.
TARGETS = ("trio floor", "http layers", "hostproxy")


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument(
        "--instr-requests",
        type=int,
        default=2000,
        help="requests counted per target in the instructions part (default 2000)",
    )
    ap.add_argument(
        "--instr-warmup",
        type=int,
        default=200,
        help="requests before counting starts in the instructions part (default 200)",
    )


def callgrind_total(text: str) -> int | None:
    """The instructions (``Ir``) a callgrind output file counted: its ``totals:`` line, else its
    ``summary:`` line (a dump's header may carry ``summary: 0`` above the real totals), None when it
    has neither."""
    for key in ("totals", "summary"):
        found = re.search(rf"^{key}:\s+(\d+)", text, re.MULTILINE)
        if found:
            return int(found.group(1))
    return None


def _command(target: str, port: int, upstream: int, conf: Path) -> list[str]:
    if target == "trio floor":
        return [sys.executable, "-m", "hostproxy.bench_floor", str(port), str(upstream)]
    if target == "http layers":
        return [sys.executable, "-m", "hostproxy.bench_floor", "--layers", str(port), str(upstream)]
    return [sys.executable, "-m", "hostproxy", "run", str(conf)]


#: The h2load load of each part: ``instructions`` HTTP/1.1, ``instructions-h2`` HTTP/2 (h2c).
H1_LOAD = ("--h1", "-c10")
H2_LOAD = ("-c10", "-m10")


def _h2load(port: int, requests: int, load: tuple[str, ...] = H1_LOAD) -> int:
    """Run ``requests`` requests of ``load``; how many got a 2xx."""
    out = subprocess.run(
        ["h2load", *load, f"-n{requests}", f"http://127.0.0.1:{port}/"],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    ).stdout
    found = re.search(r"status codes: (\d+) 2xx", out)
    return int(found.group(1)) if found else 0


def count(
    target: str,
    tmp: Path,
    upstream: int,
    requests: int,
    warmup: int,
    *,
    protocol: str = "http",
    load: tuple[str, ...] = H1_LOAD,
) -> float:
    """Instructions per request of ``target`` (see the module docstring); hostproxy's router speaks
    ``protocol`` (``h2``: h2c both ways) under ``load``."""
    from hostproxy import bench

    port, admin = bench.free_port(), bench.free_port()
    conf = tmp / f"instr-{port}.yaml"
    conf.write_text(
        f"admin: {{ip: 127.0.0.1, port: {admin}}}\nrouters:\n- protocol: {protocol}\n  label: bench\n"
        f"  dtab: /svc => /$/inet/127.0.0.1/{upstream};\n  servers: [{{ip: 127.0.0.1, port: {port}}}]\n"
    )
    out = tmp / f"callgrind-{port}.out"
    proc = subprocess.Popen(
        [
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",
            f"--callgrind-out-file={out}",
            *_command(target, port, upstream, conf),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    procs = [proc]
    with bench.stopping(procs):
        bench.wait_port(port, timeout=120)
        if warmup:
            _h2load(port, warmup, load)
        pid = str(proc.pid)
        subprocess.run(["callgrind_control", "--instr=on", pid], capture_output=True, check=True, timeout=60)
        answered = _h2load(port, requests, load)
        # (Dumped while still counting: switching instrumentation off first left a dump of nothing.)
        subprocess.run(["callgrind_control", "--dump", pid], capture_output=True, check=True, timeout=60)
        if answered != requests:
            raise RuntimeError(f"{target}: {answered} of {requests} requests answered 2xx under valgrind")
        deadline = time.monotonic() + 30
        total = None
        while total is None and time.monotonic() < deadline:
            for part in sorted(tmp.glob(f"{out.name}.*")):
                total = callgrind_total(part.read_text(errors="replace"))
                if total:
                    break
            else:
                time.sleep(0.2)
    if not total:
        raise RuntimeError(f"{target}: callgrind wrote no instruction count")
    return total / requests


def _check_tools() -> None:
    for tool in ("valgrind", "callgrind_control", "h2load", "nginx"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} is not installed (make bench installs it)")


def run(args: argparse.Namespace) -> list[str]:
    """The instructions part's lines (raises ``RuntimeError`` when a tool is missing or a run fails)."""
    from hostproxy import bench

    _check_tools()
    requests, warmup = args.instr_requests, args.instr_warmup
    tmp = Path(tempfile.mkdtemp(prefix="hostproxy-bench-instr-"))
    upstream = bench.free_port()
    procs: list[subprocess.Popen[bytes]] = []
    results: dict[str, float] = {}
    with bench.stopping(procs):
        procs.append(bench.start_nginx_upstream(tmp, upstream))
        bench.wait_port(upstream)
        for target in TARGETS:
            results[target] = count(target, tmp, upstream, requests, warmup)
    floor = results["trio floor"]
    lines = [
        f"Instructions per proxied request (valgrind --tool=callgrind, user space; h2load --h1 -c10 -n{requests} "
        f"after {warmup} to warm up)",
        f"{'target':<14}{'k instructions/request':>24}{'vs trio floor':>16}",
        "-" * 54,
    ]
    for target, per in results.items():
        lines.append(f"{target:<14}{per / 1000:>24.1f}{per / floor:>16.2f}")
    return lines


def run_h2(args: argparse.Namespace) -> list[str]:
    """The ``instructions-h2`` part's lines: hostproxy's ``protocol: h2`` router (h2c from the client,
    h2c to an nginx h2c origin) under ``h2load -c10 -m10`` (raises ``RuntimeError`` as ``run``)."""
    from hostproxy import bench, bench_proto

    _check_tools()
    requests, warmup = args.instr_requests, args.instr_warmup
    tmp = Path(tempfile.mkdtemp(prefix="hostproxy-bench-instr-h2-"))
    upstream = bench.free_port()
    procs: list[subprocess.Popen[bytes]] = []
    with bench.stopping(procs):
        procs.append(bench_proto.h2c_origin(tmp, upstream))
        bench.wait_port(upstream)
        per = count("hostproxy", tmp, upstream, requests, warmup, protocol="h2", load=H2_LOAD)
    return [
        f"Instructions per proxied HTTP/2 request (valgrind --tool=callgrind, user space; h2load -c10 -m10 "
        f"-n{requests} after {warmup} to warm up; h2c to an nginx h2c origin)",
        f"{'target':<14}{'k instructions/request':>24}",
        "-" * 38,
        f"{'hostproxy h2':<14}{per / 1000:>24.1f}",
    ]
