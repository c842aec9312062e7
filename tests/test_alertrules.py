"""The alert rules on frame time: keys, the per-server budget, urgent keys, digests."""

from __future__ import annotations

import dataclasses
import random
import string

from egresswatch.alert.keys import key_of, shape_of, target_of
from egresswatch.alert.message import AlertRecord, format_alert
from egresswatch.alert.rules import AlertRules
from egresswatch.config import AlertsConfig, ExfilConfig
from egresswatch.judge.exfil import DnsExfilDetector
from egresswatch.model import DNS_QUERY, Event, Verdict
from tests.test_store import T0, make_event

REASON_SEVERITY = {"not_allowlisted": "medium", "dns_exfil": "high", "direct_ip": "high", "first_seen": "low"}


def ev(ts: float, name: str, reason: str = "not_allowlisted", server: str = "fs", rule: str | None = None,
       kind: str = DNS_QUERY) -> Event:  # fmt: skip
    e = make_event(ts, kind=kind, name=name, server=server, verdict="flagged", reason=reason,
                   severity=REASON_SEVERITY[reason])  # fmt: skip
    return dataclasses.replace(e, verdict=Verdict("flagged", reason, rule, REASON_SEVERITY[reason]))


def rand_label(rng: random.Random, n: int = 10) -> str:
    return "".join(rng.choice(string.ascii_lowercase + string.digits) for _ in range(n))


def run(rules: AlertRules, events: list[Event]) -> list[AlertRecord]:
    out: list[AlertRecord] = []
    for e in events:
        out += rules.decide(e)
    return out


def exfil(ts: float, name: str, det: DnsExfilDetector, server: str = "fs") -> Event:
    """A query judged by the real detector: dns_exfil with its rule, or not_allowlisted."""
    hit = det.observe(server, name, 1, ts)
    return ev(ts, name, "dns_exfil" if hit else "not_allowlisted", server, hit.detail if hit else name)


def test_shape_comes_from_the_real_detector() -> None:
    det = DnsExfilDetector(ExfilConfig())
    rng = random.Random(1)
    flood = [exfil(T0 + i * 0.001, f"{rand_label(rng)}.flood.test", det) for i in range(100)]
    volume = [e for e in flood if e.verdict.reason == "dns_exfil"]
    assert volume and {shape_of(e) for e in volume} == {"volume"}
    payload = exfil(T0 + 1, "nbswy3dpeb3w64tmmqqgc3dpnfzhgzlsmvxgizlsnb2gk4tfnzqxi2lpnzzq.flood.test", det)
    assert payload.verdict.reason == "dns_exfil" and shape_of(payload) == "payload"
    assert key_of(payload) == ("fs", "dns_exfil", "flood.test", "payload")
    assert key_of(volume[0]) == ("fs", "dns_exfil", "flood.test", "volume")


def test_flood_then_exfil_under_another_domain() -> None:
    """The measured attack: 20,000 random names under one domain, then one exfiltration."""
    rules = AlertRules(AlertsConfig(budget_per_minute=5, budget_burst=5, digest_seconds=60))
    det = DnsExfilDetector(ExfilConfig())
    rng = random.Random(2)
    flood = [exfil(T0 + i * 0.00025, f"{rand_label(rng)}.flood.test", det) for i in range(20_000)]
    during = run(rules, flood)
    assert [(r.kind, r.reason, r.target) for r in during] == [
        ("alert", "not_allowlisted", "flood.test"),
        ("alert", "dns_exfil", "flood.test"),
    ]
    sent = rules.decide(
        exfil(T0 + 5.1, "nbswy3dpeb3w64tmmqqgc3dpnfzhgzlsmvxgizlsnb2gk4tfnzqxi2lp.exfil.test", det)
    )
    assert [(r.kind, r.reason, r.target) for r in sent] == [("alert", "dns_exfil", "exfil.test")]
    assert "nbswy3dp" not in sent[0].title + sent[0].body  # the stolen bytes stay in the database
    assert "67-byte name under exfil.test" in sent[0].title
    (digest,) = rules.flush()
    assert digest.kind == "digest" and digest.count == 19_998 and "flood.test (19998)" in digest.title
    assert digest.severity == "high" and digest.reason == "dns_exfil,not_allowlisted"


def test_budget_caps_new_domains_and_the_next_delivery_is_a_summary() -> None:
    rules = AlertRules(AlertsConfig(budget_per_minute=5, budget_burst=5, digest_seconds=60))
    rng = random.Random(3)
    domains = [f"{rand_label(rng, 8)}.com" for _ in range(500)]  # every name its own registrable domain
    out = run(rules, [ev(T0 + i * 0.01, f"www.{d}") for i, d in enumerate(domains)])
    assert [r.target for r in out] == domains[:5]
    # a token refills after 12 s; still, a pending summary goes first
    assert rules.decide(ev(T0 + 20, "www.late-one.com")) == []
    (digest,) = rules.due(T0 + 0.05 + 60)
    assert digest.count == 496 and "not_allowlisted" in digest.reason and digest.severity == "medium"
    assert (
        "Registrable domains / addresses: 496" in digest.body and "not alerted (budget spent)" in digest.body
    )
    assert "  ... and 476 more domain(s), 476 event(s)" in digest.body
    # after the summary, refilled tokens alert new keys again
    assert [r.target for r in rules.decide(ev(T0 + 70, "www.after.com"))] == ["after.com"]


def test_urgent_keys_pass_a_spent_budget_but_cannot_flood() -> None:
    rules = AlertRules(AlertsConfig(budget_per_minute=5, budget_burst=5, digest_seconds=60))
    out = run(rules, [ev(T0 + i * 0.01, f"a.d{i}.com") for i in range(50)])  # budget spent
    assert len(out) == 5
    # higher severity, new reason: at once
    first = rules.decide(ev(T0 + 1, "p.x.org", "dns_exfil", rule="x.org: more than 40 distinct names in 60s"))
    assert [(r.reason, r.urgent) for r in first] == [("dns_exfil", True)]
    # a distinct exfil shape (a payload label) under the same domain: at once
    shaped = rules.decide(
        ev(T0 + 2, "q.x.org", "dns_exfil", rule="x.org: label of 50 bytes (entropy+base32)")
    )
    assert [(r.reason, r.urgent) for r in shaped] == [("dns_exfil", True)]
    # the same class under ever new domains: summarised, not an alert each
    more = run(rules, [ev(T0 + 3 + i * 0.01, f"p.y{i}.org", "dns_exfil",
                          rule=f"y{i}.org: label of 50 bytes (entropy)") for i in range(200)])  # fmt: skip
    assert more == []
    direct = rules.decide(ev(T0 + 4, "198.18.0.9", "direct_ip", kind="connect"))
    assert [(r.reason, r.target) for r in direct] == [("direct_ip", "198.18.0.10")]
    (digest,) = rules.flush()
    assert digest.count == 45 + 200 and digest.severity == "high"


def test_servers_have_their_own_budget() -> None:
    rules = AlertRules(AlertsConfig(budget_per_minute=5, budget_burst=2, digest_seconds=60))
    out = run(rules, [ev(T0 + i, f"x.d{i}.com", server=s) for i in range(10) for s in ("a", "b")])
    assert sorted((r.server, r.target) for r in out) == [("a", "d0.com"), ("a", "d1.com"),
                                                               ("b", "d0.com"), ("b", "d1.com")]  # fmt: skip
    assert sorted(r.server for r in rules.flush()) == ["a", "b"]


def test_decisions_are_deterministic_on_frame_time() -> None:
    rng = random.Random(4)
    events = [ev(T0 + i * 0.3, f"{rand_label(rng, 4)}.d{rng.randrange(30)}.com",
                 rng.choice(["not_allowlisted", "direct_ip"])) for i in range(2000)]  # fmt: skip

    def once() -> list[tuple[str, float, str, str, int]]:
        rules = AlertRules(AlertsConfig(budget_per_minute=3, budget_burst=4, digest_seconds=30))
        return [(r.kind, r.ts, r.target, r.title, r.count) for r in run(rules, events) + rules.flush()]

    a, b = once(), once()
    assert a == b and sum(r[4] for r in a) == 2000
    assert len([r for r in a if r[0] == "digest"]) >= 10


def test_format_leaves_out_secrets_and_cuts_long_names() -> None:
    e = ev(T0, "a" * 60 + ".b" * 30 + ".example.com", kind="tls_sni")
    proc = dataclasses.replace(e.attr.process, cmdline=("node", "srv.js", "--token=ghp_secret"))  # type: ignore[arg-type]
    title, body = format_alert(dataclasses.replace(e, attr=dataclasses.replace(e.attr, process=proc)))
    assert "ghp_secret" not in title + body and "srv.js" not in body
    assert "..." in title and len(title) < 200


def test_target_is_the_registrable_domain_or_the_address() -> None:
    from egresswatch.judge.suffixes import registrable_domain

    names = ["a.b.example.co.uk", "x.y.github.io", "github.io", "x.co.uk", "co.uk", "q1.flood.test", "Evil.Example.COM.",
             "a.b.c.d.e.f.g.h.s3.amazonaws.com", "localhost", "www.ck", "a.www.ck", "b.c.ck"]  # fmt: skip
    for name in names:
        assert target_of(ev(T0, name, kind="tls_sni")) == registrable_domain(name), name
    assert (
        target_of(ev(T0, "198.18.0.9", "direct_ip", kind="connect")) == "198.18.0.10"
    )  # no name: the address
    assert target_of(ev(T0, "2001:db8::1", kind="tls_sni")) == "2001:db8::1"
