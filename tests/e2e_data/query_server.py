"""A plain MCP-server stand-in: once GO exists, sends REPS DNS queries
PREFIX<i>.test to PEER:53 (a socket per query, closed right after sendto),
then waits to be killed. Runs on the system interpreter as any account.
usage: query_server.py PEER PREFIX REPS GO"""

import os
import socket
import sys
import time

peer, prefix, reps, go = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
while not os.path.exists(go):
    time.sleep(0.02)
for i in range(reps):
    q = b"\x56\x78\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
    q += (
        b"".join(bytes([len(p)]) + p for p in f"{prefix}{i}.test".encode().split(b"."))
        + b"\x00\x00\x01\x00\x01"
    )
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.sendto(q, (peer, 53))
    s.close()
    time.sleep(0.02)
time.sleep(3600)
