"""sd_notify against a real datagram socket (path and abstract names)."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from egresswatch.service import sdnotify


@pytest.fixture
def path_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield sock
    sock.close()


def test_noop_without_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.ready() is False
    assert sdnotify.watchdog_ping() is False


def test_messages_arrive(path_socket: socket.socket) -> None:
    assert sdnotify.ready("capturing on all interfaces")
    assert path_socket.recv(4096) == b"READY=1\nSTATUS=capturing on all interfaces"
    assert sdnotify.status("two\nlines")
    assert path_socket.recv(4096) == b"STATUS=two lines"
    assert sdnotify.watchdog_ping()
    assert path_socket.recv(4096) == b"WATCHDOG=1"
    assert sdnotify.stopping()
    assert path_socket.recv(4096) == b"STOPPING=1"
    assert sdnotify.reloading()
    msg = path_socket.recv(4096).decode()
    first, second = msg.split("\n")
    assert first == "RELOADING=1"
    assert second.startswith("MONOTONIC_USEC=") and int(second.split("=")[1]) > 0


def test_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"egresswatch-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    sock.settimeout(2)
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    try:
        assert sdnotify.notify("READY=1")
        assert sock.recv(100) == b"READY=1"
    finally:
        sock.close()


def test_vanished_socket_does_not_raise(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone.sock"))
    assert sdnotify.ready() is False
    monkeypatch.setenv("NOTIFY_SOCKET", "relative/not-supported")
    assert sdnotify.ready() is False


def test_watchdog_period(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    assert sdnotify.watchdog_period() is None
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert sdnotify.watchdog_period() == 30.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert sdnotify.watchdog_period() == 30.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert sdnotify.watchdog_period() is None
    monkeypatch.delenv("WATCHDOG_PID")
    monkeypatch.setenv("WATCHDOG_USEC", "garbage")
    assert sdnotify.watchdog_period() is None
    monkeypatch.setenv("WATCHDOG_USEC", "0")
    assert sdnotify.watchdog_period() is None


def test_full_socket_never_blocks(path_socket: socket.socket) -> None:
    """A reader that stopped reading must not stall the daemon's main loop."""
    sent = [sdnotify.status("x" * 200) for _ in range(5000)]
    assert sent[0] is True and sent[-1] is False  # the queue filled up; later sends were dropped
