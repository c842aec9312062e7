"""Allowlists and the verdict order (egresswatch.judge.entries, egresswatch.judge.policy)."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from egresswatch.config import Config, ExfilConfig, PolicyConfig, ServerPolicy, parse_config
from egresswatch.errors import ConfigError
from egresswatch.judge.entries import Matcher, parse_entry
from egresswatch.judge.names import NameMemory
from egresswatch.judge.policy import REASONS, Policy
from egresswatch.model import (
    CONNECT,
    DNS_ANSWER,
    DNS_QUERY,
    QUIC_SNI,
    TLS_INCOMPLETE,
    TLS_SNI,
    Attribution,
    DnsRecord,
    Event,
    Frame,
    Observation,
    ProcessInfo,
    Proto,
)
from tests.corpus import corpus_dir

LOCAL = "10.0.0.5"


def attr(server: str | None = "gh", phase: str | None = "run") -> Attribution:
    return Attribution(
        process=ProcessInfo(pid=42, create_time=1.0), server=server, host="claude", phase=phase
    )


def query(qname: str, ts: float = 1.0, qtype: int = 1) -> Observation:
    return Observation(
        ts=ts, frame=1, kind=DNS_QUERY, proto="udp", src=LOCAL, sport=5353, dst="10.0.0.1", dport=53,
        qname=qname, qtype=qtype,
    )  # fmt: skip


def answer(qname: str, ip: str, ts: float = 1.0) -> Observation:
    return Observation(
        ts=ts, frame=2, kind=DNS_ANSWER, proto="udp", src="10.0.0.1", sport=53, dst=LOCAL, dport=5353,
        qname=qname, qtype=1, rcode=0, answers=(ip,), records=(DnsRecord(qname, 1, 60, ip),),
    )  # fmt: skip


def hello(
    sni: str | None, dst: str = "140.82.112.6", dport: int = 443, kind: str = TLS_SNI, **kw: Any
) -> Observation:
    proto: Proto = "udp" if kind == QUIC_SNI else "tcp"
    return Observation(
        ts=2.0, frame=3, kind=kind, proto=proto, src=LOCAL, sport=40000, dst=dst, dport=dport, sni=sni, **kw
    )


def syn(dst: str, dport: int = 443, ts: float = 2.0) -> Observation:
    return Observation(
        ts=ts, frame=4, kind=CONNECT, proto="tcp", src=LOCAL, sport=40001, dst=dst, dport=dport
    )


def cfg(allow: tuple[str, ...] = ("api.github.com",), learning: bool = False, **policy: object) -> Config:
    return Config(
        policy=PolicyConfig(learning=learning, **policy),  # type: ignore[arg-type]
        servers={"gh": ServerPolicy(allow=allow)},
    )


class Rig:
    """A Policy wired to a NameMemory the way the pipeline wires them."""

    def __init__(self, config: Config) -> None:
        self.names = NameMemory()
        self.policy = Policy(config, resolved=self.names.resolved)

    def __call__(self, obs: Observation, a: Attribution | None = None) -> tuple[str, str, str | None, str]:
        a = a or attr()
        v = self.policy.judge(obs, a, self.names.observe(obs, a))
        return v.verdict, v.reason, v.rule, v.severity


# --- each rule -----------------------------------------------------------------------


def test_outside_mcp_is_unwatched() -> None:
    assert Rig(cfg())(hello("evil.example"), attr(server=None)) == ("unwatched", "outside_mcp", None, "info")


def test_no_process_reads_unattributed_not_outside_mcp() -> None:
    """Nobody checked a flow without a process against the MCP trees: say so."""
    from egresswatch.model import Attribution

    unknown = Attribution(reason="no socket found (closed before lookup)")
    assert Rig(cfg())(hello("evil.example"), unknown) == ("unwatched", "unattributed", None, "info")


def test_dns_answers_are_not_egress() -> None:
    assert Rig(cfg())(answer("x.example", "1.2.3.4")) == ("allowed", "dns_answer", None, "info")


def test_allowlisted_query_hello_and_connect() -> None:
    rig = Rig(cfg())
    rule = "servers.gh.allow: api.github.com"
    assert rig(query("API.GitHub.com.")) == ("allowed", "allowlist", rule, "info")
    assert rig(answer("api.github.com", "140.82.112.6"))[1] == "dns_answer"
    assert rig(syn("140.82.112.6")) == ("allowed", "allowlist", rule, "info")
    assert rig(hello("api.github.com")) == ("allowed", "allowlist", rule, "info")


def test_not_allowlisted() -> None:
    rig = Rig(cfg())
    assert rig(query("evil.example")) == ("flagged", "not_allowlisted", "evil.example", "medium")
    rig(answer("evil.example", "6.6.6.6"))
    assert rig(syn("6.6.6.6")) == ("flagged", "not_allowlisted", "evil.example", "medium")
    assert rig(hello("evil.example", dst="6.6.6.6")) == (
        "flagged",
        "not_allowlisted",
        "evil.example",
        "medium",
    )


def test_direct_ip_for_connect_and_sni_less_hello() -> None:
    rig = Rig(cfg())
    v = rig(syn("203.0.113.9"))
    assert v == ("flagged", "direct_ip", "203.0.113.9:443 was never resolved by this server", "high")
    assert rig(hello(None, dst="203.0.113.9"))[1] == "direct_ip"
    assert rig(hello(None, dst="203.0.113.9", kind=QUIC_SNI))[1] == "direct_ip"
    assert rig(hello(None, dst="203.0.113.9", kind=TLS_INCOMPLETE))[1] == "direct_ip"
    # a hello WITH an SNI to an unresolved IP is judged by its name
    assert rig(hello("evil.example", dst="203.0.113.9"))[1] == "not_allowlisted"
    # TCP to port 53 is DNS transport, judged by the queries inside it
    assert rig(syn("203.0.113.9", dport=53))[1] == "not_allowlisted"


def test_direct_ip_uses_the_servers_own_memory() -> None:
    rig = Rig(cfg())
    rig(answer("api.github.com", "140.82.112.6"), attr(server="other"))
    assert rig(syn("140.82.112.6"))[1] == "direct_ip"


def test_direct_ip_accepts_what_the_hosts_caching_resolver_resolved() -> None:
    """With nss-resolve the server's lookup is only seen as systemd-resolved's
    upstream answer: the connection is named by it and is not direct_ip."""
    rig = Rig(cfg())
    resolved = Attribution(process=ProcessInfo(pid=300, create_time=1.0, name="systemd-resolve"))
    rig(answer("api.github.com", "140.82.112.6"), resolved)
    assert rig(syn("140.82.112.6"))[1:3] == ("allowlist", "servers.gh.allow: api.github.com")
    # any other process's answer does not count
    rig(answer("c2.example", "203.0.113.5"), attr(server=None))
    assert rig(syn("203.0.113.5"))[1] == "direct_ip"


def test_direct_ip_is_off_without_name_memory() -> None:
    p = Policy(cfg())
    assert p.judge(syn("203.0.113.9"), attr(), None).reason == "not_allowlisted"


def test_doh_dot_wins_over_allowlist_unless_doh_allowed() -> None:
    rig = Rig(cfg(allow=("*.cloudflare-dns.com", "1.1.1.1")))
    assert rig(hello("mozilla.cloudflare-dns.com", dst="104.16.248.249")) == (
        "flagged", "doh_dot", "DoH resolver name cloudflare-dns.com", "high",
    )  # fmt: skip
    assert rig(syn("8.8.8.8", dport=853))[1:] == ("doh_dot", "TCP port 853 (DNS over TLS)", "high")
    assert rig(query("dns.google"))[1] == "doh_dot"
    assert rig(syn("1.1.1.1"))[1] == "doh_dot"
    ok = Rig(cfg(allow=("*.cloudflare-dns.com",), doh_allow=("*.cloudflare-dns.com", "8.8.8.8:853")))
    assert ok(hello("mozilla.cloudflare-dns.com"))[:2] == ("allowed", "allowlist")
    assert ok(syn("8.8.8.8", dport=853))[1] == "direct_ip"  # DoH allowed, but still never resolved


def test_dns_exfil_wins_over_allowlist() -> None:
    rig = Rig(cfg(allow=("*.example.com",), exfil=ExfilConfig(unique_subdomains=5)))
    results = [rig(query(f"n{i}.example.com", ts=float(i)))[1] for i in range(7)]
    assert results == ["allowlist"] * 5 + ["dns_exfil", "dns_exfil"]
    v = rig(query("n99.example.com", ts=7.0))
    assert v[0] == "flagged" and v[3] == "high" and v[2] is not None and v[2].startswith("example.com:")


def test_learning_first_seen_then_learned() -> None:
    rig = Rig(Config(policy=PolicyConfig(learning=True)))  # day one: no allowlists
    assert rig(query("api.example.com")) == ("flagged", "first_seen", "api.example.com", "low")
    rig(answer("api.example.com", "5.5.5.5"))
    assert rig(syn("5.5.5.5")) == ("allowed", "learned", "api.example.com", "info")
    assert rig(hello("api.example.com", dst="5.5.5.5"))[1] == "learned"
    assert rig(query("api.example.com"))[1] == "learned"
    # per server
    assert rig(query("api.example.com"), attr(server="other"))[1] == "first_seen"
    # learning never hides the high-severity detectors
    assert rig(syn("203.0.113.9"))[1] == "direct_ip"


def test_learning_is_off_for_servers_with_an_allowlist_unless_overridden() -> None:
    config = Config(
        policy=PolicyConfig(learning=True),
        servers={
            "gh": ServerPolicy(allow=("api.github.com",)),
            "lrn": ServerPolicy(allow=("api.github.com",), learning=True),
            "strict": ServerPolicy(learning=False),
        },
    )
    rig = Rig(config)
    assert rig(query("x.example"), attr("gh"))[1] == "not_allowlisted"
    assert rig(query("x.example"), attr("lrn"))[1] == "first_seen"
    assert rig(query("x.example"), attr("strict"))[1] == "not_allowlisted"
    assert rig(query("x.example"), attr("unconfigured"))[1] == "first_seen"
    rig.policy.remember("gh2", "Seeded.Example.")
    assert rig(query("seeded.example"), attr("gh2"))[1] == "learned"


def test_install_phase_adds_install_allow() -> None:
    rig = Rig(cfg())
    assert rig(query("registry.npmjs.org"), attr(phase="install"))[1:3] == (
        "allowlist", "policy.install_allow: registry.npmjs.org",
    )  # fmt: skip
    assert rig(query("registry.npmjs.org"), attr(phase="run"))[1] == "not_allowlisted"


def test_install_hooks_beyond_the_registries_are_flagged_even_while_learning() -> None:
    """The postinstall hook that phones home at first launch: the server is new
    (learning), yet the hook's destination is flagged medium (alerts) and not learned."""
    rig = Rig(cfg(learning=True))
    hook = attr("unconfigured", phase="install")
    assert rig(query("collector.evil-metrics.io"), hook) == (
        "flagged", "install_egress", "collector.evil-metrics.io", "medium",
    )  # fmt: skip
    assert rig(hello("collector.evil-metrics.io", dst="203.0.113.9"), hook)[1] == "install_egress"
    assert rig(query("collector.evil-metrics.io"), hook)[1] == "install_egress"  # not learned
    # the registries stay allowed, and the same server at run time learns as usual
    assert rig(query("registry.npmjs.org"), hook)[1] == "allowlist"
    assert rig(query("api.notes.example"), attr("unconfigured", phase="run"))[1] == "first_seen"
    # the high-severity detectors still come first
    assert rig(syn("203.0.113.10"), hook)[1] == "direct_ip"


def test_global_allow_and_ech_note() -> None:
    rig = Rig(cfg())
    assert rig(syn("127.0.0.1", dport=8080))[2] == "policy.global_allow: 127.0.0.0/8"
    assert rig(query("localhost"))[1] == "allowlist"
    v = rig(hello("cloudflare-ech.com", dst="104.18.10.10", ech=True))
    assert v[:2] == ("flagged", "not_allowlisted") and v[2] == "cloudflare-ech.com (ECH: outer name)"


def test_query_is_not_allowed_by_the_resolvers_ip() -> None:
    # global_allow has 127.0.0.0/8, the stub resolver lives there: queries are judged by name only
    rig = Rig(cfg())
    q = Observation(
        ts=1,
        frame=1,
        kind=DNS_QUERY,
        proto="udp",
        src=LOCAL,
        sport=1,
        dst="127.0.0.53",
        dport=53,
        qname="evil.example",
    )
    assert rig(q)[1] == "not_allowlisted"


# --- entry forms ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "entry,name,ip,port,matches",
    [
        ("api.github.com", "API.github.com.", None, None, True),
        ("api.github.com", "x.api.github.com", None, None, False),
        ("*.github.com", "api.github.com", None, 443, True),
        ("*.github.com", "a.b.github.com", None, 443, True),
        ("*.github.com", "github.com", None, 443, False),
        ("*.github.com", "evilgithub.com", None, 443, False),
        ("api.github.com:443", "api.github.com", None, 443, True),
        ("api.github.com:443", "api.github.com", None, 80, False),
        ("api.github.com:443", "api.github.com", None, None, True),  # a DNS query
        ("10.0.0.0/8", None, "10.9.8.7", 22, True),
        ("10.0.0.0/8:53", None, "10.9.8.7", 53, True),
        ("10.0.0.0/8:53", None, "10.9.8.7", 443, False),
        ("10.0.0.0/8", None, "11.0.0.1", 22, False),
        ("192.0.2.1", None, "192.0.2.1", 1, True),
        ("192.0.2.1:443", None, "192.0.2.1", 443, True),
        ("2001:db8::1", None, "2001:DB8:0::1", 443, True),
        ("[2001:db8::1]:443", None, "2001:db8::1", 443, True),
        ("[2001:db8::1]:443", None, "2001:db8::1", 80, False),
        ("2001:db8::/32", None, "2001:db8:ffff::1", 443, True),
        ("[2001:db8::/32]:443", None, "2001:db8:ffff::1", 443, True),
        ("2001:db8::/32", None, "10.0.0.1", 443, False),
        ("*", "anything.example", "1.2.3.4", 1, True),
        ("*:443", "anything.example", None, 80, False),
        ("bücher.example", "xn--bcher-kva.example", None, None, True),
        ("1password.com", "1password.com", None, None, True),
    ],
)
def test_entry_forms(entry: str, name: str | None, ip: str | None, port: int | None, matches: bool) -> None:
    m = Matcher([parse_entry(entry, "test")])
    assert (m.match(name, ip, port) is not None) is matches


@pytest.mark.parametrize(
    "bad",
    [
        "",
        " ",
        "foo bar",
        "*.",
        "a.*.b",
        "host:0",
        "host:99999",
        "host:abc",
        "[::1",
        "2001:db8::zz",
        "10.0.0.0/33",
        "-bad-.com",
        "a..b",
    ],
)
def test_invalid_entries_are_config_errors(bad: str) -> None:
    with pytest.raises(ConfigError):
        parse_entry(bad, "servers.x.allow")


def test_invalid_entry_in_config_is_reported_and_reload_keeps_old_config() -> None:
    with pytest.raises(ConfigError, match=r"servers\.gh\.allow: 'not valid'"):
        Policy(cfg(allow=("not valid",)))
    p = Policy(cfg())
    with pytest.raises(ConfigError):
        p.reload(cfg(allow=("bad entry",)))
    assert p.judge(query("api.github.com"), attr(), None).reason == "allowlist"
    p.reload(cfg(allow=("*.example.org",)))
    assert p.judge(query("api.github.com"), attr(), None).reason == "not_allowlisted"
    assert p.judge(query("a.example.org"), attr(), None).reason == "allowlist"


def test_reason_table_is_complete() -> None:
    assert set(REASONS) == {
        "outside_mcp", "unattributed", "dns_answer", "allowlist", "learned", "first_seen",
        "new_destination", "not_allowlisted", "direct_ip", "dns_exfil", "doh_dot",
        "install_egress", "upload", "volume",
    }  # fmt: skip


def test_config_from_toml_text() -> None:
    config = parse_config({"policy": {"learning": False}, "servers": {"gh": {"allow": ["*.github.com:443"]}}})
    assert Rig(config)(hello("api.github.com"))[1] == "allowlist"


# --- properties ----------------------------------------------------------------------

_ALNUM = "abcdefghijklmnopqrstuvwxyz0123456789"
_label = st.text(_ALNUM + "-", min_size=1, max_size=12).filter(lambda s: s[0] != "-" and s[-1] != "-")
_tld = st.text("abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=6)  # never an IP address
_name = st.tuples(st.lists(_label, max_size=3), _tld).map(lambda t: ".".join([*t[0], t[1]]))


@settings(max_examples=300, deadline=None)
@given(
    entry=st.text(max_size=40),
    name=st.one_of(st.none(), st.text(max_size=40)),
    ip=st.one_of(st.none(), st.text(max_size=40)),
    port=st.one_of(st.none(), st.integers(-5, 70000)),
)
def test_matcher_never_raises(entry: str, name: str | None, ip: str | None, port: int | None) -> None:
    try:
        e = parse_entry(entry)
    except ConfigError:
        return
    Matcher([e]).match(name, ip, port)


@settings(max_examples=200, deadline=None)
@given(suffix=_name, sub=_name)
def test_wildcard_matches_subdomains_not_the_bare_suffix(suffix: str, sub: str) -> None:
    m = Matcher([parse_entry(f"*.{suffix}")])
    assert m.match(f"{sub}.{suffix}") is not None
    assert m.match(f"{sub}.{suffix}".upper() + ".") is not None
    assert m.match(suffix) is None
    assert m.match(f"{sub}{suffix}") is None or f"{sub}{suffix}".endswith("." + suffix)


@settings(max_examples=100, deadline=None)
@given(name=_name, port=st.integers(1, 65535), other=st.integers(1, 65535))
def test_exact_entries_with_ports(name: str, port: int, other: int) -> None:
    m = Matcher([parse_entry(f"{name}:{port}")])
    assert m.match(name, None, port) is not None
    assert (m.match(name, None, other) is not None) is (other == port)


def test_same_input_sequence_gives_same_verdicts() -> None:
    rng = random.Random(3)
    events: list[tuple[Observation, Attribution]] = []
    for i in range(400):
        srv = rng.choice(["gh", "other", None])
        pick = rng.random()
        if pick < 0.4:
            name = rng.choice(
                ["api.github.com", "evil.example", f"x{rng.randrange(60)}.example.com", "dns.google"]
            )
            events.append((query(name, ts=i / 10), attr(srv)))
        elif pick < 0.6:
            events.append(
                (
                    answer(
                        rng.choice(["api.github.com", "evil.example"]),
                        f"10.1.1.{rng.randrange(4)}",
                        ts=i / 10,
                    ),
                    attr(srv),
                )
            )
        else:
            events.append((syn(f"10.1.1.{rng.randrange(6)}", ts=i / 10), attr(srv)))

    def replay() -> list[tuple[str, str, str | None, str]]:
        rig = Rig(Config(policy=PolicyConfig(learning=True, exfil=ExfilConfig(unique_subdomains=8))))
        return [rig(o, a) for o, a in events]

    first = replay()
    assert first == replay()
    assert {r[1] for r in first} >= {
        "outside_mcp",
        "dns_answer",
        "first_seen",
        "learned",
        "direct_ip",
        "doh_dot",
        "dns_exfil",
    }


# --- the whole pipeline over real captures --------------------------------------------


def _pipeline_events(capture: str, config: Config) -> list[Event]:
    from egresswatch.capture.pcapfile import read_frames
    from egresswatch.decode.engine import Engine
    from egresswatch.pipeline import Pipeline

    class OneServer:
        def attribute(self, obs: Observation, frame: Frame) -> Attribution:
            return attr("srv")

    names = NameMemory()
    pipe = Pipeline(Engine(), OneServer(), Policy(config, resolved=names.resolved), names)
    events: list[Event] = []
    last = None
    for frame in read_frames(corpus_dir() / "public" / capture):
        events += pipe.feed(frame)
        last = frame
    return events + pipe.finish(last)


@pytest.mark.corpus
def test_pipeline_names_connections_and_flags_unresolved_ones() -> None:
    events = _pipeline_events("ndpi/KakaoTalk_chat.pcap", Config(policy=PolicyConfig(learning=False)))
    clients = {e.obs.local()[0] for e in events}
    assert len(clients) == 1  # one host: a global answered-IP set is a valid oracle here
    answered: set[str] = set()
    checked = shared = 0
    for e in events:
        if e.obs.kind == DNS_ANSWER:
            answered.update(a for a in e.obs.answers if a[0].isdigit() or ":" in a)
        elif e.obs.kind == CONNECT:
            checked += 1
            if e.obs.dst in answered:
                assert e.candidates and e.verdict.reason == "not_allowlisted", e
                # one name: it names the destination; several sharing the address: none does
                assert e.dst_name == (e.candidates[0] if len(e.candidates) == 1 else None), e
                shared += len(e.candidates) > 1
            else:
                assert e.dst_name is None and not e.candidates and e.verdict.reason == "direct_ip", e
    assert checked >= 5
    assert shared  # this capture has names sharing one address (kakao.com)


@pytest.mark.corpus
def test_pipeline_flags_a_real_dns_tunnel_and_not_plain_dns() -> None:
    tunnel = _pipeline_events("ndpi/dns_exfiltration.pcap", Config())
    queries = [e for e in tunnel if e.obs.kind == DNS_QUERY]
    assert queries and all(e.verdict.reason == "dns_exfil" for e in queries[2:])
    assert all(e.verdict.reason == "dns_answer" for e in tunnel if e.obs.kind == DNS_ANSWER)
    plain = _pipeline_events("zeek/dns-edns-ecs.pcap", Config())
    # the capture spans days: past the learning window new names are new_destination,
    # but no detector fires on plain DNS
    assert {e.verdict.reason for e in plain} <= {"first_seen", "learned", "new_destination", "dns_answer"}


def test_learning_window_then_new_destinations_alert() -> None:
    """A server learns quietly for policy.learning_hours of packet time; a
    destination it first contacts after that is new_destination (medium)."""
    rig = Rig(cfg(allow=(), learning=True, learning_hours=1.0))
    day0 = 1_700_000_000.0
    assert rig(query("api.vendor.example", ts=day0))[1:] == ("first_seen", "api.vendor.example", "low")
    assert rig(query("cdn.vendor.example", ts=day0 + 3599))[1] == "first_seen"
    assert rig(query("api.vendor.example", ts=day0 + 7200))[1] == "learned"
    assert rig(query("telemetry.evil.example", ts=day0 + 7200))[1:] == (
        "new_destination",
        "telemetry.evil.example",
        "medium",
    )
    # the window starts with each server's own first event
    late = Rig(cfg(allow=(), learning=True, learning_hours=1.0))
    late.policy.remember("gh", "api.vendor.example", ts=day0)
    assert late(query("other.example", ts=day0 + 10))[1] == "first_seen"
    assert late(query("third.example", ts=day0 + 4000))[1] == "new_destination"
