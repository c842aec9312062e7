"""DNS exfiltration and encrypted-DNS detectors (egresswatch.judge: exfil, labels, suffixes, doh)."""

from __future__ import annotations

import random
import string
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from egresswatch.config import ExfilConfig
from egresswatch.judge.doh import doh_dot, is_doh_ip, is_doh_name
from egresswatch.judge.exfil import UNKNOWN_TLD, DnsExfilDetector
from egresswatch.judge.labels import label_signals, shannon_entropy, wire_len
from egresswatch.judge.suffixes import registrable_domain
from egresswatch.model import CONNECT, DNS_QUERY, QUIC_SNI, TLS_SNI, Observation, Proto
from tests.corpus import corpus_dir

CFG = ExfilConfig()


def queries(path: Path) -> list[Observation]:
    """DNS queries of a real capture, decoded by the project's own engine."""
    from egresswatch.capture.pcapfile import read_frames
    from egresswatch.decode.engine import Engine

    engine = Engine()
    out: list[Observation] = []
    for frame in read_frames(path):
        out += engine.feed(frame)
    out += engine.finish()
    return [o for o in out if o.kind == DNS_QUERY]


def run(det: DnsExfilDetector, obs: list[Observation], owner: str = "srv") -> list[bool]:
    return [det.observe(owner, o.qname, o.qtype, o.ts) is not None for o in obs]


# --- registrable domains and label shapes -------------------------------------------


@pytest.mark.parametrize(
    "name,expected",
    [
        ("www.example.co.uk", "example.co.uk"),
        ("a.b.c.example.com.", "example.com"),
        ("foo.github.io", "foo.github.io"),
        ("x.y.herokuapp.com", "y.herokuapp.com"),
        ("d1a2b3c4d5e6f7.cloudfront.net", "d1a2b3c4d5e6f7.cloudfront.net"),
        ("r3---sn-abc.googlevideo.com", "googlevideo.com"),
        ("a.pirate.sea", "pirate.sea"),
        ("WWW.Example.COM", "example.com"),
        ("com", "com"),
    ],
)
def test_registrable_domain(name: str, expected: str) -> None:
    assert registrable_domain(name) == expected


def test_label_signals() -> None:
    assert label_signals("www", CFG) == ()
    assert label_signals("546b03f50000000000a6023ed4df184d6ac5c2628b47714fdee584fed739", CFG) == (
        "long",
        "entropy",
        "hex",
    )
    assert "base32" in label_signals("mzxw6ytboi2dmnrtgq3tsnzqhe", CFG)
    assert "base64" in label_signals("aGVsbG8gV29ybGQhIEhvdw", CFG)
    assert label_signals("zi03aA-J\\228germeister", CFG) == ("binary",)
    # hyphenated word-built names carry no entropy signal
    assert label_signals("my-loadbalancer-1234567890", CFG) == ()
    assert wire_len("a\\228b") == 3
    assert shannon_entropy("aaaa") == 0.0
    assert shannon_entropy("abcd") == 2.0


# --- the exfil detector on constructed sequences --------------------------------------


def test_single_long_random_label_flags_at_once() -> None:
    det = DnsExfilDetector()
    label = "".join(random.Random(1).choices("0123456789abcdef", k=60))
    hit = det.observe("s", f"{label}.evil.com", 1, 0.0)
    assert hit is not None and hit.signals == ("long_random_label",) and hit.parent == "evil.com"


def test_payload_cut_into_several_labels_flags_at_once() -> None:
    """Two 24-character hex labels carry 48 bytes of payload: as bad as one long label."""
    rng = random.Random(3)
    a, b = ("".join(rng.choices("0123456789abcdef", k=24)) for _ in range(2))
    hit = DnsExfilDetector().observe("s", f"{a}.{b}.x1.evil.com", 1, 0.0)
    assert hit is not None and hit.signals == ("encoded_labels",) and "48 bytes" in hit.detail
    # one such label alone (a 24-character account id, say) is not a payload
    assert DnsExfilDetector().observe("s", f"{a}.r2.example.com", 1, 0.0) is None


def test_low_and_slow_random_names_flag_over_the_long_window() -> None:
    """One random-looking name every 100 s never reaches 3 per minute, but 10 per hour flags."""
    det = DnsExfilDetector()
    rng = random.Random(5)
    names = ["".join(rng.choices(string.ascii_lowercase + "234567", k=24)) for _ in range(12)]
    hits = [det.observe("s", f"{n}.slow.example.net", 1, 100.0 * i) for i, n in enumerate(names)]
    assert [h is not None for h in hits] == [False] * 9 + [True] * 3
    assert hits[9] is not None and hits[9].signals == ("slow_suspicious_names",)
    # after the slow window with nothing new the parent cools down
    assert det.observe("s", "www.slow.example.net", 1, 100.0 * 11 + 3601) is None


def test_low_and_slow_unique_subdomains() -> None:
    cfg = ExfilConfig(slow_unique_subdomains=50, slow_window_seconds=3600.0)
    det = DnsExfilDetector(cfg)
    flags = [det.observe("s", f"c{i}.drip.example.org", 1, 30.0 * i) is not None for i in range(52)]
    assert flags == [False] * 50 + [True, True]


def test_long_low_entropy_label_alone_does_not_flag() -> None:
    det = DnsExfilDetector()
    assert det.observe("s", "this-is-a-rather-long-but-perfectly-normal-name.example.com", 1, 0.0) is None


def test_unique_subdomains_threshold_and_window() -> None:
    cfg = ExfilConfig(unique_subdomains=5, window_seconds=10.0)
    det = DnsExfilDetector(cfg)
    flags = [det.observe("s", f"host{i}.example.com", 1, float(i)) is not None for i in range(7)]
    assert flags == [False] * 5 + [True, True]
    # after the window passes the parent cools down
    assert det.observe("s", "later.example.com", 1, 100.0) is None
    # another owner has its own state
    assert det.observe("other", "host99.example.com", 1, 6.0) is None


def test_suspicious_names_need_several_distinct_names() -> None:
    det = DnsExfilDetector(ExfilConfig(suspicious_names=3))
    rng = random.Random(7)
    names = ["".join(rng.choices(string.ascii_lowercase + "234567", k=24)) for _ in range(3)]
    res = [det.observe("s", f"{n}.t.example.net", 16, float(i)) for i, n in enumerate(names)]
    assert [r is not None for r in res] == [False, False, True]
    assert res[2] is not None and "suspicious_names" in res[2].signals
    # the same name again is not a new one, but the parent is still hot
    again = det.observe("s", f"{names[0]}.t.example.net", 16, 3.0)
    assert again is not None and again.signals == ("suspicious_names",)


def test_txt_flood() -> None:
    det = DnsExfilDetector(ExfilConfig(txt_flood=3, window_seconds=60))
    flags = [det.observe("s", "cmd.c2.example.org", 16, float(i)) is not None for i in range(5)]
    assert flags == [False, False, False, True, True]
    assert det.observe("s", "cmd.c2.example.org", 1, 200.0) is None


def test_reverse_lookups_do_not_count_as_unique_subdomains() -> None:
    det = DnsExfilDetector(ExfilConfig(unique_subdomains=3))
    flags = [det.observe("s", f"{i}.0.0.10.in-addr.arpa", 12, float(i)) is not None for i in range(10)]
    assert not any(flags)


def test_memory_is_bounded() -> None:
    det = DnsExfilDetector(max_parents=10)
    for i in range(50):
        det.observe("s", f"a.domain{i}.com", 1, float(i))
    assert len(det) == 10


def test_cdn_names_are_not_exfil() -> None:
    """Realistic CDN/cloud names from one server within a minute do not flag."""
    det = DnsExfilDetector()
    names = [
        "d1a2b3c4d5e6f7.cloudfront.net",
        "d3k2j1h4g5f6e7.cloudfront.net",
        "dq8u2mbk4hj6a.cloudfront.net",
        "r3---sn-abc4pnel.googlevideo.com",
        "rr5---sn-q4flrnek.googlevideo.com",
        "rr2---sn-4g5e6nsz.googlevideo.com",
        "my-loadbalancer-1234567890.us-west-2.elb.amazonaws.com",
        "internal-myapp-elb-1988296587.eu-west-1.elb.amazonaws.com",
        "k8s-default-ingress-4f5e6d7c8b-123456789.us-east-1.elb.amazonaws.com",
        "github-production-release-asset-2e65be.s3.amazonaws.com",
        "o450123.ingest.sentry.io",
        "api.github.com",
        "objects.githubusercontent.com",
        "fonts.gstatic.com",
        "ec2-54-123-45-67.compute-1.amazonaws.com",
    ]
    for i, n in enumerate(names * 3):
        assert det.observe("s", n, 1 if i % 2 else 28, float(i)) is None, n


# --- real captures ------------------------------------------------------------------


@pytest.mark.corpus
@pytest.mark.parametrize("capture", ["ndpi/dns_exfiltration.pcap", "ndpi/dns-tunnel-iodine.pcap"])
def test_real_tunnels_are_flagged(capture: str) -> None:
    obs = queries(corpus_dir() / "public" / capture)
    assert len(obs) > 100
    flags = run(DnsExfilDetector(), obs)
    # all but the tunnel's first few handshake queries are flagged
    assert sum(flags) >= len(flags) - 5
    assert all(flags[10:])


@pytest.mark.corpus
def test_dnscat_without_a_domain_uses_the_unknown_tld_bucket() -> None:
    obs = queries(corpus_dir() / "public" / "ndpi" / "dns_exfiltration.pcap")
    det = DnsExfilDetector()
    hits = [det.observe("s", o.qname, o.qtype, o.ts) for o in obs[:6]]
    # names like dnscat.<34 hex chars> are short, but share the unknown-TLD parent
    short = hits[5]
    assert obs[5].qname is not None and len(obs[5].qname) < 60
    assert short is not None and short.parent == UNKNOWN_TLD and "suspicious_names" in short.signals


@pytest.mark.corpus
@pytest.mark.parametrize(
    "capture",
    ["ndpi/dns.pcap", "arkime/dns-wiresharkrepo.pcap", "zeek/dns-edns-ecs.pcap", "ndpi/dns_fragmented.pcap"],
)
def test_normal_browsing_is_not_flagged(capture: str) -> None:
    obs = queries(corpus_dir() / "public" / capture)
    assert obs
    det = DnsExfilDetector()
    flagged = [o.qname for o in obs if det.observe("one-server", o.qname, o.qtype, o.ts)]
    assert flagged == []


# --- DoH / DoT / DoQ ----------------------------------------------------------------


def _obs(
    kind: str, dst: str = "93.184.216.34", dport: int = 443, proto: Proto = "tcp", **kw: Any
) -> Observation:
    return Observation(
        ts=1.0, frame=1, kind=kind, proto=proto, src="10.0.0.5", sport=5000, dst=dst, dport=dport, **kw
    )


def test_doh_dot_detection() -> None:
    assert is_doh_name("mozilla.cloudflare-dns.com") == "cloudflare-dns.com"
    assert is_doh_name("dns.google.") == "dns.google"
    assert is_doh_name("google.com") is None
    assert is_doh_ip("1.1.1.1") and is_doh_ip("2606:4700:4700::1111") and is_doh_ip("45.90.28.7")
    assert not is_doh_ip("93.184.216.34") and not is_doh_ip("not an ip")
    assert (
        doh_dot(_obs(TLS_SNI, sni="mozilla.cloudflare-dns.com"), None)
        == "DoH resolver name cloudflare-dns.com"
    )
    assert doh_dot(_obs(CONNECT, dst="8.8.8.8", dport=853), None) == "TCP port 853 (DNS over TLS)"
    assert (
        doh_dot(_obs(QUIC_SNI, proto="udp", dport=853, sni="x.example"), None)
        == "UDP port 853 (DNS over QUIC)"
    )
    assert doh_dot(_obs(TLS_SNI, alpn=("dot",)), None) == "ALPN dot (DNS over TLS)"
    assert doh_dot(_obs(CONNECT, dst="1.1.1.1"), None) == "DoH resolver address 1.1.1.1"
    assert doh_dot(_obs(CONNECT, dst="9.9.9.9", dport=53), None) is None  # plain DNS is not DoH
    assert doh_dot(_obs(CONNECT), "dns.quad9.net") == "DoH resolver name dns.quad9.net"
    assert doh_dot(_obs(DNS_QUERY, dst="10.0.0.1", dport=53, proto="udp", qname="dns.google"), None) == (
        "query for DoH resolver name dns.google"
    )
    assert doh_dot(_obs(DNS_QUERY, dport=53, proto="udp", qname="_dns.resolver.arpa"), None) is not None
    assert doh_dot(_obs(TLS_SNI, sni="api.github.com"), None) is None


@pytest.mark.corpus
@pytest.mark.parametrize("capture", ["ndpi/dns_doh.pcap", "ndpi/dns_dot.pcap"])
def test_real_doh_and_dot_captures(capture: str) -> None:
    from egresswatch.capture.pcapfile import read_frames
    from egresswatch.decode.engine import Engine

    engine = Engine()
    out: list[Observation] = []
    for frame in read_frames(corpus_dir() / "public" / capture):
        out += engine.feed(frame)
    out += engine.finish()
    hellos = [o for o in out if o.kind in (TLS_SNI, CONNECT)]
    assert hellos and any(doh_dot(o, None) for o in hellos)


@settings(max_examples=300, deadline=None)
@given(
    qnames=st.lists(st.one_of(st.none(), st.text(max_size=80)), max_size=8),
    qtype=st.one_of(st.none(), st.integers(0, 70000)),
)
def test_exfil_detector_never_raises_and_is_deterministic(
    qnames: list[str | None], qtype: int | None
) -> None:
    def run_once() -> list[object]:
        det = DnsExfilDetector(ExfilConfig(unique_subdomains=2, suspicious_names=1, txt_flood=1))
        return [det.observe("s", q, qtype, float(i)) for i, q in enumerate(qnames)]

    assert run_once() == run_once()


def _slow_exfil(noise_owner: str | None, queries: int = 12) -> list[bool]:
    """One 30-character random label under exfil-sink.com every 290 s (frame
    time) from server "victim"; between two, 5,000 other parents queried."""
    rng = random.Random(7)
    det = DnsExfilDetector()
    ts, flagged = 1_000_000.0, []
    for _ in range(queries):
        label = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(30))
        flagged.append(det.observe("victim", f"{label}.exfil-sink.com", 1, ts) is not None)
        if noise_owner is not None:
            for j in range(5000):
                det.observe(noise_owner, f"www.site{j}.com", 1, ts + 1 + j * 0.05)
        assert len(det) <= det.max_parents
        ts += 290
    return flagged


@pytest.mark.parametrize("noise_owner", ["noisy", "victim"])
def test_slow_exfil_survives_5000_other_parents(noise_owner: str) -> None:
    alone = _slow_exfil(None)
    # slow_suspicious_names (10) random-looking names within the hour: from the
    # 10th query on, every one is flagged
    assert alone == [False] * 9 + [True] * 3
    assert _slow_exfil(noise_owner) == alone


def test_suspicious_parents_of_one_server_do_not_evict_another_servers() -> None:
    det = DnsExfilDetector(max_parents=100)
    rng = random.Random(3)

    def rnd() -> str:
        return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(30))

    ts = 0.0
    flagged = 0
    for _ in range(12):
        flagged += det.observe("victim", f"{rnd()}.exfil-sink.com", 1, ts) is not None
        for j in range(300):  # a noisy server with a random-looking name under each of 300 parents
            det.observe("noisy", f"{rnd()}.p{j}.com", 1, ts + 0.01 * j)
        ts += 290
    assert len(det) <= 100
    assert flagged == 3  # the 10th, 11th and 12th: the victim's parent kept its names
    assert det.counters["suspicious_evicted"] > 0  # the noisy server's own were dropped
