"""House rules of the code base, checked on the source (docs/architecture.md):

- the tree shows the pipeline: one package per stage, each with a docstring
  saying its job and contract, and no module over 300 lines;
- dependencies point one way, down the layers of LAYERS: the CLI and the web
  view over the service, the service over the pipeline, the pipeline over the
  stages, the stages over the shared model;
- each third-party library is imported by the one module that needs it;
- decoders, the DNS memory, the policy and the pipeline never read a clock
  (the frame timestamp is the only clock, so replay is deterministic).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "egresswatch"
MAX_LINES = 300
# Modules still being split (issue #11): this list only shrinks, and must end empty.
STILL_LONG = {
    "alert/rules.py",
    "alert/deliver.py",
    "audit/findings.py",
    "decode/link.py",
    "decode/tls.py",
    "decode/quic.py",
    "decode/engine.py",
    "decode/dns.py",
    "attribute/attributor.py",
    "attribute/lineage.py",
    "attribute/recorded.py",
    "cli/run.py",
    "service/daemon.py",
    "store/query.py",
    "store/db.py",
    "capture/pcapfile.py",
    "capture/live.py",
    "capture/bpf.py",
    "judge/detectors.py",
    "judge/allowlist.py",
    "judge/policy.py",
    "mcp/match.py",
    "mcp/formats.py",
}

# Each top-level unit (package or module) of egresswatch/ and its layer: a unit
# may import units of a lower layer only (and itself). Read top to bottom, this
# is the pipeline: capture -> decode -> attribute -> judge -> store -> alert.
LAYERS: dict[str, int] = {
    # shared by everyone: the data model, errors, config, files and host facts
    "model": 0,
    "errors": 0,
    "textsafe": 0,
    "host": 0,
    "stages": 1,
    "config": 1,
    "safefiles": 1,
    # pure libraries of the stages: bytes -> observations, kernel programs
    "decode": 2,
    "ebpf": 2,
    # the stages
    "capture": 3,
    "mcp": 3,
    "attribute": 4,
    "audit": 4,
    "judge": 4,
    "store": 5,
    "alert": 6,
    # composition and front ends
    "pipeline": 7,
    "service": 8,
    "ui": 8,
    "cli": 9,
    "__main__": 10,
    "__init__": 10,
}
STAGES = ("capture", "decode", "attribute", "mcp", "judge", "store", "alert", "audit", "service", "cli")

# library -> the modules allowed to import it
CONFINED = {
    "apprise": {"alert/deliver.py"},
    "psutil": {"attribute/lineage.py", "attribute/attributor.py"},
    "sqlite_utils": {"store/db.py"},
    "cryptography": {"decode/quic_crypto.py"},
    "dnslib": {"decode/dns.py"},
    "publicsuffixlist": {"judge/detectors.py"},
    "scapy": set(),  # tests and capture generators only: too slow for the hot path
    # config formats: MCP host configs (Goose, Continue) and Docker catalog files
    "yaml": {"mcp/formats.py", "cli/policy.py"},
    # `egresswatch ui` (the [ui] extra): the web framework stays in the ui package
    "starlette": {"ui/app.py", "ui/serve.py"},
    "jinja2": {"ui/app.py"},
    "uvicorn": {"ui/serve.py"},
    "pygal": {"ui/charts.py"},
    "click": {
        "cli/main.py",
        "cli/discovery.py",
        "cli/install.py",
        "cli/events.py",
        "cli/policy.py",
        "cli/replay.py",
        "cli/run.py",
        "cli/ui.py",
    },
    # foreign calls: libbpf (the eBPF loader), libc socket/syscall helpers, the capture filter
    "ctypes": {"ebpf/libbpf.py", "ebpf/loader.py", "attribute/sockets.py", "capture/bpf.py"},
}
CLOCK_FREE = [
    "decode/*.py",
    "model.py",
    "pipeline.py",
    "judge/names.py",
    "judge/policy.py",
    "judge/detectors.py",
    "judge/flows.py",
    "judge/upload.py",
    "mcp/match.py",
    "judge/allowlist.py",
    "alert/rules.py",
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


def _unit(module: str) -> str:
    """egresswatch.judge.names -> judge; egresswatch.model -> model."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _egresswatch_imports(tree: ast.Module) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module == "egresswatch":
            out.update(f"egresswatch.{a.name}" for a in node.names)  # from egresswatch import x
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            raise AssertionError("relative import: use absolute egresswatch.* imports")
    return out | {i for i in _imports(tree) if i.startswith("egresswatch.")}


def test_every_unit_has_a_layer() -> None:
    units = {
        p.stem if p.is_file() else p.name
        for p in PKG.iterdir()
        if p.suffix == ".py" or (p / "__init__.py").exists()
    }
    assert units == set(LAYERS), (
        f"add new units to LAYERS (and docs/architecture.md): {sorted(units ^ set(LAYERS))}"
    )


def test_dependencies_point_down_the_layers() -> None:
    upward = []
    for name, tree in MODULES.items():
        unit = name.split("/")[0].removesuffix(".py")
        for imported in sorted(_egresswatch_imports(tree)):
            target = _unit(imported)
            if target == "__version__":  # from egresswatch import __version__
                continue
            if target != unit and LAYERS[target] >= LAYERS[unit]:
                upward.append(f"{name} imports {imported} ({unit}={LAYERS[unit]}, {target}={LAYERS[target]})")
    assert upward == [], "imports must point down the layers:\n" + "\n".join(upward)


def test_decoders_and_model_import_nothing_above_them() -> None:
    for name, tree in MODULES.items():
        imported = _egresswatch_imports(tree)
        if name.startswith("decode/"):
            assert {_unit(i) for i in imported} <= {"decode", "model", "errors"}, (
                f"{name}: {sorted(imported)}"
            )
        if name == "model.py":
            assert imported == set(), "model.py uses the standard library only"


@pytest.mark.parametrize("stage", STAGES)
def test_each_stage_is_a_package_that_says_its_job(stage: str) -> None:
    init = PKG / stage / "__init__.py"
    assert init.is_file(), f"egresswatch/{stage}/ is not a package"
    doc = ast.get_docstring(ast.parse(init.read_text())) or ""
    assert "Contract" in doc, f"egresswatch/{stage}/__init__.py: a docstring with its job and its contract"


def test_no_module_over_300_lines() -> None:
    long = {
        name: n
        for name in MODULES
        if (n := len((PKG / name).read_text().splitlines())) > MAX_LINES and name not in STILL_LONG
    }
    assert long == {}, f"modules over {MAX_LINES} lines (split them along their seams): {long}"
