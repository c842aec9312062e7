"""The few libbpf (libbpf1, 1.x) calls egresswatch needs, through ctypes.

ctypes lives in this package only. Everything returns plain Python values or
raises :class:`BpfError` (one line, with errno's text); pointers never leave
this module except as opaque handles.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Callable

LIBBPF_NAMES = ("libbpf.so.1", "libbpf.so")


class BpfError(OSError):
    """libbpf refused (not found, load or attach failed)."""


_lib: ctypes.CDLL | None = None
_RB_CB = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)


def lib() -> ctypes.CDLL:
    global _lib
    if _lib is not None:
        return _lib
    names = [*LIBBPF_NAMES, ctypes.util.find_library("bpf") or ""]
    for name in filter(None, names):
        try:
            handle = ctypes.CDLL(name, use_errno=True)
        except OSError:
            continue
        _declare(handle)
        _lib = handle
        return handle
    raise BpfError("libbpf not found (Debian: apt-get install libbpf1)")


def _declare(h: ctypes.CDLL) -> None:
    p, i, s = ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p
    sigs: dict[str, tuple[object, list[object]]] = {
        "bpf_object__open_file": (p, [s, p]),
        "bpf_object__load": (i, [p]),
        "bpf_object__close": (None, [p]),
        "bpf_object__next_program": (p, [p, p]),
        "bpf_object__find_map_by_name": (p, [p, s]),
        "bpf_program__name": (s, [p]),
        "bpf_program__section_name": (s, [p]),
        "bpf_program__set_autoload": (i, [p, ctypes.c_bool]),
        "bpf_program__attach": (p, [p]),
        "bpf_link__destroy": (i, [p]),
        "bpf_map__fd": (i, [p]),
        "bpf_map__set_pin_path": (i, [p, s]),
        "bpf_map__reuse_fd": (i, [p, i]),
        "bpf_map__set_max_entries": (i, [p, ctypes.c_uint32]),
        "bpf_program__fd": (i, [p]),
        "bpf_map_lookup_elem": (i, [i, p, p]),
        "bpf_map_update_elem": (i, [i, p, p, ctypes.c_uint64]),
        "bpf_map_delete_elem": (i, [i, p]),
        "bpf_map_get_next_key": (i, [i, p, p]),
        "ring_buffer__new": (p, [i, _RB_CB, p, p]),
        "ring_buffer__poll": (i, [p, i]),
        "ring_buffer__free": (None, [p]),
        "libbpf_set_print": (p, [p]),
        "libbpf_major_version": (ctypes.c_uint32, []),
        "libbpf_minor_version": (ctypes.c_uint32, []),
    }
    for name, (res, args) in sigs.items():
        fn = getattr(h, name)
        fn.restype = res
        fn.argtypes = args
    h.libbpf_set_print(None)  # its messages go to stderr; errors are reported through errno


def version() -> str:
    h = lib()
    return f"{h.libbpf_major_version()}.{h.libbpf_minor_version()}"


def _fail(what: str, rc: int | None = None) -> BpfError:
    err = -rc if rc is not None and rc < 0 else ctypes.get_errno()
    return BpfError(err, f"{what}: {os.strerror(err) if err else 'failed'}")


class BpfObject:
    """An opened and loaded object file; programs are attached one by one."""

    def __init__(
        self,
        path: str,
        skip: Callable[[str], bool] = lambda _n: False,
        pins: dict[str, str] | None = None,
        reuse: dict[str, int] | None = None,
        sizes: dict[str, int] | None = None,
    ) -> None:
        """``pins``: map name -> bpffs path; an existing pinned map is reused
        (its contents survive a restart), else the new one is pinned there.
        ``reuse``: map name -> fd of a loaded map (another object's) used
        instead of a new one; ``sizes``: map name -> max_entries."""
        h = lib()
        self._h = h
        self._links: list[int] = []
        self._obj = h.bpf_object__open_file(os.fsencode(path), None)
        if not self._obj:
            raise _fail(f"open {path}")
        self.programs: dict[str, int] = {}
        prog = h.bpf_object__next_program(self._obj, None)
        while prog:
            name = h.bpf_program__name(prog).decode()
            if skip(name):
                h.bpf_program__set_autoload(prog, False)
            else:
                self.programs[name] = prog
            prog = h.bpf_object__next_program(self._obj, prog)
        for name, pin in (pins or {}).items():
            m = h.bpf_object__find_map_by_name(self._obj, name.encode())
            if m:
                h.bpf_map__set_pin_path(m, pin.encode())
        for name, entries in (sizes or {}).items():
            m = h.bpf_object__find_map_by_name(self._obj, name.encode())
            if m:
                h.bpf_map__set_max_entries(m, entries)
        for name, fd in (reuse or {}).items():
            m = h.bpf_object__find_map_by_name(self._obj, name.encode())
            rc = h.bpf_map__reuse_fd(m, fd) if m else -22
            if rc != 0:
                self.close()
                raise _fail(f"reuse map {name}", rc)
        rc = h.bpf_object__load(self._obj)
        if rc != 0:
            self.close()
            raise _fail(f"load {os.path.basename(path)}", rc)

    def section(self, name: str) -> str:
        return self._h.bpf_program__section_name(self.programs[name]).decode()

    def attach(self, name: str) -> None:
        link = self._h.bpf_program__attach(self.programs[name])
        if not link:
            raise _fail(f"attach {name}")
        self._links.append(link)

    def prog_fd(self, name: str) -> int:
        """The loaded program's fd (for SO_ATTACH_BPF); valid until close()."""
        return int(self._h.bpf_program__fd(self.programs[name]))

    def map_fd(self, name: str) -> int:
        m = self._h.bpf_object__find_map_by_name(self._obj, name.encode())
        if not m:
            raise BpfError(f"no map {name}")
        return int(self._h.bpf_map__fd(m))

    def close(self) -> None:
        for link in self._links:
            self._h.bpf_link__destroy(link)
        self._links = []
        if self._obj:
            self._h.bpf_object__close(self._obj)
            self._obj = None


def lookup(fd: int, key: bytes, value_size: int) -> bytes | None:
    """The value stored under ``key`` in map ``fd``, or None."""
    out = ctypes.create_string_buffer(value_size)
    if lib().bpf_map_lookup_elem(fd, key, out) != 0:
        return None
    return out.raw


def update(fd: int, key: bytes, value: bytes) -> None:
    """Store ``value`` under ``key`` in map ``fd`` (BPF_ANY)."""
    rc = lib().bpf_map_update_elem(fd, key, value, 0)
    if rc != 0:
        raise _fail("map update", rc)


def delete(fd: int, key: bytes) -> bool:
    """Remove ``key`` from map ``fd``; False when it was not there."""
    return lib().bpf_map_delete_elem(fd, key) == 0


def keys(fd: int, key_size: int, limit: int = 1 << 20) -> list[bytes]:
    """Every key of map ``fd`` (at most ``limit``); for tests and status."""
    h = lib()
    out: list[bytes] = []
    cur = ctypes.create_string_buffer(key_size)
    nxt = ctypes.create_string_buffer(key_size)
    prev: ctypes.Array[ctypes.c_char] | None = None
    while len(out) < limit and h.bpf_map_get_next_key(fd, prev, nxt) == 0:
        out.append(nxt.raw)
        ctypes.memmove(cur, nxt, key_size)
        prev = cur
    return out


class RingBuffer:
    """Reads records from a BPF ring buffer map; ``poll`` hands each to ``sink``."""

    def __init__(self, fd: int, sink: Callable[[bytes], None]) -> None:
        def cb(_ctx: int | None, data: int | None, size: int) -> int:
            if data:
                sink(ctypes.string_at(data, size))
            return 0

        self._cb = _RB_CB(cb)  # kept referenced while libbpf holds it
        self._rb = lib().ring_buffer__new(fd, self._cb, None, None)
        if not self._rb:
            raise _fail("ring_buffer__new")

    def poll(self, timeout_ms: int) -> int:
        return int(lib().ring_buffer__poll(self._rb, timeout_ms))

    def close(self) -> None:
        if self._rb:
            lib().ring_buffer__free(self._rb)
            self._rb = None
