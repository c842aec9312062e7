"""An MCP-server stand-in that hides its traffic behind an IPv6 routing
header, which any unprivileged socket may add (IPV6_RTHDR with a segment
routing header, segments left 0): once GO exists, sends REPS DNS queries
PREFIX<i>.test to [PEER6]:53, then a TLS connection to [PEER6]:443 naming
PREFIXtls.test, each socket with the header, then waits to be killed. Runs on
the system interpreter as any account.
usage: rthdr_server.py PEER6 PREFIX REPS GO"""

import os
import socket
import ssl
import struct
import sys
import time

IPV6_RTHDR = 57
peer, prefix, reps, go = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
# next header (the kernel fills it), length 2 (24 bytes), type 4, segments left 0,
# last entry 0, flags, tag, one segment: the destination itself
SRH = struct.pack("!BBBBBBH16s", 0, 2, 4, 0, 0, 0, 0, socket.inet_pton(socket.AF_INET6, peer))


def routed(kind: int) -> socket.socket:
    s = socket.socket(socket.AF_INET6, kind)
    s.setsockopt(socket.IPPROTO_IPV6, IPV6_RTHDR, SRH)
    return s


while not os.path.exists(go):
    time.sleep(0.02)
for i in range(reps):
    q = b"\x56\x78\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
    q += (
        b"".join(bytes([len(p)]) + p for p in f"{prefix}{i}.test".encode().split(b"."))
        + b"\x00\x00\x01\x00\x01"
    )
    s = routed(socket.SOCK_DGRAM)
    s.sendto(q, (peer, 53))
    s.close()
    time.sleep(0.02)
ctx = ssl.create_default_context()
ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
t = routed(socket.SOCK_STREAM)
t.settimeout(5)
try:
    t.connect((peer, 443))
    with ctx.wrap_socket(t, server_hostname=f"{prefix}tls.test") as tls:
        tls.do_handshake()
except OSError as e:
    print(f"tls: {e}", file=sys.stderr)
t.close()
time.sleep(3600)
