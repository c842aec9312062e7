"""Recognise credentials in MCP server definitions and mask them for display.

A masked value shows at most the first 4 characters of a well-known kind
prefix plus the length (``ghp_…(40 chars)``); generic secrets show only the
length. ``redact()`` masks every secret inside free text (command lines,
URLs) so nothing printed by ``servers`` or ``audit`` can leak a value.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit


@dataclass(frozen=True, slots=True)
class SecretHit:
    kind: str  # human name, e.g. "GitHub token"
    masked: str  # safe to print


# (kind, length of the kind prefix that may be shown, pattern). More specific first.
_PATTERNS: tuple[tuple[str, int, re.Pattern[str]], ...] = tuple(
    (kind, prefix, re.compile(rx))
    for kind, prefix, rx in (
        (
            "private key",
            0,
            r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----[\s\S]*?(?:-----END[^-]*-----|$)",
        ),
        ("AWS access key id", 4, r"\b(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}\b"),
        ("GitHub token", 4, r"\bgh[pousr]_[A-Za-z0-9]{30,255}\b"),
        ("GitHub token", 4, r"\bgithub_pat_[A-Za-z0-9_]{22,255}\b"),
        ("GitLab token", 4, r"\bglpat-[A-Za-z0-9_\-]{20,}"),
        ("Anthropic API key", 4, r"\bsk-ant-[A-Za-z0-9_\-]{20,}"),
        ("OpenAI API key", 4, r"\bsk-(?:proj|svcacct|admin)-[A-Za-z0-9_\-]{20,}"),
        ("Stripe key", 4, r"\b(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,}\b"),
        ("OpenAI API key", 3, r"\bsk-[A-Za-z0-9]{20,}\b"),
        ("Slack token", 4, r"\bxox[abprse]-[A-Za-z0-9\-]{10,}"),
        ("Slack webhook", 0, r"https://hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9_/\-]+"),
        ("Google API key", 4, r"\bAIza[0-9A-Za-z_\-]{35}\b"),
        ("Stripe webhook secret", 4, r"\bwhsec_[A-Za-z0-9]{20,}\b"),
        ("npm token", 4, r"\bnpm_[A-Za-z0-9]{36}\b"),
        ("Hugging Face token", 3, r"\bhf_[A-Za-z0-9]{30,}\b"),
    )
)
# scheme://user:password@host  (password not a ${...} reference)
_URL_PASSWORD = re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.\-]*://[^\s:/@]*:)([^\s@/]+)(@)")
_REFERENCE = re.compile(
    r"^\s*(?:\$\{[^}]*\}|\$[A-Za-z_][A-Za-z0-9_]*|%[A-Za-z_][A-Za-z0-9_]*%|\{\{[^}]*\}\})\s*$"
)
_REF_ANYWHERE = re.compile(r"\$\{[^}]*\}|\$[A-Za-z_][A-Za-z0-9_]*|\{\{[^}]*\}\}")
_SECRET_WORDS = frozenset(
    "TOKEN SECRET PASSWORD PASSWD PWD PASS KEY APIKEY CREDENTIAL CREDENTIALS AUTH AUTHORIZATION "
    "PAT BEARER COOKIE SESSION PRIVATEKEY ACCESSKEY CLIENTSECRET".split()
)
_QUERY_SECRET = re.compile(
    r"(?i)(token|secret|password|passwd|api[_-]?key|apikey|access[_-]?key|auth|sig|key)$"
)
_PLACEHOLDER = re.compile(
    r"(?i)^(?:<[^>]*>|x{4,}|\*{3,}|your[-_ ].*|changeme|placeholder|example|redacted|none|null|true|false|\.\.\.)$"
)


def mask(value: str, shown: int = 0) -> str:
    """``value`` reduced to its first ``shown`` (at most 4) characters and its length."""
    return f"{value[: min(shown, 4)]}…({len(value)} chars)"


def is_reference(value: str) -> bool:
    """``${env:X}``, ``${input:x}``, ``$X``, ``%X%`` or ``{{x}}``: a pointer, not a secret."""
    return bool(_REFERENCE.match(value))


def entropy(s: str) -> float:
    if not s:
        return 0.0
    n = len(s)
    return -sum(c / n * math.log2(c / n) for c in Counter(s).values())


def secret_name(key: str) -> bool:
    """True when an env/header/flag name says it holds a credential."""
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", key)
    words = [w.upper() for w in re.split(r"[^A-Za-z0-9]+", spaced) if w]
    if any(w in _SECRET_WORDS for w in words):
        return True
    joined = "".join(words)
    return joined.endswith(("APIKEY", "TOKEN", "SECRET", "PASSWORD"))


def _looks_random(value: str) -> bool:
    v = value.strip()
    if len(v) < 12 or _PLACEHOLDER.match(v) or v.startswith(("/", "~", "./", "../")):
        return False
    if re.fullmatch(r"[a-z]+(?:[-_][a-z]+)*", v):  # a plain word or slug
        return False
    return entropy(v) >= 3.0


def scan_value(value: str, key: str | None = None) -> list[SecretHit]:
    """Secrets in one value. ``key`` is its env/header/flag name when known."""
    if not value or is_reference(value):
        return []
    hits: list[SecretHit] = []
    for kind, prefix, rx in _PATTERNS:
        for m in rx.finditer(value):
            hits.append(SecretHit(kind, mask(m.group(0), prefix)))
    for m in _URL_PASSWORD.finditer(value):
        if not _REF_ANYWHERE.fullmatch(m.group(2)):
            hits.append(SecretHit("password in URL", mask(m.group(2))))
    hits += _scan_url_query(value)
    if not hits and key is not None and secret_name(key):
        v = value
        if key.lower() == "authorization" or v.lower().startswith(("bearer ", "basic ", "token ")):
            v = v.split(None, 1)[-1]
        if not _REF_ANYWHERE.search(v) and _looks_random(v):
            hits.append(SecretHit("high-entropy credential", mask(v)))
    return hits


def _scan_url_query(value: str) -> list[SecretHit]:
    hits: list[SecretHit] = []
    for m in re.finditer(r"https?://\S+", value):
        try:
            query = urlsplit(m.group(0)).query
        except ValueError:
            continue
        for k, v in parse_qsl(query, keep_blank_values=False):
            if _QUERY_SECRET.search(k) and not is_reference(v) and _looks_random(v):
                if not any(rx.search(v) for _, _, rx in _PATTERNS):
                    hits.append(SecretHit(f"credential (URL parameter {k})", mask(v)))
    return hits


def redact(text: str) -> str:
    """``text`` with every recognisable secret replaced by its mask."""
    for _, prefix, rx in _PATTERNS:
        text = rx.sub(lambda m, n=prefix: mask(m.group(0), n), text)  # type: ignore[misc]
    text = _URL_PASSWORD.sub(
        lambda m: (
            m.group(0) if _REF_ANYWHERE.fullmatch(m.group(2)) else m.group(1) + mask(m.group(2)) + m.group(3)
        ),
        text,
    )

    def _query(m: re.Match[str]) -> str:
        k, v = m.group(2), m.group(3)
        if _QUERY_SECRET.search(k) and not is_reference(v) and _looks_random(v):
            return f"{m.group(1)}{k}={mask(v)}"
        return m.group(0)

    return re.sub(r"([?&])([A-Za-z0-9_.\-]+)=([^&#\s]+)", _query, text)


def redact_argv(args: tuple[str, ...] | list[str]) -> list[str]:
    """Mask secrets in arguments, including the value after a secret-named flag
    (``--api-key VALUE``, ``--token=VALUE``) and ``NAME=VALUE`` assignments."""
    out: list[str] = []
    prev_secret_flag = False
    for a in args:
        if prev_secret_flag and not a.startswith("-") and not is_reference(a):
            red = redact(a)
            out.append(red if red != a else mask(a))
            prev_secret_flag = False
            continue
        prev_secret_flag = False
        m = re.match(r"^(-{0,2}[A-Za-z_][A-Za-z0-9_.\-]*)=(.*)$", a, re.S)
        if m and secret_name(m.group(1).lstrip("-")) and m.group(2) and not is_reference(m.group(2)):
            out.append(f"{m.group(1)}={mask(m.group(2))}")
            continue
        if a.startswith("-") and "=" not in a and secret_name(a.lstrip("-")):
            prev_secret_flag = True
        out.append(redact(a))
    return out


def scan_args(args: tuple[str, ...]) -> list[tuple[str, SecretHit]]:
    """(argument label, hit) for secrets passed on the command line."""
    found: list[tuple[str, SecretHit]] = []
    flag: str | None = None
    for i, a in enumerate(args):
        label = f"argument {i + 1}"
        key: str | None = None
        value = a
        m = re.match(r"^(-{0,2}[A-Za-z_][A-Za-z0-9_.\-]*)=(.*)$", a, re.S)
        if m:
            key, value = m.group(1).lstrip("-"), m.group(2)
            label = f"argument {m.group(1)}"
        elif flag is not None and not a.startswith("-"):
            key, label = flag, f"argument after --{flag}"
        flag = a.lstrip("-") if a.startswith("-") and "=" not in a and secret_name(a.lstrip("-")) else None
        for hit in scan_value(value, key):
            found.append((label, hit))
    return found
