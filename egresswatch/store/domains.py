"""Name patterns -> SQL: a ``--domain`` glob as conditions over the stored names.

Names are stored reversed and lower-cased (``rname``, ``ralt``: see
:func:`egresswatch.store.rows.event_row`), so a suffix pattern such as
``*.example.com`` becomes an index range; each spelling of a name (Unicode,
IDNA, ``\\DDD`` bytes) is matched.
"""

from __future__ import annotations

from typing import Any


def _glob_tokens(pattern: str) -> list[str]:
    """Split a GLOB pattern into literal characters, ``*``, ``?`` and ``[...]`` classes."""
    toks: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "[":
            j = i + 1
            if j < n and pattern[j] == "^":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            k = pattern.find("]", j)
            k = n - 1 if k < 0 else k
            toks.append(pattern[i : k + 1])
            i = k + 1
        else:
            toks.append(c)
            i += 1
    return toks


def domain_forms(pattern: str) -> list[str]:
    """``pattern`` and the other spellings of the same name as names are stored:
    a Unicode label as IDNA (``xn--...``) and as its UTF-8 bytes in ``\\DDD``
    form; an ``xn--`` label as the ``\\DDD`` form of its Unicode. Glob labels
    (``*``) stay as they are."""
    from encodings import idna

    from egresswatch.decode.dnsname import presentation

    labels = pattern.split(".")
    ascii_form, byte_form = [], []
    for label in labels:
        if any(c in label for c in "*?["):
            ascii_form.append(label)
            byte_form.append(label)
            continue
        try:
            if not label.isascii():
                ascii_form.append(idna.ToASCII(label).decode("ascii"))
                byte_form.append(presentation(label.lower().encode("utf-8")))
                continue
            if label.lower().startswith("xn--"):
                ascii_form.append(label)
                byte_form.append(presentation(idna.ToUnicode(label).encode("utf-8")))
                continue
        except UnicodeError:
            pass
        ascii_form.append(label)
        byte_form.append(label)
    return list(dict.fromkeys([pattern, ".".join(ascii_form), ".".join(byte_form)]))


def domain_conditions(pattern: str) -> list[tuple[str, list[Any]]]:
    """SQL conditions, one per name column (rname, ralt) and spelling of the
    name (:func:`domain_forms`), matching ``pattern`` (GLOB, case-insensitive)
    against dst_name, qname or sni. Names are stored reversed, so a suffix
    pattern becomes an index range."""
    out: list[tuple[str, list[Any]]] = []
    for form in domain_forms(pattern):
        out += _conditions(form)
    return out


def _conditions(pattern: str) -> list[tuple[str, list[Any]]]:
    toks = _glob_tokens(pattern.lower())
    rev = "".join(reversed(toks))
    prefix = ""
    for t in reversed(toks):
        if t in ("*", "?") or t.startswith("["):
            break
        prefix += t
    out: list[tuple[str, list[Any]]] = []
    for col in ("rname", "ralt"):
        if prefix and ord(prefix[-1]) < 0x10FFFF:
            hi = prefix[:-1] + chr(ord(prefix[-1]) + 1)
            out.append((f"({col} >= ? AND {col} < ? AND {col} GLOB ?)", [prefix, hi, rev]))
        else:
            out.append((f"{col} GLOB ?", [rev]))
    return out


def domain_condition(pattern: str) -> tuple[str, list[Any]]:
    """One SQL condition: any of :func:`domain_conditions`."""
    conds = domain_conditions(pattern)
    return "(" + " OR ".join(c for c, _ in conds) + ")", [p for _, ps in conds for p in ps]
