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
import re
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "egresswatch"
MAX_LINES = 300

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
    "apprise": {"alert/channels.py"},
    "psutil": {"attribute/listings.py"},
    "sqlite_utils": {"store/schema.py"},
    "cryptography": {"decode/quic_crypto.py"},
    "dnslib": {"decode/dnsrdata.py"},
    "publicsuffixlist": {"judge/suffixes.py"},
    "scapy": set(),  # tests and capture generators only: too slow for the hot path
    # config formats: MCP host configs (Goose, Continue) and Docker catalog files
    "yaml": {"mcp/syntax.py", "cli/policy.py"},
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
        "cli/status.py",
        "cli/doctor.py",
        "cli/notifier.py",
        "cli/ui.py",
    },
    # foreign calls: libbpf (the eBPF loader), libc socket/syscall helpers, the capture filter
    "ctypes": {"ebpf/libbpf.py", "ebpf/loader.py", "attribute/sockets.py", "capture/bpf.py"},
}
CLOCK_FREE = [
    "decode/*.py",
    "model.py",
    "pipeline.py",
    "judge/*.py",  # every judge module: names, policy, entries, exfil, doh, allowlist, ...
    "mcp/signature.py",
    "mcp/hosts.py",
    "mcp/matcher.py",
    "mcp/match.py",
    "alert/rules.py",
    "alert/keys.py",
    "alert/message.py",
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
    long = {name: n for name in MODULES if (n := len((PKG / name).read_text().splitlines())) > MAX_LINES}
    assert long == {}, f"modules over {MAX_LINES} lines (split them along their seams): {long}"


# -- docs/architecture.md stays true to the tree ------------------------------------
ARCH_DOC = PKG.parent / "docs" / "architecture.md"
_STDLIB_OR_OURS = {*sys.stdlib_module_names, "egresswatch", "__future__"}


def _doc_rows(heading: str) -> list[list[str]]:
    """The cells of the table under ``heading`` (header and separator dropped)."""
    section = ARCH_DOC.read_text().split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    return [[c.strip() for c in row.strip("|").split("|")] for row in rows[2:]]


def _third_party(tree: ast.Module) -> set[str]:
    return {i.split(".")[0] for i in _imports(tree)} - _STDLIB_OR_OURS


def test_architecture_doc_names_only_paths_that_exist() -> None:
    """Module paths (``capture/live.py``, ``egresswatch/capture/live.py``,
    ``tests/test_docs.py``) and package paths (``egresswatch/capture/``)."""
    text = ARCH_DOC.read_text()
    named = set(re.findall(r"(?<![\w/.*-])((?:[\w-]+/)+[\w-]+\.py|egresswatch/(?:[\w-]+/)+)", text))
    assert len(named) > 50, sorted(named)
    missing = sorted(p for p in named if not (PKG.parent / p).exists() and not (PKG / p).exists())
    assert missing == [], f"docs/architecture.md names paths that do not exist: {missing}"


def test_architecture_doc_lists_every_module_with_its_libraries() -> None:
    rows = {cells[0].strip("`"): cells[2] for cells in _doc_rows("Modules")}
    tree = {f"egresswatch/{name}" for name in MODULES if not name.endswith("__init__.py")}
    assert set(rows) == tree, (
        f"docs/architecture.md module table: missing {sorted(tree - set(rows))}, gone {sorted(set(rows) - tree)}"
    )
    wrong = {}
    for path, cell in rows.items():
        said = set() if cell == "-" else {lib.strip() for lib in cell.split(",")}
        imported = _third_party(MODULES[path.removeprefix("egresswatch/")])
        if said != imported:
            wrong[path] = (sorted(said), sorted(imported))
    assert wrong == {}, f"third-party column (said, imported): {wrong}"


def test_architecture_doc_describes_every_package_and_layer() -> None:
    text = ARCH_DOC.read_text()
    packages = sorted(p.name for p in PKG.iterdir() if (p / "__init__.py").exists())
    undescribed = [p for p in packages if f"\n### egresswatch/{p}/\n" not in text]
    assert undescribed == [], f"docs/architecture.md: add a section per package: {undescribed}"
    layers = {
        unit.strip("` "): int(cells[0])
        for cells in _doc_rows("Layers: dependencies point one way")
        for unit in cells[1].split(",")
    }
    assert layers == {u: n for u, n in LAYERS.items() if u not in ("__main__", "__init__")}
