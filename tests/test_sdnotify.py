"""sd_notify against a real AF_UNIX datagram socket, as systemd would listen."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from collector import sdnotify
from tests import virtual_time


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2)
    try:
        yield sock, str(path)
    finally:
        sock.close()


def test_ready_status_stopping(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    n = sdnotify.Notifier({"NOTIFY_SOCKET": path})
    assert n.enabled
    assert n.ready("collecting 3 accounts")
    assert sock.recv(4096) == b"READY=1\nSTATUS=collecting 3 accounts"
    assert n.stopping()
    assert sock.recv(4096) == b"STOPPING=1"


def test_abstract_socket() -> None:
    name = f"ig-collector-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(2)
        n = sdnotify.Notifier({"NOTIFY_SOCKET": "@" + name})
        assert n.watchdog()
        assert sock.recv(4096) == b"WATCHDOG=1"


def test_without_socket_everything_is_a_noop() -> None:
    n = sdnotify.Notifier({})
    assert not n.enabled
    assert not n.ready()
    assert n.watchdog_interval_s is None


def test_send_failure_is_not_fatal(tmp_path: Path) -> None:
    n = sdnotify.Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens.sock")})
    assert not n.ready()


def test_watchdog_interval_respects_pid() -> None:
    env = {"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "20000000"}
    assert sdnotify.Notifier(env).watchdog_interval_s == 20.0
    assert sdnotify.Notifier({**env, "WATCHDOG_PID": str(os.getpid())}).watchdog_interval_s == 20.0
    assert sdnotify.Notifier({**env, "WATCHDOG_PID": "1"}).watchdog_interval_s is None


@virtual_time.test  # a virtual clock: exactly 0.45 s of loop time, however busy the machine is
async def test_watchdog_pings_from_the_loop_at_half_the_interval(
        listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    sock.setblocking(False)
    n = sdnotify.Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"})  # 0.2 s: ping every 0.1 s
    task = asyncio.create_task(n.watchdog_loop(), name="watchdog")
    await asyncio.sleep(0.45)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    pings = 0
    while True:
        try:
            assert sock.recv(4096) == b"WATCHDOG=1"
        except BlockingIOError:
            break
        pings += 1
    assert pings == 5  # at 0, 0.1, 0.2, 0.3 and 0.4 s


def test_full_queue_never_blocks(listener: tuple[socket.socket, str]) -> None:
    _, path = listener
    n = sdnotify.Notifier({"NOTIFY_SOCKET": path})
    results = [n.watchdog() for _ in range(5000)]  # nobody reads: the queue fills up
    assert results[0] and not results[-1]
