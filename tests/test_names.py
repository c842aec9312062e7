"""Per-owner DNS memory (egresswatch.judge.names)."""

from __future__ import annotations

import dataclasses

from hypothesis import given, settings
from hypothesis import strategies as st

from egresswatch.judge.names import MAX_TTL, MIN_TTL, NameMemory, owner_key
from egresswatch.model import (
    CONNECT,
    DNS_ANSWER,
    DNS_QUERY,
    TLS_SNI,
    Attribution,
    DnsRecord,
    Observation,
    ProcessInfo,
)

CDN_IP = "151.101.1.69"
HOST = "10.0.0.5"


def answer(
    qname: str,
    records: list[tuple[str, int, int, str]],
    ts: float = 100.0,
    client: str = HOST,
    rcode: int = 0,
) -> Observation:
    recs = tuple(DnsRecord(name=n, rtype=t, ttl=ttl, data=d) for n, t, ttl, d in records)
    return Observation(
        ts=ts,
        frame=1,
        kind=DNS_ANSWER,
        proto="udp",
        src="10.0.0.1",
        sport=53,
        dst=client,
        dport=40000,
        qname=qname,
        qtype=1,
        rcode=rcode,
        records=recs,
        answers=tuple(d for _, t, _, d in records if t in (1, 5, 28)),
    )


def connect(
    dst: str, ts: float = 101.0, src: str = HOST, kind: str = CONNECT, sni: str | None = None
) -> Observation:
    return Observation(
        ts=ts, frame=2, kind=kind, proto="tcp", src=src, sport=50000, dst=dst, dport=443, sni=sni
    )


def server(name: str, pid: int = 10) -> Attribution:
    return Attribution(process=ProcessInfo(pid=pid, create_time=5.0), server=name, host="claude")


def proc(pid: int, ct: float = 1.0) -> Attribution:
    return Attribution(process=ProcessInfo(pid=pid, create_time=ct))


def test_cname_chain_names_the_ip_by_query_and_targets() -> None:
    mem = NameMemory()
    a = answer(
        "WWW.Example.com.",
        [
            ("www.example.com", 5, 60, "www.example.com.cdn.net"),
            ("www.example.com.cdn.net", 5, 60, "edge.cdn.net"),
            ("edge.cdn.net", 1, 60, CDN_IP),
            ("unrelated.org", 1, 60, "9.9.9.9"),
        ],
    )
    assert mem.observe(a, server("s")) == "www.example.com"
    owner = owner_key(connect(CDN_IP), server("s"))
    assert mem.names(owner, CDN_IP, 101.0) == ("www.example.com", "www.example.com.cdn.net", "edge.cdn.net")
    assert mem.observe(connect(CDN_IP), server("s")) == "www.example.com"
    # an A record outside the chain is not trusted
    assert not mem.resolved(owner, "9.9.9.9", 101.0)


def test_two_servers_resolving_different_names_to_one_cdn_ip_keep_their_own_name() -> None:
    mem = NameMemory()
    mem.observe(answer("api.good.com", [("api.good.com", 1, 300, CDN_IP)], ts=10), server("good"))
    mem.observe(answer("evil.example", [("evil.example", 1, 300, CDN_IP)], ts=11), server("evil"))
    assert mem.observe(connect(CDN_IP, ts=12), server("good")) == "api.good.com"
    assert mem.observe(connect(CDN_IP, ts=12), server("evil")) == "evil.example"
    # a third server never resolved it: no name, not resolved
    third = server("third")
    assert mem.observe(connect(CDN_IP, ts=12), third) is None
    assert not mem.resolved(owner_key(connect(CDN_IP), third), CDN_IP, 12.0)


def test_processes_of_one_server_share_memory_but_plain_processes_do_not() -> None:
    mem = NameMemory()
    mem.observe(answer("a.example", [("a.example", 1, 60, "1.2.3.4")]), server("s", pid=10))
    assert mem.observe(connect("1.2.3.4"), server("s", pid=11)) == "a.example"
    mem.observe(answer("b.example", [("b.example", 1, 60, "5.6.7.8")]), proc(20))
    assert mem.observe(connect("5.6.7.8"), proc(20)) == "b.example"
    assert mem.observe(connect("5.6.7.8"), proc(21)) is None
    # pid reuse: same pid, other create_time is another process
    assert mem.observe(connect("5.6.7.8"), proc(20, ct=2.0)) is None


def test_unattributed_memory_is_per_local_host() -> None:
    mem = NameMemory()
    nobody = Attribution()
    mem.observe(answer("x.example", [("x.example", 1, 60, "1.2.3.4")], client="10.0.0.5"), nobody)
    assert mem.observe(connect("1.2.3.4", src="10.0.0.5"), nobody) == "x.example"
    assert mem.observe(connect("1.2.3.4", src="10.0.0.6"), nobody) is None


def test_ttl_is_clamped_and_measured_in_frame_time() -> None:
    mem = NameMemory()
    s = server("s")
    mem.observe(answer("short.example", [("short.example", 1, 0, "1.1.1.9")], ts=1000.0), s)
    assert mem.observe(connect("1.1.1.9", ts=1000.0 + MIN_TTL - 1), s) == "short.example"
    assert mem.observe(connect("1.1.1.9", ts=1000.0 + MIN_TTL + 1), s) is None
    mem.observe(answer("long.example", [("long.example", 1, 10**7, "1.1.1.8")], ts=0.0), s)
    assert mem.observe(connect("1.1.1.8", ts=MAX_TTL - 1), s) == "long.example"
    assert mem.observe(connect("1.1.1.8", ts=MAX_TTL + 1), s) is None


def test_sni_and_dns_names_come_from_the_event_itself() -> None:
    mem = NameMemory()
    s = server("s")
    assert mem.observe(connect("1.2.3.4", kind=TLS_SNI, sni="API.Example.COM."), s) == "api.example.com"
    q = Observation(
        ts=1,
        frame=1,
        kind=DNS_QUERY,
        proto="udp",
        src=HOST,
        sport=1,
        dst="10.0.0.1",
        dport=53,
        qname="Q.example",
    )
    assert mem.observe(q, s) == "q.example"
    # an SNI-less hello is named from memory
    mem.observe(answer("named.example", [("named.example", 28, 60, "2001:DB8::1")]), s)
    assert mem.observe(connect("2001:db8::1", kind=TLS_SNI), s) == "named.example"


def test_failed_answers_and_answers_without_records() -> None:
    mem = NameMemory()
    s = server("s")
    mem.observe(answer("nx.example", [("nx.example", 1, 60, "1.2.3.4")], rcode=3), s)
    assert mem.observe(connect("1.2.3.4"), s) is None
    # answers-only observation (no records): chain from wire order
    a = Observation(
        ts=100.0,
        frame=1,
        kind=DNS_ANSWER,
        proto="udp",
        src="10.0.0.1",
        sport=53,
        dst=HOST,
        dport=4,
        qname="www.github.com",
        rcode=0,
        answers=("github.com", "192.30.252.128"),
    )
    assert mem.record(owner_key(a, s), a) == 1
    assert mem.names(owner_key(connect("192.30.252.128"), s), "192.30.252.128") == (
        "www.github.com",
        "github.com",
    )


def test_cname_loop_terminates() -> None:
    mem = NameMemory()
    a = answer("a.x", [("a.x", 5, 60, "b.x"), ("b.x", 5, 60, "a.x"), ("b.x", 1, 60, "1.2.3.4")])
    mem.observe(a, server("s"))
    assert mem.observe(connect("1.2.3.4"), server("s")) == "a.x"


def test_memory_is_bounded_lru() -> None:
    mem = NameMemory(max_entries=3)
    s = server("s")
    for i in range(5):
        mem.observe(answer(f"n{i}.example", [(f"n{i}.example", 1, 60, f"10.1.0.{i}")]), s)
    assert len(mem) == 3
    assert mem.observe(connect("10.1.0.0"), s) is None
    assert mem.observe(connect("10.1.0.4"), s) == "n4.example"


@settings(max_examples=200, deadline=None)
@given(
    qname=st.one_of(st.none(), st.text(max_size=30)),
    records=st.lists(
        st.tuples(
            st.text(max_size=20),
            st.sampled_from([1, 5, 28, 16]),
            st.integers(-10, 10**9),
            st.text(max_size=40),
        ),
        max_size=6,
    ),
    dst=st.text(max_size=40),
)
def test_memory_never_raises_on_odd_answers(
    qname: str | None, records: list[tuple[str, int, int, str]], dst: str
) -> None:
    mem = NameMemory(max_entries=4)
    mem.observe(dataclasses.replace(answer("", records), qname=qname), server("s"))
    mem.observe(connect(dst or "0.0.0.0"), server("s"))
    assert len(mem) <= 4


# --- the host's caching resolver and /etc/hosts -------------------------------------


def resolver_process(name: str, pid: int = 300) -> Attribution:
    return Attribution(process=ProcessInfo(pid=pid, create_time=2.0, name=name))


def test_answers_of_the_hosts_caching_resolver_count_for_every_owner() -> None:
    """nss-resolve / nscd: the lookup never leaves the MCP server as a DNS packet;
    systemd-resolved asks upstream and only it receives the answer."""
    mem = NameMemory()
    mem.observe(
        answer("api.github.com", [("api.github.com", 1, 60, "140.82.112.6")]),
        resolver_process("systemd-resolve"),
    )
    gh = server("github")
    assert mem.resolved(owner_key(connect("140.82.112.6"), gh), "140.82.112.6", 101.0)
    assert mem.observe(connect("140.82.112.6"), gh) == "api.github.com"
    # the server's own answers still win over the resolver's
    mem.observe(answer("gh.example", [("gh.example", 1, 60, "140.82.112.6")]), gh)
    assert mem.observe(connect("140.82.112.6"), gh) == "gh.example"


def test_answers_of_other_processes_do_not_count() -> None:
    mem = NameMemory()
    mem.observe(answer("c2.example", [("c2.example", 1, 60, "203.0.113.5")]), resolver_process("curl"))
    gh = server("github")
    assert not mem.resolved(owner_key(connect("203.0.113.5"), gh), "203.0.113.5", 101.0)
    assert mem.observe(connect("203.0.113.5"), gh) is None
    # nor do answers an MCP server received, for another server
    mem.observe(answer("x.example", [("x.example", 1, 60, "203.0.113.6")]), server("notes"))
    assert mem.observe(connect("203.0.113.6"), gh) is None


def test_hosts_file_names_count_as_resolved_and_reload_replaces_them() -> None:
    mem = NameMemory()
    text = (
        "127.0.0.1 localhost\n::1 localhost ip6-localhost\n"
        "# a comment\n10.1.2.3  build.corp.example  build   # trailing comment\n"
        "fe80::1%eth0 router.lan\nnot-an-ip name\n10.9.9.9\n"
    )
    assert mem.load_hosts(text) == 2
    gh = server("github")
    assert mem.observe(connect("10.1.2.3"), gh) == "build.corp.example"
    assert mem.resolved(owner_key(connect("fe80::1"), gh), "fe80::1", 1e12)  # never expires
    assert not mem.resolved(owner_key(connect("127.0.0.1"), gh), "127.0.0.1", 1.0)  # loopback left out
    assert mem.load_hosts("10.4.4.4 new.example\n") == 1
    assert mem.observe(connect("10.1.2.3"), gh) is None
    assert mem.observe(connect("10.4.4.4"), gh) == "new.example"


def test_dst_name_lowercases_ascii_letters_only_and_keeps_escapes() -> None:
    from egresswatch.judge.names import _norm_name

    assert _norm_name("API.Example.COM.") == "api.example.com"
    assert _norm_name("Caf\\195\\169.Example") == "caf\\195\\169.example"
    assert _norm_name("a\\.") == "a\\."  # an escaped dot in the last label is not the root dot
    assert _norm_name("a\\\\.") == "a\\\\"  # an escaped backslash, then the separator
    assert _norm_name(".") == "."
