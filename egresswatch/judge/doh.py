"""Encrypted DNS: does a flow use a public DNS-over-HTTPS/TLS/QUIC resolver?

By resolver name (and its subdomains), resolver address, ALPN (``dot``,
``doq``) and port (853 TCP; 853/784/8853 UDP). Pure: no I/O, no clock.
"""

from __future__ import annotations

import ipaddress

from egresswatch.judge.suffixes import normalize_name
from egresswatch.model import CONNECT, DNS_QUERY, Observation

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
    if obs.is_dns or obs.proto in ("icmp", "icmp6"):
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
