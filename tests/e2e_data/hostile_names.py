"""A server whose every name is hostile: it sets its comm to ESC, BEL, CR/LF
and U+202E, and once GO exists sends DNS queries whose first label holds ESC,
CR, LF, BEL, NUL and U+202E bytes (a socket per query, closed after sendto),
three rounds 0.3 s apart, then waits to be killed. Its argv (from mcp.json)
carries more of the same. System interpreter, any account.
usage: hostile_names.py PEER GO [ARGS...]"""

import ctypes
import os
import socket
import sys
import time

PR_SET_NAME = 15
ctypes.CDLL(None).prctl(PR_SET_NAME, b"ev\x1b[2J\x07\r\n\xe2\x80\xae", 0, 0, 0)
peer, go = sys.argv[1], sys.argv[2]
while not os.path.exists(go):
    time.sleep(0.02)
label = b"q\x1b[31m\r\nFORGED\x07\x00\xe2\x80\xae"
for r in range(3):
    q = bytes([0x9A, r, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0])
    q += bytes([len(label)]) + label + b"\x04evil\x04test\x00\x00\x01\x00\x01"
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.sendto(q, (peer, 53))
    s.close()
    time.sleep(0.3)
time.sleep(3600)
