"""``make bench`` parts ``h2`` and ``tls``: HTTP/2 and TLS through hostproxy, against nginx, in one run.

Theory of operation
-------------------
* **h2**: an nginx origin speaking HTTP/2 with prior knowledge (h2c) is driven directly, through a
  hostproxy ``protocol: h2`` router (which speaks h2c to it, many streams per connection), and through
  nginx as an HTTP/2 front end (nginx cannot speak HTTP/2 to an upstream, so it proxies over HTTP/1.1
  keep-alive to an nginx origin — the usual nginx h2 deployment). Load: ``h2load -c10 -m10`` for
  ``--duration`` seconds, per-request latencies from ``--log-file``.
* **tls**: an HTTP/1.1 origin over TLS is driven directly, through hostproxy terminating TLS
  (``servers[].tls``) and forwarding plaintext, and through nginx doing the same; load ``wrk -c50``.

Each row: requests/s, p50/p99/max, CPU seconds per 10k requests and peak RSS of the proxy, and the
ratios hostproxy/direct and hostproxy/nginx. The certificate is a throwaway self-signed one made for
the run. A benchmark, not a test: it asserts nothing. Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from hostproxy.bench import cpu_seconds, free_port, memory_kb, process_tree, run_wrk, stopping, wait_port

BODY = "hello from the upstream"


def _nginx(tmp: Path, name: str, server_block: str) -> subprocess.Popen[bytes]:
    conf = tmp / f"nginx-{name}.conf"
    conf.write_text(f"""
worker_processes 1; daemon off; pid {tmp}/nginx-{name}.pid; error_log stderr error;
events {{ worker_connections 4096; }}
http {{ access_log off; client_body_temp_path {tmp}; proxy_temp_path {tmp};
  fastcgi_temp_path {tmp}; uwsgi_temp_path {tmp}; scgi_temp_path {tmp};
  keepalive_requests 1000000;
  {server_block} }}
""")
    return subprocess.Popen(["nginx", "-c", str(conf), "-p", str(tmp)])


def h2c_origin(tmp: Path, port: int) -> subprocess.Popen[bytes]:
    """nginx speaking HTTP/2 with prior knowledge (h2c) on ``port``, answering every request with
    ``BODY``."""
    return _nginx(
        tmp,
        "origin-h2",
        f'server {{ listen 127.0.0.1:{port} http2; location / {{ return 200 "{BODY}\\n"; }} }}',
    )


def _cert(tmp: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench.local")])
    now = datetime.datetime.now(datetime.UTC)
    import ipaddress

    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "bench.crt", tmp / "bench.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


def _hostproxy(tmp: Path, name: str, router_yaml: str, admin: int) -> subprocess.Popen[bytes]:
    conf = tmp / f"hostproxy-{name}.yaml"
    conf.write_text(f"admin: {{ip: 127.0.0.1, port: {admin}}}\nrouters:\n{router_yaml}")
    return subprocess.Popen(
        [sys.executable, "-m", "hostproxy", "run", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=open(tmp / f"hostproxy-{name}.log", "wb"),  # noqa: SIM115 - the child holds it
    )


def _h2load(port: int, duration: int, tmp: Path) -> dict[str, float]:
    log = tmp / f"h2load-{port}.log"
    out = subprocess.run(
        ["h2load", "-c10", "-m10", f"-D{duration}", f"--log-file={log}", f"http://127.0.0.1:{port}/"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    res: dict[str, float] = {}
    for line in out.splitlines():
        if line.startswith("finished in"):
            res["rps"] = float(line.split(",")[1].split()[0])
        if line.startswith("status codes:"):
            res["ok"] = float(line.split()[2])
    lat = sorted(int(x.split("\t")[2]) / 1000.0 for x in log.read_text().splitlines() if x)
    if lat:
        q = statistics.quantiles(lat, n=100, method="inclusive")
        res.update(p50=q[49], p99=q[98], max=lat[-1], requests=float(len(lat)))
    return res


def _measure(rows: list[tuple[str, int, Any]], load: Any) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for name, port, proc in rows:
        pids = process_tree(proc.pid) if proc is not None else []
        c0 = cpu_seconds(pids)
        r = load(port)
        if proc is not None and r.get("requests"):
            r["cpu_per_10k"] = (cpu_seconds(pids) - c0) / r["requests"] * 10_000
            r["rss_mb"] = memory_kb(process_tree(proc.pid), "VmHWM") / 1024
        out[name] = r
    return out


def _table(title: str, results: dict[str, dict[str, float]]) -> list[str]:
    lines = [title]
    hdr = f"{'target':<10} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'CPU s/10k':>10} {'peak RSS MB':>12}"
    lines += [hdr, "-" * len(hdr)]
    for name, r in results.items():

        def f(key: str, fmt: str = "{:.2f}", r: dict[str, float] = r) -> str:
            return fmt.format(r[key]) if key in r else "-"

        lines.append(
            f"{name:<10} {f('rps', '{:.0f}'):>9} {f('p50'):>8} {f('p99'):>8} {f('max'):>8} "
            f"{f('cpu_per_10k'):>10} {f('rss_mb', '{:.1f}'):>12}"
        )
    h = results.get("hostproxy", {})
    for other in ("direct", "nginx"):
        o = results.get(other, {})
        if o.get("rps") and h.get("rps"):
            lines.append(
                f"hostproxy/{other}: requests/s {h['rps'] / o['rps']:.3f}, p99 {h.get('p99', 0) - o.get('p99', 0):+.2f} ms"
            )
    return lines


def run_h2(args: argparse.Namespace) -> list[str]:
    tmp = Path(tempfile.mkdtemp(prefix="hostproxy-bench-h2-"))
    origin_h2, origin_h1, hp, ng, admin = (free_port() for _ in range(5))
    procs: list[subprocess.Popen[bytes]] = []
    with stopping(procs):
        procs.append(h2c_origin(tmp, origin_h2))
        procs.append(
            _nginx(
                tmp,
                "origin-h1",
                f'server {{ listen 127.0.0.1:{origin_h1}; location / {{ return 200 "{BODY}\\n"; }} }}',
            )
        )
        procs.append(
            _nginx(
                tmp,
                "proxy",
                f"upstream up {{ server 127.0.0.1:{origin_h1}; keepalive 64; }} "
                f"server {{ listen 127.0.0.1:{ng} http2; location / {{ proxy_pass http://up; "
                'proxy_http_version 1.1; proxy_set_header Connection ""; } }',
            )
        )
        hp_proc = _hostproxy(
            tmp,
            "h2",
            f"- protocol: h2\n  label: bench\n  dtab: /svc => /$/inet/127.0.0.1/{origin_h2};\n"
            f"  servers: [{{ip: 127.0.0.1, port: {hp}}}]\n",
            admin,
        )
        procs.append(hp_proc)
        for p in (origin_h2, origin_h1, ng, hp):
            wait_port(p, 20)
        time.sleep(0.5)
        rows = [("direct", origin_h2, None), ("hostproxy", hp, hp_proc), ("nginx", ng, procs[2])]
        results = _measure(rows, lambda port: _h2load(port, args.duration, tmp))
    return _table(
        f"HTTP/2 — h2load -c10 -m10 for {args.duration}s (direct: nginx h2c origin; hostproxy: h2c to it; "
        "nginx: h2 front end, HTTP/1.1 keep-alive upstream)",
        results,
    )


def run_tls(args: argparse.Namespace) -> list[str]:
    tmp = Path(tempfile.mkdtemp(prefix="hostproxy-bench-tls-"))
    cert, key = _cert(tmp)
    origin, origin_tls, hp, ng, admin = (free_port() for _ in range(5))
    procs: list[subprocess.Popen[bytes]] = []
    tls_conf = f"ssl_certificate {cert}; ssl_certificate_key {key}; ssl_protocols TLSv1.2 TLSv1.3;"
    with stopping(procs):
        procs.append(
            _nginx(
                tmp,
                "origin",
                f'server {{ listen 127.0.0.1:{origin}; location / {{ return 200 "{BODY}\\n"; }} }}',
            )
        )
        procs.append(
            _nginx(
                tmp,
                "origin-tls",
                f'server {{ listen 127.0.0.1:{origin_tls} ssl; {tls_conf} location / {{ return 200 "{BODY}\\n"; }} }}',
            )
        )
        procs.append(
            _nginx(
                tmp,
                "proxy",
                f"upstream up {{ server 127.0.0.1:{origin}; keepalive 64; }} "
                f"server {{ listen 127.0.0.1:{ng} ssl; {tls_conf} location / {{ proxy_pass http://up; "
                'proxy_http_version 1.1; proxy_set_header Connection ""; } }',
            )
        )
        hp_proc = _hostproxy(
            tmp,
            "tls",
            f"- protocol: http\n  label: bench\n  dtab: /svc => /$/inet/127.0.0.1/{origin};\n"
            f"  servers:\n  - ip: 127.0.0.1\n    port: {hp}\n    tls: {{certPath: {cert}, keyPath: {key}}}\n",
            admin,
        )
        procs.append(hp_proc)
        for p in (origin, origin_tls, ng, hp):
            wait_port(p, 20)
        time.sleep(0.5)
        rows = [("direct", origin_tls, None), ("hostproxy", hp, hp_proc), ("nginx", ng, procs[2])]
        results = _measure(rows, lambda port: run_wrk(port, args.duration, scheme="https"))
    return _table(
        f"TLS — wrk -c50 over HTTPS for {args.duration}s (direct: nginx TLS origin; hostproxy and nginx "
        "terminate TLS and forward plaintext HTTP/1.1)",
        results,
    )
