"""A second process listening on the same port: with ``SO_REUSEPORT`` (kept for upgrades without
refusing anyone) the bind succeeded in silence and the kernel split the connections between the two,
so a hostproxy started twice by mistake (or beside another program using SO_REUSEPORT) served half the
traffic with nothing said. The bind now says so."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from hostproxy.http.listening import bind_listeners, listening_elsewhere


def _other_listener(ip: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind((ip, 0))
    s.listen(8)
    return s


async def test_binding_a_port_another_socket_listens_on_is_logged() -> None:
    with _other_listener("127.0.0.1") as other:
        port = other.getsockname()[1]
        with capture_logs() as logs:
            listeners = bind_listeners("127.0.0.1", port)
        try:
            shared = [e for e in logs if e["event"] == "listen.port_shared"]
            assert len(shared) == 1, logs
            assert shared[0]["log_level"] == "warning"
            assert shared[0]["address"] == f"127.0.0.1:{port}"
            assert shared[0]["message"].startswith(
                f"another socket already listens on 127.0.0.1:{port}: with SO_REUSEPORT both take connections"
            )
            assert f"`ss -ltnp 'sport = :{port}'`" in shared[0]["message"]
        finally:
            for lst in listeners:
                await lst.aclose()


def test_a_port_held_without_reuseport_fails_the_bind_without_claiming_it_is_shared() -> None:
    """The other socket takes no SO_REUSEPORT: the bind fails with its own advice, and no warning
    says that the two processes will share connections (they will not)."""
    with socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        other.bind(("127.0.0.1", 0))
        other.listen(8)
        port = other.getsockname()[1]
        with capture_logs() as logs, pytest.raises(OSError) as failed:
            bind_listeners("127.0.0.1", port)
    assert f"cannot listen on 127.0.0.1:{port}" in str(failed.value)
    assert "is another process (not a hostproxy with SO_REUSEPORT) using the port?" in str(failed.value)
    assert [e for e in logs if e["event"] == "listen.port_shared"] == []


async def test_a_free_port_binds_without_a_word() -> None:
    with _other_listener("127.0.0.1") as probe:
        port = probe.getsockname()[1]
    with capture_logs() as logs:
        listeners = bind_listeners("127.0.0.1", port)
    for lst in listeners:
        await lst.aclose()
    assert [e for e in logs if e["event"] == "listen.port_shared"] == []


def test_a_listener_on_every_address_or_over_ipv6_is_seen() -> None:
    with _other_listener("0.0.0.0") as other:
        assert listening_elsewhere("127.0.0.1", other.getsockname()[1])
    with _other_listener("::1") as other:
        assert listening_elsewhere("::1", other.getsockname()[1])
        assert not listening_elsewhere("127.0.0.1", other.getsockname()[1])  # another family's table


def test_the_kernel_table_is_read_as_it_is_written(tmp_path: Path) -> None:
    """``/proc/net/tcp`` writes each address's 32-bit words in the host's byte order: 127.0.0.1 is
    ``0100007F`` on x86. Only LISTEN rows (state 0A) on the port count."""
    header = (
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
    )
    word = f"{int.from_bytes(socket.inet_aton('127.0.0.1'), sys.byteorder):08X}"  # 0100007F on x86
    rows = [
        f"   0: {word}:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000 0 0 1",
        f"   1: {word}:1F91 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 2",
    ]
    # (Row 0 is an established connection on port 8080; row 1 listens on 8081.)
    (tmp_path / "tcp").write_text(header + "\n".join(rows) + "\n")
    assert listening_elsewhere("127.0.0.1", 8081, proc_net=str(tmp_path))
    assert not listening_elsewhere("127.0.0.1", 8080, proc_net=str(tmp_path))
    assert not listening_elsewhere("127.0.0.2", 8081, proc_net=str(tmp_path))
    assert not listening_elsewhere("127.0.0.1", 8081, proc_net=str(tmp_path / "missing"))
