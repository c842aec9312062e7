"""Registrable domains ("eTLD+1") from the Public Suffix List.

The only module that imports ``publicsuffixlist`` (a bundled snapshot, never
fetched at run time); without the package, a short list of common multi-label
suffixes stands in. Pure: no I/O, no clock.
"""

from __future__ import annotations

try:  # a maintained PSL snapshot, bundled, never fetched at run time
    from publicsuffixlist import PublicSuffixList

    _PSL: PublicSuffixList | None = PublicSuffixList()
except ImportError:  # pragma: no cover - fallback when the package is missing
    _PSL = None

# Used only without the publicsuffixlist package: common multi-label suffixes.
_FALLBACK_SUFFIXES = frozenset(
    "co.uk org.uk ac.uk gov.uk com.au net.au org.au co.jp ne.jp co.nz co.za com.br com.cn com.tw "
    "com.mx co.in co.kr github.io herokuapp.com cloudfront.net amazonaws.com s3.amazonaws.com "
    "appspot.com azurewebsites.net blogspot.com netlify.app vercel.app pages.dev workers.dev "
    "web.app firebaseapp.com fly.dev onrender.com in-addr.arpa ip6.arpa home.arpa".split()
)


def normalize_name(name: str) -> str:
    """Lower-case, without the trailing dot."""
    return name.strip().rstrip(".").lower()


def registrable_domain(name: str) -> str:
    """The registrable domain ("eTLD+1") of ``name``: ``a.b.example.co.uk`` ->
    ``example.co.uk``, ``x.github.io`` -> ``x.github.io``. An unknown top-level
    domain counts as a one-label suffix (``a.pirate.sea`` -> ``pirate.sea``);
    a bare public suffix is returned as is."""
    n = normalize_name(name)
    if not n:
        return n
    if _PSL is not None:
        return _PSL.privatesuffix(n) or n
    labels = n.split(".")
    take = 3 if ".".join(labels[-2:]) in _FALLBACK_SUFFIXES else 2
    return ".".join(labels[-take:])


def has_public_suffix(name: str) -> bool:
    """True when the name ends in a suffix on the Public Suffix List."""
    n = normalize_name(name)
    if _PSL is not None:
        return _PSL.publicsuffix(n, accept_unknown=False) is not None
    return "." in n  # pragma: no cover - fallback is permissive
