"""What the database can keep: the rules every way in (`Client.submit`, the API, webhooks, the
UI) checks before anything reaches the store. Pure.

- **Storable text** has no NUL (U+0000: PostgreSQL's text and jsonb cannot hold it) and no lone
  surrogate (U+D800-U+DFFF: not encodable as UTF-8, so no database and no JSON answer can hold
  it).
- **Storable JSON** is what JSON can write: objects, arrays, strings and keys of storable text,
  finite numbers (no NaN or Infinity: JSON has none), booleans and null; nothing so deeply
  nested or so long an integer that Python cannot encode it.
- **Keys** (tenant, `Idempotency-Key`, reviewer and key names) are storable text without
  control characters (tabs, newlines).
- **Ids** (of jobs, reviews, dead letters) are `ID_PATTERN`; stored integers (event ids) are at
  most `MAX_INT64`.

A refused value raises `InputValidationError` naming the field (`input.items.2.name`), never a
driver's error.
"""

from __future__ import annotations

import math
import re
import unicodedata
from typing import Any

from stalwart.errors import InputValidationError
from stalwart.types import dumps

# Both databases keep integers (event ids, cursors) in 64 signed bits.
MAX_INT64 = 2**63 - 1
# JSON nested deeper than Python's encoder and decoder go (about 1000 levels) is refused; no
# input needs a tenth of that.
MAX_DEPTH = 100
# Python prints integers of at most 4300 digits (about 14,000 bits); only longer ones are tried.
INT_BITS_CHECKED = 14_000
# Ids the store makes look like `job_0mxdwc0yj4c2b5949e5e73642`; anything else cannot exist.
ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
ID_RULE = "1-64 letters, digits, '_' or '-'"
# An HTTP header's printable ASCII: the visible characters with spaces between them.
HEADER_KEY_PATTERN = r"^[!-~]([ -~]*[!-~])?$"
HEADER_KEY_RULE = "printable ASCII (no tabs, control characters or non-ASCII bytes)"


def text_problem(text: str) -> str | None:
    """What makes `text` unstorable, or None when it is storable."""
    if "\x00" in text:
        return f"contains NUL (\\u0000) at position {text.index(chr(0))}, which cannot be stored"
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            return (
                f"contains a lone surrogate ({text[exc.start]!a}) at position {exc.start}, "
                "which is not valid Unicode"
            )
    return None


def key_problem(text: str) -> str | None:
    """What makes `text` unfit for a key or a name (storable, no control characters), or None."""
    problem = text_problem(text)
    if problem is not None:
        return problem
    for position, char in enumerate(text):
        if unicodedata.category(char) == "Cc":
            return f"contains a control character ({char!a}) at position {position}"
    return None


def header_key_problem(text: str) -> str | None:
    """What makes a header's `text` unfit for a key (`HEADER_KEY_PATTERN`), or None."""
    if re.fullmatch(HEADER_KEY_PATTERN, text) is None:
        return f"must be {HEADER_KEY_RULE}"
    return None


def json_problem(value: Any) -> tuple[str, str] | None:
    """The first part of `value` that is not storable JSON, as (dotted path, what is wrong),
    or None when all of it is. Walks without recursion, so any depth is safe to check."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, str):
            problem = text_problem(item)
            if problem is not None:
                return path, problem
        elif isinstance(item, bool) or item is None:
            continue
        elif isinstance(item, int):
            if item.bit_length() > INT_BITS_CHECKED and not _printable_int(item):
                return path, "is an integer too large to store"
        elif isinstance(item, float):
            if not math.isfinite(item):
                return path, f"is {item!r}, which JSON cannot hold: send a finite number"
        elif isinstance(item, dict):
            children = []
            for key, child in item.items():
                if not isinstance(key, str | int | float | bool) and key is not None:
                    return path, f"has a key of type {type(key).__name__}; JSON keys are strings"
                name = key if isinstance(key, str) else str(key)
                problem = text_problem(name)
                if problem is not None:
                    # The key itself cannot go in a JSON answer or a log line: name it escaped.
                    shown = name.replace("\x00", "\\u0000")
                    shown = shown.encode("utf-8", "backslashreplace").decode()
                    return _join(path, shown), f"has a key that {problem}"
                children.append((_join(path, name), child))
            stack.extend(reversed(children))
        elif isinstance(item, list | tuple):
            stack.extend(reversed([(_join(path, str(n)), c) for n, c in enumerate(item)]))
        else:
            return path, f"is a {type(item).__name__}, which is not JSON"
    return None


def json_text(field: str, value: Any) -> str:
    """`value` as compact JSON text, or `InputValidationError` naming its first unstorable part
    (as `field.path`). The encoder itself finds most faults at C speed; the walk only runs to
    name the one it found."""
    try:
        text = dumps(value)
    except RecursionError:
        raise InputValidationError(
            f"{field} is nested too deeply to store as JSON (keep it under {MAX_DEPTH} levels)",
            field=field,
        ) from None
    except (ValueError, TypeError):
        text = None
    # JSON text escapes NUL as \u0000, and keeps a lone surrogate, which UTF-8 refuses.
    if text is not None and "\\u0000" not in text and _utf8(text):
        return text
    found = json_problem(value)
    if found is None:
        if text is not None:
            return text  # a backslash followed by "u0000" in a string, not a NUL
        raise InputValidationError(f"{field} is not JSON", field=field)
    path, problem = found
    where = _join(field, path)
    raise InputValidationError(f"{where} {problem}", field=where)


def check_text(field: str, text: str) -> str:
    """`text`, or `InputValidationError` naming `field` when it cannot be stored."""
    problem = text_problem(text)
    if problem is not None:
        raise InputValidationError(f"{field} {problem}", field=field)
    return text


def check_key(field: str, text: str) -> str:
    """`text`, or `InputValidationError` naming `field` when it is unfit for a key."""
    problem = key_problem(text)
    if problem is not None:
        raise InputValidationError(f"{field} {problem}", field=field)
    return text


def _join(path: str, part: str) -> str:
    return f"{path}.{part}" if path else part


def _utf8(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _printable_int(number: int) -> bool:
    try:
        str(number)
    except ValueError:
        return False
    return True
