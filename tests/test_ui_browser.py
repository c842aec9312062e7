"""`egresswatch ui` in a real browser: Debian's headless Chromium, driven by
playwright, against `egresswatch ui` run as a command over a database made by
replaying pcaps/ captures (tests/helpers/uidb.py). A fake MCP server process
runs so the servers page has a live process tree to show.

Fails (never skips) in CI when chromium or playwright is missing.
Set EGRESSWATCH_UI_SCREENSHOT=docs/ui-servers.png to refresh the README picture.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import socket
import sqlite3
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from click.testing import CliRunner

from egresswatch.cli.main import cli
from tests.helpers import uidb
from tests.helpers.netlab import missing, wait_for

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip
FAKE_SERVER = (
    "import subprocess, sys, time\n"
    "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
    "print('ready', flush=True)\n"
    "time.sleep(120)\n"
)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return uidb.build(tmp_path_factory.mktemp("uidb"))


@pytest.fixture(scope="module")
def mcp_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, int]]:
    """A running process that a Cursor config in a fake home names "github"."""
    tmp = tmp_path_factory.mktemp("home")
    script = tmp / "fake_mcp_server.py"
    script.write_text(FAKE_SERVER)
    home = tmp / "home"
    (home / ".cursor").mkdir(parents=True)
    (home / ".cursor" / "mcp.json").write_text(
        json.dumps({"mcpServers": {"github": {"command": sys.executable, "args": [str(script)]}}})
    )
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield home, proc.pid
    finally:
        proc.kill()
        proc.wait()
        subprocess.run(["pkill", "-P", str(proc.pid)], check=False)


@pytest.fixture(scope="module")
def server(data: Path, mcp_process: tuple[Path, int]) -> Iterator[str]:
    """`egresswatch ui` on a free port; its URL."""
    home, _ = mcp_process
    cmd = [sys.executable, "-m", "egresswatch", "ui", "--db", str(data), "--port", "0",
           "--config", str(uidb.PCAPS / "mcp-verdicts.toml"), "--home", str(home),
           "--status-file", str(data.parent / "no-status.json")]  # fmt: skip
    log = data.parent / "ui.log"
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, stderr=err)
    try:
        found = wait_for(
            lambda: proc.poll() is None and re.search(r"http://127\.0\.0\.1:\d+/", log.read_text()),
            30, "the ui's URL on stderr",
        )  # fmt: skip
        yield found.group(0).rstrip("/")
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    if not Path(CHROMIUM).exists() or shutil.which("chromium") is None:
        missing("chromium is not installed (apt-get install chromium chromium-driver)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("playwright is not installed (pip install -e '.[dev]')")
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, args=ARGS,
            viewport={"width": 1280, "height": 900},
        )  # fmt: skip
        ctx.set_default_timeout(60_000)  # generous: CI shares 2 cores with the live tests
        yield ctx
        ctx.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A tab that records dialogs (an executed alert(1)), console errors and CSP reports."""
    pg = browser.new_page()
    pg.dialogs = []
    pg.errors = []
    pg.on("dialog", lambda d: (pg.dialogs.append(d.message), d.dismiss()))
    pg.on("console", lambda m: pg.errors.append(m.text) if m.type == "error" else None)
    pg.on("pageerror", lambda e: pg.errors.append(str(e)))
    yield pg
    assert pg.dialogs == [], f"a script from the data ran: {pg.dialogs}"
    assert pg.errors == [], f"browser errors: {pg.errors}"
    pg.close()


def _open(page: Any, url: str) -> Any:
    resp = page.goto(url)
    assert resp is not None and resp.status == 200, (url, resp and resp.status)
    csp = resp.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp
    assert resp.headers["x-content-type-options"] == "nosniff"
    return resp


def _no_foreign_scripts(page: Any) -> None:
    srcs = page.eval_on_selector_all("script", "els => els.map(e => e.getAttribute('src'))")
    assert srcs == ["/static/live.js"], srcs


def test_servers_page(page: Any, server: str, mcp_process: tuple[Path, int]) -> None:
    _, pid = mcp_process
    _open(page, server + "/")
    github = page.locator("section.server[data-server='github']")
    notes = page.locator("section.server[data-server='notes']")
    summary = github.locator("p.summary").inner_text()
    # a flow counts once, by its deciding event (the SYNs its hello decided are left out)
    assert "15 events" in summary and "10 destinations" in summary and "11 flagged" in summary
    assert "not_allowlisted 4" in summary and "install_egress 2" in summary
    assert github.locator(".state-allowlist").inner_text() == "allowlist (2)"
    assert notes.locator(".state-learned").count() == 1  # learning window of 2026-01-01 is over
    assert "2 flagged" in notes.locator("p.summary").inner_text()
    assert github.locator(".host").inner_text() == "cursor"
    names = github.locator("table.dest td.name").all_inner_texts()
    assert names[0] == uidb.XSS  # shown as text, first by count
    assert "api.github.com" in names
    # the fake server's live tree, once the background read of /proc has run
    wait_for(lambda: page.reload() and str(pid) in github.locator(".procs").inner_text(), 20, "process tree")
    tree = github.locator(".procs ul.tree").inner_text()
    assert "fake_mcp_server.py" in tree and "time.sleep(120)" in tree  # the server and its child
    assert notes.locator(".procs").inner_text().strip().endswith("no process running now")
    _no_foreign_scripts(page)
    shot = os.environ.get("EGRESSWATCH_UI_SCREENSHOT")
    if shot:
        page.screenshot(path=shot, full_page=True)


def test_server_page_and_links(page: Any, server: str, data: Path) -> None:
    _open(page, server + "/")
    page.locator("section.server[data-server='github'] a.server-link").click()
    page.wait_for_url(re.compile(r"/server\?name=github"))
    assert page.locator("#server-name").inner_text() == "github"
    run = page.locator("#dest-run td.name").all_inner_texts()
    install = page.locator("#dest-install td.name").all_inner_texts()
    assert sorted(install) == ["registry.npmjs.org", "stats.npm-metrics.dev"]  # install phase apart
    assert "stats.npm-metrics.dev" not in run and uidb.XSS in run and "api.github.com" in run
    assert "install_egress" in page.locator("#dest-install").inner_text()
    reasons = page.locator("#reasons").inner_text()
    assert "not_allowlisted: 4" in reasons and "dns_exfil: 3" in reasons and "direct_ip: 1" in reasons
    suggestion = page.locator("#suggest").input_value()
    expected = CliRunner().invoke(
        cli, ["allowlist", "suggest", "--server", "github", "--db", str(data), "--since", "1767225000",
              "--config", str(uidb.PCAPS / "mcp-verdicts.toml")],
    )  # fmt: skip
    assert expected.exit_code == 0, expected.output
    body = suggestion.split("\n", 1)[1]  # the header line names the window
    assert body == expected.stdout.split("\n", 1)[1]  # stderr: the flagged-destinations warning
    assert '"api.github.com"' in body and uidb.XSS not in body
    for img in ("#chart-verdicts", "#chart-destinations"):
        wait_for(lambda: page.eval_on_selector(img, "i => i.complete && i.naturalWidth > 0"), 10, img)  # noqa: B023
    svg = page.request.get(server + "/chart/destinations.svg?name=github")
    assert svg.ok and svg.headers["content-type"].startswith("image/svg+xml")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;.example" in svg.text()
    # to the server's alerts, with their digests
    page.locator("#server-alerts").click()
    page.wait_for_url(re.compile(r"/alerts\?server=github"))
    kinds = page.locator("#alerts tr.alert td:nth-child(2)").all_inner_texts()
    # one alert per flow: the DoH flow's SYN (direct_ip) no longer alerts besides its hello (doh_dot)
    stored = [r[0] for r in sqlite3.connect(f"file:{data}?mode=ro", uri=True).execute(
        "SELECT kind FROM alerts WHERE server = 'github'")]  # fmt: skip
    assert kinds.count("digest") == stored.count("digest") >= 1 and kinds.count("alert") == stored.count(
        "alert"
    )
    digest = page.locator("#alerts tr.body details").first
    digest.locator("summary").click()
    assert "more from MCP server github" in digest.inner_text()
    assert uidb.XSS in page.locator("#alerts").inner_text()
    # back to the server, then to its events
    page.locator("#alerts a", has_text="github").first.click()
    page.wait_for_url(re.compile(r"/server\?name=github"))
    page.locator("#server-events").click()
    page.wait_for_url(re.compile(r"/events\?.*server=github"))
    assert set(page.locator("#events tbody td:nth-child(3) a").all_inner_texts()) == {"github"}
    # a process link narrows the search to that pid
    page.locator("#events a", has_text="node[4242]").first.click()
    page.wait_for_url(re.compile(r"pid=4242"))
    assert set(page.locator("#events tbody td:nth-child(4)").all_inner_texts()) == {"node[4242]"}
    _no_foreign_scripts(page)


SEARCHES = [
    {},
    {"verdict": "flagged"},
    {"server": "github", "kind": "dns_query"},
    {"domain": "*.exfil-cdn.net"},
    {"domain": "<script>*"},
    {"process": "curl"},
    {"pid": "4400", "limit": "3"},
    {"since": "2026-01-01T00:01:00+00:00", "limit": "0"},
    {"until": "1767225600.05", "verdict": "allowed"},
]


@pytest.mark.parametrize("search", SEARCHES, ids=lambda s: urlencode(s) or "none")
def test_event_search_matches_the_cli(page: Any, server: str, data: Path, search: dict[str, str]) -> None:
    _open(page, server + "/events?" + urlencode(search))
    shown = [int(i) for i in page.eval_on_selector_all("#events tbody tr", "rs => rs.map(r => r.dataset.id)")]
    # the command line the page prints is the one that gives the same rows
    shown_cmd = page.locator("#cli code").inner_text()
    argv = shlex.split(shown_cmd)
    assert argv[:2] == ["egresswatch", "events"]
    want = ["egresswatch", "events"]
    for k, v in search.items():
        want += [f"--{k}", v]
    assert argv == want
    result = CliRunner().invoke(cli, [*argv[1:], "--db", str(data), "--format", "json"])
    assert result.exit_code == 0, result.output
    assert shown == [e["id"] for e in json.loads(result.stdout)]
    assert shown or page.locator("#empty").count() == 1
    # the form carries the filters, so submitting it again gives the same URL
    for k, v in search.items():
        assert page.locator(f"#filters [name={k}]").input_value() == v


def test_hostile_name_is_text_everywhere(page: Any, server: str) -> None:
    q = quote(uidb.XSS, safe="")
    for url in ("/", "/server?name=notes", "/alerts", f"/events?domain={q}", f"/server?name={q}"):
        _open(page, server + url)
        _no_foreign_scripts(page)
        html = page.content()
        assert "<script>alert(1)</script>" not in html
    _open(page, server + f"/events?domain={q}")
    assert page.locator("#events td.name", has_text=uidb.XSS).count() == 8
    assert uidb.XSS in page.locator("#cli").inner_text()


def test_bad_filter_is_one_line(page: Any, server: str) -> None:
    resp = page.goto(server + "/events?since=yesterday-ish")
    assert resp.status == 400
    assert page.locator("#error").inner_text().startswith("egresswatch: error: since: cannot parse time")
    page.errors.clear()  # the 400 itself is logged by the browser


def _http(url: str, method: str = "GET", host: str | None = None) -> tuple[int, dict[str, str]]:
    req = urllib.request.Request(url, method=method, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            resp.read()
            return resp.status, dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers)


def test_http_is_read_only_and_local(server: str, data: Path) -> None:
    before = hashlib.sha256(data.read_bytes()).hexdigest(), data.stat().st_mtime_ns
    for path in ("/", "/server?name=github", "/alerts?server=github", "/events?verdict=flagged", "/api/head",
                 "/chart/verdicts.svg?name=github", "/static/ui.css"):  # fmt: skip
        status, headers = _http(server + path)
        assert status == 200, path
        csp = headers["content-security-policy"]  # pages: scripts from here only; SVG: none at all
        assert csp.startswith("default-src 'none'") and "unsafe-inline" not in csp.split("style-src")[0], path
        assert "script-src 'self'" in csp or "script-src" not in csp, path
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        assert _http(server + "/", method)[0] == 405, method
        assert _http(server + "/events", method)[0] == 405, method
    port = server.rsplit(":", 1)[1]
    assert _http(server + "/", host=f"attacker.example:{port}")[0] == 400  # DNS rebinding
    assert _http(server + "/", host=f"localhost:{port}")[0] == 200
    assert _http(server + "/chart/pie.svg?name=github")[0] == 404
    assert _http(server + "/server")[0] == 400  # no name: a one-line error page
    assert (hashlib.sha256(data.read_bytes()).hexdigest(), data.stat().st_mtime_ns) == before


def test_command_errors_are_one_line(tmp_path: Path, data: Path) -> None:
    result = CliRunner().invoke(cli, ["ui", "--db", str(tmp_path / "none.db")])
    assert result.exit_code == 1 and "none.db: no such database" in result.output
    assert len(result.output.strip().splitlines()) == 1
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(cli, ["ui", "--db", str(data), "--port", str(port), "--no-processes"])
    assert result.exit_code == 1 and f"--port {port}: cannot listen on 127.0.0.1" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_page_updates_live(page: Any, server: str, data: Path, tmp_path: Path) -> None:
    _open(page, server + "/events?server=notes")
    page.evaluate("window.__same_document = true")
    before = page.locator("#events tbody tr").count()
    capture = uidb.write_capture(
        tmp_path, "fresh",
        [("dns", "notes", "fresh.notes.example", "198.51.100.77"),
         ("tcp", "notes", "198.51.100.77", "fresh.notes.example")],
        uidb.LATER + 60,
    )  # fmt: skip
    uidb.replay_into(data, [capture], alerts=False)  # the daemon's write path, while the view reads
    page.locator("#events td.name", has_text="fresh.notes.example").first.wait_for(timeout=45_000)
    assert page.evaluate("window.__same_document") is True  # swapped in place, not reloaded
    assert page.locator("#events tbody tr").count() == before + 4
    assert "updated" in page.locator("#live-state").inner_text()
