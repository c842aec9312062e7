"""The attacker's case for tests/test_upload_live.py: a long-lived MCP server
process (it acts once it is older than 10 s and the test says go) that
resolves an allowlisted name and uploads SIZE bytes over TLS to it, keeping
the connection open afterwards (no flow end to wait for).

    upload_server.py server|other RESOLV LOG GO SIZE PORT UDP_HOST UDP_PORT

Then it sends SIZE bytes more as 1,200-byte datagrams on an unconnected UDP
socket to UDP_HOST:UDP_PORT (an address it never resolved, a port nothing
listens on). "other" does the same as an unrelated process. Actions are
logged as JSON lines (pid, sport, bytes) for the test.
"""

from __future__ import annotations

import ctypes
import json
import os
import socket
import ssl
import sys
import time
from pathlib import Path

MODE, RESOLV, LOG, GO = sys.argv[1:5]
SIZE, PORT = int(sys.argv[5]), int(sys.argv[6])
UDP_HOST, UDP_PORT = sys.argv[7], int(sys.argv[8])
DGRAM = 1200
NAME = "allowed.test"


def log(**kw: object) -> None:
    with open(LOG, "a") as fh:
        fh.write(json.dumps({"pid": os.getpid(), "t": time.time(), **kw}) + "\n")


def private_resolver() -> None:
    """getaddrinfo() asks the lab's DNS server: RESOLV bound over /etc/resolv.conf
    in a private mount namespace (same network namespace)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(0x00020000) != 0:  # CLONE_NEWNS
        raise OSError(ctypes.get_errno(), "unshare")
    if libc.mount(None, b"/", None, 0x4000 | 0x40000, None) != 0:  # MS_REC | MS_PRIVATE
        raise OSError(ctypes.get_errno(), "mount private")
    if libc.mount(RESOLV.encode(), b"/etc/resolv.conf", None, 0x1000, None) != 0:  # MS_BIND
        raise OSError(ctypes.get_errno(), "bind resolv.conf")


def age() -> float:
    with open("/proc/self/stat") as f:
        start = int(f.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/uptime") as f:
        up = float(f.read().split()[0])
    return up - start / os.sysconf("SC_CLK_TCK")


private_resolver()
while age() < 10.5 or not os.path.exists(GO):
    time.sleep(0.1)
log(what="start", age=age())
addr = socket.getaddrinfo(NAME, PORT, socket.AF_INET, socket.SOCK_STREAM)[0][4]
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
raw = socket.create_connection(addr, timeout=30)
tls = ctx.wrap_socket(raw, server_hostname=NAME)
chunk = os.urandom(1 << 16)
left = SIZE
while left > 0:
    n = min(left, len(chunk))
    tls.sendall(chunk[:n])
    left -= n
log(what="uploaded", sport=tls.getsockname()[1], dst=addr[0], bytes=SIZE)
u = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
sent = 0
while sent < SIZE:
    sent += u.sendto(chunk[:DGRAM], (UDP_HOST, UDP_PORT))
    if sent % (DGRAM * 200) == 0:
        time.sleep(0.01)  # about 2 MB/s: the capture keeps up on a busy machine
log(what="datagrams", sport=u.getsockname()[1], dst=UDP_HOST, bytes=sent)
Path(GO + "." + MODE).touch()
while True:  # a long-lived process keeps its connection: no flow end
    time.sleep(1)
