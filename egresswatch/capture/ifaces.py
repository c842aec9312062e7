"""Per-interface bookkeeping of the live capture: the names of interface
indexes, and the copies of one IP packet seen on several interfaces (a
container's veth and its bridge, a VLAN device and its parent)."""

from __future__ import annotations

import socket
import time

LINKTYPE_ETHERNET = 1


def l3_offset(linktype: int, data: bytes) -> int:
    """Offset of the IP header in a frame of ``linktype`` (VLAN tags skipped)."""
    if linktype != LINKTYPE_ETHERNET:
        return 0
    off, ethertype = 12, data[12:14]
    while ethertype in (b"\x81\x00", b"\x88\xa8") and off < 20:
        off += 4
        ethertype = data[off : off + 2]
    return off + 2


class Dedupe:
    """``duplicate(...)`` is True for an identical IP packet seen on a different
    interface within ``window`` seconds of its previous copy."""

    def __init__(self, window: float) -> None:
        self.window = window
        self._seen: dict[int, tuple[int, float]] = {}
        self._purge = 0.0

    def duplicate(self, data: bytes, linktype: int, ifname: str, ts: float) -> bool:
        try:
            l3 = data[l3_offset(linktype, data) :]
        except IndexError:
            return False
        key = hash(l3)
        ifkey = hash(ifname)
        prev = self._seen.get(key)
        self._seen[key] = (ifkey, ts)
        if ts - self._purge > 1.0:
            cutoff = ts - self.window
            self._seen = {k: v for k, v in self._seen.items() if v[1] >= cutoff}
            self._purge = ts
        return prev is not None and prev[0] != ifkey and ts - prev[1] <= self.window


class IfNames:
    """Interface name for an index, cached for a few seconds (indexes of
    deleted interfaces are reused)."""

    def __init__(self) -> None:
        self._names: dict[int, tuple[str, float]] = {}

    def name(self, ifindex: int) -> str:
        now = time.monotonic()
        hit = self._names.get(ifindex)
        if hit is not None and hit[1] > now:
            return hit[0]
        try:
            name = socket.if_indextoname(ifindex)
        except OSError:
            name = f"if{ifindex}"
        if len(self._names) > 4096:
            self._names.clear()
        self._names[ifindex] = (name, now + 5.0)
        return name
