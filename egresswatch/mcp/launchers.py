"""Command-line options of package runners and container runners that take a
separate value (``--opt value``; ``--opt=value`` is always one word): the one
table both launch parsers use, the launch signature (egresswatch.mcp.signature)
and the audit (egresswatch.audit.rules), so that they agree on which word is
the package or image.

Also the wrappers that run a command for someone (su, sudo, runuser, setpriv,
doas, nice, ionice, timeout, flatpak-spawn ...): :func:`unwrap` gives the
command they run, :func:`shell_words` the command a ``sh -c`` script runs.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence

VALUE_OPTS: dict[str, frozenset[str]] = {
    "docker": frozenset(
        {
            "--add-host",
            "--annotation",
            "--attach",
            "--cap-add",
            "--cap-drop",
            "--cgroupns",
            "--cidfile",
            "--cpus",
            "--cpuset-cpus",
            "--detach-keys",
            "--device",
            "--dns",
            "--entrypoint",
            "--env",
            "--env-file",
            "--expose",
            "--gpus",
            "--group-add",
            "--health-cmd",
            "--hostname",
            "--hostuser",
            "--ip",
            "--ip6",
            "--ipc",
            "--label",
            "--label-file",
            "--log-driver",
            "--log-opt",
            "--mac-address",
            "--memory",
            "--memory-swap",
            "--mount",
            "--name",
            "--net",
            "--network",
            "--network-alias",
            "--pid",
            "--platform",
            "--publish",
            "--pull",
            "--restart",
            "--runtime",
            "--security-opt",
            "--shm-size",
            "--stop-signal",
            "--storage-opt",
            "--sysctl",
            "--tmpfs",
            "--ulimit",
            "--user",
            "--userns",
            "--uts",
            "--volume",
            "--volumes-from",
            "--workdir",
            "-a",
            "-e",
            "-h",
            "-l",
            "-m",
            "-p",
            "-u",
            "-v",
            "-w",
        }
    ),
    "npm": frozenset(
        {
            "--cache",
            "--call",
            "--package",
            "--prefix",
            "--registry",
            "--userconfig",
            "--workspace",
            "-c",
            "-p",
            "-w",
        }
    ),
    "pipx": frozenset(
        {
            "--backend",
            "--index-url",
            "--pip-args",
            "--python",
            "--spec",
            "-i",
        }
    ),
    "uvx": frozenset(
        {
            "--build-constraints",
            "--cache-dir",
            "--config-file",
            "--constraints",
            "--default-index",
            "--directory",
            "--env-file",
            "--extra-index-url",
            "--find-links",
            "--from",
            "--index",
            "--index-url",
            "--overrides",
            "--project",
            "--python",
            "--spec",
            "--with",
            "--with-editable",
            "--with-requirements",
            "-f",
            "-i",
            "-p",
        }
    ),
}


# Shell commands that set up and launch nothing: ``cd ~ && exec server`` runs the server.
_SETUP_WORDS = frozenset(
    {"cd", "export", "set", "umask", "ulimit", "unset", "source", ".", "true", ":", "shopt"}
)
_ASSIGN_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def shell_words(script: str) -> list[str]:
    """The words of the first simple command of a ``sh -c`` script that launches
    something (set-up commands such as ``cd DIR &&`` or ``export A=1;`` and
    leading ``A=1`` assignments are passed over), without a leading ``exec``;
    [] when it cannot be split."""
    lex = shlex.shlex(script.replace("\n", " ; "), posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    words: list[str] = []
    try:
        for tok in lex:
            if tok and all(c in "();<>|&" for c in tok):
                while words and _ASSIGN_RE.match(words[0]):
                    words = words[1:]
                if tok in (";", "&&", "||", "&") and (not words or words[0] in _SETUP_WORDS):
                    words = []
                    continue
                if tok == "(" and not words:
                    continue
                break
            words.append(tok)
    except ValueError:
        return []
    while words and _ASSIGN_RE.match(words[0]):
        words = words[1:]
    while words and words[0] in ("exec", "nohup", "command"):
        words = words[1:]
    return words


# Wrappers that run a command given after their options, and so are seen
# through like ``sh -c``: name -> (options taking a separate value, positional
# words before the command, options meaning "no command launched").
_WRAPPERS: dict[str, tuple[frozenset[str], int, frozenset[str]]] = {
    "sudo": (frozenset({"-u", "--user", "-g", "--group", "-C", "--close-from", "-D", "--chdir", "-h", "--host",
                        "-p", "--prompt", "-r", "--role", "-t", "--type", "-U", "--other-user", "-T",
                        "--command-timeout", "-R", "--chroot"}), 0,
             frozenset({"-l", "--list", "-v", "--validate", "-k", "-K", "-V", "-e", "--edit"})),
    "doas": (frozenset({"-u", "-C"}), 0, frozenset({"-L"})),
    "setpriv": (frozenset({"--reuid", "--regid", "--ruid", "--euid", "--rgid", "--egid", "--groups",
                           "--inh-caps", "--ambient-caps", "--bounding-set", "--securebits", "--pdeathsig",
                           "--selinux-label", "--apparmor-profile", "--landlock-access", "--landlock-rule",
                           "--seccomp-filter"}), 0, frozenset({"-d", "--dump"})),
    "nice": (frozenset({"-n", "--adjustment"}), 0, frozenset()),
    "ionice": (frozenset({"-c", "--class", "-n", "--classdata"}), 0, frozenset({"-p", "--pid", "-P", "--pgid",
                                                                             "-u", "--uid"})),
    "timeout": (frozenset({"-k", "--kill-after", "-s", "--signal"}), 1, frozenset()),
    "chrt": (frozenset({"-T", "--sched-runtime", "-P", "--sched-period", "-D", "--sched-deadline"}), 1,
             frozenset({"-p", "--pid", "-m", "--max"})),
    "taskset": (frozenset(), 1, frozenset({"-p", "--pid"})),
    "stdbuf": (frozenset({"-i", "-o", "-e", "--input", "--output", "--error"}), 0, frozenset()),
    "nohup": (frozenset(), 0, frozenset()),
    "setsid": (frozenset(), 0, frozenset()),
    "time": (frozenset({"-f", "--format", "-o", "--output"}), 0, frozenset()),
    "unbuffer": (frozenset(), 0, frozenset()),
    "flatpak-spawn": (frozenset(), 0, frozenset()),
    "firejail": (frozenset(), 0, frozenset({"--list", "--tree", "--top"})),
    "prlimit": (frozenset(), 0, frozenset({"-p", "--pid"})),
    "dbus-run-session": (frozenset(), 0, frozenset()),
    "systemd-inhibit": (frozenset({"--what", "--who", "--why", "--mode"}), 0, frozenset({"--list"})),
}  # fmt: skip
# su and runuser: ``su [opts] [-] [user] [-c COMMAND]`` runs COMMAND through a shell.
_SU_VALUE_OPTS = frozenset({"-s", "--shell", "-g", "--group", "-G", "--supp-group", "-w",
                            "--whitelist-environment", "-u", "--user"})  # fmt: skip
_SU_COMMAND_OPTS = frozenset({"-c", "--command", "--session-command"})
WRAPPER_NAMES = frozenset({*_WRAPPERS, "su", "runuser", "env"})
SWITCHERS = frozenset({"su", "runuser", "sudo", "doas", "setpriv"})


def _su_command(args: Sequence[str]) -> list[str] | None:
    """The command ``su``/``runuser`` runs: ``-c CMD`` through a shell, or (runuser
    -u USER) the argv after the options; None when it starts a login shell."""
    user_opt = False
    i = 1
    while i < len(args):
        tok = args[i]
        key, eq, val = tok.partition("=")
        if tok == "--":
            return list(args[i + 1 :]) if user_opt else None
        if key in _SU_COMMAND_OPTS:
            cmd = val if eq else (args[i + 1] if i + 1 < len(args) else "")
            return shell_words(cmd)
        if re.fullmatch(r"-[a-zA-Z]*c", tok) and len(tok) > 2 and not tok.startswith("--"):
            return shell_words(args[i + 1]) if i + 1 < len(args) else None
        if key in ("-u", "--user"):
            user_opt = True
        if key in _SU_VALUE_OPTS and not eq:
            i += 2
            continue
        if not tok.startswith("-") and user_opt:
            return list(args[i:])
        i += 1
    return None


def unwrap(a0: str, args: Sequence[str]) -> list[str] | None:
    """The command a privilege/scheduling wrapper (sudo, setpriv, nice, timeout
    ...) runs; None when ``a0`` is no such wrapper or runs no command."""
    if a0 in ("su", "runuser"):
        return _su_command(args)
    spec = _WRAPPERS.get(a0)
    if spec is None:
        return None
    value_opts, positionals, no_launch = spec
    i = 1
    while i < len(args):
        tok = args[i]
        if tok == "--":
            i += 1
            break
        if not tok.startswith("-") or tok == "-":
            break
        key = tok.partition("=")[0]
        if key in no_launch:
            return None
        if a0 == "nice" and re.fullmatch(r"-\d+", tok):
            i += 1
            continue
        i += 2 if key in value_opts and "=" not in tok else 1
    if a0 == "sudo":
        while i < len(args) and _ASSIGN_RE.match(args[i]):
            i += 1
    i += positionals
    return list(args[i:]) if i < len(args) else None
