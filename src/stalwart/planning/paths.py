"""What a reference path can reach in a pydantic model, worked out without running anything.

`${steps.a.output.vendor}` reads the JSON dump of step a's output model, and `${input.x}` the
dump of the workflow's input model; `path_miss` walks a path through the model's annotations
and says where it first falls off. Conservative: anything it cannot be sure of (a field of type
`Any`, a `dict`, a model that accepts extra fields or serializes itself its own way, a union
where any arm has the field) accepts the rest of the path, so a valid reference is never
refused.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from pathlib import PurePath
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, RootModel

MissKind = Literal["field", "index", "leaf"]

# Types whose JSON dump is a string, a number, a boolean or null: nothing below them.
_SCALARS: dict[type, str] = {
    bool: "a boolean",
    int: "a number",
    float: "a number",
    Decimal: "a number",
    str: "a string",
    bytes: "a string",
    datetime: "a string (a datetime)",
    date: "a string (a date)",
    time: "a string (a time)",
    timedelta: "a string (a duration)",
    UUID: "a string (a UUID)",
    PurePath: "a string (a path)",
    type(None): "null",
}
_LISTS = (list, tuple, set, frozenset, Sequence, typing.Sequence)
_UNIONS = (typing.Union, types.UnionType)


def closest(name: str, known: Iterable[str]) -> str | None:
    """The known name closest to `name`, if one is close enough to suggest (difflib)."""
    found = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return found[0] if found else None


@dataclasses.dataclass(frozen=True, slots=True)
class PathMiss:
    """Where a path falls off a model: `segment` is not there, after the parts in `at`.

    `kind` is "field" (no field of that name: `known` lists the fields), "index" (a list, which
    takes a number: `known` is empty) or "leaf" (a scalar, `what` says which: nothing below it).
    """

    segment: str
    at: tuple[str, ...]
    kind: MissKind
    known: tuple[str, ...] = ()
    what: str = ""

    def suggestion(self) -> str | None:
        """The known field closest to the missing one, if one is close (difflib)."""
        return closest(self.segment, self.known)

    def describe(self, subject: str) -> str:
        """A sentence about `subject` (e.g. "the output of step a (Invoice)") and the miss."""
        where = f"{'.'.join(self.at)} of {subject}" if self.at else subject
        if self.kind == "index":
            return (
                f"{where} is a list: index it with a number "
                f"({'.'.join((*self.at, '0', self.segment))})"
            )
        if self.kind == "leaf":
            return f"{where} is {self.what}: it has no field {self.segment!r}"
        text = f"{where} has no field {self.segment!r}"
        best = self.suggestion()
        if best is not None:
            text += f"; did you mean `{best}`?"
        if self.known:
            shown = ", ".join(self.known[:12]) + (", ..." if len(self.known) > 12 else "")
            text += f" (fields: {shown})"
        return text


def path_miss(annotation: Any, parts: Sequence[str]) -> PathMiss | None:
    """Where `parts` first fails to exist in the JSON dump of a value of type `annotation`, or
    None when the path exists or cannot be known not to."""
    return _walk(annotation, tuple(parts), 0)


def model_fields(model: type[BaseModel]) -> tuple[str, ...]:
    """The keys of a model's JSON dump as far as they are known (fields and computed fields)."""
    names = list(model.model_fields) + list(model.model_computed_fields)
    return tuple(dict.fromkeys(names))


def _walk(annotation: Any, parts: tuple[str, ...], depth: int) -> PathMiss | None:
    if depth >= len(parts):
        return None
    annotation = _unwrap(annotation)
    origin = typing.get_origin(annotation)
    if origin in _UNIONS:
        return _walk_union(typing.get_args(annotation), parts, depth)
    if origin is Literal:
        return _leaf(parts, depth, "a literal value")
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return _walk_model(annotation, parts, depth)
    if origin is not None and isinstance(origin, type):
        if issubclass(origin, Mapping):
            args = typing.get_args(annotation)
            return _walk(args[1], parts, depth + 1) if len(args) == 2 else None
        if issubclass(origin, (list, tuple, set, frozenset)) or origin in _LISTS:
            return _walk_list(origin, typing.get_args(annotation), parts, depth)
        return None
    if isinstance(annotation, type):
        if issubclass(annotation, enum.Enum):
            return _leaf(parts, depth, f"an enum value ({annotation.__name__})")
        for scalar, what in _SCALARS.items():
            if issubclass(annotation, scalar):
                return _leaf(parts, depth, what)
        if annotation in (list, tuple, set, frozenset):
            return _walk_list(annotation, (), parts, depth)
    return None  # Any, dict, dataclasses, TypedDicts, forward references: not known here


def _unwrap(annotation: Any) -> Any:
    """The type under `Annotated[...]`, `NewType` and `type X = ...` aliases."""
    while True:
        if typing.get_origin(annotation) is typing.Annotated:
            args = typing.get_args(annotation)
            if any(_serializes(meta) for meta in args[1:]):
                return Any  # a custom serializer decides the JSON: not known
            annotation = args[0]
        elif isinstance(annotation, typing.NewType):
            annotation = annotation.__supertype__
        elif hasattr(annotation, "__value__") and not isinstance(annotation, type):
            annotation = annotation.__value__
        else:
            return annotation


def _serializes(meta: Any) -> bool:
    return type(meta).__name__ in ("PlainSerializer", "WrapSerializer")


def _walk_union(arms: tuple[Any, ...], parts: tuple[str, ...], depth: int) -> PathMiss | None:
    misses = []
    for arm in arms:
        miss = _walk(arm, parts, depth)
        if miss is None:
            return None  # one arm has it: the reference may well be valid
        misses.append(miss)
    # Every arm misses: report where the path goes furthest, with every field known there.
    deepest = max(len(m.at) for m in misses)
    at_end = [m for m in misses if len(m.at) == deepest]
    fields = [m for m in at_end if m.kind == "field"]
    if fields:
        known = tuple(dict.fromkeys(name for m in fields for name in m.known))
        return dataclasses.replace(fields[0], known=known)
    return at_end[0]


def _walk_model(model: type[BaseModel], parts: tuple[str, ...], depth: int) -> PathMiss | None:
    if issubclass(model, RootModel):
        root = model.model_fields.get("root")
        return _walk(root.annotation, parts, depth) if root is not None else None
    decorators = model.__pydantic_decorators__
    if decorators.model_serializers or not model.__pydantic_complete__:
        return None  # the model writes its own JSON, or is not built yet: not known
    segment = parts[depth]
    by_name: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        # Pydantic keeps a field's `Annotated` extras apart from its type.
        custom = any(_serializes(meta) for meta in info.metadata)
        for key in (name, info.alias, info.serialization_alias):
            if key:
                by_name.setdefault(key, Any if custom else info.annotation)
    for name, computed in model.model_computed_fields.items():
        by_name.setdefault(name, computed.return_type)
        if computed.alias:
            by_name.setdefault(computed.alias, computed.return_type)
    if segment not in by_name:
        if model.model_config.get("extra") == "allow":
            return None  # extra fields are kept in its dump: any name may be there
        return PathMiss(segment, parts[:depth], "field", model_fields(model))
    serialized = {field for d in decorators.field_serializers.values() for field in d.info.fields}
    if segment in serialized or "*" in serialized:
        return None  # a field serializer decides that field's JSON
    return _walk(by_name[segment], parts, depth + 1)


def _walk_list(
    origin: Any, args: tuple[Any, ...], parts: tuple[str, ...], depth: int
) -> PathMiss | None:
    segment = parts[depth]
    if not segment.isdigit():
        return PathMiss(segment, parts[:depth], "index")
    if origin is tuple and args and args[-1] is not Ellipsis:
        index = int(segment)
        return _walk(args[index], parts, depth + 1) if index < len(args) else None
    return _walk(args[0], parts, depth + 1) if args else None


def _leaf(parts: tuple[str, ...], depth: int, what: str) -> PathMiss:
    return PathMiss(parts[depth], parts[:depth], "leaf", what=what)
