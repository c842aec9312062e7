"""Opening a capture socket: AF_PACKET, buffer, timestamps, filter, ring.

:func:`open_packet_socket` returns the socket with its kernel filter attached
(``attach``: :func:`egresswatch.capture.filters.attach` with the source's
choices) and its TPACKET_V3 ring, or raises :class:`CaptureError` with one
line. Frames queued between ``socket()`` and the filter's attachment passed
no filter; they are read and thrown away before the ring is set up.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Collection

from egresswatch.capture.filters import ActiveFilter
from egresswatch.capture.ring import BLOCK_SIZE, SNAPLEN, SO_TIMESTAMPNS, Ring
from egresswatch.errors import CaptureError

log = logging.getLogger(__name__)

ETH_P_ALL = 0x0003
SO_RCVBUFFORCE = 33
PRIVILEGE_HINT = "live capture needs root or CAP_NET_RAW/CAP_NET_ADMIN"


def open_packet_socket(
    interfaces: Collection[str],
    rcvbuf: int,
    attach: Callable[[socket.socket], ActiveFilter],
    use_ring: bool = True,
    block: int = BLOCK_SIZE,
) -> tuple[socket.socket, ActiveFilter, Ring | None]:
    """A non-blocking packet socket for every interface (or the one named),
    its filter attached and, when ``use_ring`` and the kernel allows, its ring
    of ``rcvbuf`` bytes in blocks of ``block``."""
    try:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    except PermissionError:
        raise CaptureError(PRIVILEGE_HINT) from None
    except OSError as exc:
        raise CaptureError(f"cannot open a packet socket: {exc.strerror}") from None
    active: ActiveFilter | None = None
    try:
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        if len(interfaces) == 1:  # one interface: the kernel queues only its frames
            (name,) = interfaces
            try:
                sock.bind((name, 0))
            except OSError as exc:
                raise CaptureError(f"interface {name}: {exc.strerror}") from None
        try:
            active = attach(sock)
        except OSError as exc:
            raise CaptureError(f"the kernel rejected the capture filter: {exc.strerror or exc}") from None
        sock.setblocking(False)
        _drain_unfiltered(sock)
        ring = None
        if use_ring:
            try:
                ring = Ring(sock, rcvbuf, block)
            except OSError as exc:  # old kernel or locked memory limit: plain reads
                log.warning("no TPACKET_V3 ring (%s); reading frames one by one", exc.strerror)
    except BaseException:
        sock.close()
        if active is not None:
            active.close()
        raise
    return sock, active, ring


def _drain_unfiltered(sock: socket.socket) -> None:
    """Frames queued between socket() and SO_ATTACH_FILTER bypassed the filter."""
    buf = bytearray(SNAPLEN)
    while True:
        try:
            sock.recv_into(buf)
        except (BlockingIOError, InterruptedError):
            return
