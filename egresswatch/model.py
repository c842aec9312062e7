"""The data model shared by every module: frozen dataclasses, stdlib only.

Flow of data::

    Frame (capture) -> Observation (decode) -> Attribution (attribution/lineage)
        -> Verdict (policy) -> Event (stored, alerted, printed)

The frame's timestamp is the only clock: nothing downstream of capture calls
``time.time()``, so replaying a capture gives byte-identical output.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

# Observation kinds
DNS_QUERY = "dns_query"
DNS_ANSWER = "dns_answer"
TLS_SNI = "tls_sni"
TLS_INCOMPLETE = "tls_incomplete"
QUIC_SNI = "quic_sni"
CONNECT = "connect"
UDP_FLOW = "udp_flow"  # first datagram of a (process, destination) UDP flow, from the kernel (eBPF)
ICMP_FLOW = "icmp_flow"  # first echo request of a (process, destination) "ping" socket flow, ditto
FLOW_SUMMARY = "flow_summary"  # bytes a watched flow sent, from the kernel (eBPF): periodic and at its end
KINDS = (DNS_QUERY, DNS_ANSWER, TLS_SNI, TLS_INCOMPLETE, QUIC_SNI, CONNECT, UDP_FLOW, ICMP_FLOW, FLOW_SUMMARY)
#: Kinds that belong to a flow (5-tuple, first packet to last): the SYN and the hellos.
FLOW_KINDS = (CONNECT, TLS_SNI, TLS_INCOMPLETE, QUIC_SNI)
#: Kinds whose events carry ``candidates``, ``flow_id`` and ``decides``.
LINKED_KINDS = (*FLOW_KINDS, FLOW_SUMMARY)
HELLO_KINDS = (TLS_SNI, TLS_INCOMPLETE, QUIC_SNI)

Proto = Literal["udp", "tcp", "udplite", "icmp", "icmp6"]

ALLOWED = "allowed"
FLAGGED = "flagged"
UNWATCHED = "unwatched"
VERDICTS = (ALLOWED, FLAGGED, UNWATCHED)


@dataclass(frozen=True, slots=True)
class Frame:
    """One captured link-layer frame with its own timestamp.

    ``index`` is the 1-based frame number in its source (tshark numbering for
    files). ``comment`` holds pcapng packet comments (ptcpdump writes the
    owning process there). ``ifname`` is the capture interface when known.
    """

    ts: float
    data: bytes
    linktype: int
    index: int = 0
    orig_len: int = 0
    ifname: str | None = None
    comment: str | None = None


@dataclass(frozen=True, slots=True)
class IPPacket:
    """The innermost IPv4/IPv6 packet carrying UDP or TCP, after defragmentation.

    ``payload`` is the transport payload (after the UDP/TCP header), cut to what
    was captured. ``truncated`` is true when the capture cut the packet short.
    """

    src: str
    dst: str
    proto: Proto
    sport: int
    dport: int
    payload: bytes
    ip_version: int = 4
    tcp_flags: int = 0  # TCP flag byte (FIN=1 SYN=2 RST=4 PSH=8 ACK=16)
    seq: int = 0
    ack: int = 0
    truncated: bool = False


@dataclass(frozen=True, slots=True)
class DnsRecord:
    """One resource record of a DNS answer section, in presentation form."""

    name: str
    rtype: int
    ttl: int
    data: str


@dataclass(frozen=True, slots=True)
class Observation:
    """Something seen on the wire: a DNS message, a ClientHello, a SYN.

    Field meanings (also the JSON fields of ``egresswatch replay``):

    - ``ts``: packet time, epoch seconds; ``frame``: frame number that completed it
    - ``kind``: one of KINDS; ``proto``: udp|tcp|udplite|icmp|icmp6; ``src``/``sport``/``dst``/``dport``
    - DNS: ``qname`` (first question, presentation form, no trailing dot, "." for
      root), ``qtype`` (numeric), ``rcode`` (low 4 header bits), ``answers``
      (A/AAAA/CNAME data of the answer section in wire order), ``records``
      (every answer-section record), ``dns_id`` (transaction id)
    - TLS/QUIC: ``sni`` (first server_name, None if absent), ``alpn``, ``ech``
      (an encrypted_client_hello extension was offered: the SNI is then the
      outer, public name), ``tls_versions`` (supported_versions offered)
    - ``quic_version`` for quic_sni; ``note`` for anomalies (e.g. why a hello is
      incomplete).
    """

    ts: float
    frame: int
    kind: str
    proto: Proto
    src: str
    sport: int
    dst: str
    dport: int
    qname: str | None = None
    qtype: int | None = None
    rcode: int | None = None
    answers: tuple[str, ...] = ()
    records: tuple[DnsRecord, ...] = ()
    dns_id: int | None = None
    sni: str | None = None
    alpn: tuple[str, ...] = ()
    ech: bool = False
    tls_versions: tuple[int, ...] = ()
    quic_version: int | None = None
    note: str | None = None
    bytes_out: int | None = None  # flow_summary: bytes the flow was handed to send so far
    bytes_new: int | None = None  # flow_summary: of which since the flow's previous summary
    ended: bool = False  # flow_summary: the flow stopped sending (TCP FIN or reset)

    @property
    def is_dns(self) -> bool:
        return self.kind in (DNS_QUERY, DNS_ANSWER)

    @property
    def outbound(self) -> bool:
        """True when src is the local (initiating) side: everything but answers."""
        return self.kind != DNS_ANSWER

    def local(self) -> tuple[str, int]:
        return (self.src, self.sport) if self.outbound else (self.dst, self.dport)

    def remote(self) -> tuple[str, int]:
        return (self.dst, self.dport) if self.outbound else (self.src, self.sport)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "ts": self.ts,
            "frame": self.frame,
            "kind": self.kind,
            "proto": self.proto,
            "src": self.src,
            "sport": self.sport,
            "dst": self.dst,
            "dport": self.dport,
        }
        if self.is_dns:
            d["qname"] = self.qname
            d["qtype"] = self.qtype
            d["rcode"] = self.rcode
            d["answers"] = list(self.answers)
            d["dns_id"] = self.dns_id
            if self.kind == DNS_ANSWER:
                d["records"] = [
                    {"name": r.name, "type": r.rtype, "ttl": r.ttl, "data": r.data} for r in self.records
                ]
        elif self.kind in (TLS_SNI, QUIC_SNI, TLS_INCOMPLETE):
            d["sni"] = self.sni
            d["alpn"] = list(self.alpn)
            d["ech"] = self.ech
            d["tls_versions"] = list(self.tls_versions)
            if self.kind == QUIC_SNI:
                d["quic_version"] = self.quic_version
        elif self.kind == FLOW_SUMMARY:
            d["bytes_out"] = self.bytes_out
            d["bytes_new"] = self.bytes_new
            d["ended"] = self.ended
        if self.note is not None:
            d["note"] = self.note
        return d


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    """A process; identity is (pid, create_time) because pids are reused."""

    pid: int
    create_time: float
    ppid: int | None = None
    name: str | None = None
    exe: str | None = None
    cmdline: tuple[str, ...] = ()
    user: str | None = None

    @property
    def key(self) -> tuple[int, float]:
        return (self.pid, self.create_time)


@dataclass(frozen=True, slots=True)
class Attribution:
    """Which process (and which MCP server) a flow belongs to.

    ``chain`` is the ancestor chain, parent first, up to pid 1 (or as far as
    known, including ancestors that already exited). ``server`` is the MCP
    server name when the process descends from an MCP server launch, ``host``
    the MCP host whose config defines it, ``phase`` "install" while a package
    runner installs the server and "run" afterwards. When the process is not
    known, ``process`` is None and ``reason`` says why.
    """

    process: ProcessInfo | None = None
    chain: tuple[ProcessInfo, ...] = ()
    server: str | None = None
    host: str | None = None
    phase: str | None = None
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        p = self.process
        return {
            "pid": p.pid if p else None,
            "process": p.name if p else None,
            "exe": p.exe if p else None,
            "cmdline": list(p.cmdline) if p else None,
            "user": p.user if p else None,
            "chain": [{"pid": a.pid, "name": a.name} for a in self.chain],
            "server": self.server,
            "host": self.host,
            "phase": self.phase,
            "attribution": self.reason,
        }


UNKNOWN = Attribution(reason="no process lookup (offline replay without --procs)")


@dataclass(frozen=True, slots=True)
class Verdict:
    """The decision for an event: ``verdict`` is allowed|flagged|unwatched,
    ``reason`` a stable code (``allowlist``, ``not_allowlisted``, ``direct_ip``,
    ``dns_exfil``, ``doh_dot``, ``first_seen``, ``outside_mcp`` ...), ``rule``
    the rule or detector detail, ``severity`` info|low|medium|high."""

    verdict: str = UNWATCHED
    reason: str = "outside_mcp"
    rule: str | None = None
    severity: str = "info"


@dataclass(frozen=True, slots=True)
class Event:
    """An observation with its attribution and verdict: the unit stored and alerted.

    ``dst_name`` is the name the destination is known by: the SNI or query name
    itself, or for a connection to an IP the one domain that this process (or
    its server) resolved to that IP. ``candidates`` (connections and hellos
    without SNI) lists every name it resolved to that IP, so several names
    sharing one address are all judged; ``dst_name`` is None when there are
    several. ``flow_id`` links the events of one flow (the SYN and its hello);
    ``decides`` is False for an event whose verdict is not its flow's decision
    (the SYN's provisional verdict once a hello decided the flow, or a record
    after the decision): only deciding events are alerted.
    """

    obs: Observation
    attr: Attribution = UNKNOWN
    verdict: Verdict = field(default_factory=Verdict)
    dst_name: str | None = None
    candidates: tuple[str, ...] = ()
    flow_id: str | None = None
    decides: bool = True

    def destination(self) -> str:
        """What this event's own flow went to: the SNI or query name, the one
        name resolved to the address, else every candidate name, else the address."""
        o = self.obs
        name = self.dst_name or o.qname or o.sni
        if name:
            return name
        if self.candidates:
            return " | ".join(self.candidates)
        return o.dst

    def to_dict(self) -> dict[str, Any]:
        d = self.obs.to_dict()
        d["dst_name"] = self.dst_name
        if self.obs.kind in LINKED_KINDS:
            d["candidates"] = list(self.candidates)
            d["flow_id"] = self.flow_id
            d["decides"] = self.decides
        d.update(self.attr.to_dict())
        d["verdict"] = self.verdict.verdict
        d["reason"] = self.verdict.reason
        d["rule"] = self.verdict.rule
        d["severity"] = self.verdict.severity
        return d
