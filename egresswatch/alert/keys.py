"""What an alert is keyed on: (server, reason, registrable domain or IP, shape).

A person acts on a domain, not on each name under it, so names are reduced to
their registrable domain (cached per parent: a flood's names differ in their
first label only); ``shape`` tells a query that carries data (``payload``)
from many names (``volume``) for ``dns_exfil``. Pure and clock-free.
"""

from __future__ import annotations

import functools
import re

from egresswatch.judge.names import is_ip
from egresswatch.judge.suffixes import registrable_domain
from egresswatch.model import Event

SEVERITIES = ("info", "low", "medium", "high")

# dns_exfil rule phrases of a query that itself carries data (exfil.DnsExfilDetector)
_PAYLOAD = re.compile(r"label of \d+ bytes|\d+ bytes in random-looking labels")

Key = tuple[str, str, str, str]  # (server, reason, target, shape)


def rank(sev: str) -> int:
    return SEVERITIES.index(sev) if sev in SEVERITIES else len(SEVERITIES) - 1


def destination_of(event: Event) -> str:
    """The event's own flow's destination (SNI, else the candidate names, ...)."""
    return event.destination()


@functools.lru_cache(maxsize=4096)
def _registrable(name: str) -> str:
    return registrable_domain(name)


def target_of(event: Event) -> str:
    """The registrable domain of the destination name, or the IP address.

    A flood's names differ in their first label only: the lookup is made for
    ``_.PARENT`` (cached), which gives the same answer for any first label
    unless that label is part of the registrable domain itself."""
    name = destination_of(event)
    if " | " in name:  # several names share the address (candidates): key on the address
        return event.obs.dst
    if name == event.obs.dst or (name[-1:].isdigit() or ":" in name) and is_ip(name):
        return name
    n = name.rstrip(".").lower()
    _first, dot, parent = n.partition(".")
    if not dot:
        return n
    found = _registrable("_." + parent)
    return n if found == "_." + parent else found


def shape_of(event: Event) -> str:
    """``payload`` (one query carries data), ``volume`` (many names) or ``""``."""
    v = event.verdict
    if v.reason != "dns_exfil":
        return ""
    return "payload" if _PAYLOAD.search(v.rule or "") else "volume"


def key_of(event: Event) -> Key:
    return (event.attr.server or "-", event.verdict.reason, target_of(event), shape_of(event))
