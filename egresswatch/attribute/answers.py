"""A DNS answer belongs to whoever sent its query.

The kernel's flow map holds one record per socket address, so an answer
handled after its client port was reused can find the later socket's owner:
an unrelated process's fire-and-forget query (sent, socket closed at once)
followed within a moment by a watched server's lookup on the same random port
made the unrelated query's answer the server's. The query itself was
attributed at its own time, from its own send record; :class:`QueryOwners`
keeps that attribution for a few seconds of frame time, and the answer with
the same addresses, ports, transaction id and question takes it.

Pure bookkeeping: frame time only, bounded memory, no I/O.
"""

from __future__ import annotations

from collections import OrderedDict

from egresswatch.model import DNS_ANSWER, DNS_QUERY, Attribution, Observation

#: an answer later than this after its query (frame time) is not matched to it
WINDOW = 5.0
#: queries remembered at most (the oldest go first)
CAPACITY = 8192

Key = tuple[str, str, int, str, int, int, str]


def _key(obs: Observation) -> Key | None:
    if obs.dns_id is None or obs.qname is None:
        return None
    lip, lport = obs.local()
    rip, rport = obs.remote()
    return (obs.proto, lip, lport, rip, rport, obs.dns_id, obs.qname.lower())


class QueryOwners:
    """Attributions of recent DNS queries, by the answer that would match them."""

    def __init__(self, window: float = WINDOW, capacity: int = CAPACITY) -> None:
        self.window = window
        self.capacity = capacity
        self._seen: OrderedDict[Key, tuple[float, Attribution]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def remember(self, obs: Observation, attr: Attribution) -> None:
        """File a query's attribution (other kinds and unattributed queries are ignored)."""
        if obs.kind != DNS_QUERY or attr.process is None:
            return
        key = _key(obs)
        if key is None:
            return
        self._seen[key] = (obs.ts, attr)
        self._seen.move_to_end(key)
        while len(self._seen) > self.capacity:
            self._seen.popitem(last=False)

    def answer(self, obs: Observation) -> Attribution | None:
        """The attribution of the query this answer answers, if it was filed
        no more than ``window`` seconds before the answer."""
        if obs.kind != DNS_ANSWER:
            return None
        self._expire(obs.ts)
        key = _key(obs)
        got = self._seen.get(key) if key is not None else None
        if got is None or abs(obs.ts - got[0]) > self.window:
            return None
        return got[1]

    def _expire(self, now: float) -> None:
        while self._seen:
            ts, _attr = next(iter(self._seen.values()))
            if now - ts <= self.window:
                break
            self._seen.popitem(last=False)
