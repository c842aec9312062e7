"""`egresswatch allowlist suggest|import`: print [servers.NAME] allow lists as TOML."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click

from egresswatch.config import load_config
from egresswatch.errors import EgresswatchError
from egresswatch.judge import allowlist
from egresswatch.judge.allowtoml import render_toml
from egresswatch.judge.catalogs import import_docker_catalog, import_toolhive
from egresswatch.store.db import Store
from egresswatch.store.query import parse_time, query_events


@click.group("allowlist")
def allowlist_group() -> None:
    """Suggest per-server allowlists from recorded events, or import them from
    ToolHive / Docker MCP catalogs. Both print TOML for config.toml."""


@allowlist_group.command("suggest")
@click.option("--server", help="Only this MCP server (default: every server with events).")
@click.option(
    "--db", type=click.Path(readable=False, path_type=Path, dir_okay=False), default=None,
    help="Event database (default: daemon.database from the config).",
)  # fmt: skip
@click.option(
    "--config", "config_path", type=click.Path(readable=False, path_type=Path, dir_okay=False), default=None,
    help="Config file (default /etc/egresswatch/config.toml); its global/install allowlists are left out.",
)  # fmt: skip
@click.option(
    "--since", default="7d", show_default=True, help="Events since: 2h, 7d, ISO-8601 or epoch seconds."
)
def suggest_cmd(server: str | None, db: Path | None, config_path: Path | None, since: str) -> None:
    """Suggest a minimal allowlist per MCP server from what it contacted.

    Three or more subdomains of one registrable domain collapse to *.domain.
    Entries already in the config's [servers.NAME] allow lists are kept.
    Flagged destinations (except first_seen, what learning mode records) are
    never suggested: they are listed as FLAGGED comments and on stderr.
    Install-phase traffic (judged by policy.install_allow) is left out.
    Review the output before adding it to config.toml."""
    try:
        cfg = load_config(config_path)
        start = parse_time(since, time.time())
        with Store(db or cfg.daemon.database, readonly=True) as store:
            events = query_events(store, since=start, server=server, limit=None)
    except (EgresswatchError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    notes: allowlist.Notes = {}
    flagged: dict[str, dict[str, set[str]]] = {}
    result = allowlist.suggest(
        events,
        server=server,
        skip=allowlist.config_skipper(cfg),
        notes=notes,
        existing=allowlist.config_existing(cfg),
        flagged=flagged,
    )
    header = f"egresswatch allowlist suggest: {len(events)} events since {since}"
    if not result:
        header += "\nno MCP server events found"
    n_flagged = sum(len(d) for d in flagged.values())
    if n_flagged:
        click.echo(
            f"egresswatch: warning: allowlist suggest: {n_flagged} flagged destination(s) left out"
            " (listed as FLAGGED comments in the output); review them before allowing any",
            err=True,
        )
    click.echo(render_toml(result, notes, header), nl=False)


def _load(path: Path, yaml_ok: bool) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise click.ClickException(f"{path}: cannot read: {exc}") from None
    try:
        return json.loads(text)
    except ValueError as exc:
        if not yaml_ok:
            raise click.ClickException(f"{path}: invalid JSON: {exc}") from None
    try:
        import yaml
    except ImportError:
        raise click.ClickException(f"{path}: not JSON, and PyYAML is not installed to read YAML") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "parse error"
        raise click.ClickException(f"{path}: invalid YAML: {first}") from None


@allowlist_group.command("import")
@click.option(
    "--toolhive",
    type=click.Path(readable=False, path_type=Path, dir_okay=False, exists=True),
    help="ToolHive registry JSON.",
)
@click.option(
    "--docker-catalog", type=click.Path(readable=False, path_type=Path, dir_okay=False, exists=True),
    help="Docker MCP catalog (YAML or JSON) or a docker/mcp-registry server.yaml.",
)  # fmt: skip
def import_cmd(toolhive: Path | None, docker_catalog: Path | None) -> None:
    """Import allowlists from a ToolHive registry or a Docker MCP catalog.

    Server names are the catalog's; rename the [servers.NAME] tables to match
    the names in your MCP host configuration."""
    if (toolhive is None) == (docker_catalog is None):
        raise click.UsageError("give exactly one of --toolhive FILE or --docker-catalog FILE")
    notes: allowlist.Notes = {}
    try:
        if toolhive is not None:
            result = import_toolhive(_load(toolhive, yaml_ok=False), notes)
            source = toolhive
        else:
            assert docker_catalog is not None
            result = import_docker_catalog(_load(docker_catalog, yaml_ok=True), notes)
            source = docker_catalog
    except EgresswatchError as exc:
        raise click.ClickException(str(exc)) from None
    header = f"egresswatch allowlist import from {source.name}: {len(result)} server(s)"
    click.echo(render_toml(result, notes, header), nl=False)


COMMANDS = [allowlist_group]
