"""A tiny classic BPF (``struct sock_filter``) assembler: opcodes, instructions
with labelled jumps, packing for SO_ATTACH_FILTER, and a disassembly listing.
The capture filter itself is built in :mod:`egresswatch.capture.bpf`."""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass

# -- classic BPF opcodes (linux/filter.h) ---------------------------------------
LD, LDX, ST, STX, ALU, JMP, RET, MISC = 0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07
W, H, B = 0x00, 0x08, 0x10
IMM, ABS, IND, MEM, MSH = 0x00, 0x20, 0x40, 0x60, 0xA0
ADD, SUB, AND, LSH, RSH = 0x00, 0x10, 0x50, 0x60, 0x70
JA, JEQ, JGT, JGE, JSET = 0x00, 0x10, 0x20, 0x30, 0x40
K, X = 0x00, 0x08
TAX, TXA = 0x00, 0x80

MAX_INSNS = 4096


@dataclass(frozen=True, slots=True)
class Insn:
    code: int
    jt: int
    jf: int
    k: int

    def pack(self) -> bytes:
        return struct.pack("HBBI", self.code, self.jt, self.jf, self.k & 0xFFFFFFFF)


class Asm:
    """A tiny assembler: conditional jumps take labels (or None = next insn)."""

    def __init__(self, accept: int = 0xFFFF) -> None:
        self.accept = accept  # the snap length ``accept_if`` returns
        self.items: list[tuple[int, str | None, str | None, int] | str] = []
        self._n = 0

    def label(self, name: str) -> None:
        self.items.append(name)

    def fresh(self, stem: str) -> str:
        self._n += 1
        return f"{stem}.{self._n}"

    def op(self, code: int, k: int = 0) -> None:
        self.items.append((code, None, None, k))

    def jmp(self, cond: int, k: int, jt: str | None, jf: str | None) -> None:
        self.items.append((JMP | cond | K, jt, jf, k))

    def ja(self, target: str) -> None:
        self.items.append((JMP | JA, target, None, 0))

    def ret(self, k: int) -> None:
        self.op(RET | K, k)

    def accept_if(self, cond: int, k: int) -> None:
        skip = self.fresh("skip")
        self.jmp(cond, k, None, skip)
        self.ret(self.accept)
        self.label(skip)

    def drop_if(self, cond: int, k: int) -> None:
        skip = self.fresh("skip")
        self.jmp(cond, k, None, skip)
        self.ret(0)
        self.label(skip)

    def goto_if(self, cond: int, k: int, target: str) -> None:
        """Far conditional jump: a short conditional over a 32-bit ``ja``."""
        skip = self.fresh("skip")
        self.jmp(cond, k, None, skip)
        self.ja(target)
        self.label(skip)

    def assemble(self) -> list[Insn]:
        where: dict[str, int] = {}
        pc = 0
        for item in self.items:
            if isinstance(item, str):
                if item in where:
                    raise ValueError(f"duplicate label {item}")
                where[item] = pc
            else:
                pc += 1
        out: list[Insn] = []
        for item in self.items:
            if isinstance(item, str):
                continue
            code, jt, jf, k = item
            pc = len(out)
            if code == JMP | JA:
                assert jt is not None
                out.append(Insn(code, 0, 0, where[jt] - pc - 1))
                continue
            if code & 0x07 == JMP:
                t = 0 if jt is None else where[jt] - pc - 1
                f = 0 if jf is None else where[jf] - pc - 1
                if not (0 <= t <= 255 and 0 <= f <= 255):
                    raise ValueError(f"conditional jump out of range at {pc}")
                out.append(Insn(code, t, f, 0 if k is None else k))
                continue
            out.append(Insn(code, 0, 0, k))
        if len(out) > MAX_INSNS:
            raise ValueError("BPF program too long")
        return out


def pack_program(prog: Iterable[Insn]) -> bytes:
    return b"".join(i.pack() for i in prog)


def disassemble(prog: Iterable[Insn]) -> str:
    """One line per instruction (``code jt jf k``), for ``egresswatch doctor -v``."""
    return "\n".join(f"{n:4d}: {i.code:#06x} {i.jt:3d} {i.jf:3d} {i.k:#x}" for n, i in enumerate(prog))
