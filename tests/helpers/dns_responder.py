"""A real DNS server for live tests (dnslib), run inside a test network namespace.

Answers every A query with --a, every AAAA with --aaaa, TXT with a short text;
names under --nx get NXDOMAIN. Prints "ready" on stdout once both UDP and TCP
servers listen.
"""

from __future__ import annotations

import argparse
import sys
import time

from dnslib import AAAA, QTYPE, RCODE, RR, TXT, A
from dnslib.server import BaseResolver, DNSLogger, DNSServer


class Resolver(BaseResolver):
    def __init__(self, a: str, aaaa: str, nx: str | None) -> None:
        self.a, self.aaaa, self.nx = a, aaaa, nx

    def resolve(self, request, handler):  # type: ignore[no-untyped-def]
        reply = request.reply()
        qname = request.q.qname
        qtype = QTYPE[request.q.qtype]
        if self.nx and str(qname).rstrip(".").endswith(self.nx):
            reply.header.rcode = RCODE.NXDOMAIN
            return reply
        if qtype in ("A", "ANY"):
            reply.add_answer(RR(qname, QTYPE.A, rdata=A(self.a), ttl=60))
        if qtype in ("AAAA", "ANY"):
            reply.add_answer(RR(qname, QTYPE.AAAA, rdata=AAAA(self.aaaa), ttl=60))
        if qtype == "TXT":
            reply.add_answer(RR(qname, QTYPE.TXT, rdata=TXT("ok"), ttl=60))
        return reply


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--address", default="0.0.0.0")
    ap.add_argument("--port", type=int, default=53)
    ap.add_argument("--a", default="127.0.0.1")
    ap.add_argument("--aaaa", default="::1")
    ap.add_argument("--nx", default=None)
    args = ap.parse_args()
    resolver = Resolver(args.a, args.aaaa, args.nx)
    logger = DNSLogger(log="-request,-reply,-truncated,-error,-recv,-send,-data", prefix=False)
    servers = [
        DNSServer(resolver, address=args.address, port=args.port, logger=logger),
        DNSServer(resolver, address=args.address, port=args.port, tcp=True, logger=logger),
    ]
    for s in servers:
        s.start_thread()
    print("ready", flush=True)
    try:
        while all(s.isAlive() for s in servers):
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    sys.exit(0)


if __name__ == "__main__":
    main()
