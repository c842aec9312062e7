"""What a command line really launches, through the wrappers in front of it.

:func:`signature` reduces a command line to a :class:`Signature` (an npm or
Python package via a runner, a container image, ``python -m`` module, or a
program path), seeing through what hosts, package runners and people insert:
``sh -c``, ``cmd /c``, ``env``, su/sudo/runuser/setpriv/doas, nice/ionice/
timeout/flatpak-spawn ... (egresswatch.mcp.launchers), interpreters,
``npx``/``npm exec``, ``uvx``/``uv tool uvx``/``pipx run``, ``uv run``,
``docker run``. Pure: no I/O.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Container, Sequence
from dataclasses import dataclass, replace

from egresswatch.mcp.launchers import SWITCHERS, VALUE_OPTS, WRAPPER_NAMES, shell_words, unwrap

SHELLS = frozenset({"sh", "bash", "dash", "zsh", "ash", "ksh", "fish", "busybox"})
INTERPRETER_RE = re.compile(r"^(node|nodejs|bun|deno|ruby|perl|pypy3?|python(\d+(\.\d+)?)?)$")
NODE_SCRIPTS = {"npx-cli.js": "npx", "npm-cli.js": "npm"}
_NPM_RUNNERS = frozenset({"npx", "bunx", "pnpx"})
# Options that take a value, per wrapper (the rest are flags).
_NODE_VALUE_OPTS = frozenset(
    {"-r", "--require", "--import", "--loader", "--experimental-loader", "--env-file"}
)
_PY_VALUE_OPTS = frozenset({"-W", "-X"})


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


def base_name(tok: str) -> str:
    """The lower-case basename of a program, without .exe/.cmd/.bat."""
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
        a0 = base_name(args[0])
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
        if a0 in SHELLS:
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
        if INTERPRETER_RE.match(a0):
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
            args = [NODE_SCRIPTS.get(base_name(script), script), *args[i + 1 :]]
            if base_name(args[0]) in ("npx", "npm"):
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


def is_generic(sig: Signature) -> bool:
    """A signature that says nothing about which server runs: an interpreter,
    a shell or a wrapper alone (a definition that is only ``node`` or ``sh``)."""
    b = base_name(sig.name)
    return sig.kind == "exe" and (
        b in SHELLS or bool(INTERPRETER_RE.match(b)) or b in ("cmd", "uv") or b in WRAPPER_NAMES
    )
