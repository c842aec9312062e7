"""DNS names: wire form (with compression) -> lossless presentation text.

Names are in presentation form: labels joined with ".", no trailing dot, the
root as "."; bytes outside printable ASCII (0x21-0x7e) are written ``\\DDD``
(decimal, RFC 1035), and "." and "\\" inside a label as "\\." and "\\\\", so the
form is lossless. TLS and QUIC SNI use the same form (:func:`presentation`).

Hostile input: compression pointer loops, pointers into the header, chains
deeper than :data:`MAX_POINTERS`, names longer than 255 octets, bad label
types and truncation never raise or hang; :func:`read_name` then gives None
and says why. Decoded with slicing and a per-message cache of names by offset
(see :mod:`dns` for the speed figures). Pure: no I/O, no clock.
"""

from __future__ import annotations

__all__ = ["presentation", "read_name", "MAX_POINTERS", "MAX_NAME"]

MAX_POINTERS = 64  # compression pointers followed in one name (loops end much earlier)
MAX_NAME = 255  # octets on the wire, RFC 1035 2.3.4

# printable ASCII kept as is, but "." and "\\" inside a label as "\\." and "\\\\";
# every other byte becomes \DDD (RFC 1035 presentation form: lossless)
_ESC = [f"\\{b:03d}" for b in range(256)]
for _b in range(0x21, 0x7F):
    _ESC[_b] = chr(_b)
_ESC[0x2E], _ESC[0x5C] = "\\.", "\\\\"
_KEEP = bytes(b for b in range(0x21, 0x7F) if b != 0x5C)  # "." is checked by counting
_KEEP_LABEL = bytes(b for b in range(0x21, 0x7F) if b not in (0x2E, 0x5C))


def presentation(data: bytes) -> str:
    r"""A host name from the wire that is not split into labels (TLS/QUIC SNI) in
    the same lossless form as DNS names: printable ASCII as is, "\" as "\\",
    every other byte as \DDD ("." stays the separator)."""
    if not data.translate(None, _KEEP):
        return data.decode("ascii")
    return "".join([_ESC[b] if b != 0x2E else "." for b in data])


def _label_text(label: bytes) -> str:
    if not label.translate(None, _KEEP_LABEL):
        return label.decode("ascii")
    return "".join([_ESC[b] for b in label])


def _skip_name(buf: bytes, off: int) -> int:
    """Offset after the wire form of the name at ``off`` without following
    pointers (what follows a malformed name), or -1 if it runs off the end."""
    n = len(buf)
    while off < n:
        length = buf[off]
        if length == 0:
            return off + 1
        if length & 0xC0 == 0xC0:
            return off + 2 if off + 2 <= n else -1
        if length & 0xC0:
            return -1
        off += 1 + length
    return -1


def read_name(
    buf: bytes, off: int, cache: dict[int, tuple[list[bytes], int]] | None = None
) -> tuple[str | None, int, str | None]:
    """Decode the (possibly compressed) name at ``off``.

    Returns ``(name, next_offset, error)``: ``next_offset`` is where the data
    after the name starts in the original position (-1 if the name itself is
    truncated there); ``name`` is None and ``error`` set when it is malformed.
    ``cache`` (one dict per message) remembers names already decoded by offset,
    so a pointer to the question name costs one lookup.
    """
    n = len(buf)
    labels: list[bytes] = []
    total = 1
    end = -1
    pos = off
    seen: set[int] | None = None
    err: str | None = None
    while True:
        if pos >= n:
            err = "name truncated"
            break
        length = buf[pos]
        if length == 0:
            if end < 0:
                end = pos + 1
            break
        kind = length & 0xC0
        if kind == 0xC0:
            if pos + 1 >= n:
                err = "name truncated"
                break
            if end < 0:
                end = pos + 2
            ptr = ((length & 0x3F) << 8) | buf[pos + 1]
            if cache is not None and ptr in cache:
                more, more_len = cache[ptr]
                total += more_len - 1
                if total > MAX_NAME:
                    err = "name too long"
                    break
                labels.extend(more)
                break
            if seen is None:
                seen = {pos}
            elif pos in seen:
                err = "pointer loop"
                break
            elif len(seen) >= MAX_POINTERS:
                err = "too many compression pointers"
                break
            else:
                seen.add(pos)
            if ptr < 12:
                err = "pointer into header"
                break
            pos = ptr
            continue
        if kind:
            err = "bad label type"
            break
        total += length + 1
        if total > MAX_NAME:
            err = "name too long"
            break
        if pos + 1 + length > n:
            err = "name truncated"
            break
        labels.append(buf[pos + 1 : pos + 1 + length])
        pos += 1 + length
    if err is not None:
        return None, (end if end >= 0 else _skip_name(buf, off)), err
    if cache is not None:
        cache[off] = (labels, total)
    if not labels:
        return ".", end, None
    raw = b".".join(labels)
    if not raw.translate(None, _KEEP) and raw.count(46) == len(labels) - 1:
        return raw.decode("ascii"), end, None
    return ".".join([_label_text(lb) for lb in labels]), end, None
