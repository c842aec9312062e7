"""Pure matching of command lines to MCP server launches (no I/O but reading
``/proc`` is elsewhere): :func:`signature` reduces a command line to what was
really launched, seeing through the wrappers hosts and package runners insert
(``sh -c``, ``cmd /c``, ``env``, su/sudo/runuser/setpriv/doas, nice/ionice/
timeout/flatpak-spawn ... (egresswatch.mcp.launchers), interpreters,
``npx``/``npm exec``, ``uvx``/``uv tool uvx``/``pipx run``, ``uv run``,
``docker run``); :class:`Matcher` ties a command line to a discovered
ServerDef of the process's own account (or a system-wide one) or to a
configured launcher pattern, a definition always winning over a pattern;
:func:`classify` turns an ancestor chain into a :class:`Lineage` (server,
host, phase, root). See egresswatch.attribute.lineage for the
live process tree and the phase rules.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
from collections.abc import Container, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Protocol

from egresswatch.mcp.launchers import SWITCHERS, VALUE_OPTS, WRAPPER_NAMES, shell_words, unwrap
from egresswatch.model import Attribution, ProcessInfo

log = logging.getLogger(__name__)

INSTALL = "install"
RUN = "run"

_SHELLS = frozenset({"sh", "bash", "dash", "zsh", "ash", "ksh", "fish", "busybox"})
_INTERP_RE = re.compile(r"^(node|nodejs|bun|deno|ruby|perl|pypy3?|python(\d+(\.\d+)?)?)$")
_NODE_SCRIPTS = {"npx-cli.js": "npx", "npm-cli.js": "npm"}
_NPM_RUNNERS = frozenset({"npx", "bunx", "pnpx"})
# Options that take a value, per wrapper (the rest are flags).
_NODE_VALUE_OPTS = frozenset(
    {"-r", "--require", "--import", "--loader", "--experimental-loader", "--env-file"}
)
_PY_VALUE_OPTS = frozenset({"-W", "-X"})

# Host applications, by executable (or node script) basename.
HOST_APPS = {  # values are discovery.py's host names
    "claude": "claude-code",
    "claude-desktop": "claude-desktop",
    "cursor": "cursor",
    "code": "vscode",
    "code-insiders": "vscode",
    "codium": "vscode",
    "windsurf": "windsurf",
    "gemini": "gemini-cli",
    "codex": "codex",
    "zed": "zed",
    "zed-editor": "zed",
    "goose": "goose",
    "goosed": "goose",
    "lm-studio": "lm-studio",
    "lmstudio": "lm-studio",
    "q": "amazon-q",
    "opencode": "opencode",
}

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


class ServerLike(Protocol):
    """The fields of discovery.ServerDef that matching reads."""

    @property
    def host(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def command(self) -> str | None: ...
    @property
    def args(self) -> tuple[str, ...]: ...
    @property
    def cwd(self) -> str | os.PathLike[str] | None: ...
    @property
    def disabled(self) -> bool: ...
    @property
    def owner(self) -> str | None: ...


@dataclass(frozen=True, slots=True)
class Signature:
    """What a command line really launches: ``kind`` is "npm" (npm package via
    a runner), "py" (Python package via uvx/pipx), "docker" (image), "pymod"
    (``python -m``) or "exe" (a program or script path); ``runner`` is true
    when the process itself is the package runner; ``switched`` when a
    user-switching wrapper runs it (its account is not the wrapper's)."""

    kind: str
    name: str
    args: tuple[str, ...]
    runner: bool = False
    switched: bool = False  # launched through su/sudo/runuser/setpriv/doas: runs as another account


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


def _base(tok: str) -> str:
    b = tok.replace("\\", "/").rsplit("/", 1)[-1].lower()
    for ext in (".exe", ".cmd", ".bat"):
        if b.endswith(ext):
            return b[: -len(ext)]
    return b


def _strip_npm_version(pkg: str) -> str:
    at = pkg.find("@", 1)
    return pkg[:at] if at > 0 else pkg


def _strip_py_version(pkg: str) -> str:
    return re.split(r"[\[=<>~!@ ;]", pkg, maxsplit=1)[0].lower().replace("_", "-")


def _skip_opts(argv: Sequence[str], i: int, with_value: Container[str]) -> tuple[int, str | None]:
    """Index of the first positional from ``i``; also the value of --from/-p/--package."""
    pkg = None
    while i < len(argv):
        tok = argv[i]
        if tok == "--":
            return i + 1, pkg
        if not tok.startswith("-") or tok == "-":
            return i, pkg
        key, eq, val = tok.partition("=")
        if key in with_value and not eq:
            if key in ("--from", "-p", "--package") and i + 1 < len(argv):
                pkg = argv[i + 1]
            i += 2
            continue
        if eq and key in ("--from", "--package"):
            pkg = val
        i += 1
    return i, pkg


def _split(text: str) -> list[str]:
    try:
        return shlex.split(text)
    except ValueError:
        return []


def signature(argv: Sequence[str]) -> Signature | None:
    """Pure: what ``argv`` launches, through at most 12 layers of wrappers
    (``sudo -u u sh -c "cd ~ && exec nice -n5 npx -y pkg"`` is four)."""
    wrappers: list[str] = []
    sig = _signature(argv, wrappers)
    if sig is None or SWITCHERS.isdisjoint(wrappers):
        return sig
    return replace(sig, switched=True)


def _signature(argv: Sequence[str], wrappers: list[str]) -> Signature | None:  # noqa: C901 - one table of wrappers
    args = list(argv)
    runner_seen = False
    for _ in range(12):
        if not args:
            return None
        a0 = _base(args[0])
        if a0 == "env":
            i = 1
            while i < len(args) and (args[i].startswith("-") or "=" in args[i]):
                if args[i] in ("-S", "--split-string") and i + 1 < len(args):
                    args = [*_split(args[i + 1]), *args[i + 2 :]]
                    i = 0
                    break
                i += 2 if args[i] in ("-u", "-C", "--unset", "--chdir") else 1
            args = args[i:]
            continue
        if a0 in WRAPPER_NAMES:
            wrappers.append(a0)
            inner = unwrap(a0, args)
            if inner is None:
                return Signature("exe", a0, ())
            args = inner
            continue
        if a0 in _SHELLS:
            cidx = next((i for i, t in enumerate(args[1:4], 1) if re.fullmatch(r"-[a-z]*c[a-z]*", t)), None)
            if cidx is not None and cidx + 1 < len(args):
                args = shell_words(args[cidx + 1])
                continue
            rest = [t for t in args[1:] if not t.startswith("-")]
            if not rest:
                return Signature("exe", a0, ())
            args = args[args.index(rest[0]) :]
            continue
        if a0 == "cmd" and len(args) > 2 and args[1].lower() in ("/c", "/k", "/s"):
            args = args[2:] if args[1].lower() != "/s" else args[3:]
            continue
        if _INTERP_RE.match(a0):
            is_py = a0.startswith("py")
            i = 1
            while i < len(args) and args[i].startswith("-"):
                if is_py and args[i] == "-m" and i + 1 < len(args):
                    return Signature("pymod", args[i + 1], tuple(args[i + 2 :]))
                if args[i] in ("-c", "-e", "--eval", "-p", "--print") and not (
                    a0 == "bun" and args[i] == "-p"
                ):
                    return Signature("exe", a0, ())
                i += 2 if args[i] in (_PY_VALUE_OPTS if is_py else _NODE_VALUE_OPTS) else 1
            if i >= len(args):
                return Signature("exe", a0, ())
            if a0 == "bun" and args[i] == "x":
                args = ["bunx", *args[i + 1 :]]
                continue
            if a0 == "deno" and args[i] == "run":
                i, _ = _skip_opts(args, i + 1, ())
            script = args[i]
            args = [_NODE_SCRIPTS.get(_base(script), script), *args[i + 1 :]]
            if _base(args[0]) in ("npx", "npm"):
                continue
            return Signature("exe", args[0], tuple(args[1:]))
        sub = args[1] if len(args) > 1 else ""
        if (
            a0 in _NPM_RUNNERS
            or (a0 == "npm" and sub in ("exec", "x"))
            or (a0 in ("pnpm", "yarn") and sub in ("dlx", "exec"))
        ):
            start = 1 if a0 in _NPM_RUNNERS else 2
            i, pkg = _skip_opts(args, start, VALUE_OPTS["npm"])
            if i >= len(args) and not pkg:
                return None
            name = pkg or args[i]
            return Signature("npm", _strip_npm_version(name), tuple(args[i + 1 :]), runner=True)
        if (
            a0 == "uvx"
            or (a0 == "uv" and sub == "tool" and len(args) > 2 and args[2] in ("run", "uvx"))
            or (a0 == "pipx" and sub == "run")
        ):
            start = 1 if a0 == "uvx" else (3 if a0 == "uv" else 2)
            i, pkg = _skip_opts(args, start, VALUE_OPTS["uvx"])
            if i >= len(args):
                return None
            return Signature("py", _strip_py_version(pkg or args[i]), tuple(args[i + 1 :]), runner=True)
        if a0 == "uv" or a0 in ("poetry", "pipenv", "hatch", "pdm", "rye"):
            i, _ = _skip_opts(args, 1, VALUE_OPTS["uvx"])
            if i < len(args) and args[i] == "run":
                i, _ = _skip_opts(args, i + 1, VALUE_OPTS["uvx"])
                args = args[i:]
                runner_seen = True
                continue
            return Signature("exe", a0, tuple(args[1:]))
        if a0 in ("docker", "podman", "nerdctl"):
            at = docker_run_at(args)
            if at is not None:
                i, _ = _skip_opts(args, at, VALUE_OPTS["docker"])
                if i >= len(args):
                    return None
                image = args[i].removesuffix(":latest")
                return Signature("docker", image, tuple(args[i + 1 :]), runner=False)
        return Signature("exe", args[0], tuple(args[1:]), runner=runner_seen)
    return None


_DOCKER_GLOBAL_VALUE_OPTS = frozenset(
    {"-H", "--host", "-c", "--context", "--config", "-l", "--log-level", "--tlscacert", "--tlscert",
     "--tlskey", "--url", "--connection", "--identity", "--root", "--runroot"}
)  # fmt: skip


def docker_run_at(args: Sequence[str]) -> int | None:
    """Pure: where the ``run`` options start in ``docker|podman|nerdctl
    [global options] [container] run ...`` (after global options such as
    ``-H HOST`` or ``--context X``); None when it is not a ``run``."""
    j = 1
    while j < len(args) and args[j].startswith("-"):
        j += 2 if args[j] in _DOCKER_GLOBAL_VALUE_OPTS else 1
    if j < len(args) - 1 and args[j] == "container":
        j += 1
    return j + 1 if j < len(args) and args[j] == "run" else None


def _generic(sig: Signature) -> bool:
    b = _base(sig.name)
    return sig.kind == "exe" and (
        b in _SHELLS or bool(_INTERP_RE.match(b)) or b in ("cmd", "uv") or b in WRAPPER_NAMES
    )


def _same_exe(expected: str, actual: str, cwd: str | os.PathLike[str] | None) -> bool:
    e, a = expected.replace("\\", "/"), actual.replace("\\", "/")
    if "/" in e and "/" in a:
        if cwd and not e.startswith("/"):
            e = os.path.join(os.fspath(cwd), e)
        e, a = os.path.normpath(e), os.path.normpath(a)
        if e == a:
            return True
        if not a.startswith("/") or not e.startswith("/"):
            rel, full = (a, e) if not a.startswith("/") else (e, a)
            return full.endswith("/" + rel.lstrip("./"))
        return False
    return _base(e) == _base(a)


def sig_matches(expected: Signature, actual: Signature, cwd: str | os.PathLike[str] | None = None) -> bool:
    """Does the launched ``actual`` run the ``expected`` definition?"""
    if _generic(expected):
        return False
    if actual.args[: len(expected.args)] != expected.args:
        return False
    if expected.kind == actual.kind:
        if expected.kind == "exe":
            return _same_exe(expected.name, actual.name, cwd)
        if expected.kind == "py":
            return expected.name == actual.name
        return expected.name == actual.name
    if actual.kind != "exe":
        return False
    path = actual.name.replace("\\", "/")
    if expected.kind == "npm":  # node .../_npx/<hash>/node_modules/.bin/<bin>
        unscoped = expected.name.rsplit("/", 1)[-1]
        return ("/_npx/" in path or "/node_modules/" in path) and (
            _base(path) == unscoped or f"/node_modules/{expected.name}/" in path
        )
    if expected.kind == "py":  # python .../uv/archive-v0/<hash>/bin/<pkg>
        return (
            "/bin/" in path
            and _base(path).replace("_", "-") == expected.name
            and ("/uv/" in path or "/pipx/" in path or "archive-v" in path)
        )
    return False


@dataclass(frozen=True, slots=True)
class RootMatch:
    server: str
    host: str | None
    via: str
    runner: bool


def host_app(p: ProcessInfo) -> str | None:
    """The MCP host application a process is, if any (claude, cursor, vscode ...)."""
    cands = []
    if p.cmdline:
        cands.append(p.cmdline[0])
        if _INTERP_RE.match(_base(p.cmdline[0])) and len(p.cmdline) > 1:
            cands.append(p.cmdline[1])
    if p.exe:
        cands.append(p.exe)
    if p.name:
        cands.append(p.name)
    for c in cands:
        b = _base(c).removesuffix(".js").removesuffix(".mjs")
        if b in HOST_APPS:
            return HOST_APPS[b]
    return None


class Matcher:
    """Ties command lines to ServerDefs or launcher patterns; memoised.

    A definition with an ``owner`` (the account whose config holds it) speaks
    only for that account's processes; one without (system-wide files) for
    every account. :func:`classify_with` prefers any definition match in a
    chain over any pattern match."""

    def __init__(self, servers: Sequence[ServerLike], patterns: Sequence[str] = ()) -> None:
        self.defs: list[tuple[Signature, ServerLike]] = []
        for s in servers:
            if s.command is None or getattr(s, "disabled", False):
                continue
            sig = signature((s.command, *s.args))
            if sig is not None and not _generic(sig):
                self.defs.append((sig, s))
        self.patterns: list[re.Pattern[str]] = []
        for p in patterns:
            try:
                self.patterns.append(re.compile(p))
            except re.error as exc:
                log.warning("launcher pattern %r ignored: %s", p, exc)
        self._config = lru_cache(maxsize=8192)(self._config_uncached)
        self._pattern = lru_cache(maxsize=8192)(self._pattern_uncached)

    def match(
        self, cmdline: tuple[str, ...], ancestor_hosts: tuple[str, ...] = (), user: str | None = None
    ) -> RootMatch | None:
        """A definition match for a process of ``user`` running ``cmdline``, else a pattern match."""
        return self.match_config(cmdline, ancestor_hosts, user) or self.match_pattern(cmdline, ancestor_hosts)

    def match_config(
        self, cmdline: tuple[str, ...], ancestor_hosts: tuple[str, ...] = (), user: str | None = None
    ) -> RootMatch | None:
        if sum(len(a) for a in cmdline) > 4096:  # keep the memo small whatever processes do
            return self._config_uncached(cmdline, ancestor_hosts, user)
        return self._config(cmdline, ancestor_hosts, user)

    def match_pattern(
        self, cmdline: tuple[str, ...], ancestor_hosts: tuple[str, ...] = ()
    ) -> RootMatch | None:
        if sum(len(a) for a in cmdline) > 4096:
            return self._pattern_uncached(cmdline, ancestor_hosts)
        return self._pattern(cmdline, ancestor_hosts)

    def _config_uncached(
        self, cmdline: tuple[str, ...], ancestor_hosts: tuple[str, ...], user: str | None
    ) -> RootMatch | None:
        if not cmdline or not self.defs:
            return None
        sig = signature(cmdline)
        if sig is None:
            return None
        # a user-switching wrapper (su, sudo ...) runs the command as another
        # account than its own: there only system-wide definitions, and ones that
        # launch through such a wrapper themselves, speak for it; the launched
        # process matches its own account's definition
        hits = [
            (e, s)
            for e, s in self.defs
            if (s.owner is None or (s.owner == user and (e.switched or not sig.switched)))
            and sig_matches(e, sig, s.cwd)
        ]
        if not hits:
            return None

        def rank(hit: tuple[Signature, ServerLike]) -> tuple[int, int]:
            host = (hit[1].host or "").lower()
            near = any(host == h or host.startswith(h + "-") for h in ancestor_hosts)
            return (0 if near else 1, -len(hit[0].args))

        _exp, best = min(hits, key=rank)
        return RootMatch(best.name, best.host, "config", sig.runner)

    def _pattern_uncached(
        self, cmdline: tuple[str, ...], ancestor_hosts: tuple[str, ...]
    ) -> RootMatch | None:
        if not cmdline or not self.patterns:
            return None
        sig = signature(cmdline)
        if sig is None or _generic(sig):
            return None
        text = " ".join(cmdline)
        for pat in self.patterns:
            if pat.search(text):
                name = sig.name if sig.kind != "exe" else _base(sig.name)
                host = ancestor_hosts[0] if ancestor_hosts else None
                return RootMatch(name, host, "pattern", sig.runner)
        return None


def is_install_step(p: ProcessInfo) -> bool:
    """An npm/pip install step or a build tool, from the command line alone."""
    argv = list(p.cmdline)
    if not argv:
        return False
    a0 = _base(argv[0])
    if a0 in _INSTALL_BINS or _base(p.name or "") in _INSTALL_BINS:
        return True
    if _INTERP_RE.match(a0):
        rest = [t for t in argv[1:] if not t.startswith("-")]
        if any(t in ("pip", "ensurepip", "setup.py") or t.endswith("/setup.py") for t in argv[1:4]):
            return True
        if rest and (_base(rest[0]) in _INSTALL_BINS or "node-gyp" in rest[0] or "/builds-v" in rest[0]):
            return True
        if "-c" in argv and any("build_wheel" in t or "_in_process" in t or "pep517" in t for t in argv):
            return True
        argv = rest
        a0 = _base(argv[0]) if argv else ""
        argv = [_NODE_SCRIPTS.get(a0, a0), *argv[1:]]
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
    a0 = _base(p.cmdline[0])
    if (
        a0 in _SHELLS
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


# -- live tracking ----------------------------------------------------------
