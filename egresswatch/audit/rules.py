"""Static understanding of an MCP server launch: which package runner, which
package and version, which container options; and lookalike package names.

Pure functions of argv and the well-known list: nothing is executed or fetched.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, replace

from egresswatch.mcp.launchers import VALUE_OPTS
from egresswatch.mcp.signature import docker_run_at

PKG_RUNNERS = ("npx", "bunx", "pnpm dlx", "yarn dlx", "npm exec", "uvx", "pipx run")
CONTAINER_RUNNERS = ("docker run", "podman run")
SANDBOXES = frozenset({"bwrap", "firejail", "nsjail", "sandbox-exec", "minijail0", "flatpak-spawn"})
SHELLS = frozenset({"sh", "bash", "zsh", "dash", "ksh", "fish", "ash"})

# Options that take a separate value, per runner (``--opt=value`` is always one word).

_EXACT_SEMVER = re.compile(r"^v?\d+\.\d+\.\d+(?:-[0-9A-Za-z.\-]+)?(?:\+[0-9A-Za-z.\-]+)?$")
_COMMIT = re.compile(r"[0-9a-f]{40}")


@dataclass(frozen=True, slots=True)
class Launch:
    """What a server's command line does, as far as static reading can tell."""

    argv: tuple[str, ...]  # after unwrapping cmd /c, env, sh -c
    runner: str | None = None  # one of PKG_RUNNERS / CONTAINER_RUNNERS, or None
    ecosystem: str | None = None  # npm | pypi | docker | git | local
    spec: str | None = None  # the package/image argument as written
    name: str | None = None  # package or image name without version
    version: str | None = None  # version/tag/digest as written, or None
    pinned: bool = False
    spec_index: int = -1  # index in argv of the spec argument (-1: from an option)
    opts: tuple[str, ...] = ()  # runner options before the spec (docker flags ...)
    shell_text: str | None = None  # the script of sh -c / cmd /c
    sandbox: str | None = None  # bwrap/firejail/... wrapper when present


def base(cmd: str) -> str:
    b = re.split(r"[\\/]", cmd)[-1].lower()
    return re.sub(r"\.(exe|cmd|bat|ps1)$", "", b)


def _positional(args: list[str], value_opts: frozenset[str]) -> tuple[int, dict[str, list[str]], list[str]]:
    """Index of the first positional argument, option values, options seen."""
    opts: dict[str, list[str]] = {}
    seen: list[str] = []
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--":
            return i + 1, opts, seen
        if not a.startswith("-") or a == "-":
            return i, opts, seen
        if "=" in a and a.startswith("--"):
            k, v = a.split("=", 1)
            opts.setdefault(k, []).append(v)
            seen.append(a)
        elif a in value_opts and i + 1 < len(args):
            opts.setdefault(a, []).append(args[i + 1])
            seen += [a, args[i + 1]]
            i += 1
        else:
            seen.append(a)
        i += 1
    return len(args), opts, seen


def _npm_spec(spec: str) -> tuple[str, str | None, str]:
    """(name, version, ecosystem) of an npm package spec."""
    if spec.startswith((".", "/", "~", "file:")):
        return spec, None, "local"
    if spec.startswith(("git", "http:", "https:", "github:", "gitlab:", "bitbucket:")) or (
        "/" in spec and not spec.startswith("@")
    ):
        m = re.search(r"#(.+)$", spec)
        return spec.split("#")[0], m.group(1) if m else None, "git"
    at = spec.find("@", 1)
    if at < 0:
        return spec, None, "npm"
    return spec[:at], spec[at + 1 :] or None, "npm"


def _py_spec(spec: str) -> tuple[str, str | None, str]:
    if spec.startswith((".", "/", "~", "file:")):
        return spec, None, "local"
    if spec.startswith(("git+", "http:", "https:")):
        m = re.search(r"@([0-9a-f]{7,40})(?:#.*)?$", spec)
        return re.sub(r"@[^/]*$", "", spec), m.group(1) if m else None, "git"
    m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._\-]*)(\[[^\]]*\])?\s*(.*)$", spec)
    if not m:
        return spec, None, "pypi"
    name, rest = m.group(1), m.group(3).strip()
    if rest.startswith("@"):
        return name, rest[1:].strip() or None, "pypi"
    return name, rest or None, "pypi"


def _pinned(ecosystem: str, version: str | None) -> bool:
    if version is None:
        return False
    if ecosystem == "npm":
        return bool(_EXACT_SEMVER.match(version))
    if ecosystem == "pypi":
        v = version.removeprefix("==")
        return (
            (version.startswith("==") or "=" not in version and "<" not in version and ">" not in version)
            and bool(re.fullmatch(r"v?\d+(?:\.\d+)*(?:[a-z0-9.+\-]*)", v))
            and "*" not in v
        )
    if ecosystem == "git":
        return bool(_COMMIT.fullmatch(version))
    return False


def image_ref(ref: str) -> tuple[str, str | None, str | None]:
    """(name, tag, digest) of a container image reference."""
    digest = None
    if "@" in ref:
        ref, digest = ref.split("@", 1)
    slash = ref.rfind("/")
    colon = ref.rfind(":")
    if colon > slash:
        return ref[:colon], ref[colon + 1 :], digest
    return ref, None, digest


def parse_launch(command: str | None, args: tuple[str, ...], depth: int = 0) -> Launch:
    if not command:
        return Launch(argv=())
    argv = [command, *args]
    b = base(command)
    if b == "cmd" and len(argv) > 2 and argv[1].lower() in ("/c", "/k", "/s"):
        rest = argv[2:] if argv[1].lower() != "/s" else argv[3:]
        inner = (
            parse_launch(rest[0], tuple(rest[1:]), depth + 1) if rest and depth < 3 else Launch(tuple(rest))
        )
        return _with_text(inner, " ".join(rest))
    if b == "env":
        i = 1
        while i < len(argv) and (argv[i].startswith("-") or re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", argv[i])):
            i += 1
        if i < len(argv) and depth < 3:
            return parse_launch(argv[i], tuple(argv[i + 1 :]), depth + 1)
    if b in SANDBOXES:
        i, _, _ = _positional(argv[1:], frozenset())
        if 1 + i < len(argv) and depth < 3:
            inner = parse_launch(argv[1 + i], tuple(argv[2 + i :]), depth + 1)
            return _sandboxed(inner, b)
        return Launch(tuple(argv), sandbox=b)
    if b in SHELLS or b in ("powershell", "pwsh"):
        for j, a in enumerate(argv[1:], 1):
            if re.fullmatch(r"-[a-z]*c|-command|-c", a.lower()) and j + 1 < len(argv):
                text = argv[j + 1]
                try:
                    words = shlex.split(text)
                except ValueError:
                    words = []
                simple = words and not re.search(r"[|;&<>`$]", text)
                if simple and depth < 3:
                    return _with_text(parse_launch(words[0], tuple(words[1:]), depth + 1), text)
                return Launch(tuple(argv), shell_text=text)
        return Launch(tuple(argv))
    return _runner(tuple(argv), b)


def _with_text(launch: Launch, text: str) -> Launch:
    return replace(launch, shell_text=text)


def _sandboxed(launch: Launch, sandbox: str) -> Launch:
    return replace(launch, sandbox=sandbox)


#: options that name the package instead of the first positional word
_SPEC_OPTS = {"npm": ("--package", "-p"), "uvx": ("--from",), "pipx": ("--spec",)}


def _runner(argv: tuple[str, ...], b: str) -> Launch:
    a = list(argv)
    runner, rest_at, family = None, 0, ""
    if b in ("npx", "pnpx", "bunx"):
        runner, rest_at, family = ("bunx" if b == "bunx" else "npx"), 1, "npm"
    elif b in ("pnpm", "yarn") and len(a) > 1 and a[1] == "dlx":
        runner, rest_at, family = f"{b} dlx", 2, "npm"
    elif b == "bun" and len(a) > 1 and a[1] == "x":
        runner, rest_at, family = "bunx", 2, "npm"
    elif b == "npm" and len(a) > 1 and a[1] in ("exec", "x"):
        runner, rest_at, family = "npm exec", 2, "npm"
    elif b == "uvx":
        runner, rest_at, family = "uvx", 1, "uvx"
    elif b == "uv" and a[1:3] == ["tool", "run"]:
        runner, rest_at, family = "uvx", 3, "uvx"
    elif b == "pipx" and len(a) > 1 and a[1] == "run":
        runner, rest_at, family = "pipx run", 2, "pipx"
    elif b in ("docker", "podman") and (at := docker_run_at(a)) is not None:
        runner, rest_at, family = f"{b} run", at, "docker"
    if runner is None:
        return Launch(argv)
    rest = a[rest_at:]
    i, opts, seen = _positional(rest, VALUE_OPTS[family])
    spec_index = rest_at + i if i < len(rest) else -1
    positional = rest[i] if i < len(rest) else None
    if family in _SPEC_OPTS:  # a package runner: the package may come from an option
        given = [v for o in _SPEC_OPTS[family] for v in opts.get(o, [])]
        spec = given[0] if given else positional
        if given:
            spec_index = -1
        if spec is None:
            return Launch(argv, runner=runner, opts=tuple(seen))
        name, version, eco = (_npm_spec if family == "npm" else _py_spec)(spec)
    else:
        if positional is None:
            return Launch(argv, runner=runner, opts=tuple(seen))
        spec = positional
        name, tag, digest = image_ref(spec)
        return Launch(
            argv, runner, "docker", spec, name, digest or tag, bool(digest), spec_index, tuple(seen)
        )
    return Launch(argv, runner, eco, spec, name, version, _pinned(eco, version), spec_index, tuple(seen))
