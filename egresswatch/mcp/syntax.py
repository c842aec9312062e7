"""Config file syntax -> data: JSON with comments (JSONC), TOML, YAML.

Each loader takes the file text and a ``warn`` callback; a syntax error is
one warning line (with its line number when the parser gives one) and the
result is None. Nothing raises. The one module that imports PyYAML.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Callable
from typing import Any

import yaml

Warn = Callable[[str], None]


def strip_jsonc(text: str) -> str:
    """Remove // and /* */ comments and trailing commas outside strings; keeps
    line numbers (comments become spaces, newlines stay)."""
    out: list[str] = []
    i, n = 0, len(text)
    pending_comma: int | None = None  # index in out of a comma that may trail
    while i < n:
        c = text[i]
        if c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append(text[i : j + 1])
            pending_comma = None
            i = j + 1
        elif text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        else:
            if c == ",":
                pending_comma = len(out)
            elif c in "}]" and pending_comma is not None:
                out[pending_comma] = " "
                pending_comma = None
            elif not c.isspace():
                pending_comma = None
            out.append(c)
            i += 1
    return "".join(out)


def load_json(text: str, warn: Warn, jsonc: bool = True) -> Any:
    body = strip_jsonc(text) if jsonc else text
    if jsonc and not body.strip():
        return None  # a settings file holding only comments is valid and empty
    try:
        return json.loads(body)
    except json.JSONDecodeError as exc:
        warn(f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}")
    except RecursionError:
        warn("invalid JSON: nested too deeply")
    return None


def load_toml(text: str, warn: Warn) -> Any:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        warn(f"invalid TOML: {exc}")
    return None


def load_yaml(text: str, warn: Warn) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else 0
        warn(f"invalid YAML at line {line}: {exc.problem or exc.context}")
    except (yaml.YAMLError, RecursionError) as exc:
        warn(f"invalid YAML: {type(exc).__name__}")
    return None
