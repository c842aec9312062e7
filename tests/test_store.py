"""Event store: roundtrip, migrations, query filters, retention, permissions, readers."""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
from pathlib import Path
from typing import Any

import pytest

from egresswatch.config import RetentionConfig
from egresswatch.errors import StoreError
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
    Observation,
    ProcessInfo,
    Verdict,
)
from egresswatch.store.db import Store
from egresswatch.store.domains import domain_condition
from egresswatch.store.files import check_permissions
from egresswatch.store.query import parse_time, query_events
from egresswatch.store.schema import MIGRATIONS
from egresswatch.store.stats import stats

T0 = 1_763_000_000.0


def make_event(
    ts: float,
    kind: str = TLS_SNI,
    name: str | None = "api.example.com",
    server: str | None = "fs",
    pid: int = 100,
    process: str = "node",
    verdict: str = "allowed",
    reason: str = "allowlist",
    severity: str = "info",
    dst: str = "198.18.0.10",
    dst_name: str | None = None,
) -> Event:
    """A realistic event of any kind (shared by the store, alert and CLI tests)."""
    base: dict[str, Any] = dict(
        ts=ts, frame=int(ts) % 100000, proto="tcp", src="10.0.0.2", sport=40000 + pid % 1000
    )
    if kind in (DNS_QUERY, DNS_ANSWER):
        if kind == DNS_QUERY:
            obs = Observation(**base, kind=kind, dst="127.0.0.53", dport=53, qname=name, qtype=1, rcode=0,
                              dns_id=7)  # fmt: skip
        else:
            obs = Observation(
                ts=ts, frame=1, kind=kind, proto="udp", src="127.0.0.53", sport=53, dst="10.0.0.2",
                dport=40000, qname=name, qtype=1, rcode=0, dns_id=7, answers=(dst,),
                records=(DnsRecord(name or ".", 1, 60, dst),),
            )  # fmt: skip
    elif kind in (TLS_SNI, TLS_INCOMPLETE):
        obs = Observation(**base, kind=kind, dst=dst, dport=443, sni=name, alpn=("h2", "http/1.1"),
                          tls_versions=(0x0304,), note="truncated" if kind == TLS_INCOMPLETE else None)  # fmt: skip
    elif kind == QUIC_SNI:
        obs = Observation(**{**base, "proto": "udp"}, kind=kind, dst=dst, dport=443, sni=name, alpn=("h3",),
                          ech=True, tls_versions=(0x0304,), quic_version=1)  # fmt: skip
    else:
        obs = Observation(**base, kind=CONNECT, dst=dst, dport=443)
    proc = ProcessInfo(pid=pid, create_time=T0 - 100, ppid=1, name=process, exe=f"/usr/bin/{process}",
                       cmdline=(process, "server.js"), user="alice")  # fmt: skip
    parent = ProcessInfo(pid=1, create_time=0.0, name="systemd")
    attr = Attribution(process=proc, chain=(parent,), server=server, host="claude" if server else None,
                       phase="run" if server else None)  # fmt: skip
    if server is None:
        verdict, reason = "unwatched", "outside_mcp"
    dn = dst_name if dst_name is not None else (name if kind != CONNECT else None)
    return Event(obs=obs, attr=attr, verdict=Verdict(verdict, reason, None, severity), dst_name=dn)


def mixed_events() -> list[Event]:
    evs = []
    kinds = (DNS_QUERY, DNS_ANSWER, TLS_SNI, TLS_INCOMPLETE, QUIC_SNI, CONNECT)
    for i in range(60):
        kind = kinds[i % 6]
        server = ("fs", "git", None)[i % 3]
        flagged = i % 5 == 0 and server is not None
        evs.append(
            make_event(
                T0 + i * 60, kind=kind, name=f"h{i}.{'example.com' if i % 2 else 'other.org'}",
                server=server, pid=100 + i % 4, process=("node", "python3")[i % 2],
                verdict="flagged" if flagged else "allowed", reason="not_allowlisted" if flagged else "allowlist",
                severity="high" if flagged else "info",
            )
        )  # fmt: skip
    return evs


@pytest.fixture
def filled(tmp_path: Path) -> tuple[Store, list[Event]]:
    store = Store(tmp_path / "e.db", batch_size=7)
    evs = mixed_events()
    for e in evs:
        store.write(e)
    store.flush()
    return store, evs


def _strip(d: dict) -> dict:
    d = dict(d)
    d.pop("id")
    return d


def test_roundtrip_every_kind(filled: tuple[Store, list[Event]]) -> None:
    store, evs = filled
    rows = query_events(store, limit=None)
    assert len(rows) == len(evs)
    got = sorted((_strip(r) for r in rows), key=lambda d: d["ts"])
    assert got == [e.to_dict() for e in evs]
    assert [r["id"] for r in rows] == sorted((r["id"] for r in rows), reverse=True)  # newest first
    store.close()


def test_schema_strict_wal_and_migrations_idempotent(tmp_path: Path) -> None:
    p = tmp_path / "e.db"
    Store(p).close()
    s = Store(p)  # second open applies nothing new
    assert MIGRATIONS.pending(s.db) == []
    assert [m.name for m in MIGRATIONS.applied(s.db)] == [
        "0001_events_alerts",
        "0002_events_server_ts_dest",
        "0003_flows",
        "0004_events_flagged",
        "0005_volume",
    ]
    assert s.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert s.conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    sql = s.conn.execute("SELECT sql FROM sqlite_master WHERE name = 'events'").fetchone()[0]
    assert sql.rstrip().endswith("STRICT")
    names = {r[0] for r in s.conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {"events_ts", "events_server_ts", "events_verdict_ts", "events_pid_ts", "events_rname_ts"} <= names
    assert "events_server_ts_dest" in names
    s.close()


def test_an_older_database_gets_the_new_index(tmp_path: Path) -> None:
    p = tmp_path / "e.db"
    s = Store(p)
    s.write(make_event(T0))
    s.close()
    conn = sqlite3.connect(p)  # as a database written before migration 0002 existed
    conn.execute("DROP INDEX events_server_ts_dest")
    conn.execute("DELETE FROM _sqlite_migrations WHERE name = '0002_events_server_ts_dest'")
    conn.commit()
    conn.close()
    s = Store(p)
    names = {r[0] for r in s.conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert "events_server_ts_dest" in names
    plan = " ".join(str(tuple(r)) for r in s.conn.execute(
        "EXPLAIN QUERY PLAN SELECT count(*) FROM events WHERE server = 'x' AND ts >= 0 GROUP BY dst_name"
    ))  # fmt: skip
    assert "COVERING INDEX events_server_ts_dest" in plan
    s.close()


def test_flush_on_batch_size_and_frame_interval(tmp_path: Path) -> None:
    p = tmp_path / "e.db"
    s = Store(p, batch_size=3, flush_interval=10.0)
    reader = Store(p, readonly=True)
    s.write(make_event(T0))
    s.write(make_event(T0 + 1))
    assert len(query_events(reader)) == 0
    s.write(make_event(T0 + 2))  # batch size reached
    assert len(query_events(reader)) == 3
    s.write(make_event(T0 + 3))
    s.write(make_event(T0 + 20))  # frame time moved past the interval
    assert len(query_events(reader)) == 5
    s.write(make_event(T0 + 21))
    s.close()
    assert len(query_events(reader)) == 6
    reader.close()


@pytest.mark.parametrize(
    ("filters", "pred"),
    [
        ({"server": "git"}, lambda e: e.attr.server == "git"),
        ({"pid": 101}, lambda e: e.attr.process.pid == 101),
        ({"process": "python3"}, lambda e: e.attr.process.name == "python3"),
        ({"verdict": "flagged"}, lambda e: e.verdict.verdict == "flagged"),
        ({"verdict": "unwatched"}, lambda e: e.verdict.verdict == "unwatched"),
        ({"kind": "quic_sni"}, lambda e: e.obs.kind == "quic_sni"),
        ({"since": T0 + 600}, lambda e: e.obs.ts >= T0 + 600),
        ({"until": T0 + 600}, lambda e: e.obs.ts < T0 + 600),
        ({"since": T0 + 600, "until": T0 + 1200, "server": "fs"},
         lambda e: T0 + 600 <= e.obs.ts < T0 + 1200 and e.attr.server == "fs"),
        ({"domain_glob": "*.example.com"}, lambda e: (e.dst_name or "").endswith(".example.com")),
        ({"domain_glob": "*.EXAMPLE.com"}, lambda e: (e.dst_name or "").endswith(".example.com")),
        ({"domain_glob": "h1?.*"}, lambda e: (e.dst_name or "").startswith("h1") and len(e.dst_name) > 3
         and e.dst_name[3] == "."),
        ({"domain_glob": "h[12].*"}, lambda e: (e.dst_name or "")[:3] in ("h1.", "h2.")),
    ],
)  # fmt: skip
def test_query_filters(filled: tuple[Store, list[Event]], filters: dict, pred) -> None:
    store, evs = filled
    got = sorted(r["ts"] for r in query_events(store, limit=None, **filters))
    want = sorted(e.obs.ts for e in evs if pred(e))
    assert want and got == want
    store.close()


def test_domain_matches_qname_or_sni_not_only_dst_name(tmp_path: Path) -> None:
    s = Store(tmp_path / "e.db")
    s.write(make_event(T0, TLS_SNI, name="Evil.Example.NET", dst_name="cdn.other.org"))
    s.write(make_event(T0 + 1, DNS_QUERY, name="x.example.net", dst_name="x.example.net"))
    s.flush()
    assert sorted(r["ts"] for r in query_events(s, domain_glob="*.example.net")) == [T0, T0 + 1]
    assert [r["ts"] for r in query_events(s, domain_glob="cdn.*")] == [T0]
    assert query_events(s, domain_glob="*.example.org") == []
    s.close()


def test_domain_glob_uses_index_for_suffix() -> None:
    sql, params = domain_condition("*.Example.com")
    assert "rname >= ?" in sql and params[:3] == ["moc.elpmaxe.", "moc.elpmaxe/", "moc.elpmaxe.*"]


def test_limit_after_id_and_stats(filled: tuple[Store, list[Event]]) -> None:
    store, evs = filled
    newest = query_events(store, limit=5)
    assert [r["ts"] for r in newest] == sorted((e.obs.ts for e in evs), reverse=True)[:5]
    after = query_events(store, after_id=newest[1]["id"], limit=None)
    assert [r["id"] for r in after] == [newest[0]["id"]]
    st = {s["server"]: s for s in stats(store)}
    assert set(st) == {"fs", "git"}
    fs = [e for e in evs if e.attr.server == "fs" and e.obs.kind != DNS_ANSWER]
    assert st["fs"]["events"] == len(fs)
    assert st["fs"]["flagged_by_reason"] == {
        "not_allowlisted": sum(e.verdict.verdict == "flagged" and e.attr.server == "fs" for e in evs)
    }
    d0 = st["fs"]["destinations"][0]
    assert d0["first_seen"] <= d0["last_seen"] and d0["count"] >= 1
    late = stats(store, since=T0 + 1800)
    assert sum(s["events"] for s in late) == sum(
        1 for e in evs if e.attr.server and e.obs.ts >= T0 + 1800 and e.obs.kind != DNS_ANSWER
    )
    store.close()


def test_stats_per_server_equals_a_count_of_the_events(filled: tuple[Store, list[Event]]) -> None:
    store, evs = filled
    for since in (None, T0 + 1800):
        want: dict[str, dict[str, list[float]]] = {}
        for e in evs:
            if e.attr.server is None or e.obs.kind == DNS_ANSWER or (since and e.obs.ts < since):
                continue
            d = want.setdefault(e.attr.server, {}).setdefault(
                e.dst_name or e.obs.dst, [0, 0, e.obs.ts, e.obs.ts]
            )
            d[0] += 1
            d[1] += e.verdict.verdict == "flagged"
            d[2], d[3] = min(d[2], e.obs.ts), max(d[3], e.obs.ts)
        got = stats(store, since=since)
        assert [s["server"] for s in got] == sorted(want)
        for s in got:
            dests = s["destinations"]
            assert {
                d["destination"]: [d["count"], d["flagged"], d["first_seen"], d["last_seen"]] for d in dests
            } == (want[s["server"]])
            assert [(-d["count"], d["destination"]) for d in dests] == sorted(
                (-d["count"], d["destination"]) for d in dests
            )
        assert stats(store, since=since, server="git") == [s for s in got if s["server"] == "git"]
        for full, short in zip(got, stats(store, since=since, top=2), strict=True):
            assert short["destinations"] == full["destinations"][:2]
            assert short["destination_count"] == len(full["destinations"])
            assert (short["events"], short["flagged"]) == (full["events"], full["flagged"])
    assert stats(store, server="nobody") == []
    store.close()


@pytest.mark.parametrize(
    ("text", "want"),
    [("2h", T0 - 7200), ("30m", T0 - 1800), ("7d", T0 - 7 * 86400), ("45s", T0 - 45),
     ("1700000000", 1_700_000_000.0), ("1700000000.5", 1_700_000_000.5),
     ("2026-11-24T10:00:00+00:00", 1795514400.0), ("2026-11-24T10:00:00Z", 1795514400.0)],
)  # fmt: skip
def test_parse_time(text: str, want: float) -> None:
    assert parse_time(text, now=T0) == want


@pytest.mark.parametrize("text", ["yesterday", "2x", "", "12:00 tomorrow", "-5h"])
def test_parse_time_garbage_is_one_line_error(text: str) -> None:
    with pytest.raises(ValueError) as exc:
        parse_time(text, now=T0)
    assert "\n" not in str(exc.value)


def test_retention_by_age(tmp_path: Path) -> None:
    s = Store(tmp_path / "e.db", retention=RetentionConfig(max_age_days=1, max_size_mb=512))
    for i in range(5000):
        s.write(make_event(T0 + i * 30))  # ~41.7 hours
    s.flush()
    now = T0 + 5000 * 30
    res = s.prune(now, chunk=300)
    assert res.deleted_by_age > 0 and res.chunks > 1
    left = query_events(s, limit=None)
    assert min(r["ts"] for r in left) >= now - 86400
    assert len(left) + res.deleted_by_age == 5000
    s.close()


def test_retention_by_size(tmp_path: Path) -> None:
    s = Store(tmp_path / "e.db", retention=RetentionConfig(max_age_days=3650, max_size_mb=0.5))
    for i in range(6000):
        s.write(make_event(T0 + i, name=f"n{i}.example.com"))
    s.flush()
    before = s.size_bytes()
    assert before > 512 * 1024
    res = s.prune(T0 + 6000, chunk=500)
    assert res.deleted_by_size > 0
    assert s.size_bytes() <= 512 * 1024
    left = query_events(s, limit=None)
    assert len(left) == 6000 - res.deleted_by_size
    assert min(r["ts"] for r in left) == T0 + res.deleted_by_size  # oldest went first
    assert s.conn.execute("PRAGMA freelist_count").fetchone()[0] == 0  # pages given back to the file
    s.close()


def test_created_with_restrictive_modes(tmp_path: Path) -> None:
    p = tmp_path / "new" / "e.db"
    s = Store(p)
    s.write(make_event(T0))
    s.flush()
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(p.parent).st_mode) == 0o750
    for side in ("-wal", "-shm"):
        assert stat.S_IMODE(os.stat(f"{p}{side}").st_mode) == 0o600
    assert check_permissions(p) == []
    s.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_group_mode_0640(tmp_path: Path) -> None:
    import grp

    group = grp.getgrgid(0).gr_name if os.getgid() == 0 else grp.getgrgid(os.getgid()).gr_name
    p = tmp_path / "e.db"
    Store(p, group=group).close()
    st = os.stat(p)
    assert stat.S_IMODE(st.st_mode) == 0o640 and st.st_uid == 0
    with pytest.raises(StoreError, match="no such group"):
        Store(tmp_path / "x.db", group="no-such-group-egw")


def _other_group() -> tuple[str, int]:
    import grp

    g = next(g for g in grp.getgrall() if g.gr_gid not in (0, os.getgid()))
    return g.gr_name, g.gr_gid


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_existing_database_gets_the_configured_group(tmp_path: Path) -> None:
    """A database made before db_group was set (or by a start that failed
    half-way) is given the group at the next start, not left root-only."""
    name, gid = _other_group()
    p = tmp_path / "e.db"
    Store(p).close()
    assert (os.stat(p).st_gid, stat.S_IMODE(os.stat(p).st_mode)) == (0, 0o600)
    Store(p, group=name).close()
    st = os.stat(p)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, gid, 0o640)


@pytest.mark.skipif(os.geteuid() != 0, reason="setpriv drops a capability of root")
def test_chown_refused_is_a_one_line_error(tmp_path: Path) -> None:
    """Without CAP_CHOWN (or with a system call filter refusing chown, as the
    systemd unit had) the store says so in one line, no traceback."""
    import shutil
    import subprocess
    import sys

    if shutil.which("setpriv") is None:
        pytest.fail("setpriv (util-linux) is missing")
    name, gid = _other_group()
    code = (
        "import sys\nfrom egresswatch.store.db import Store, StoreError\n"
        f"try:\n    Store({str(tmp_path / 'e.db')!r}, group={name!r})\n"
        "except StoreError as e:\n    print(e); sys.exit(3)\n"
    )
    out = subprocess.run(["setpriv", "--bounding-set=-chown", "--inh-caps=-chown", sys.executable, "-c", code],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 3, out.stderr
    assert out.stdout.strip() == (
        f"{tmp_path / 'e.db'}: cannot give it to daemon.db_group (gid {gid}): Operation not permitted "
        "(needs CAP_CHOWN and the chown system calls)"
    )


def test_check_permissions_finds_writable_file_and_dir(tmp_path: Path) -> None:
    p = tmp_path / "e.db"
    Store(p).close()
    os.chmod(p, 0o666)
    problems = check_permissions(p)
    assert any("writable by group or others" in m and str(p) in m for m in problems)
    os.chmod(p, 0o600)
    os.chmod(tmp_path, 0o777)
    try:
        assert any("directory writable" in m for m in check_permissions(p))
    finally:
        os.chmod(tmp_path, 0o700)
    assert check_permissions(p) == []


def test_readonly_missing_and_corrupt(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no such database"):
        Store(tmp_path / "missing.db", readonly=True)
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(StoreError) as exc:
        Store(bad, readonly=True)
    assert "\n" not in str(exc.value)
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()
    with pytest.raises(StoreError, match="not an egresswatch database"):
        Store(empty, readonly=True)
    ro = Store(tmp_path / "w.db")
    ro.close()
    r = Store(tmp_path / "w.db", readonly=True)
    with pytest.raises(StoreError):
        r.write(make_event(T0))
    r.close()


def test_readonly_queries_while_writer_writes(tmp_path: Path) -> None:
    p = tmp_path / "e.db"
    w = Store(p, batch_size=50, flush_interval=1e9)
    w.write(make_event(T0))
    w.flush()
    reader = Store(p, readonly=True)
    errors: list[BaseException] = []
    counts: list[int] = []
    done = threading.Event()

    def read() -> None:
        try:
            while not done.is_set():
                counts.append(len(query_events(reader, server="fs", limit=None)))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    t = threading.Thread(target=read)
    t.start()
    for i in range(1, 5001):
        w.write(make_event(T0 + i))
        if i % 1000 == 0:
            w.prune(T0 + i)  # retention running alongside
    w.flush()
    done.set()
    t.join()
    assert not errors
    assert len(counts) > 1 and counts == sorted(counts)  # readers only ever see whole batches grow
    assert all(c % 50 in (0, 1) for c in counts)
    assert len(query_events(reader, limit=None)) == 5001
    reader.close()
    w.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to an unprivileged user")
def test_group_member_reads_with_and_without_running_writer() -> None:
    import grp
    import pwd
    import shutil
    import tempfile

    nobody = pwd.getpwnam("nobody")
    group = grp.getgrgid(nobody.pw_gid).gr_name
    base = Path(tempfile.mkdtemp(prefix="egw-store-", dir="/tmp"))
    os.chmod(base, 0o755)
    p = base / "db" / "events.db"

    def read_as_nobody() -> str:
        """Fork, drop to nobody (python lives under /root, so no exec), query read-only."""
        rfd, wfd = os.pipe()
        child = os.fork()
        if child == 0:  # pragma: no cover - child process
            os.close(rfd)
            try:
                os.setgroups([])
                os.setgid(nobody.pw_gid)
                os.setuid(nobody.pw_uid)
                with Store(p, readonly=True) as s:
                    msg = str(len(query_events(s, limit=None)))
            except BaseException as exc:  # noqa: BLE001 - reported to the parent
                msg = f"error: {exc}"
            os.write(wfd, msg.encode())
            os._exit(0)
        os.close(wfd)
        with os.fdopen(rfd) as fh:
            out = fh.read()
        os.waitpid(child, 0)
        return out

    try:
        w = Store(p, group=group)
        for i in range(10):
            w.write(make_event(T0 + i))
        w.flush()
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o640 and os.stat(p).st_gid == nobody.pw_gid
        assert read_as_nobody() == "10"  # writer running: -wal/-shm exist
        w.close()
        assert not Path(f"{p}-wal").exists()
        assert read_as_nobody() == "10"  # writer gone: no -wal/-shm, directory not writable
    finally:
        shutil.rmtree(base)


def test_write_failure_keeps_rows_and_recovers(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    p = tmp_path / "e.db"
    s = Store(p, batch_size=10, flush_interval=1e9)
    s.conn.execute("PRAGMA busy_timeout=20")
    blocker = sqlite3.connect(p, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another writer holds the lock
    for i in range(25):
        s.write(make_event(T0 + i))
    assert s.counters["write_errors"] == 1  # while failing, events wait for the next flush(), not retry each
    s.flush()  # the daemon's housekeeping retries
    assert s.counters["write_errors"] == 2 and s.counters["events_written"] == 0 and s.pending == 25
    assert sum("cannot write" in r.message for r in caplog.records) == 1  # logged once per streak
    blocker.execute("ROLLBACK")
    blocker.close()
    s.flush()
    assert s.counters["events_written"] == 25
    assert sorted(r["ts"] for r in query_events(s, limit=None)) == [T0 + i for i in range(25)]
    s.close()
