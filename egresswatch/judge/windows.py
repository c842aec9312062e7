"""The DNS exfiltration detector's bounded memory: per server, per parent domain,
the distinct names (and random-looking ones) last seen in the fast and slow
windows and the TXT/NULL/ANY query times.

Times are frame times given by the caller; no clock is read here.
"""

from __future__ import annotations

from array import array
from collections import OrderedDict, deque


class ParentState:
    """One (server, parent domain): its names and TXT/NULL/ANY times, fast and slow windows."""

    __slots__ = ("names", "shaped", "floods", "slow_names", "slow_shaped")

    def __init__(self) -> None:
        self.names = Recent()  # distinct names, last seen
        self.shaped = Recent()  # suspicious-shape names
        self.floods: deque[float] = deque()  # TXT/NULL/ANY query times
        self.slow_names = Recent()  # the same over the slow window
        self.slow_shaped = Recent()

    def suspicious(self, slow_since: float) -> bool:
        """A random-looking name seen since ``slow_since``, or TXT/NULL/ANY queries pending."""
        return bool(self.floods) or (
            bool(self.slow_shaped.times) and self.slow_shaped.times[-1] >= slow_since
        )


class OwnerState:
    """One server's parents: ``plain`` ones (evictable, least recently used
    first) and ``marked`` ones that carry a random-looking name or a TXT flood
    within the slow window (kept until that window has passed)."""

    __slots__ = ("plain", "marked")

    def __init__(self) -> None:
        self.plain: OrderedDict[str, ParentState] = OrderedDict()
        self.marked: OrderedDict[str, ParentState] = OrderedDict()


class Recent:
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
