"""Allowlists imported from MCP catalogs that declare a server's network needs:
ToolHive registries (``permissions.network.outbound``) and Docker MCP catalogs
(``allowHosts``, ``disableNetwork``).

Pure functions over the parsed JSON/YAML: ``egresswatch allowlist import`` reads
the file; unusable hosts are skipped and named in the notes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from egresswatch.errors import ConfigError
from egresswatch.judge.allowlist import Notes
from egresswatch.judge.entries import is_valid_entry


def _toolhive_allow(entry: Mapping[str, Any], note: list[str]) -> list[str] | None:
    perms = entry.get("permissions")
    if isinstance(perms, str):  # a built-in profile name
        return ["*"] if perms == "network" else []
    if not isinstance(perms, Mapping):
        return None
    net = perms.get("network")
    outbound = net.get("outbound") if isinstance(net, Mapping) else None
    if not isinstance(outbound, Mapping):
        note.append("no outbound network permissions declared")
        return []
    if outbound.get("insecure_allow_all") is True:
        note.append("ToolHive insecure_allow_all: any destination")
        return ["*"]
    hosts = [h for h in outbound.get("allow_host") or [] if isinstance(h, str)]
    ports = [p for p in outbound.get("allow_port") or [] if isinstance(p, int) and not isinstance(p, bool)]
    out: list[str] = []
    for host in hosts:
        h = host.strip()
        forms = [h[1:], f"*{h}"] if h.startswith(".") else [h]  # ".x.com": x.com and subdomains
        for form in forms:
            for e in [f"{_bracket(form)}:{p}" for p in ports] if ports else [form]:
                if is_valid_entry(e):
                    out.append(e)
                else:
                    note.append(f"skipped unusable host {json.dumps(host)}")
    return list(dict.fromkeys(out))


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def import_toolhive(data: Any, notes: Notes | None = None) -> dict[str, list[str]]:
    """Allowlists from a ToolHive registry (``servers`` / ``remote_servers`` /
    ``groups``, each entry's ``permissions.network.outbound``: ``allow_host``
    with ``.domain`` for a domain and its subdomains, ``allow_port``,
    ``insecure_allow_all``) or from one server entry with a ``name``."""
    if not isinstance(data, Mapping):
        raise ConfigError("ToolHive data: expected a JSON object")
    entries: dict[str, Any] = {}
    if isinstance(data.get("servers"), Mapping):
        entries.update(data["servers"])
        for group in data.get("groups") or []:
            if isinstance(group, Mapping) and isinstance(group.get("servers"), Mapping):
                entries.update(group["servers"])
    elif isinstance(data.get("name"), str):
        entries[data["name"]] = data
    else:
        raise ConfigError("ToolHive data: no 'servers' table and no server 'name'")
    out: dict[str, list[str]] = {}
    for name, entry in sorted(entries.items()):
        if not isinstance(entry, Mapping):
            continue
        note: list[str] = []
        allow = _toolhive_allow(entry, note)
        if allow is None:
            continue
        out[str(name)] = allow
        if notes is not None and note:
            notes.setdefault(str(name), []).extend(dict.fromkeys(note))
    return out


def import_docker_catalog(data: Any, notes: Notes | None = None) -> dict[str, list[str]]:
    """Allowlists from a Docker MCP catalog (``registry.<name>.allowHosts``,
    ``disableNetwork``) or one docker/mcp-registry ``server.yaml``
    (``name`` + ``run.allowHosts``). Entries are ``host:port``."""
    if not isinstance(data, Mapping):
        raise ConfigError("Docker catalog: expected a mapping")
    if isinstance(data.get("registry"), Mapping):
        entries: dict[str, Any] = dict(data["registry"])
    elif isinstance(data.get("name"), str):
        entries = {data["name"]: data}
    else:
        raise ConfigError("Docker catalog: no 'registry' table and no server 'name'")
    out: dict[str, list[str]] = {}
    for name, entry in sorted(entries.items()):
        if not isinstance(entry, Mapping):
            continue
        note: list[str] = []
        run_value = entry.get("run")
        run: Mapping[str, Any] = run_value if isinstance(run_value, Mapping) else {}
        hosts = entry.get("allowHosts") or run.get("allowHosts") or []
        allow: list[str] = []
        if entry.get("disableNetwork") is True or run.get("disableNetwork") is True:
            note.append("disableNetwork: no network at all")
        else:
            for h in hosts if isinstance(hosts, list) else []:
                if isinstance(h, str) and is_valid_entry(h.strip()):
                    allow.append(h.strip())
                else:
                    note.append(f"skipped unusable host {json.dumps(h)}")
            if not hosts:
                note.append("no allowHosts declared")
        out[str(name)] = list(dict.fromkeys(allow))
        if notes is not None and note:
            notes.setdefault(str(name), []).extend(note)
    return out
