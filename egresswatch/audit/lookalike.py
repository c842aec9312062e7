"""Lookalike MCP package and image names: edit distance, confusable characters
(homoglyphs incl. Cyrillic/Greek, digit-for-letter, separator games) and
imitated publishers, against the well-known list in data/wellknown_mcp.json."""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

_CONFUSABLE = str.maketrans(
    {
        # Cyrillic
        "а": "a",
        "в": "b",
        "с": "c",
        "е": "e",
        "һ": "h",
        "і": "l",
        "ї": "l",
        "ј": "j",
        "к": "k",
        "м": "m",
        "н": "h",
        "о": "o",
        "р": "p",
        "ԛ": "q",
        "ѕ": "s",
        "т": "t",
        "у": "y",
        "х": "x",
        "ԁ": "d",
        "ԝ": "w",
        "ɡ": "g",
        "ո": "n",
        "ս": "u",
        # Greek
        "α": "a",
        "β": "b",
        "ε": "e",
        "ι": "l",
        "κ": "k",
        "ν": "v",
        "ο": "o",
        "ρ": "p",
        "τ": "t",
        "υ": "u",
        "χ": "x",
        # digits and look-alike latin
        "0": "o",
        "1": "l",
        "3": "e",
        "4": "a",
        "5": "s",
        "7": "t",
        "8": "b",
        "i": "l",
        "|": "l",
        "!": "l",
        # separators
        "_": "-",
        ".": "-",
        " ": "-",
        "‐": "-",
        "‑": "-",
        "‒": "-",
        "–": "-",
        "—": "-",
        "−": "-",
    }
)


def skeleton(name: str) -> str:
    s = unicodedata.normalize("NFKC", name).lower()
    s = "".join(c for c in unicodedata.normalize("NFKD", s) if not unicodedata.combining(c))
    s = s.translate(_CONFUSABLE).replace("rn", "m").replace("vv", "w")
    return re.sub(r"-+", "-", s)


def levenshtein(a: str, b: str, cap: int = 3) -> int:
    """Edit distance, or ``cap`` when it is at least ``cap``."""
    if abs(len(a) - len(b)) >= cap:
        return cap
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        if min(cur) >= cap:
            return cap
        prev = cur
    return min(prev[-1], cap)


@dataclass(frozen=True, slots=True)
class WellKnown:
    packages: dict[str, frozenset[str]]  # ecosystem -> names
    publishers: frozenset[str]


@lru_cache(maxsize=1)
def wellknown() -> WellKnown:
    data = json.loads(resources.files("egresswatch").joinpath("data/wellknown_mcp.json").read_text("utf-8"))
    pk = {eco: frozenset(norm(eco, n) for n in data.get(eco, [])) for eco in ("npm", "pypi", "docker")}
    return WellKnown(pk, frozenset(p.lower() for p in data.get("publishers", [])))


def norm(eco: str, name: str) -> str:
    if eco == "pypi":  # PEP 503: these spellings are the same project
        return re.sub(r"[-_.]+", "-", name.lower())
    if eco == "docker":
        name = name.lower().removeprefix("docker.io/").removeprefix("library/")
    return name


def _scope(name: str) -> str | None:
    if name.startswith("@") and "/" in name:
        return name.split("/", 1)[0].lower()
    if "/" in name:  # docker: registry/owner
        return name.rsplit("/", 1)[0].lower()
    return None


def _core(name: str) -> str:
    bare = name.rsplit("/", 1)[-1].lower()
    words = [
        w for w in re.split(r"[-_.]+", bare) if w not in ("mcp", "server", "model", "context", "protocol")
    ]
    return "-".join(words)


def lookalike(eco: str, name: str) -> tuple[str, str, str] | None:
    """(severity, what it looks like, why) when ``name`` imitates a well-known
    package or publisher; None for a well-known name or an unrelated one."""
    wk = wellknown()
    known = wk.packages.get(eco, frozenset())
    n = norm(eco, name)
    if n in known:
        return None
    sk = skeleton(n)
    for k in sorted(known):
        if skeleton(k) == sk:
            return "high", k, "confusable spelling: homoglyphs, digits or separators"
    for k in sorted(known):
        limit = 2 if len(k) >= 8 else 1 if len(k) >= 5 else 0
        d = levenshtein(n, k)
        if d <= limit:
            return "high", k, f"{d} edit{'s' if d > 1 else ''} away"
    scope = _scope(n)
    if scope and scope not in wk.publishers:
        s_bare = scope.lstrip("@")
        for p in sorted(wk.publishers):
            p_bare = p.lstrip("@")
            if skeleton(s_bare) == skeleton(p_bare) or (
                len(p_bare) >= 5 and levenshtein(s_bare, p_bare) <= 2
            ):
                return "high", p, f"publisher {scope} imitates {p}"
            short, longer = sorted((s_bare, p_bare), key=len)
            if len(short) >= 6 and longer.startswith(short) and longer[len(short)] in "-_.":
                return "high", p, f"publisher {scope} imitates {p}"
    core = _core(n)
    if len(core) >= 4:
        for k in sorted(known):
            if _core(k) == core and _scope(k) != scope:
                return "medium", k, "same name as a well-known server from another publisher"
    return None
