"""`egresswatch ui` without a browser: URL parameters, windows, learning states.
The pages themselves are tested in a real browser (test_ui_browser.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from egresswatch.config import Config, PolicyConfig, ServerPolicy
from egresswatch.ui import queries
from egresswatch.ui.params import MAX_LIMIT, BadParam, event_filters
from tests.helpers import uidb

NOW = 1_800_000_000.0


def test_filters_are_the_cli_options() -> None:
    f = event_filters({"since": "2h", "until": "1700000000", "server": "github", "pid": "42",
                       "process": "node", "domain": "*.x.com", "verdict": "flagged", "kind": "tls_sni",
                       "limit": "10", "ignored": "x"}, NOW)  # fmt: skip
    assert f.query_kwargs() == dict(
        since=NOW - 7200, until=1_700_000_000.0, server="github", pid=42, process="node",
        domain_glob="*.x.com", verdict="flagged", kind="tls_sni", limit=10,
    )  # fmt: skip
    assert "ignored" not in f.raw and f.url(pid=None).startswith("/events?since=2h&until=1700000000")
    assert event_filters({}, NOW).query_kwargs()["limit"] == 50
    assert event_filters({"limit": "0"}, NOW).query_kwargs()["limit"] == MAX_LIMIT  # "all", capped
    assert event_filters({"limit": "999999"}, NOW).limit == MAX_LIMIT
    assert event_filters({"server": "", "verdict": ""}, NOW).query_kwargs()["server"] is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"since": "yesterday"}, "since: cannot parse time 'yesterday'"),
        ({"until": "\x1b[31m"}, "until: cannot parse time '\\\\x1b[31m'"),  # escaped, then repr()
        ({"verdict": "evil"}, "verdict: 'evil' is not one of allowed, flagged, unwatched"),
        ({"kind": "http"}, "kind: 'http' is not one of dns_query"),
        ({"pid": "12a"}, "pid: '12a' is not a whole number"),
        ({"limit": "-1"}, "limit: -1 is below 0"),
    ],
)
def test_bad_parameters_are_one_line(args: dict[str, str], message: str) -> None:
    with pytest.raises(BadParam) as exc:
        event_filters(args, NOW)
    assert str(exc.value).startswith(message) and "\n" not in str(exc.value) and "\x1b" not in str(exc.value)


def test_learning_states() -> None:
    cfg = Config(servers={"a": ServerPolicy(allow=("x.com",)), "b": ServerPolicy(learning=False)})
    assert queries.learning_state(cfg, "a", 0.0, NOW)["state"] == "allowlist"
    assert queries.learning_state(cfg, "b", 0.0, NOW)["state"] == "off"
    fresh = queries.learning_state(cfg, "c", NOW - 3600, NOW)
    assert fresh["state"] == "learning" and fresh["until"] == NOW - 3600 + 24 * 3600
    assert queries.learning_state(cfg, "c", NOW - 25 * 3600, NOW)["state"] == "learned"
    off = Config(policy=PolicyConfig(learning=False))
    assert queries.learning_state(off, "c", NOW, NOW)["state"] == "off"


def test_default_window_and_server_rows(tmp_path: Path) -> None:
    db = uidb.build(tmp_path)
    store = queries.open_readonly(db)
    try:
        win = queries.window(store, None, None)
        first, last = uidb.T0_VERDICTS, uidb.T0_VERDICTS + uidb.LATER
        assert win.default and win.since == first  # 24 h before the newest event, but not before the first
        assert queries.newest_ts(store) >= last
        assert queries.window(store, 5.0, None) == queries.Window(5.0, None, False)
        rows = queries.server_rows(store, "github", win)
        dests = queries.destinations(rows)
        assert [d["destination"] for d in dests["install"]] == ["stats.npm-metrics.dev", "registry.npmjs.org"]
        assert dests["install"][0]["reasons"] == ["install_egress"]
        # a flow counts once, by its deciding event: the SYNs a hello decided are left out
        assert queries.flagged_reasons(rows) == {
            "not_allowlisted": 4, "dns_exfil": 3, "install_egress": 2, "direct_ip": 1, "doh_dot": 1
        }  # fmt: skip
        with pytest.raises(Exception, match="readonly|read-only"):
            store.conn.execute("DELETE FROM events")
    finally:
        store.close()
