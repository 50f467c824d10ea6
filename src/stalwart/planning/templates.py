"""Reading plan templates from YAML files or text, with errors that name the file and field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from stalwart.domain.plans import Template
from stalwart.errors import TemplateError


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
