#!/usr/bin/env python3
"""Coverage-guided fuzzing (atheris / libFuzzer) of every decoder entry point.

    pip install atheris                      # the `fuzz` extra of pyproject.toml
    python3 bench/fuzz_decoders.py seeds OUTDIR          # seed corpora from pcaps/ + the corpus
    python3 bench/fuzz_decoders.py run TARGET CORPUS [libFuzzer flags...]
    nice -n 19 python3 bench/fuzz_decoders.py run dns out/dns -max_total_time=600 -timeout=10

TARGET is one of :data:`TARGETS`. A finding is any exception other than the
entry point's documented one (``CaptureFileError`` for the capture readers,
``ValueError`` for a procs record), an ``engine_errors`` count (the engine
catches decoder exceptions so that a capture goes on: for the fuzzer that
catch is a bug report), a run over ``-timeout`` seconds, or memory over
``-rss_limit_mb``. Results of the last campaign: bench/README-reliability.md.
"""

from __future__ import annotations

import json
import struct
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

LINKTYPES = (0, 1, 12, 14, 101, 105, 113, 117, 119, 127, 163, 192, 228, 229, 239, 276)


def _imports() -> None:
    global link, wire, dns, dnstcp, tls, tlsstream, quic, qc, tcpstream, ipfrag, pcap, pcapng, pcapfile
    global ptcpdump, recorded, engine, model, errors
    from egresswatch import errors, model  # noqa: F401
    from egresswatch.attribute import ptcpdump, recorded  # noqa: F401
    from egresswatch.capture import pcap, pcapfile, pcapng  # noqa: F401
    from egresswatch.decode import (  # noqa: F401
        dns,
        dnstcp,
        engine,
        ipfrag,
        link,
        quic,
        tcpstream,
        tls,
        tlsstream,
        wire,
    )
    from egresswatch.decode import quic_crypto as qc  # noqa: F401


class Input:
    """Splits fuzz bytes into small integers and chunks (FuzzedDataProvider-like,
    but pure Python so the same targets run without atheris for replays)."""

    def __init__(self, data: bytes) -> None:
        self.data, self.i = data, 0

    def u8(self) -> int:
        if self.i >= len(self.data):
            return 0
        self.i += 1
        return self.data[self.i - 1]

    def u32(self) -> int:
        return int.from_bytes(bytes(self.u8() for _ in range(4)), "big")

    def chunk(self, max_len: int = 1500) -> bytes:
        n = ((self.u8() << 8) | self.u8()) % (max_len + 1)
        out = self.data[self.i : self.i + n]
        self.i += len(out)
        return out

    def rest(self) -> bytes:
        return self.data[self.i :]

    @property
    def left(self) -> int:
        return len(self.data) - self.i


# --- targets: data -> None; raise = finding --------------------------------------
def t_link(data: bytes) -> None:
    if not data:
        return
    lt = LINKTYPES[data[0] % len(LINKTYPES)]
    link.decode(lt, data[1:])
    from egresswatch.decode import linkmore

    linkmore.decode(lt, data[1:])
    link.decode_ip(data[1:])
    link.transport(4 + 2 * (data[0] & 1), "192.0.2.1", "192.0.2.2", 17 if data[0] & 2 else 6, data[1:])


def t_dns(data: bytes) -> None:
    dns.parse_message(data)
    framer = dnstcp.TcpDnsFramer()
    inp = Input(data)
    while inp.left:
        for msg in framer.feed(inp.chunk(600)):
            dns.parse_message(msg)
        assert framer.pending <= framer.cap + 600


def t_tls(data: bytes) -> None:
    tls.parse_client_hello(data)
    tls.partial_sni(data)
    tlsstream.looks_like_hello_start(data)
    tlsstream.hello_from_stream(data)
    scanner = tlsstream.HelloScanner()
    inp = Input(data)
    while inp.left:
        scanner.feed(inp.chunk(400))
    scanner.partial()
    scanner.close()


_FLOW = ("192.0.2.1", 50000, "192.0.2.2", 443)


def t_quic(data: bytes) -> None:
    tracker = quic.QuicTracker(max_conns=8, max_keys=8)
    inp = Input(data)
    ts = 0.0
    while inp.left:
        mode = inp.u8() % 3
        ts += inp.u8() / 10
        if mode == 0:  # a raw datagram
            tracker.feed(ts, _FLOW, inp.chunk(1500))
        else:  # a well-protected Initial around fuzzed plaintext frames (reaches past the AEAD)
            dcid = inp.chunk(20) or b"\x01" * 8
            version = (1, 0x6B3343CF, 0xFF00001D)[inp.u8() % 3]
            pkt = qc.seal_client_initial(version, dcid, b"s", inp.u8(), inp.chunk(1200), pad_to=1200)
            tracker.feed(ts, _FLOW, pkt)
            qc.crypto_frames(inp.chunk(300), Counter())
    tracker.take_incomplete()
    tracker.finish()


def t_tcpstream(data: bytes) -> None:
    inp = Input(data)
    s = tcpstream.Stream(inp.u32(), cap=inp.u8() * 64 + 1, pending_cap=inp.u8() * 64)
    table: tcpstream.FlowTable[int, int] = tcpstream.FlowTable(max_flows=4, timeout=5.0)
    ts = 0.0
    while inp.left:
        op = inp.u8() % 6
        if op < 3:
            s.add(inp.u32(), inp.chunk(300))
        elif op == 3:
            s.skip_gap()
            s.drain()
        elif op == 4:
            ts += inp.u8() / 16
            table.put(inp.u8() & 7, 0, ts)
            table.expire(ts)
        else:
            table.pop(inp.u8() & 7)
            if len(table):
                table.pop_oldest()
        assert s.pending_bytes <= max(s.pending_cap, 0) + 300, s.pending_bytes


def t_ipfrag(data: bytes) -> None:
    d = ipfrag.Defragmenter(max_datagrams=8, max_bytes=4096, max_total_bytes=16384)
    inp = Input(data)
    ts = 0.0
    while inp.left:
        f = inp.u8()
        ts += inp.u8() / 8
        frag = wire.Fragment(
            ip_version=4 + 2 * (f & 1),
            src="192.0.2.1",
            dst="192.0.2.2",
            ident=inp.u8() & 3,
            offset_bytes=(inp.u8() * 8 + (inp.u8() << 11)) if f & 2 else inp.u8() * 8,
            more_fragments=bool(f & 4),
            proto_number=(17, 6, 4, 41, 47)[inp.u8() % 5],
            data=inp.chunk(600),
            truncated=f & 0xF0 == 0xF0,
        )
        d.feed(frag, ts)
    d.expire(ts + 1e6)


def _capture(reader: Callable[..., object], data: bytes) -> None:
    try:
        for _ in reader("fuzz", data):  # type: ignore[attr-defined]
            pass
    except errors.CaptureFileError:
        pass


def t_pcap(data: bytes) -> None:
    magic = bytes(data[:4]) in pcap.PCAP_MAGICS
    _capture(pcap.read_pcap, data if magic else b"\xd4\xc3\xb2\xa1" + data)


def t_pcapng(data: bytes) -> None:
    _capture(pcapng.read_pcapng, b"\x0a\x0d\x0d\x0a" + data)


def t_procfile(data: bytes) -> None:
    text = data.decode("utf-8", errors="replace")
    ptcpdump.parse_ptcpdump_comment(text)
    ptcpdump.ptcpdump_chain(text)
    try:
        recorded.parse_record(json.loads(data))
    except (ValueError, RecursionError):
        pass


def t_engine(data: bytes) -> None:
    eng = engine.Engine(max_flows=64)
    inp = Input(data)
    ts = 0.0
    n = 0
    while inp.left:
        n += 1
        ts += inp.u8() / 4
        lt = LINKTYPES[inp.u8() % len(LINKTYPES)]
        eng.feed(model.Frame(ts, inp.chunk(1600), lt, n, 0, None, None))
    eng.finish()
    assert not eng.counters["engine_errors"], dict(eng.counters)


TARGETS: dict[str, Callable[[bytes], None]] = {
    "link": t_link,
    "dns": t_dns,
    "tls": t_tls,
    "quic": t_quic,
    "tcpstream": t_tcpstream,
    "ipfrag": t_ipfrag,
    "pcap": t_pcap,
    "pcapng": t_pcapng,
    "procfile": t_procfile,
    "engine": t_engine,
}


# --- seeds ---------------------------------------------------------------------------
def seeds(out: Path) -> dict[str, int]:
    """Seed corpora: frames, DNS/TLS/QUIC payloads and whole files of the captures."""
    _imports()
    from tests.helpers.mutants import source_captures

    files = source_captures()
    made: Counter[str] = Counter()

    def put(target: str, blob: bytes) -> None:
        if made[target] >= 400 or not blob:
            return
        d = out / target
        d.mkdir(parents=True, exist_ok=True)
        (d / f"s{made[target]:04d}").write_bytes(blob)
        made[target] += 1

    for f in files:
        raw = f.read_bytes()
        if raw[:4] == b"\x0a\x0d\x0d\x0a":
            put("pcapng", raw[4:] if len(raw) < 200_000 else b"")
        else:
            put("pcap", raw if len(raw) < 200_000 else b"")
        try:
            frames = list(pcapfile.read_frames(f))
        except errors.CaptureFileError:
            continue
        for fr in frames[:200]:
            if fr.linktype in LINKTYPES:
                put("link", bytes([LINKTYPES.index(fr.linktype)]) + fr.data)
            pkt = link.decode(fr.linktype, fr.data)
            if not isinstance(pkt, model.IPPacket) or not pkt.payload:
                continue
            if 53 in (pkt.sport, pkt.dport):
                put("dns", pkt.payload)
            elif pkt.proto == "tcp" and pkt.payload[:1] == b"\x16":
                put("tls", pkt.payload)
                put("tls", pkt.payload[5:])
            elif pkt.proto == "udp" and pkt.payload[:1] and pkt.payload[0] & 0xC0 == 0xC0:
                put("quic", b"\x00\x00" + len(pkt.payload).to_bytes(2, "big") + pkt.payload)
        put("engine", b"".join(b"\x01\x01" + struct.pack("!H", len(fr.data)) + fr.data for fr in frames[:20]))
    for line in (REPO / "pcaps" / "mcp-verdicts.procs.jsonl").read_bytes().splitlines()[:50]:
        put("procfile", line)
    put("procfile", b"PID: 12\nCmd: /usr/bin/curl\nArgs: curl x\nParentPID: 1\nParentCmd: /bin/sh\n")
    for t in ("tcpstream", "ipfrag"):
        put(t, bytes(range(256)) * 4)
    return dict(made)


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "seeds":
        print(json.dumps(seeds(Path(argv[1]))))
        return 0
    if len(argv) >= 3 and argv[0] == "replay":  # run one target over files, no atheris
        _imports()
        for p in argv[2:]:
            TARGETS[argv[1]](Path(p).read_bytes())
        return 0
    if len(argv) < 2 or argv[0] != "run" or argv[1] not in TARGETS:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    import atheris

    with atheris.instrument_imports(include=["egresswatch"]):
        _imports()
    target = TARGETS[argv[1]]
    atheris.Setup([sys.argv[0], *argv[2:]], target)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
