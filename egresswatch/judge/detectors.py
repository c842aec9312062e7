"""Pure detectors, stateful only by frame time: DNS exfiltration shape and
DNS-over-HTTPS/TLS/QUIC resolver use. No I/O and no wall clock: the caller
passes the frame timestamp, so replaying a capture gives the same hits.

See docs/policy.md for what each signal means and how thresholds combine.
"""

from __future__ import annotations

import functools
import ipaddress
import math
import re
from array import array
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass

from egresswatch.config import ExfilConfig
from egresswatch.model import CONNECT, DNS_QUERY, Observation

try:  # a maintained PSL snapshot, bundled, never fetched at run time
    from publicsuffixlist import PublicSuffixList

    _PSL: PublicSuffixList | None = PublicSuffixList()
except ImportError:  # pragma: no cover - fallback when the package is missing
    _PSL = None

# Used only without the publicsuffixlist package: common multi-label suffixes.
_FALLBACK_SUFFIXES = frozenset(
    "co.uk org.uk ac.uk gov.uk com.au net.au org.au co.jp ne.jp co.nz co.za com.br com.cn com.tw "
    "com.mx co.in co.kr github.io herokuapp.com cloudfront.net amazonaws.com s3.amazonaws.com "
    "appspot.com azurewebsites.net blogspot.com netlify.app vercel.app pages.dev workers.dev "
    "web.app firebaseapp.com fly.dev onrender.com in-addr.arpa ip6.arpa home.arpa".split()
)

#: Parent key for names whose top-level domain is not a public suffix
#: (``pirate.sea``, ``dnscat.<hex>``, ``host.local``): they share one bucket.
UNKNOWN_TLD = "(unknown-tld)"

REVERSE_ZONES = ("in-addr.arpa", "ip6.arpa")
# TXT, NULL, ANY: the record types DNS tunnels use to carry data back.
FLOOD_QTYPES = frozenset({16, 10, 255})
QTYPE_NAMES = {16: "TXT", 10: "NULL", 255: "ANY"}

_HEX = re.compile(r"[0-9a-f]{16,}")
_B32 = re.compile(r"[a-z2-7]{16,}=*|[0-9a-v]{16,}=*")
_B64 = re.compile(r"[A-Za-z0-9+/_=-]{16,}")
_LDH = re.compile(r"[a-z0-9_*-]*")
_ESCAPE = re.compile(r"\\(\d{3}|.)")
_LABEL_SPLIT = re.compile(r"(?<!\\)\.")
_ENCODINGS = frozenset({"hex", "base32", "base64", "binary"})
_RANDOM = _ENCODINGS | {"entropy"}


def normalize_name(name: str) -> str:
    """Lower-case, without the trailing dot."""
    return name.strip().rstrip(".").lower()


def registrable_domain(name: str) -> str:
    """The registrable domain ("eTLD+1") of ``name``: ``a.b.example.co.uk`` ->
    ``example.co.uk``, ``x.github.io`` -> ``x.github.io``. An unknown top-level
    domain counts as a one-label suffix (``a.pirate.sea`` -> ``pirate.sea``);
    a bare public suffix is returned as is."""
    n = normalize_name(name)
    if not n:
        return n
    if _PSL is not None:
        return _PSL.privatesuffix(n) or n
    labels = n.split(".")
    take = 3 if ".".join(labels[-2:]) in _FALLBACK_SUFFIXES else 2
    return ".".join(labels[-take:])


def has_public_suffix(name: str) -> bool:
    """True when the name ends in a suffix on the Public Suffix List."""
    n = normalize_name(name)
    if _PSL is not None:
        return _PSL.publicsuffix(n, accept_unknown=False) is not None
    return "." in n  # pragma: no cover - fallback is permissive


def wire_len(label: str) -> int:
    """Length in bytes of a presentation-form label (``\\DDD`` and ``\\X`` are one byte)."""
    return len(_ESCAPE.sub("x", label))


@functools.lru_cache(maxsize=8192)
def parent_domain(name: str) -> str:
    """The exfil detector's parent key: the registrable domain, or UNKNOWN_TLD."""
    return registrable_domain(name) if has_public_suffix(name) else UNKNOWN_TLD


def shannon_entropy(text: str) -> float:
    """Bits per character."""
    if not text:
        return 0.0
    n = len(text)
    return -sum(c / n * math.log2(c / n) for c in Counter(text).values())


def label_signals(label: str, cfg: ExfilConfig) -> tuple[str, ...]:
    """The exfiltration-shape signals one DNS label carries (empty for normal labels)."""
    out: list[str] = []
    low = label.lower()
    if wire_len(label) > cfg.max_label_len:
        out.append("long")
    if not _LDH.fullmatch(low):
        out.append("binary")  # bytes outside letters/digits/hyphen/underscore (or escapes)
    if len(label) >= 16:
        # hyphens mark word-built names (ELB, CDN edge names): entropy says little there
        if "-" not in low and shannon_entropy(low) >= cfg.entropy_threshold:
            out.append("entropy")
        digits = sum(ch.isdigit() for ch in low)
        if _HEX.fullmatch(low) and digits >= 2 and digits < len(low):
            out.append("hex")
        elif _B32.fullmatch(low) and digits >= 2 and len(low) - digits >= 4 and "-" not in low:
            out.append("base32")
        elif (
            _B64.fullmatch(label)
            and any(c.isupper() for c in label)
            and any(c.islower() for c in label)
            and digits >= 1
        ):
            out.append("base64")
    return tuple(out)


@dataclass(frozen=True, slots=True)
class ExfilHit:
    """Why a DNS query looks like exfiltration: ``parent`` is the registrable
    domain (or UNKNOWN_TLD), ``signals`` the reasons, ``detail`` one line."""

    parent: str
    signals: tuple[str, ...]
    detail: str


class _ParentState:
    __slots__ = ("names", "shaped", "floods", "slow_names", "slow_shaped")

    def __init__(self) -> None:
        self.names = _Recent()  # distinct names, last seen
        self.shaped = _Recent()  # suspicious-shape names
        self.floods: deque[float] = deque()  # TXT/NULL/ANY query times
        self.slow_names = _Recent()  # the same over the slow window
        self.slow_shaped = _Recent()

    def suspicious(self, slow_since: float) -> bool:
        """A random-looking name seen since ``slow_since``, or TXT/NULL/ANY queries pending."""
        return bool(self.floods) or (
            bool(self.slow_shaped.times) and self.slow_shaped.times[-1] >= slow_since
        )


class _OwnerState:
    """One server's parents: ``plain`` ones (evictable, least recently used
    first) and ``marked`` ones that carry a random-looking name or a TXT flood
    within the slow window (kept until that window has passed)."""

    __slots__ = ("plain", "marked")

    def __init__(self) -> None:
        self.plain: OrderedDict[str, _ParentState] = OrderedDict()
        self.marked: OrderedDict[str, _ParentState] = OrderedDict()


class _Recent:
    """Distinct names last seen within a window, most recent last, as two flat
    arrays of 64-bit name hashes and times (16 bytes a name, where an
    OrderedDict of names costs ~250): the slow window holds up to ~200 names
    for each of 4,096 parents. Hash collisions only merge two names."""

    __slots__ = ("keys", "times")

    def __init__(self) -> None:
        self.keys = array("q")
        self.times = array("d")

    def touch(self, name: str, ts: float, cap: int) -> None:
        key = hash(name)
        if self.keys and self.keys[-1] == key:  # the same name again (the common case)
            self.times[-1] = ts
            return
        try:
            i = self.keys.index(key)
        except ValueError:
            pass
        else:
            del self.keys[i], self.times[i]
        self.keys.append(key)
        self.times.append(ts)
        if len(self.keys) > cap:
            drop = len(self.keys) - cap
            del self.keys[:drop], self.times[:drop]

    def expire(self, since: float) -> int:
        """Drop keys last seen before ``since``; return how many remain."""
        n = 0
        while n < len(self.times) and self.times[n] < since:
            n += 1
        if n:
            del self.keys[:n], self.times[:n]
        return len(self.keys)


class DnsExfilDetector:
    """Per (owner, parent domain) sliding-window detector over DNS queries.

    ``observe`` flags a query when one of its labels is both longer than
    ``max_label_len`` and random-looking (entropy or encoding), or when the
    parent domain has, within ``window_seconds``: more than
    ``unique_subdomains`` distinct names, at least ``suspicious_names``
    distinct suspicious-shape names, or more than ``txt_flood`` TXT/NULL/ANY
    queries; or within ``slow_window_seconds`` more than
    ``slow_unique_subdomains`` names or ``slow_suspicious_names`` shaped ones
    (low and slow). Labels of 16+ random-looking characters that together
    exceed ``max_label_len`` flag at once (a payload cut into several labels).
    State is kept per server (``owner``). Memory is bounded: ``max_parents``
    (server, parent) states in all, and per parent only as many names as a
    threshold needs (~27 MiB worst case for 4,096). When full, the least
    recently used parent that does not look suspicious is dropped from the
    server holding the most such parents, so one server's noise evicts its own
    state, never another's; a parent with a random-looking name or a TXT flood
    still in its window is dropped only when every state is such a parent
    (``counters['suspicious_evicted']``).
    """

    def __init__(self, cfg: ExfilConfig | None = None, max_parents: int = 4096) -> None:
        self.cfg = cfg or ExfilConfig()
        self.max_parents = max(1, max_parents)
        self._owners: dict[str, _OwnerState] = {}
        self._count = 0
        self.counters: Counter[str] = Counter()

    def configure(self, cfg: ExfilConfig) -> None:
        self.cfg = cfg

    def __len__(self) -> int:
        return self._count

    def _state(self, owner: str, parent: str, ts: float) -> _ParentState:
        own = self._owners.get(owner)
        if own is None:
            own = self._owners[owner] = _OwnerState()
        st = own.marked.get(parent)
        if st is not None:
            own.marked.move_to_end(parent)
            return st
        st = own.plain.get(parent)
        if st is not None:
            own.plain.move_to_end(parent)
            return st
        st = own.plain[parent] = _ParentState()
        self._count += 1
        while self._count > self.max_parents:
            self._evict(ts, keep=st)
        return st

    def _evict(self, ts: float, keep: _ParentState) -> None:
        """Drop one state: the least recently used unsuspicious parent of the
        server holding the most of them (so a noisy server evicts its own);
        a suspicious parent only when every state is suspicious (counted)."""
        since = ts - self.cfg.slow_window_seconds
        owners = [o for o in self._owners.values() if o.plain and next(iter(o.plain.values())) is not keep]
        if owners:
            own = max(owners, key=lambda o: len(o.plain))
            own.plain.popitem(last=False)
        else:
            own = max(self._owners.values(), key=lambda o: len(o.marked))
            _, st = own.marked.popitem(last=False)
            if st.suspicious(since):
                self.counters["suspicious_evicted"] += 1
        self._count -= 1
        if not own.plain and not own.marked:
            self._owners = {k: v for k, v in self._owners.items() if v is not own}

    def observe(self, owner: str, qname: str | None, qtype: int | None, ts: float) -> ExfilHit | None:
        if not qname:
            return None
        cfg = self.cfg
        name = qname.rstrip(".")
        if not name:
            return None
        labels = _LABEL_SPLIT.split(name)
        low = name.lower()
        parent = parent_domain(low)
        per_label = [(lab, label_signals(lab, cfg)) for lab in labels]
        shaped_sig = sorted({s for _, sig in per_label for s in sig})
        signals: list[str] = []
        detail: list[str] = []
        encoded = 0  # bytes in random-looking labels of 16+ characters
        for lab, sig in per_label:
            if not _RANDOM.intersection(sig):
                continue
            if "long" in sig:
                signals.append("long_random_label")
                detail.append(f"label of {wire_len(lab)} bytes ({'+'.join(s for s in sig if s != 'long')})")
                break
            encoded += wire_len(lab)
        else:
            # a payload cut into several shorter labels (a.b.c.evil.com, each 16-40 bytes)
            if encoded > cfg.max_label_len:
                signals.append("encoded_labels")
                detail.append(f"{encoded} bytes in random-looking labels")

        st = self._state(owner, parent, ts)
        since = ts - cfg.window_seconds
        window = f"{cfg.window_seconds:g}s"
        if not parent.endswith(REVERSE_ZONES):  # PTR lookups of many addresses are normal
            st.names.touch(low, ts, cfg.unique_subdomains + 1)
            st.slow_names.touch(low, ts, cfg.slow_unique_subdomains + 1)
        need = max(1, cfg.suspicious_names)
        slow_need = max(1, cfg.slow_suspicious_names)
        if shaped_sig:
            st.shaped.touch(low, ts, need)
            st.slow_shaped.touch(low, ts, slow_need)
        if qtype in FLOOD_QTYPES:
            st.floods.append(ts)
            while len(st.floods) > cfg.txt_flood + 1:
                st.floods.popleft()
        # a parent over any threshold flags every query under it
        if st.names.expire(since) > cfg.unique_subdomains:
            signals.append("unique_subdomains")
            detail.append(f"more than {cfg.unique_subdomains} distinct names in {window}")
        if st.shaped.expire(since) >= need:
            signals.append("suspicious_names")
            detail.append(f"{need}+ names shaped {'+'.join(shaped_sig) or 'oddly'} in {window}")
        slow_since = ts - cfg.slow_window_seconds
        slow = f"{cfg.slow_window_seconds:g}s"
        if st.slow_names.expire(slow_since) > cfg.slow_unique_subdomains:
            signals.append("slow_unique_subdomains")
            detail.append(f"more than {cfg.slow_unique_subdomains} distinct names in {slow}")
        if st.slow_shaped.expire(slow_since) >= slow_need:
            signals.append("slow_suspicious_names")
            detail.append(f"{slow_need}+ random-looking names in {slow}")
        while st.floods and st.floods[0] < since:
            st.floods.popleft()
        if len(st.floods) > cfg.txt_flood:
            signals.append("txt_flood")
            detail.append(f"more than {cfg.txt_flood} TXT/NULL/ANY queries in {window}")
        own = self._owners[owner]
        marked = parent in own.marked
        if st.suspicious(slow_since) != marked:  # a parent that looks suspicious is kept
            table, other = (own.marked, own.plain) if marked else (own.plain, own.marked)
            other[parent] = table.pop(parent)
        if not signals:
            return None
        return ExfilHit(parent=parent, signals=tuple(signals), detail=f"{parent}: " + "; ".join(detail))


# --- DNS-over-HTTPS / TLS / QUIC resolvers -------------------------------------------

#: Names of public DoH/DoT/DoQ resolvers; each also matches its subdomains.
DOH_NAMES: tuple[str, ...] = (
    "dns.google",
    "dns.google.com",
    "dns64.dns.google",
    "cloudflare-dns.com",
    "one.one.one.one",
    "1dot1dot1dot1.cloudflare-dns.com",
    "dns.quad9.net",
    "dns9.quad9.net",
    "dns10.quad9.net",
    "dns11.quad9.net",
    "dns12.quad9.net",
    "doh.opendns.com",
    "doh.familyshield.opendns.com",
    "dns.umbrella.com",
    "dns.nextdns.io",
    "doh.cleanbrowsing.org",
    "dns.adguard.com",
    "dns.adguard-dns.com",
    "dns-unfiltered.adguard.com",
    "doh.mullvad.net",
    "dns.mullvad.net",
    "doh.dns.sb",
    "dns.twnic.tw",
    "doh.libredns.gr",
    "dns.controld.com",
    "freedns.controld.com",
    "doh.applied-privacy.net",
    "ordns.he.net",
    "dns0.eu",
    "dns.alidns.com",
    "doh.pub",
    "dot.pub",
    "doh.360.cn",
    "dns.switch.ch",
    "dns.digitale-gesellschaft.ch",
    "resolver.arpa",  # DDR discovery (_dns.resolver.arpa), RFC 9462
)

#: Addresses of public DoH/DoT/DoQ resolvers (any port but 53 counts).
DOH_IPS: tuple[str, ...] = (
    "1.1.1.1", "1.0.0.1", "1.1.1.2", "1.0.0.2", "1.1.1.3", "1.0.0.3",
    "2606:4700:4700::1111", "2606:4700:4700::1001", "2606:4700:4700::1112",
    "2606:4700:4700::1002", "2606:4700:4700::1113", "2606:4700:4700::1003",
    "8.8.8.8", "8.8.4.4", "2001:4860:4860::8888", "2001:4860:4860::8844",
    "9.9.9.9", "149.112.112.112", "9.9.9.10", "149.112.112.10", "9.9.9.11", "149.112.112.11",
    "2620:fe::fe", "2620:fe::9", "2620:fe::10", "2620:fe::11",
    "208.67.222.222", "208.67.220.220", "2620:119:35::35", "2620:119:53::53",
    "94.140.14.14", "94.140.15.15", "94.140.14.140", "2a10:50c0::ad1:ff", "2a10:50c0::ad2:ff",
    "45.90.28.0/24", "45.90.30.0/24", "2a07:a8c0::/33", "2a07:a8c1::/33",
    "185.228.168.9", "185.228.169.9", "185.228.168.168",
    "76.76.2.0/24", "76.76.10.0/24",
    "194.242.2.2", "194.242.2.3", "194.242.2.4", "194.242.2.9",
    "185.222.222.222", "45.11.45.11",
    "223.5.5.5", "223.6.6.6", "1.12.12.12", "120.53.53.53",
    "193.110.81.0", "185.253.5.0",
)  # fmt: skip

DOT_PORT = 853
DOQ_PORTS = frozenset({853, 784, 8853})
_DOH_NETS = tuple(ipaddress.ip_network(x) for x in DOH_IPS)
_DOH_HOSTS = frozenset(n.network_address.compressed for n in _DOH_NETS if n.num_addresses == 1)
_DOH_RANGES = tuple(n for n in _DOH_NETS if n.num_addresses > 1)
_DOH_NAMES = frozenset(DOH_NAMES)


def is_doh_name(name: str | None) -> str | None:
    """The DoH resolver entry ``name`` is, or is a subdomain of; else None."""
    if not name:
        return None
    labels = normalize_name(name).split(".")
    for i in range(len(labels)):
        cand = ".".join(labels[i:])
        if cand in _DOH_NAMES:
            return cand
    return None


def is_doh_ip(ip: str) -> bool:
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    if addr.compressed in _DOH_HOSTS:
        return True
    return any(addr.version == n.version and addr in n for n in _DOH_RANGES)


def doh_dot(obs: Observation, dst_name: str | None) -> str | None:
    """Why ``obs`` looks like use of an encrypted DNS resolver (DoH, DoT, DoQ),
    or None. A DNS query for a resolver's name counts too (it precedes use)."""
    if obs.kind == DNS_QUERY:
        hit = is_doh_name(obs.qname)
        return f"query for DoH resolver name {hit}" if hit else None
    if obs.is_dns:
        return None
    alpn = {a.lower() for a in obs.alpn}
    if "dot" in alpn:
        return "ALPN dot (DNS over TLS)"
    if "doq" in alpn:
        return "ALPN doq (DNS over QUIC)"
    if obs.proto == "tcp" and obs.dport == DOT_PORT:
        return "TCP port 853 (DNS over TLS)"
    if obs.proto == "udp" and obs.dport in DOQ_PORTS:
        return f"UDP port {obs.dport} (DNS over QUIC)"
    hit = is_doh_name(obs.sni) or (is_doh_name(dst_name) if obs.kind == CONNECT or not obs.sni else None)
    if hit:
        return f"DoH resolver name {hit}"
    if obs.dport != 53 and is_doh_ip(obs.dst):
        return f"DoH resolver address {obs.dst}"
    return None
