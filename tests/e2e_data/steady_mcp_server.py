"""A watched fake MCP server for bench/dns_flood_bench.py: COUNT numbered DNS
queries ``w<i>.TAG.test`` at QPS from one long-lived socket (a server that
polls an API), then writes how many it sent to REPORT and stays alive.

    steady_mcp_server.py PEER TAG COUNT QPS REPORT
"""

from __future__ import annotations

import json
import socket
import sys
import time
from pathlib import Path

PEER, TAG, COUNT, QPS, REPORT = sys.argv[1:6]


def main() -> None:
    count, qps = int(COUNT), float(QPS)
    time.sleep(0.3)  # the daemon learns of this process from the proc connector at exec
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect((PEER, 53))
    start = time.time()
    sent = 0
    for i in range(count):
        name = f"w{i}.{TAG}.test".encode()
        q = (i & 0xFFFF).to_bytes(2, "big") + b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
        q += b"".join(bytes([len(p)]) + p for p in name.split(b".")) + b"\x00\x00\x01\x00\x01"
        try:
            s.send(q)
            sent += 1
        except OSError:
            pass
        ahead = start + (i + 1) / qps - time.time()
        if ahead > 0:
            time.sleep(ahead)
    Path(REPORT).write_text(json.dumps({"start": start, "end": time.time(), "sent": sent}))
    time.sleep(600)


if __name__ == "__main__":
    main()
