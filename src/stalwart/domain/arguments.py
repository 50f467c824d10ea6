"""What a step is called with: its arguments with every reference resolved.

One function for everything that needs them: the claim stores them on the step (so the job page,
`jobs show` and the API show what ran, not the template), the review of a step waiting for
approval shows them, and the executor calls the tool with the very value the claim stored.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from stalwart.domain.refs import resolve


def reference_context(job_input: Any, outputs: Mapping[str, Any]) -> dict[str, Any]:
    """The data references read: `input.*` and `steps.<id>.output.*`."""
    return {"input": job_input, "steps": {key: {"output": value} for key, value in outputs.items()}}


def step_arguments(spec: Mapping[str, Any], job_input: Any, outputs: Mapping[str, Any]) -> Any:
    """A step's arguments, resolved against the job's input and the outputs it depends on: a
    tool step's `args`; an `llm` step's `prompt` (and `system`, when it has one); an `agent`
    step's `prompt` (and `instructions`); None for the other kinds. Raises
    `UnresolvedReferenceError` when a reference points at nothing."""
    context = reference_context(job_input, outputs)
    kind = spec.get("kind", "tool")
    if kind == "tool":
        return resolve(spec.get("args") or {}, context)
    if kind == "llm":
        llm = spec.get("llm") or {}
        resolved = {"prompt": str(resolve(llm.get("prompt") or "", context))}
        if llm.get("system"):
            resolved["system"] = str(resolve(llm["system"], context))
        return resolved
    if kind == "agent":
        agent = spec.get("agent") or {}
        resolved = {"prompt": str(resolve(agent.get("prompt") or "", context))}
        if agent.get("instructions"):
            resolved["instructions"] = str(resolve(agent["instructions"], context))
        return resolved
    return None
