"""Frames built fast from capture records, and the replay skip hook's type.

A frozen slots dataclass's ``__init__`` costs ~750 ns (one object.__setattr__
per field). Setting the slot descriptors directly costs ~400 ns and builds an
identical, equal object; the readers' loops (:mod:`pcap`, :mod:`pcapng`) are
the hot loop of replay, so they use these setters (the classic pcap loop
inlines them).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from typing import Any

from egresswatch.model import Frame

__all__ = ["Skip", "make_frame"]

_FIELDS = ("ts", "data", "linktype", "index", "orig_len", "ifname", "comment")
if tuple(f.name for f in fields(Frame)) != _FIELDS:  # pragma: no cover - guards a model change
    raise ImportError("egresswatch.model.Frame fields changed: update capture/frames.py")
_new = object.__new__
_S_TS, _S_DATA, _S_LT, _S_IDX, _S_OL, _S_IF, _S_COM = (Frame.__dict__[n].__set__ for n in _FIELDS)


def make_frame(
    ts: float, data: bytes, linktype: int, index: int, orig_len: int, ifname: str | None, comment: str | None
) -> Frame:
    f: Frame = _new(Frame)
    _S_TS(f, ts)
    _S_DATA(f, data)
    _S_LT(f, linktype)
    _S_IDX(f, index)
    _S_OL(f, orig_len)
    _S_IF(f, ifname)
    _S_COM(f, comment)
    return f


# skip(linktype, buffer, start, end, ts, index) -> True to not yield that frame
Skip = Callable[[int, Any, int, int, float, int], bool]
