"""Sockets of processes, read from the kernel (Linux): pure parsers of
/proc/net tables, an exact NETLINK_SOCK_DIAG lookup of one 4-tuple (about
0.1 ms, against 3.5 ms for reading /proc/net/tcp on a big host), the socket
inodes in /proc/PID/fd, and a socket's local address read through
pidfd_getfd(2). Used by egresswatch.attribute.owners and .harvest; stdlib only.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import socket
import struct
import threading
from functools import lru_cache

# the fd listings (and their budget) live in fdcache; the attributor imports them from here
from egresswatch.attribute.fdcache import FdCache as FdCache
from egresswatch.attribute.fdcache import socket_fds as socket_fds

SockKey = tuple[str, str, int]  # (proto, normalised local ip, local port)

_WILDCARD = {"0.0.0.0", "::"}


@lru_cache(maxsize=4096)
def norm_ip(ip: str) -> str:
    """Canonical text of an address; IPv4-mapped IPv6 becomes dotted IPv4."""
    try:
        a = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(a, ipaddress.IPv6Address) and a.ipv4_mapped is not None:
        return str(a.ipv4_mapped)
    return a.compressed


def _hex_ip(h: str) -> str:
    raw = bytes.fromhex(h)
    if len(raw) == 4:
        return str(ipaddress.IPv4Address(raw[::-1]))
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
    return norm_ip(str(ipaddress.IPv6Address(words)))


def parse_net_table(text: str, proto: str) -> dict[SockKey, int]:
    """Pure: a /proc/net/{tcp,udp}[6] table -> {(proto, local ip, port): inode}.
    Sockets without an owner (inode 0: TIME_WAIT, orphaned) map to 0."""
    out: dict[SockKey, int] = {}
    for line in text.splitlines()[1:]:
        f = line.split()
        if len(f) < 10:
            continue
        try:
            ip_hex, port_hex = f[1].split(":")
            key = (proto, _hex_ip(ip_hex), int(port_hex, 16))
            inode = int(f[9])
        except ValueError:
            continue
        if inode or key not in out:
            out[key] = inode
    return out


def read_net_tables(pid: int | str, proto: str) -> dict[SockKey, int]:
    out: dict[SockKey, int] = {}
    for suffix in ("", "6"):
        try:
            with open(f"/proc/{pid}/net/{proto}{suffix}") as f:
                out.update(parse_net_table(f.read(), proto))
        except OSError:
            pass
    return out


NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
_NLMSG = struct.Struct("=IHHII")
_SYS_PIDFD_GETFD = 438  # same number on every architecture (asm-generic)


class SockDiag:
    """Exact one-socket lookups over NETLINK_SOCK_DIAG, in the namespace the
    netlink socket was opened in. ``open()`` may raise OSError."""

    def __init__(self) -> None:
        self.sock: socket.socket | None = None
        self._seq = 0
        self._lock = threading.Lock()

    def open(self) -> None:
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG)
        s.settimeout(0.5)
        self.sock = s

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def inode(self, proto: str, local: tuple[str, int], remote: tuple[str, int]) -> int | None:
        """The inode of the socket with this 4-tuple (0: no owner, e.g.
        TIME_WAIT), None when there is none. UDP also finds wildcard binds."""
        if self.sock is None:
            return None
        fam = socket.AF_INET6 if ":" in local[0] else socket.AF_INET
        try:
            lip = socket.inet_pton(fam, local[0])
            rip = socket.inet_pton(fam, remote[0])
        except OSError:
            return None
        # TCP lookups take (local, remote); the kernel's UDP lookup reads the
        # request as a received packet: (remote, local).
        if proto == "tcp":
            a, ap, b, bp, ipproto = lip, local[1], rip, remote[1], socket.IPPROTO_TCP
        else:
            a, ap, b, bp, ipproto = rip, remote[1], lip, local[1], socket.IPPROTO_UDP
        body = (
            struct.pack("=BBBBI", fam, ipproto, 0, 0, 0xFFFFFFFF)
            + struct.pack("!HH", ap, bp)
            + a.ljust(16, b"\0")
            + b.ljust(16, b"\0")
            + struct.pack("=III", 0, 0xFFFFFFFF, 0xFFFFFFFF)
        )
        with self._lock:
            self._seq = (self._seq + 1) & 0xFFFFFFFF
            seq = self._seq
            try:
                self.sock.send(_NLMSG.pack(_NLMSG.size + len(body), SOCK_DIAG_BY_FAMILY, 1, seq, 0) + body)
                for _ in range(8):  # skip stale replies of timed-out requests
                    data = self.sock.recv(8192)
                    if len(data) < _NLMSG.size + 4:
                        return None
                    _ln, typ, _fl, rseq, _pid = _NLMSG.unpack_from(data)
                    if rseq != seq:
                        continue
                    if typ == 2 or len(data) < _NLMSG.size + 72:  # NLMSG_ERROR (ENOENT)
                        return None
                    return int(struct.unpack_from("=I", data, _NLMSG.size + 68)[0])
            except OSError:
                return None
        return None


_libc: ctypes.CDLL | None = None


def fd_local_address(pid: int, fd: int) -> SockKey | None:
    """(proto, local ip, port) of another process's socket fd, by duplicating
    it for an instant with pidfd_getfd(2) (root; Linux >= 5.6). None for
    non-inet sockets, unbound ones, or when the kernel refuses."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return None
    try:
        nfd = _libc.syscall(_SYS_PIDFD_GETFD, pidfd, fd, 0)
        if nfd < 0:
            return None
        with socket.socket(fileno=nfd) as s:
            if s.family not in (socket.AF_INET, socket.AF_INET6):
                return None
            proto = {socket.SOCK_STREAM: "tcp", socket.SOCK_DGRAM: "udp"}.get(s.type)
            addr = s.getsockname()
        if proto is None or not addr[1]:
            return None
        return (proto, norm_ip(addr[0]), int(addr[1]))
    except OSError:
        return None
    finally:
        os.close(pidfd)


def socket_inodes(pid: int) -> set[int]:
    return set(socket_fds(pid))


def netns_id(pid: int | str) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


def find_inode(table: dict[SockKey, int], key: SockKey) -> int | None:
    """Inode of the exact local address, else of a wildcard bind on that port."""
    inode = table.get(key)
    if inode is not None:
        return inode
    for w in _WILDCARD:
        inode = table.get((key[0], w, key[2]))
        if inode is not None:
            return inode
    return None
