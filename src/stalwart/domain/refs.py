"""References in step arguments: `${input.path}` and `${steps.<id>.output.path}`.

A string that is exactly one reference becomes the referenced value, of any JSON type; a
reference inside a longer string is interpolated as text. `$${` writes a literal `${`.
Paths are dotted names and list indexes, looked up in plain data: nothing is evaluated.
"""

from __future__ import annotations

import re
from typing import Any

from stalwart.errors import UsageError

_REF = re.compile(r"(?<!\$)\$\{\s*([A-Za-z_][A-Za-z0-9_\-]*(?:\.[A-Za-z0-9_\-]+)*)\s*\}")
_WHOLE = re.compile(r"^\$\{\s*([A-Za-z_][A-Za-z0-9_\-]*(?:\.[A-Za-z0-9_\-]+)*)\s*\}$")
# One pass over a template string: an escaped `$${` or a reference. Substituted values are
# never rescanned, so data that contains `${` or `$${` is never read as a reference or escape.
_TOKEN = re.compile(r"\$\$\{|\$\{\s*([A-Za-z_][A-Za-z0-9_\-]*(?:\.[A-Za-z0-9_\-]+)*)\s*\}")


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()
"""Returned by `lookup` for a path that does not exist."""


class UnresolvedReferenceError(UsageError):
    """A reference points at nothing."""

    path: str


def lookup(data: Any, path: str) -> Any:
    """The value at a dotted `path` in `data`, or `MISSING`."""
    current = data
    for part in path.split("."):
        if isinstance(current, dict):
            if part not in current:
                return MISSING
            current = current[part]
        elif isinstance(current, list) and part.isdigit():
            index = int(part)
            if index >= len(current):
                return MISSING
            current = current[index]
        else:
            return MISSING
    return current


def find_refs(value: Any) -> list[str]:
    """Every reference path in a JSON value, in order of appearance."""
    found: list[str] = []
    _walk_refs(value, found)
    return found


def _walk_refs(value: Any, found: list[str]) -> None:
    if isinstance(value, str):
        found.extend(match.group(1) for match in _REF.finditer(value))
    elif isinstance(value, dict):
        for item in value.values():
            _walk_refs(item, found)
    elif isinstance(value, list):
        for item in value:
            _walk_refs(item, found)


def ref_step(path: str) -> str | None:
    """The step id a `steps.<id>...` path refers to, else None."""
    parts = path.split(".")
    if parts[0] == "steps" and len(parts) >= 2:
        return parts[1]
    return None


def has_refs(value: Any) -> bool:
    """True when the value holds at least one reference."""
    return bool(find_refs(value))


def resolve(value: Any, context: dict[str, Any], *, roots: tuple[str, ...] | None = None) -> Any:
    """Replace references in `value` with data from `context`.

    With `roots`, only references whose first segment is in `roots` are replaced; others stay
    as written (used to bind `input.*` at plan time and `steps.*` at run time).
    Raises `UnresolvedReferenceError` naming the path when a reference points at nothing.
    """
    if isinstance(value, str):
        return _resolve_str(value, context, roots)
    if isinstance(value, dict):
        return {key: resolve(item, context, roots=roots) for key, item in value.items()}
    if isinstance(value, list):
        return [resolve(item, context, roots=roots) for item in value]
    return value


def _wanted(path: str, roots: tuple[str, ...] | None) -> bool:
    return roots is None or path.split(".", 1)[0] in roots


def _get(context: dict[str, Any], path: str) -> Any:
    found = lookup(context, path)
    if found is MISSING:
        raise UnresolvedReferenceError(f"reference ${{{path}}} points at nothing", path=path)
    return found


def _resolve_str(text: str, context: dict[str, Any], roots: tuple[str, ...] | None) -> Any:
    if "${" not in text:
        return text
    # With `roots` (a partial binding), the result is resolved again later: escapes stay as
    # written and substituted data is escaped, so a `${...}` inside the data stays literal.
    partial = roots is not None
    whole = _WHOLE.match(text)
    if whole and _wanted(whole.group(1), roots):
        found = _get(context, whole.group(1))
        return _escape(found) if partial else found

    def replace(match: re.Match[str]) -> str:
        path = match.group(1)
        if path is None:  # `$${`
            return match.group(0) if partial else "${"
        if not _wanted(path, roots):
            return match.group(0)
        found = _get(context, path)
        out = found if isinstance(found, str) else _text(found)
        return _escape(out) if partial else out

    return _TOKEN.sub(replace, text)


def _escape(value: Any) -> Any:
    """`value` with every `${` in its strings written `$${`, so resolving it again is a no-op."""
    if isinstance(value, str):
        return value.replace("${", "$${")
    if isinstance(value, dict):
        return {key: _escape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_escape(item) for item in value]
    return value


def _text(value: Any) -> str:
    import json

    # JSON spelling for everything but plain numbers: true, null, {"a": 1}.
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return json.dumps(value, ensure_ascii=False)
