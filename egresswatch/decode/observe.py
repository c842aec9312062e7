"""Observations built from what the decoders found: a ClientHello, a DNS message.

The engine and its TCP flow tracker report through these two builders, so a
TLS, QUIC or DNS observation has the same fields whichever path found it.
Pure: no I/O, no clock (``ts`` is the frame's).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from egresswatch.decode import dns as dnsmod
from egresswatch.decode.tls import ClientHello
from egresswatch.model import DNS_ANSWER, DNS_QUERY, IPPacket, Observation

__all__ = ["add_dns", "hello_observation"]


def hello_observation(
    kind: str,
    proto: Any,
    ts: float,
    idx: int,
    src: str,
    sport: int,
    dst: str,
    dport: int,
    hello: ClientHello | None,
    quic_version: int | None = None,
    note: str | None = None,
) -> Observation:
    if hello is None:
        return Observation(ts, idx, kind, proto, src, sport, dst, dport, quic_version=quic_version, note=note)
    return Observation(
        ts,
        idx,
        kind,
        proto,
        src,
        sport,
        dst,
        dport,
        sni=hello.sni,
        alpn=hello.alpn,
        ech=hello.ech,
        tls_versions=hello.versions,
        quic_version=quic_version,
        note=note,
    )


def add_dns(
    ts: float, idx: int, pkt: IPPacket, payload: bytes, counters: Counter[str], out: list[Observation]
) -> None:
    """Append the observation of one DNS message (counting a malformed one)."""
    m = dnsmod.parse_message(payload)
    if m is None:
        counters["malformed_dns"] += 1
        return
    if m.malformed:
        counters["malformed_dns"] += 1
    out.append(
        Observation(
            ts,
            idx,
            DNS_ANSWER if m.qr else DNS_QUERY,
            pkt.proto,
            pkt.src,
            pkt.sport,
            pkt.dst,
            pkt.dport,
            qname=m.qname,
            qtype=m.qtype,
            rcode=m.rcode,
            answers=m.answers,
            records=m.records if m.qr else (),
            dns_id=m.id,
            note=m.malformed,
        )
    )
