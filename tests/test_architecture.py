"""House rules of the code base, checked on the source (docs/architecture.md):

- each third-party library is imported by the one module that needs it;
- decoders, the DNS memory, the policy and the pipeline never read a clock
  (the frame timestamp is the only clock, so replay is deterministic);
- dependencies point one way: the parts never import the CLI or the service,
  and the decoders import nothing above them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "egresswatch"

# library -> the modules allowed to import it
CONFINED = {
    "apprise": {"alerts.py"},
    "psutil": {"lineage.py", "attribution.py"},
    "sqlite_utils": {"store.py"},
    "cryptography": {"decode/quic_crypto.py"},
    "dnslib": {"decode/dns.py"},
    "publicsuffixlist": {"detectors.py"},
    "scapy": set(),  # tests and capture generators only: too slow for the hot path
    # config formats: MCP host configs (Goose, Continue) and Docker catalog files
    "yaml": {"discovery_formats.py", "cli_policy.py"},
    # `egresswatch ui` (the [ui] extra): the web framework stays in the ui package
    "starlette": {"ui/app.py", "ui/serve.py"},
    "jinja2": {"ui/app.py"},
    "uvicorn": {"ui/serve.py"},
    "pygal": {"ui/charts.py"},
    "click": {
        "cli.py",
        "cli_discovery.py",
        "cli_install.py",
        "cli_events.py",
        "cli_policy.py",
        "cli_replay.py",
        "cli_run.py",
        "cli_ui.py",
    },
    # foreign calls: libbpf (the eBPF loader), libc socket/syscall helpers, the capture filter
    "ctypes": {"ebpf/libbpf.py", "ebpf/loader.py", "sockets.py", "capture/bpf.py"},
}
CLOCK_FREE = [
    "decode/*.py",
    "model.py",
    "pipeline.py",
    "names.py",
    "policy.py",
    "detectors.py",
    "mcpmatch.py",
    "allowlist.py",
    "alertrules.py",
]
CLOCKS = {
    ("time", "time"),
    ("time", "monotonic"),
    ("time", "time_ns"),
    ("datetime", "now"),
    ("datetime", "utcnow"),
}


def _modules() -> dict[str, ast.Module]:
    return {str(p.relative_to(PKG)): ast.parse(p.read_text(), str(p)) for p in PKG.rglob("*.py")}


def _imports(tree: ast.Module) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


MODULES = _modules()


@pytest.mark.parametrize("lib", sorted(CONFINED))
def test_third_party_library_is_confined(lib: str) -> None:
    users = {name for name, tree in MODULES.items() if any(i.split(".")[0] == lib for i in _imports(tree))}
    assert users <= CONFINED[lib], f"{lib} imported outside its module(s): {sorted(users - CONFINED[lib])}"


def test_no_clock_below_capture() -> None:
    offenders = []
    for pattern in CLOCK_FREE:
        for path in sorted(PKG.glob(pattern)):
            for node in ast.walk(ast.parse(path.read_text())):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and isinstance(node.func.value, ast.Name)
                    and (node.func.value.id, node.func.attr) in CLOCKS
                ):
                    offenders.append(f"{path.relative_to(PKG)}:{node.lineno}")
    assert offenders == [], f"clock read where the frame time must be used: {offenders}"


def test_dependencies_point_one_way() -> None:
    top = ("egresswatch.cli", "egresswatch.service")
    for name, tree in MODULES.items():
        imported = {i for i in _imports(tree) if i.startswith("egresswatch")}
        if not (name.startswith("cli") or name in ("service.py", "__main__.py")):
            assert not any(i.startswith(top) for i in imported), f"{name} imports the CLI or the service"
        if name.startswith("decode/"):
            allowed = ("egresswatch.decode", "egresswatch.model", "egresswatch.errors")
            assert all(i.startswith(allowed) for i in imported), f"{name}: {sorted(imported)}"
        if name == "model.py":
            assert imported == set(), "model.py uses the standard library only"
        if name.startswith("ebpf/"):  # the kernel side knows sockets and processes, not servers or policy
            allowed = ("egresswatch.ebpf", "egresswatch.proc_events")
            assert all(i.startswith(allowed) for i in imported), f"{name}: {sorted(imported)}"
