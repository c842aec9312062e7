"""An ancestor chain -> the MCP server launch it descends from, and its phase.

:func:`classify` turns a process and its ancestors (the process first, then
its parent, grandparent ...) into a :class:`Lineage` (server, host, phase,
root). The ROOT is the outermost process of the chain whose command line
matches a server (:class:`~egresswatch.mcp.matcher.Matcher`), so ``sh -c "npx
-y pkg"`` is the root, and npm's install children, siblings of the final
server process, are tied to it too.

Phase: a root that is a package runner starts in "install"; walking down from
the root, the first process that is an install step (``npm install``,
``node-gyp``, ``pip install``, an npm lifecycle script, a PEP 517 build hook
...) fixes "install" for everything below it; the first process that is
neither a runner, a shell wrapper nor an install step is the server itself and
fixes "run" for everything below it (a server that later runs ``npm install``
is still running, so install allowlists do not cover it). Pure: no I/O; the
live process tree is egresswatch.attribute.lineage.
"""

from __future__ import annotations

from collections.abc import Container, Sequence
from dataclasses import dataclass

from egresswatch.mcp.hosts import host_app
from egresswatch.mcp.launchers import WRAPPER_NAMES
from egresswatch.mcp.matcher import Matcher, RootMatch, ServerLike
from egresswatch.mcp.signature import INTERPRETER_RE, NODE_SCRIPTS, SHELLS, base_name, signature
from egresswatch.model import Attribution, ProcessInfo

INSTALL = "install"
RUN = "run"

_INSTALL_WORDS = frozenset({"install", "i", "ci", "add", "rebuild", "update", "sync"})
_INSTALL_BINS = frozenset(
    {
        "node-gyp",
        "node-gyp.js",
        "node-pre-gyp",
        "prebuild-install",
        "node-gyp-build",
        "cmake",
        "make",
        "gcc",
        "g++",
        "cc",
        "c++",
        "ld",
        "as",
        "cc1",
        "cc1plus",
        "collect2",
        "git",
        "tar",
        "gyp",
    }
)
LIFECYCLE_ENV = (b"npm_lifecycle_event", b"PIP_BUILD_TRACKER")


@dataclass(frozen=True, slots=True)
class Lineage:
    """Ties a process to an MCP server launch. ``depth`` 0 is the root itself;
    ``via`` is "config" (matched a discovered definition) or "pattern"."""

    server: str
    host: str | None
    phase: str
    root: ProcessInfo
    depth: int
    via: str = "config"


def attribution(
    process: ProcessInfo, chain: tuple[ProcessInfo, ...], lineage: Lineage | None, how: str
) -> Attribution:
    """The Attribution of a process with its ancestor chain and lineage;
    ``how`` says how the process was found."""
    return Attribution(
        process=process,
        chain=chain,
        server=lineage.server if lineage else None,
        host=lineage.host if lineage else None,
        phase=lineage.phase if lineage else None,
        reason=how,
    )


def is_install_step(p: ProcessInfo) -> bool:
    """An npm/pip install step or a build tool, from the command line alone."""
    argv = list(p.cmdline)
    if not argv:
        return False
    a0 = base_name(argv[0])
    if a0 in _INSTALL_BINS or base_name(p.name or "") in _INSTALL_BINS:
        return True
    if INTERPRETER_RE.match(a0):
        rest = [t for t in argv[1:] if not t.startswith("-")]
        if any(t in ("pip", "ensurepip", "setup.py") or t.endswith("/setup.py") for t in argv[1:4]):
            return True
        if rest and (base_name(rest[0]) in _INSTALL_BINS or "node-gyp" in rest[0] or "/builds-v" in rest[0]):
            return True
        if "-c" in argv and any("build_wheel" in t or "_in_process" in t or "pep517" in t for t in argv):
            return True
        argv = rest
        a0 = base_name(argv[0]) if argv else ""
        argv = [NODE_SCRIPTS.get(a0, a0), *argv[1:]]
        a0 = argv[0]
    sub = argv[1] if len(argv) > 1 else ""
    if a0 in ("npm", "pnpm", "yarn", "bun", "pip", "pip3") and sub in _INSTALL_WORDS:
        return True
    if a0 == "npm" and sub in ("run-script", "run") and len(argv) > 2 and "install" in argv[2]:
        return True
    return a0 == "uv" and sub == "pip"


def is_wrapper(p: ProcessInfo) -> bool:
    """A shell or a package runner: passes its phase on to its children."""
    if not p.cmdline:
        return False
    a0 = base_name(p.cmdline[0])
    if (
        a0 in SHELLS
        or a0 in ("cmd", "uv", "uvx", "npx", "bunx", "pnpx", "pipx", "npm")
        or a0 in WRAPPER_NAMES
    ):
        return True
    sig = signature(p.cmdline)
    return sig is not None and sig.runner


def classify_with(
    chain: Sequence[ProcessInfo], matcher: Matcher, install_marks: Container[tuple[int, float]] = ()
) -> Lineage | None:
    """Like :func:`classify` with a prepared Matcher; ``install_marks`` holds keys
    of processes known (from their environment) to be npm/pip lifecycle steps."""
    hosts: list[str] = []
    root_at = -1
    found: RootMatch | None = None
    pattern: tuple[int, RootMatch] | None = None
    for i in range(len(chain) - 1, -1, -1):  # outermost ancestor first
        p = chain[i]
        near = tuple(reversed(hosts))
        m = matcher.match_config(p.cmdline, near, p.user)
        if m is not None:  # a definition beats any pattern match, even an outer one
            root_at, found = i, m
            break
        if pattern is None:
            pm = matcher.match_pattern(p.cmdline, near)
            if pm is not None:
                pattern = (i, pm)
        h = host_app(p)
        if h is not None:
            hosts.append(h)
    if found is None and pattern is not None:
        root_at, found = pattern
    if found is None:
        return None
    phase = INSTALL if found.runner else RUN
    for i in range(root_at - 1 if phase == INSTALL else -1, -1, -1):
        p = chain[i]
        if p.key in install_marks or is_install_step(p):
            phase = INSTALL
            break
        if is_wrapper(p):
            continue
        phase = RUN
        break
    return Lineage(
        server=found.server, host=found.host, phase=phase, root=chain[root_at], depth=root_at, via=found.via
    )


def classify(
    chain: Sequence[ProcessInfo],
    servers: Sequence[ServerLike],
    patterns: Sequence[str] = (),
    install_marks: Container[tuple[int, float]] = (),
) -> Lineage | None:
    """Pure: the MCP lineage of ``chain[0]`` given its ancestors ``chain[1:]``
    (parent first), or None when no ancestor is an MCP server launch."""
    return classify_with(chain, Matcher(servers, patterns), install_marks)
