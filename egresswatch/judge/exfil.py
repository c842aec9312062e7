"""DNS exfiltration detection: per (server, parent domain) sliding windows over
DNS queries, flagging names that carry data (long or random-looking labels)
and parents with too many distinct, random-looking or TXT/NULL/ANY names.

Pure, stateful only by frame time: the caller passes the frame timestamp, so
replaying a capture gives the same hits. See docs/policy.md for what each
signal means and how thresholds combine.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from dataclasses import dataclass

from egresswatch.config import ExfilConfig
from egresswatch.judge.labels import ENCODINGS, label_signals, wire_len
from egresswatch.judge.suffixes import has_public_suffix, registrable_domain
from egresswatch.judge.windows import OwnerState, ParentState

#: Parent key for names whose top-level domain is not a public suffix
#: (``pirate.sea``, ``dnscat.<hex>``, ``host.local``): they share one bucket.
UNKNOWN_TLD = "(unknown-tld)"

REVERSE_ZONES = ("in-addr.arpa", "ip6.arpa")
# TXT, NULL, ANY: the record types DNS tunnels use to carry data back.
FLOOD_QTYPES = frozenset({16, 10, 255})
QTYPE_NAMES = {16: "TXT", 10: "NULL", 255: "ANY"}

_LABEL_SPLIT = re.compile(r"(?<!\\)\.")

_RANDOM = ENCODINGS | {"entropy"}


@functools.lru_cache(maxsize=8192)
def parent_domain(name: str) -> str:
    """The exfil detector's parent key: the registrable domain, or UNKNOWN_TLD."""
    return registrable_domain(name) if has_public_suffix(name) else UNKNOWN_TLD


@dataclass(frozen=True, slots=True)
class ExfilHit:
    """Why a DNS query looks like exfiltration: ``parent`` is the registrable
    domain (or UNKNOWN_TLD), ``signals`` the reasons, ``detail`` one line."""

    parent: str
    signals: tuple[str, ...]
    detail: str


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
        self._owners: dict[str, OwnerState] = {}
        self._count = 0
        self.counters: Counter[str] = Counter()

    def configure(self, cfg: ExfilConfig) -> None:
        self.cfg = cfg

    def __len__(self) -> int:
        return self._count

    def _state(self, owner: str, parent: str, ts: float) -> ParentState:
        own = self._owners.get(owner)
        if own is None:
            own = self._owners[owner] = OwnerState()
        st = own.marked.get(parent)
        if st is not None:
            own.marked.move_to_end(parent)
            return st
        st = own.plain.get(parent)
        if st is not None:
            own.plain.move_to_end(parent)
            return st
        st = own.plain[parent] = ParentState()
        self._count += 1
        while self._count > self.max_parents:
            self._evict(ts, keep=st)
        return st

    def _evict(self, ts: float, keep: ParentState) -> None:
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
