"""The process trees of MCP server launches, for `egresswatch servers` and the web view.

:func:`server_trees` builds, from the lineage tracker's records, one
:class:`ServerTree` per MCP server launch (exited members shown as such while
their record is kept; a subtree with no live member is left out);
:func:`render_tree` draws one as indented text.
"""

from __future__ import annotations

from dataclasses import dataclass

from egresswatch.attribute.proctable import ProcessTable, ProcKey, ProcRecord
from egresswatch.model import ProcessInfo


@dataclass(frozen=True, slots=True)
class TreeNode:
    process: ProcessInfo
    phase: str | None
    alive: bool
    children: tuple[TreeNode, ...] = ()


@dataclass(frozen=True, slots=True)
class ServerTree:
    server: str
    host: str | None
    root: TreeNode


def server_trees(table: ProcessTable) -> list[ServerTree]:
    """Per MCP server launch, its process tree, sorted by server and start time."""
    with table.lock:
        recs = [r for r in table.records() if r.lineage is not None]
        kids: dict[ProcKey, list[ProcRecord]] = {}
        for r in recs:
            if r.parent is not None:
                kids.setdefault(r.parent, []).append(r)

        def node(r: ProcRecord, depth: int = 0) -> TreeNode | None:
            children = [] if depth > 64 else [node(c, depth + 1) for c in kids.get(r.info.key, [])]
            alive = tuple(c for c in children if c is not None)
            if not r.alive and not alive:
                return None
            return TreeNode(r.info, r.lineage.phase if r.lineage else None, r.alive, alive)

        out = []
        for r in recs:
            lin = r.lineage
            assert lin is not None
            parent = table.get(r.parent) if r.parent else None
            if lin.root.key == r.info.key or parent is None or parent.lineage is None:
                n = node(r)
                if n is not None:
                    out.append(ServerTree(lin.server, lin.host, n))
        return sorted(out, key=lambda t: (t.server, t.root.process.create_time))


def render_tree(tree: ServerTree) -> str:
    """A server's live process tree as indented text (pid, name, phase; exited
    processes marked), for `egresswatch servers`."""
    lines: list[str] = []

    def walk(node: TreeNode, depth: int) -> None:
        p = node.process
        cmd = " ".join(p.cmdline)[:100] or (p.name or "?")
        state = "" if node.alive else " (exited)"
        phase = f" [{node.phase}]" if node.phase else ""
        lines.append(f"{'  ' * depth}{'└─ ' if depth else ''}{p.pid} {cmd}{phase}{state}")
        for child in node.children:
            walk(child, depth + 1)

    walk(tree.root, 0)
    return "\n".join(lines)
