"""Reading plan templates from YAML files or text, with errors that name the file and field."""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from stalwart.domain.agents import AGENT_FIELDS
from stalwart.domain.plans import LLM_FIELDS, StepSpec, Template
from stalwart.errors import TemplateError
from stalwart.planning.paths import closest


def load_template(path: str | Path) -> Template:
    """Read one template from a YAML file."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise TemplateError(f"cannot read template {file}: {exc.strerror}", path=str(file)) from exc
    return parse_template(text, source=str(file))


def parse_template(text: str, *, source: str = "<string>") -> Template:
    """Parse one template from YAML text; `source` names it in errors."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise TemplateError(
            f"template {source} is not valid YAML{where}: {getattr(exc, 'problem', exc)}",
            path=source,
        ) from exc
    return template_from_data(data, source=source)


def template_from_data(data: Any, *, source: str = "<data>") -> Template:
    """Build a template from parsed data, naming every bad field."""
    if not isinstance(data, dict):
        raise TemplateError(
            f"template {source} must be a mapping with 'name' and 'steps'", path=source
        )
    try:
        return Template.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False, include_input=False):
            field = _field_path(data, err["loc"])
            if err["type"] == "extra_forbidden":
                problems.append(f"{field}: {_unknown_field(data, err['loc'])}")
            else:
                problems.append(f"{field}: {err['msg']}")
        raise TemplateError(
            f"template {source} is not valid: " + "; ".join(problems),
            path=source,
            problems=problems,
        ) from exc


def _field_path(data: Any, loc: tuple[Any, ...]) -> str:
    """Render a pydantic location, naming steps by id: steps[fetch].timeout_seconds."""
    parts: list[str] = []
    current = data
    for item in loc:
        if isinstance(item, int):
            step_id = (
                current[item].get("id")
                if isinstance(current, list)
                and len(current) > item
                and isinstance(current[item], dict)
                else None
            )
            parts[-1] = f"{parts[-1]}[{step_id or item}]" if parts else f"[{item}]"
            current = current[item] if isinstance(current, list) and len(current) > item else None
        else:
            parts.append(str(item))
            current = current.get(item) if isinstance(current, dict) else None
    return ".".join(parts) or "<root>"


def _unknown_field(data: Any, loc: tuple[Any, ...]) -> str:
    """ "step fetch has no field `timeout`; did you mean `timeout_seconds`?" for an unknown key:
    the step named by its id (in words: brackets do not survive every terminal's markup) and
    the closest field the model at that place has (difflib)."""
    name = str(loc[-1])
    owner = "the template"
    step = _step_of(data, loc)
    inside = [str(part) for part in loc[2:-1] if not isinstance(part, int)] if step else []
    if step is not None:
        owner = f"step {step}" if not inside else f"{'.'.join(inside)} of step {step}"
    elif len(loc) > 1:
        owner = ".".join(str(part) for part in loc[:-1] if not isinstance(part, int))
    text = f"{owner} has no field `{name}`"
    known = _known_fields(loc[:-1])
    near = closest(name, known)
    found = [near] if near else []
    if not found:  # `timeout` for `timeout_seconds`: a prefix is as good a hint
        found = [k for k in known if k.startswith(f"{name}_")][:1]
    if found:
        text += f"; did you mean `{found[0]}`?"
    elif known:
        text += f" (fields: {', '.join(sorted(known))})"
    return text


def _step_of(data: Any, loc: tuple[Any, ...]) -> str | None:
    """The id (or index) of the step a location is inside, or None."""
    if len(loc) < 3 or loc[0] != "steps" or not isinstance(loc[1], int):
        return None
    steps = data.get("steps") if isinstance(data, dict) else None
    item = steps[loc[1]] if isinstance(steps, list) and len(steps) > loc[1] else None
    step_id = item.get("id") if isinstance(item, dict) else None
    return str(step_id) if step_id else f"at index {loc[1]}"


def _known_fields(loc: tuple[Any, ...]) -> list[str]:
    """The fields the model at a location accepts ([] when it cannot be told)."""
    model: type[BaseModel] | None = Template
    for part in loc:
        if isinstance(part, int) or model is None:
            continue  # a list item: the same model as the list's
        info = model.model_fields.get(str(part))
        model = _model_in(info.annotation) if info is not None else None
    if model is None:
        return []
    names = list(model.model_fields)
    if model is StepSpec:  # llm and agent fields are written on the step
        names += sorted(LLM_FIELDS | AGENT_FIELDS)
    return names


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside `X`, `X | None` or `list[X]`, if there is exactly one."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    found = {m for arg in typing.get_args(annotation) if (m := _model_in(arg)) is not None}
    return found.pop() if len(found) == 1 else None
