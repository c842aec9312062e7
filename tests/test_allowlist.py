"""Allowlist suggestion, imports and TOML rendering (egresswatch.judge: allowlist, catalogs, allowtoml; cli policy)."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from egresswatch.cli.main import cli
from egresswatch.config import parse_config
from egresswatch.errors import ConfigError
from egresswatch.judge import allowlist
from egresswatch.judge.allowlist import collapse, suggest
from egresswatch.judge.allowtoml import render_toml
from egresswatch.judge.catalogs import import_docker_catalog, import_toolhive
from egresswatch.judge.policy import Policy
from egresswatch.model import (
    CONNECT,
    DNS_QUERY,
    TLS_SNI,
    Attribution,
    Event,
    Observation,
    ProcessInfo,
    Verdict,
)


def ev(kind: str, server: str | None = "gh", **kw: Any) -> dict[str, Any]:
    d: dict[str, Any] = {"kind": kind, "server": server, "dst": "140.82.112.6", "dport": 443}
    d.update(kw)
    return d


def test_suggest_collapses_three_siblings_and_keeps_exact_otherwise() -> None:
    events = [
        ev("dns_query", qname="api.github.com"),
        ev("tls_sni", sni="uploads.github.com"),
        ev("quic_sni", sni="codeload.github.com"),
        ev("dns_query", qname="github.com."),
        ev("dns_query", qname="pypi.org"),
        ev("dns_query", qname="files.pythonhosted.org"),
        ev("connect", dst="203.0.113.7", dst_name=None),
        ev("connect", dst="2001:DB8::1", dst_name=None),
        ev("connect", dst="140.82.112.6", dst_name="api.github.com"),
        ev("dns_answer", qname="ignored.example"),
        ev("dns_query", server=None, qname="outside.example"),
        ev("dns_query", server="other", qname="api.slack.com"),
    ]
    assert suggest(events) == {
        "gh": [
            "files.pythonhosted.org",
            "github.com",
            "*.github.com",
            "pypi.org",
            "2001:db8::1",
            "203.0.113.7",
        ],
        "other": ["api.slack.com"],
    }
    assert suggest(events, server="other") == {"other": ["api.slack.com"]}


def test_suggest_never_includes_exfil_doh_or_garbage() -> None:
    notes: dict[str, list[str]] = {}
    events = [
        ev("dns_query", qname="a1b2.evil.example", reason="dns_exfil"),
        ev("tls_sni", sni="dns.google", reason="doh_dot"),
        ev("dns_query", qname="zi03aA-J\\228germeister.pirate.sea"),
        ev("dns_query", qname="ok.example"),
    ]
    assert suggest(events, notes=notes) == {"gh": ["ok.example"]}
    assert notes == {
        "gh": [
            "left out 1 event(s): flagged dns_exfil",
            "left out 1 event(s): flagged doh_dot",
            "left out 1 event(s): not a host name",
        ]
    }


def test_suggest_leaves_out_install_phase_traffic() -> None:
    """What a postinstall hook contacted is judged by policy.install_allow; it
    never enters the server's own allowlist (where it would allow it at run time)."""
    notes: dict[str, list[str]] = {}
    events = [
        {"server": "gh", "kind": "dns_query", "qname": "stats.npm-metrics.dev", "phase": "install",
         "reason": "install_egress"},
        {"server": "gh", "kind": "dns_query", "qname": "registry.npmjs.org", "phase": "install",
         "reason": "allowlist"},
        {"server": "gh", "kind": "dns_query", "qname": "api.github.com", "phase": "run", "reason": "first_seen"},
    ]  # fmt: skip
    assert suggest(events, notes=notes) == {"gh": ["api.github.com"]}
    assert notes == {"gh": ["left out 2 event(s): install phase"]}


def test_suggest_skip_callback() -> None:
    events = [ev("dns_query", qname="localhost"), ev("dns_query", qname="x.example")]
    assert suggest(events, skip=lambda d, e: d == "localhost") == {"gh": ["x.example"]}


def test_collapse_respects_public_suffixes() -> None:
    # each *.github.io site is its own registrable domain: never collapsed to *.github.io
    assert collapse(["a.github.io", "b.github.io", "c.github.io"]) == [
        "a.github.io",
        "b.github.io",
        "c.github.io",
    ]
    assert collapse(["a.x.co.uk", "b.x.co.uk", "c.x.co.uk"]) == ["*.x.co.uk"]


def test_rendered_toml_round_trips_into_a_working_policy() -> None:
    allow = {"gh": ["*.github.com", "203.0.113.7"], "odd name\u202e": ["x.example"]}
    text = render_toml(allow, {"gh": ["a note\x1b[31m"]}, header="test header")
    assert "\x1b" not in text and "\u202e" not in text
    assert "# IP address" in text
    data = tomllib.loads(text)
    config = parse_config(data)
    assert config.servers["gh"].allow == ("*.github.com", "203.0.113.7")
    assert config.servers["odd name\u202e"].allow == ("x.example",)
    policy = Policy(config)
    a = Attribution(process=ProcessInfo(1, 1.0), server="gh")
    q = Observation(
        ts=1,
        frame=1,
        kind=DNS_QUERY,
        proto="udp",
        src="10.0.0.5",
        sport=1,
        dst="10.0.0.1",
        dport=53,
        qname="api.github.com",
    )
    assert policy.judge(q, a, None).reason == "allowlist"


# --- imports -------------------------------------------------------------------------

TOOLHIVE = {
    "version": "1.0.0",
    "last_updated": "2025-10-13T12:00:00Z",
    "servers": {
        "github": {
            "image": "ghcr.io/github/github-mcp-server:latest",
            "transport": "stdio",
            "permissions": {
                "network": {
                    "outbound": {"allow_host": [".github.com", "api.githubcopilot.com"], "allow_port": [443]}
                }
            },
        },
        "fetch": {
            "image": "mcp/fetch",
            "permissions": {"network": {"outbound": {"insecure_allow_all": True}}},
        },
        "time": {"image": "mcp/time", "permissions": {"read": ["/tmp"]}},
        "weird": {
            "permissions": {"network": {"outbound": {"allow_host": ["bad host!"], "allow_port": [443]}}}
        },
        "v6": {
            "permissions": {
                "network": {"outbound": {"allow_host": ["2001:db8::1", "10.0.0.0/8"], "allow_port": [53]}}
            }
        },
    },
    "remote_servers": {"cloud": {"url": "https://mcp.example.com/sse"}},
    "groups": [
        {
            "name": "g",
            "servers": {"grouped": {"permissions": {"network": {"outbound": {"allow_host": ["x.example"]}}}}},
        }
    ],
}


def test_import_toolhive() -> None:
    notes: dict[str, list[str]] = {}
    out = import_toolhive(TOOLHIVE, notes)
    assert out == {
        "fetch": ["*"],
        "github": ["github.com:443", "*.github.com:443", "api.githubcopilot.com:443"],
        "grouped": ["x.example"],
        "time": [],
        "v6": ["[2001:db8::1]:53", "10.0.0.0/8:53"],
        "weird": [],
    }
    assert notes["fetch"] == ["ToolHive insecure_allow_all: any destination"]
    assert notes["time"] == ["no outbound network permissions declared"]
    assert notes["weird"] == ['skipped unusable host "bad host!"']
    single = {"name": "solo", "permissions": {"network": {"outbound": {"allow_host": ["a.example"]}}}}
    assert import_toolhive(single) == {"solo": ["a.example"]}
    with pytest.raises(ConfigError):
        import_toolhive(["not", "a", "registry"])


SERVER_YAML = """\
name: github-official
image: dhi.io/github-mcp
type: server
run:
  allowHosts:
    - api.github.com:443
    - github.com:443
    - raw.githubusercontent.com:443
"""

CATALOG_YAML = """\
name: docker-mcp
displayName: Docker MCP Catalog
registry:
  brave:
    type: server
    image: mcp/brave-search
    allowHosts:
      - api.search.brave.com:443
  airgapped:
    type: server
    image: mcp/time
    disableNetwork: true
  broken:
    type: server
    allowHosts:
      - "no spaces allowed:443"
"""


def test_import_docker_catalog() -> None:
    yaml = pytest.importorskip("yaml")
    notes: dict[str, list[str]] = {}
    assert import_docker_catalog(yaml.safe_load(SERVER_YAML)) == {
        "github-official": ["api.github.com:443", "github.com:443", "raw.githubusercontent.com:443"]
    }
    out = import_docker_catalog(yaml.safe_load(CATALOG_YAML), notes)
    assert out == {"airgapped": [], "brave": ["api.search.brave.com:443"], "broken": []}
    assert notes["airgapped"] == ["disableNetwork: no network at all"]
    assert notes["broken"] == ['skipped unusable host "no spaces allowed:443"']


# --- CLI -----------------------------------------------------------------------------


def test_cli_import(tmp_path: Path) -> None:
    th = tmp_path / "registry.json"
    th.write_text(json.dumps(TOOLHIVE))
    res = CliRunner().invoke(cli, ["allowlist", "import", "--toolhive", str(th)])
    assert res.exit_code == 0, res.output
    parsed = parse_config(tomllib.loads(res.output))
    assert parsed.servers["github"].allow == (
        "github.com:443",
        "*.github.com:443",
        "api.githubcopilot.com:443",
    )
    dc = tmp_path / "catalog.yaml"
    dc.write_text(CATALOG_YAML)
    res = CliRunner().invoke(cli, ["allowlist", "import", "--docker-catalog", str(dc)])
    assert res.exit_code == 0, res.output
    assert parse_config(tomllib.loads(res.output)).servers["brave"].allow == ("api.search.brave.com:443",)
    res = CliRunner().invoke(cli, ["allowlist", "import"])
    assert res.exit_code != 0 and "exactly one" in res.output
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    res = CliRunner().invoke(cli, ["allowlist", "import", "--toolhive", str(bad)])
    assert res.exit_code == 1 and "invalid JSON" in res.output


def test_cli_suggest_reads_the_event_database(tmp_path: Path) -> None:
    from egresswatch.store.db import Store

    db = tmp_path / "events.db"
    a = Attribution(process=ProcessInfo(7, 1.0, name="node"), server="gh", phase="run")
    inst = Attribution(process=ProcessInfo(8, 1.0, name="npm"), server="gh", phase="install")
    now = 2_000_000_000.0

    def obs(kind: str, ts: float = now, **kw: Any) -> Observation:
        return Observation(
            ts=ts,
            frame=1,
            kind=kind,
            proto="tcp",
            src="10.0.0.5",
            sport=1,
            dst="140.82.112.6",
            dport=443,
            **kw,
        )

    flagged = Verdict("flagged", "first_seen", None, "low")  # learning mode
    events = [
        Event(obs(DNS_QUERY, qname=f"{n}.github.com"), a, flagged) for n in ("api", "uploads", "codeload")
    ] + [
        Event(obs(TLS_SNI, sni="localhost"), a, flagged),
        Event(obs(DNS_QUERY, qname="registry.npmjs.org"), inst, flagged),
        Event(obs(CONNECT), a, flagged, dst_name=None),
        Event(obs(DNS_QUERY, qname="old.example", ts=now - 86400 * 30), a, flagged),
    ]
    with Store(db) as store:
        store.write_many(events)
    cfg = tmp_path / "config.toml"
    cfg.write_text("")
    res = CliRunner().invoke(
        cli, ["allowlist", "suggest", "--db", str(db), "--config", str(cfg), "--since", str(now - 86400)]
    )
    assert res.exit_code == 0, res.output
    data = tomllib.loads(res.output)
    assert data == {"servers": {"gh": {"allow": ["*.github.com", "140.82.112.6"]}}}
    res = CliRunner().invoke(
        cli,
        ["allowlist", "suggest", "--db", str(db), "--config", str(cfg), "--server", "nobody", "--since", "0"],
    )
    assert res.exit_code == 0 and "no MCP server events found" in res.output
    res = CliRunner().invoke(
        cli, ["allowlist", "suggest", "--db", str(tmp_path / "missing.db"), "--config", str(cfg)]
    )
    assert res.exit_code == 1


def test_suggest_never_proposes_high_severity_findings() -> None:
    events = [
        {
            "server": "gh",
            "kind": "tls_sni",
            "sni": "api.github.com",
            "dst": "140.82.112.3",
            "reason": "first_seen",
        },
        {"server": "gh", "kind": "connect", "dst": "203.0.113.66", "dst_name": None, "reason": "direct_ip"},
        {"server": "gh", "kind": "dns_query", "qname": "a1b2c3.x.evil.example", "reason": "dns_exfil"},
        {"server": "gh", "kind": "tls_sni", "sni": "dns.google", "dst": "8.8.8.8", "reason": "doh_dot"},
    ]
    notes: dict[str, list[str]] = {}
    assert suggest(events, notes=notes) == {"gh": ["api.github.com"]}
    assert notes["gh"] == [
        "left out 1 event(s): flagged direct_ip",
        "left out 1 event(s): flagged dns_exfil",
        "left out 1 event(s): flagged doh_dot",
    ]


def test_suggest_counts_grouped_rows_like_events() -> None:
    """A dict with ``count`` stands for that many identical events (the ui groups rows)."""
    one = {"server": "s", "kind": "dns_query", "qname": "c2.evil.example", "reason": "dns_exfil"}
    ok = {"server": "s", "kind": "tls_sni", "sni": "api.example.com", "reason": "allowlist"}
    notes_each: allowlist.Notes = {}
    each = allowlist.suggest([one, one, one, ok, ok], notes=notes_each)
    notes_grouped: allowlist.Notes = {}
    grouped = allowlist.suggest([{**one, "count": 3}, {**ok, "count": 2}], notes=notes_grouped)
    assert grouped == each == {"s": ["api.example.com"]}
    assert notes_grouped == notes_each == {"s": ["left out 3 event(s): flagged dns_exfil"]}


def test_suggest_never_proposes_flagged_destinations_and_keeps_existing_entries() -> None:
    """A destination flagged not_allowlisted (or new_destination, install_egress...)
    is left out and named loudly; entries already allowed stay, first."""
    events = [
        {"server": "github", "kind": "tls_sni", "sni": "api.github.com", "verdict": "allowed", "reason": "allowlist"},
        {"server": "github", "kind": "tls_sni", "sni": "raw.githubusercontent.com", "verdict": "allowed",
         "reason": "allowlist"},
        {"server": "github", "kind": "tls_sni", "sni": "telemetry.evil-metrics.io", "verdict": "flagged",
         "reason": "not_allowlisted"},
        {"server": "github", "kind": "dns_query", "qname": "later.example", "verdict": "flagged",
         "reason": "new_destination"},
        {"server": "github", "kind": "dns_query", "qname": "learned.example", "verdict": "flagged",
         "reason": "first_seen"},
    ]  # fmt: skip
    notes: dict[str, list[str]] = {}
    flagged: dict[str, dict[str, set[str]]] = {}
    existing = {"github": ("api.github.com", "*.githubusercontent.com")}
    got = suggest(events, notes=notes, existing=existing, flagged=flagged)
    assert got == {"github": ["api.github.com", "*.githubusercontent.com", "learned.example"]}
    assert flagged == {
        "github": {"telemetry.evil-metrics.io": {"not_allowlisted"}, "later.example": {"new_destination"}}
    }
    text = render_toml(got, notes)
    assert "FLAGGED (not_allowlisted), NOT SUGGESTED: telemetry.evil-metrics.io" in text
    assert "FLAGGED (new_destination), NOT SUGGESTED: later.example" in text
    assert tomllib.loads(text)["servers"]["github"]["allow"] == got["github"]


def test_cli_suggest_on_the_verdict_capture(tmp_path: Path) -> None:
    """The issue's case: pcaps/mcp-verdicts.pcap replayed into a database."""
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    db = tmp_path / "v.db"
    pcaps = repo / "pcaps"
    subprocess.run(
        [sys.executable, "-m", "egresswatch", "replay", str(pcaps / "mcp-verdicts.pcap"), "--config",
         str(pcaps / "mcp-verdicts.toml"), "--procs", str(pcaps / "mcp-verdicts.procs.jsonl"), "--db", str(db)],
        check=True, capture_output=True,
    )  # fmt: skip
    res = CliRunner().invoke(
        cli,
        [
            "allowlist",
            "suggest",
            "--db",
            str(db),
            "--config",
            str(pcaps / "mcp-verdicts.toml"),
            "--since",
            "0",
        ],
    )
    assert res.exit_code == 0, res.output
    allow = tomllib.loads(res.stdout)["servers"]["github"]["allow"]
    assert "telemetry.evil-metrics.io" not in allow
    assert allow[:2] == ["api.github.com", "*.githubusercontent.com"]
    assert "NOT SUGGESTED: telemetry.evil-metrics.io" in res.stdout
    assert "flagged destination(s) left out" in res.stderr
