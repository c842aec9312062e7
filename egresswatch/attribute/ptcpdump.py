"""Process attribution from ptcpdump's per-packet pcapng comments (replay).

ptcpdump writes ``PID:``, ``Cmd:``, ``Args:``, ``UserId:``, ``ThreadId:``,
``ParentPID:``, ``ParentCmd:``, ``ParentArgs:`` lines in each packet's
comment; :class:`PtcpdumpAttributor` reads them and classifies the process
against the MCP server definitions. ptcpdump joins argv with spaces, so
``cmdline`` is that text split on spaces; the create time is unknown (0.0)
and the user is the numeric uid (names are not portable).
"""

from __future__ import annotations

from egresswatch.mcp.match import attribution, classify_with
from egresswatch.mcp.matcher import Matcher
from egresswatch.model import Attribution, Frame, Observation, ProcessInfo

MAX_COMMENT = 65536


def parse_ptcpdump_comment(comment: str) -> dict[str, str]:
    """Pure: ``Key: value`` lines of a ptcpdump packet comment (first wins)."""
    out: dict[str, str] = {}
    for line in comment[:MAX_COMMENT].splitlines():
        key, sep, value = line.partition(": ")
        if sep and key.isidentifier() and key not in out:
            out[key] = value
    return out


def _int(v: str | None) -> int | None:
    # ASCII digits only: str.isdigit() also accepts "²", and strip() removes
    # separators (\x1c-\x1f) that int() does not (both found by fuzzing)
    s = v.strip(" \t\r") if v is not None else ""
    if not s.isascii() or not s.isdigit() or len(s) > 10:
        return None
    return int(s)


def _proc(pid: int, cmd: str | None, args: str | None, ppid: int | None, user: str | None) -> ProcessInfo:
    name = cmd.rsplit("/", 1)[-1] if cmd else None
    return ProcessInfo(
        pid=pid,
        create_time=0.0,
        ppid=ppid,
        name=name or None,
        exe=cmd or None,
        cmdline=tuple(args.split(" ")) if args else (),
        user=user,
    )


def ptcpdump_chain(comment: str) -> tuple[ProcessInfo, tuple[ProcessInfo, ...]] | None:
    """Pure: (process, (parent,)) from a ptcpdump comment, None without a PID."""
    kv = parse_ptcpdump_comment(comment)
    pid = _int(kv.get("PID"))
    if pid is None:
        return None
    ppid = _int(kv.get("ParentPID"))
    uid = _int(kv.get("UserId"))
    proc = _proc(pid, kv.get("Cmd"), kv.get("Args"), ppid, str(uid) if uid is not None else None)
    chain: tuple[ProcessInfo, ...] = ()
    if ppid is not None:
        chain = (_proc(ppid, kv.get("ParentCmd"), kv.get("ParentArgs"), None, None),)
    return proc, chain


class PtcpdumpAttributor:
    """Attribution from ptcpdump's per-packet comments (``frame.comment``)."""

    def __init__(self, matcher: Matcher | None = None) -> None:
        self.matcher = matcher or Matcher(())

    def attribute(self, obs: Observation, frame: Frame) -> Attribution:
        if not frame.comment:
            return Attribution(reason="no process comment on the packet")
        parsed = ptcpdump_chain(frame.comment)
        if parsed is None:
            return Attribution(reason="packet comment names no process")
        proc, chain = parsed
        return attribution(proc, chain, classify_with((proc, *chain), self.matcher), "ptcpdump comment")
