"""A watched MCP server that runs a client inside a container-like network
namespace and PID namespace (tests/test_netns_live.py):

    netns_server.py NS HOST4 LOG GO

When GO exists it starts ``ip netns exec NS unshare --pid --fork python3 -c
CLIENT``. The client (pid 1 in its own PID namespace) logs its pids as the
host and its namespace see them (/proc/self/status NSpid, read through the
host's /proc), then sends a DNS query to HOST4:53, a TCP SYN to HOST4:9, a
datagram to HOST4:40000, a UDP-Lite datagram to HOST4:40001 and an ICMP echo request to HOST4 from a "ping"
socket (the namespace's net.ipv4.ping_group_range opened by the test), on
sockets closed at once. The server lives on.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

NS, HOST4, LOG, GO = sys.argv[1:5]
CLIENT = r"""
import json, os, socket, sys, time
host, log = sys.argv[1], sys.argv[2]
nspid = [int(x) for x in next(l for l in open("/proc/self/status") if l.startswith("NSpid:")).split()[1:]]
def note(**kw):
    with open(log, "a") as fh:
        fh.write(json.dumps({"nspid": nspid, "t": time.time(), **kw}) + "\n")
q = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x04inns\x04test\x00\x00\x01\x00\x01"
d = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); d.connect((host, 53)); d.send(q)
note(what="dns", sport=d.getsockname()[1]); d.close()
t = socket.socket(); t.settimeout(2)
try:
    t.connect((host, 9))
except OSError:
    pass
note(what="syn", sport=t.getsockname()[1]); t.close()
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.sendto(b"x" * 64, (host, 40000))
note(what="datagram", sport=u.getsockname()[1]); u.close()
lite = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, 136); lite.sendto(b"y" * 64, (host, 40001))
note(what="udplite", sport=lite.getsockname()[1]); lite.close()
p = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)
p.sendto(b"\x08" + bytes(7) + b"x" * 56, (host, 0))
note(what="ping", sport=p.getsockname()[1]); p.close()
"""

while not os.path.exists(GO):
    time.sleep(0.1)
subprocess.run(["ip", "netns", "exec", NS, "unshare", "--pid", "--fork", sys.executable, "-c", CLIENT, HOST4, LOG],
               check=True)  # fmt: skip
while True:
    time.sleep(1)
