"""The kernel-side capture filter: hand-assembled classic BPF, no libpcap needed.

One unbound ``AF_PACKET``/``SOCK_RAW`` socket sees every interface, each with
its own link layer, so the program first dispatches on the interface's hardware
type (the ``SKF_AD_HATYPE`` ancillary load) and runs the same checks at the
network-header offset of that link type:

- loopback (``ARPHRD_LOOPBACK``, Ethernet-format header): every packet is seen
  twice, as ``PACKET_OUTGOING`` and as ``PACKET_HOST``; the outgoing copy is
  dropped here, in the kernel (an ``inbound`` filter on an all-interface socket
  would drop real egress elsewhere);
- Ethernet (also bridges, veth, docker, tap), with one or two 802.1Q/802.1ad
  tags in the frame (tags offloaded to metadata need nothing);
- interfaces without a link header (``ARPHRD_NONE``: tun, WireGuard; PPP; IP
  tunnels; raw-IP modems): the frame is the IP packet;
- other link types are dropped.

What passes (IPv4 and IPv6; in IPv6 after up to ``V6_EXT_MAX`` hop-by-hop,
routing and destination-options headers, which an unprivileged sender may add
(``IPV6_RTHDR`` with a segment routing header); every IPv6 or IPv4 non-first
UDP fragment passes so fragmented DNS answers survive):

1. DNS: UDP or TCP with source or destination port 53;
2. TCP SYN without ACK (``connect`` observations), any port;
3. TCP segments whose payload starts ``0x16 0x03`` (a TLS handshake record:
   the first segment of every ClientHello, on any port), or is the one byte
   ``0x16`` (a client may write the record's first byte alone);
4. **ClientHello continuations.** A 1.6-2 KB post-quantum hello spans two
   segments when segmentation offload is off, and its SNI is often in the
   second, which starts with arbitrary bytes. Classic BPF is stateless, so the
   rule is a shape: a TCP segment that this host sends (``PACKET_OUTGOING``,
   which includes forwarded container and VM traffic on the egress interface;
   on loopback the kept host copy) with PSH set and 1..``CONT_MAX`` payload
   bytes (the tail of a hello is the last segment of the client's write, so it
   carries PSH), except segments that start like another TLS record
   (``0x14``/``0x15``/``0x17`` then ``0x03``: application data, alerts) and SSH
   (port 22). Bulk transfers pass the short last segment of many writes and
   interactive non-TLS protocols their small segments; userspace
   (:class:`egresswatch.capture.gate.HelloGate`) keeps only segments of flows
   whose hello start announced more bytes, so the cost is a header parse per
   passed segment. A hello spanning three or more segments loses its full-size
   middle ones (no PSH, or over ``CONT_MAX``): only the eBPF filter
   (:mod:`egresswatch.capture.filters`), which follows each flow's records,
   passes those.
5. QUIC long-header packets with the fixed bit (first byte ``0b11xxxxxx``) in
   UDP datagrams of at least 1200 bytes of payload: RFC 9000 makes clients pad
   every datagram carrying an Initial to 1200 bytes. This excludes RTP (first
   byte 0x80) and short-header QUIC traffic.
"""

from __future__ import annotations

import ctypes
import socket
import struct
from collections.abc import Callable

# isort: off
from egresswatch.capture.cbpf import (  # noqa: F401  (re-exported: the filter's vocabulary)
    ABS, ADD, ALU, AND, B, H, IMM, IND, JA, JEQ, JGE, JGT, JMP, JSET, K, LD, LDX, LSH, MAX_INSNS, MEM, MISC,
    MSH, RET, RSH, ST, STX, SUB, TAX, TXA, W, X, Asm, Insn, disassemble, pack_program,
)  # fmt: skip
# isort: on

SKF_AD_OFF = -0x1000
SKF_AD_PKTTYPE = 4
SKF_AD_IFINDEX = 8
SKF_AD_HATYPE = 28

ARPHRD_ETHER = 1
ARPHRD_PPP = 512
ARPHRD_RAWIP = 519
ARPHRD_TUNNEL = 768
ARPHRD_TUNNEL6 = 769
ARPHRD_SIT = 776
ARPHRD_LOOPBACK = 772
ARPHRD_NONE = 0xFFFE
ETHERNET_HATYPES = (ARPHRD_ETHER, ARPHRD_LOOPBACK)
RAW_IP_HATYPES = (ARPHRD_NONE, ARPHRD_PPP, ARPHRD_RAWIP, ARPHRD_TUNNEL, ARPHRD_TUNNEL6, ARPHRD_SIT)

PACKET_OUTGOING = 4
SO_ATTACH_FILTER = 26
SO_LOCK_FILTER = 44

ACCEPT = 0x40000  # bytes kept per packet: a whole TSO/GRO super-packet
CONT_MAX = 1200  # largest ClientHello continuation segment passed by rule 4
QUIC_MIN_UDP_LEN = 8 + 1200
TLS_HANDSHAKE = 0x16
V6_EXT_MAX = 4  # IPv6 extension headers walked before the transport header


def _accept_port(a: Asm, o: int, port: int) -> None:
    """Accept when the L4 source or destination port (X = L4 offset) is ``port``."""
    a.op(LD | H | IND, o + 0)
    a.accept_if(JEQ, port)
    a.op(LD | H | IND, o + 2)
    a.accept_if(JEQ, port)


def _transport(a: Asm, o: int, set_x: Callable[[], None], l3len: Callable[[], None], tag: str) -> None:
    """UDP/TCP checks; ``set_x`` loads X with the L4 header offset relative to
    ``o``; ``l3len`` loads A with the length counted from ``o`` (IP total length)."""
    udp, tcp = f"udp.{tag}", f"tcp.{tag}"
    a.label(udp)
    set_x()
    _accept_port(a, o, 53)
    a.op(LD | B | IND, o + 8)
    a.op(ALU | AND | K, 0xC0)
    quic = a.fresh("quic")
    a.jmp(JEQ, 0xC0, quic, None)
    a.ret(0)
    a.label(quic)
    a.op(LD | H | IND, o + 4)
    a.accept_if(JGE, QUIC_MIN_UDP_LEN)
    a.ret(0)

    a.label(tcp)
    set_x()
    _accept_port(a, o, 53)
    a.op(LD | B | IND, o + 13)
    a.op(ST, 0)  # M[0] = TCP flags
    a.op(ALU | AND | K, 0x12)
    a.accept_if(JEQ, 0x02)  # SYN without ACK
    # X = L4 offset + TCP header length = payload offset (relative to o)
    a.op(LD | B | IND, o + 12)
    a.op(ALU | RSH | K, 2)
    a.op(ALU | AND | K, 0x3C)
    a.op(ALU | ADD | X)
    a.op(MISC | TAX)
    l3len()
    a.op(ALU | SUB | X)  # payload length (wraps huge when malformed)
    a.drop_if(JEQ, 0)
    a.op(ST, 1)  # M[1] = payload length
    a.op(LD | B | IND, o + 0)
    a.op(ST, 2)  # M[2] = first payload byte
    not_hs = a.fresh("nothello")
    a.jmp(JEQ, TLS_HANDSHAKE, None, not_hs)
    a.op(LD | MEM, 1)
    a.accept_if(JEQ, 1)  # the record's first byte alone (a load past the payload would drop it)
    a.op(LD | B | IND, o + 1)
    a.accept_if(JEQ, 0x03)
    a.label(not_hs)
    # rule 4: short PSH segments that do not look like another TLS record
    a.op(LD | MEM, 0)
    psh = a.fresh("psh")
    a.jmp(JSET, 0x08, psh, None)
    a.ret(0)
    a.label(psh)
    # only segments this host sends (PACKET_OUTGOING; forwarded container and VM
    # traffic is outgoing on the egress interface too): the PSH tails of every
    # download are not hello continuations. Loopback keeps its host copy.
    a.op(LD | W | ABS, SKF_AD_OFF + SKF_AD_PKTTYPE)
    sent = a.fresh("sent")
    a.jmp(JEQ, PACKET_OUTGOING, sent, None)
    a.op(LD | W | ABS, SKF_AD_OFF + SKF_AD_HATYPE)
    a.jmp(JEQ, ARPHRD_LOOPBACK, sent, None)
    a.ret(0)
    a.label(sent)
    a.op(LD | MEM, 1)
    a.drop_if(JGT, CONT_MAX)
    other = a.fresh("notrecord")
    a.jmp(JEQ, 1, other, None)  # one byte: no second byte to look at
    a.op(LD | B | IND, o + 1)
    a.jmp(JEQ, 0x03, None, other)
    a.op(LD | MEM, 2)
    a.drop_if(JEQ, 0x14)
    a.drop_if(JEQ, 0x15)
    a.drop_if(JEQ, 0x17)
    a.label(other)
    set_x()
    a.op(LD | H | IND, o + 0)
    a.drop_if(JEQ, 22)
    a.op(LD | H | IND, o + 2)
    a.drop_if(JEQ, 22)
    a.ret(ACCEPT)


def _ipv4(a: Asm, o: int) -> None:
    tag = f"v4.{o}"
    a.label(tag)
    a.op(LD | H | ABS, o + 6)
    frag = a.fresh("frag")
    a.jmp(JSET, 0x1FFF, frag, None)
    a.op(LD | B | ABS, o + 9)
    a.goto_if(JEQ, 17, f"udp.{tag}")
    a.goto_if(JEQ, 6, f"tcp.{tag}")
    a.ret(0)
    a.label(frag)  # non-first fragment: no ports; keep UDP (DNS answer tails)
    a.op(LD | B | ABS, o + 9)
    a.accept_if(JEQ, 17)
    a.ret(0)

    def set_x() -> None:
        a.op(LDX | B | MSH, o)

    def l3len() -> None:
        a.op(LD | H | ABS, o + 2)

    _transport(a, o, set_x, l3len, tag)


def _ipv6(a: Asm, o: int) -> None:
    tag = f"v6.{o}"
    a.label(tag)
    # walk up to V6_EXT_MAX hop-by-hop, routing and destination-options headers
    # (an unprivileged socket may add a routing header, IPV6_RTHDR type 4, to
    # every packet it sends); X = offset of the header after them, from o
    a.op(LDX | IMM, 40)
    a.op(LD | B | ABS, o + 6)
    walked = a.fresh("walked")
    for _ in range(V6_EXT_MAX):
        ext = a.fresh("ext")
        a.jmp(JEQ, 0, ext, None)
        a.jmp(JEQ, 43, ext, None)
        a.jmp(JEQ, 60, ext, walked)
        a.label(ext)
        a.op(LD | B | IND, o + 1)  # the header's length in 8-byte units, less one
        a.op(ALU | ADD | K, 1)
        a.op(ALU | LSH | K, 3)
        a.op(ALU | ADD | X)
        a.op(ST, 3)
        a.op(LD | B | IND, o + 0)  # its next header
        a.op(LDX | MEM, 3)
    a.label(walked)
    a.op(STX, 3)  # M[3] = transport offset (set_x)
    a.goto_if(JEQ, 17, f"udp.{tag}")
    a.goto_if(JEQ, 6, f"tcp.{tag}")
    frag_end = a.fresh("fragend")
    a.jmp(JEQ, 44, None, frag_end)
    a.op(LD | B | IND, o + 0)  # next header inside the fragment header
    a.accept_if(JEQ, 17)
    a.label(frag_end)
    a.ret(0)

    def set_x() -> None:
        a.op(LDX | MEM, 3)

    def l3len() -> None:
        a.op(LD | H | ABS, o + 4)
        a.op(ALU | ADD | K, 40)

    _transport(a, o, set_x, l3len, tag)


def build_program(drop_loopback_outgoing: bool = True) -> list[Insn]:
    """The capture filter described in the module docstring."""
    a = Asm(ACCEPT)
    a.op(LD | W | ABS, SKF_AD_OFF + SKF_AD_HATYPE)
    if drop_loopback_outgoing:
        a.jmp(JEQ, ARPHRD_LOOPBACK, "lo", None)
    a.goto_if(JEQ, ARPHRD_ETHER, "eth")
    a.goto_if(JEQ, ARPHRD_LOOPBACK, "eth")
    for hatype in RAW_IP_HATYPES:
        a.goto_if(JEQ, hatype, "raw")
    a.ret(0)
    if drop_loopback_outgoing:
        a.label("lo")
        a.op(LD | W | ABS, SKF_AD_OFF + SKF_AD_PKTTYPE)
        a.drop_if(JEQ, PACKET_OUTGOING)
        a.ja("eth")
    # Ethernet, then inside one 802.1Q/802.1ad tag, then inside a second 802.1Q tag
    for at, here, tags, inner in ((12, "eth", (0x8100, 0x88A8), "vlan"), (16, "vlan", (0x8100,), "qinq"),
                                  (20, "qinq", (), "")):  # fmt: skip
        a.label(here)
        a.op(LD | H | ABS, at)
        a.goto_if(JEQ, 0x0800, f"v4.{at + 2}")
        a.goto_if(JEQ, 0x86DD, f"v6.{at + 2}")
        for tag in tags:
            a.jmp(JEQ, tag, inner, None)
        a.ret(0)
    a.label("raw")
    a.op(LD | B | ABS, 0)
    a.op(ALU | AND | K, 0xF0)
    a.goto_if(JEQ, 0x40, "v4.0")
    a.goto_if(JEQ, 0x60, "v6.0")
    a.ret(0)
    for o in (0, 14, 18, 22):
        _ipv4(a, o)
        _ipv6(a, o)
    return a.assemble()


def attach(sock: socket.socket, prog: list[Insn] | None = None) -> int:
    """Attach ``prog`` (default: :func:`build_program`) with SO_ATTACH_FILTER.

    Returns the number of instructions. Raises OSError when the kernel's
    verifier rejects the program.
    """
    prog = build_program() if prog is None else prog
    code = pack_program(prog)
    buf = ctypes.create_string_buffer(code, len(code))
    # struct sock_fprog { unsigned short len; struct sock_filter *filter; }
    fprog = struct.pack("HL", len(prog), ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
    return len(prog)
