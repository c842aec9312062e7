"""Minimal stdlib sd_notify(3), after nobodd and gunicorn.

Every function is a no-op when ``NOTIFY_SOCKET`` is unset, so the daemon runs
the same under systemd, launchd or a terminal. Abstract socket names start with
``@`` in the environment and with a NUL byte on the wire.
"""

from __future__ import annotations

import os
import socket
import time

__all__ = [
    "notify",
    "ready",
    "reloading",
    "stopping",
    "status",
    "watchdog_ping",
    "watchdog_period",
]


def _address() -> str | bytes | None:
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return None
    if addr.startswith("@"):
        return b"\0" + addr[1:].encode()
    if addr.startswith("/"):
        return addr
    return None  # vsock and other forms are not supported


def notify(msg: str) -> bool:
    """Send ``msg`` (e.g. ``"READY=1"``); True when it was sent, False otherwise.

    Never raises: a vanished notification socket must not stop the daemon.
    """
    addr = _address()
    if addr is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            # never block: a reader that stopped reading must not stall the daemon
            sock.sendto(msg.encode("utf-8", "replace"), socket.MSG_DONTWAIT, addr)
    except OSError:
        return False
    return True


def ready(text: str | None = None) -> bool:
    return notify("READY=1" + (f"\nSTATUS={_line(text)}" if text else ""))


def reloading() -> bool:
    # systemd >= 253 wants MONOTONIC_USEC with RELOADING=1 for Type=notify-reload.
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify(f"RELOADING=1\nMONOTONIC_USEC={usec}")


def stopping() -> bool:
    return notify("STOPPING=1")


def status(text: str) -> bool:
    return notify(f"STATUS={_line(text)}")


def watchdog_ping() -> bool:
    return notify("WATCHDOG=1")


def watchdog_period() -> float | None:
    """Seconds between required pings (WATCHDOG_USEC), or None when the watchdog
    is off or meant for another process (WATCHDOG_PID)."""
    usec = os.environ.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = os.environ.get("WATCHDOG_PID")
    if pid and pid.strip() != str(os.getpid()):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 1_000_000 if value > 0 else None


def _line(text: str) -> str:
    return text.replace("\n", " ")
