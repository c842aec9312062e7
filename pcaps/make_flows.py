#!/usr/bin/env python3
"""Write the flow scenario: names sharing one address, one verdict per flow.

    python3 pcaps/make_flows.py [OUTDIR]     # default: the folder of this script

Writes mcp-flows.pcap, mcp-flows.procs.jsonl and mcp-flows.toml (golden test;
tests/test_golden.py also checks that no flow raises two alerts and that every
alert names what its own flow carried). Deterministic: fixed addresses,
ports, ids and timestamps.

The "notes" MCP server (node, pid 4400, Claude Desktop; allowlist
api.notes.example) resolves three names to one CDN address, the allowed name
last (so "the last name resolved to this IP" would call every connection
allowed), then opens five connections to it:

  1. SNI api.notes.example                        -> allowed (the hello decides)
  2. SNI collector.exfil-sink.example             -> flagged, named by its own SNI
  3. a ClientHello without SNI                    -> flagged, all three names candidates
  4. no hello at all (plain HTTP), 6 s of silence -> decided on the address after the
                                                     hello window, by the next frame's time
  5. ECH, outer SNI ech-front.cdn.example         -> flagged by the outer name, said so
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from make_tls_dns import ETH_C, ETH_S, client_hello, query, reply, tls_record
from make_verdicts import LOCAL, PROCS, RESOLVER, T0
from scapy.layers.inet import IP, TCP, UDP
from scapy.utils import wrpcap

SHARED = "198.51.100.77"
NAMES = ("collector.exfil-sink.example", "ech-front.cdn.example", "api.notes.example")  # resolution order

CONFIG = """\
# Config for the flow scenario (pcaps/make_flows.py).
[policy]
learning = false

[servers.notes]
allow = ["api.notes.example"]
"""


class Flows:
    def __init__(self) -> None:
        self.pkts: list = []
        self.procs: list[str] = []
        self.port = 41000
        self.dns_id = 300
        self.t = T0

    def _add(self, pkt: object, step: float = 0.01) -> None:
        pkt.time = self.t  # type: ignore[attr-defined]
        self.pkts.append(pkt)
        self.t += step

    def _record(self, proto: str, port: int, remote: tuple[str, int], kind: str) -> None:
        proc, chain, server, host, phase = PROCS["notes"]
        self.procs.append(json.dumps({
            "ts": self.t, "proto": proto, "local": [LOCAL, port], "remote": list(remote), "kind": kind,
            "process": proc, "chain": chain, "server": server, "host": host, "phase": phase,
            "reason": "recorded by make_flows.py",
        }, separators=(",", ":")))  # fmt: skip

    def dns(self, name: str, answer: str) -> None:
        self.port += 1
        self.dns_id += 1
        q = query(name, "A", self.dns_id)
        self._record("udp", self.port, (RESOLVER, 53), "dns_query")
        self._add(ETH_C / IP(src=LOCAL, dst=RESOLVER) / UDP(sport=self.port, dport=53) / bytes(q.pack()))
        zone = [f"{name}. 300 IN A {answer}"]
        self._add(ETH_S / IP(src=RESOLVER, dst=LOCAL) / UDP(sport=53, dport=self.port) / reply(q, zone))

    def tcp(self, hello: bytes | None, payload: bytes = b"", dport: int = 443) -> None:
        self.port += 1
        dst = SHARED
        self._record("tcp", self.port, (dst, dport), "connect")
        seq = 7_000_000 + self.port
        c = ETH_C / IP(src=LOCAL, dst=dst)
        self._add(c / TCP(sport=self.port, dport=dport, flags="S", seq=seq))
        self._add(ETH_S / IP(src=dst, dst=LOCAL) / TCP(sport=dport, dport=self.port, flags="SA", seq=9, ack=seq + 1))
        data = tls_record(hello) if hello is not None else payload
        if data:
            self._add(c / TCP(sport=self.port, dport=dport, flags="PA", seq=seq + 1, ack=10) / data)


def build() -> Flows:
    f = Flows()
    for name in NAMES:
        f.dns(name, SHARED)
    f.tcp(client_hello("api.notes.example"))  # 1: allowed by its own SNI
    f.tcp(client_hello("collector.exfil-sink.example"))  # 2: foreign SNI
    f.tcp(client_hello(None))  # 3: a hello without SNI: every name resolved to the address
    f.tcp(None, b"POST /c HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n\r\nsecret", dport=80)  # 4: no hello
    f.t += 6.0  # longer than the hello window: flow 4 is decided by the next frame's time
    f.tcp(client_hello("ech-front.cdn.example", ech=True, alpn=("h2",)))  # 5: ECH outer name
    return f


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent
    f = build()
    wrpcap(str(out / "mcp-flows.pcap"), f.pkts, linktype=1)
    (out / "mcp-flows.procs.jsonl").write_text("".join(line + "\n" for line in f.procs))
    (out / "mcp-flows.toml").write_text(CONFIG)
    print(f"mcp-flows.pcap: {len(f.pkts)} packets, {len(f.procs)} process records")


if __name__ == "__main__":
    main()
