"""The LLM app: workflows whose steps call models, for worker-process tests.

* `classify`: one llm step answered by `local:cheap`, an OpenAI-compatible endpoint the test
  serves (`STALWART_LLM_ENDPOINTS`), priced by `STALWART_LLM_PRICES`; tenant `acme` has a daily
  budget of `$LLM_APP_DAILY_USD`. A refused call escalates the job. Alerts are appended to
  `$LLM_APP_ALERTS` as JSON lines.
* `looping`: planned by a scripted model that always writes the same plan, whose step fails as
  semantic: the job must escalate within max_replans.
* `unknown_tool`: planned by a scripted model that names a tool that does not exist: rejected
  before anything runs.
* `reviewed`: an extraction with a low confidence parks the step that consumes it for a human.
* `consensus`: a critical step asked of three scripted models, two of which agree.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from stalwart import App, Budget, ScriptedModel, SemanticError, StepSpec, Template, ToolContext


def _alert(alert: dict[str, Any]) -> None:
    path = os.environ.get("LLM_APP_ALERTS")
    if path:
        with Path(path).open("a", encoding="utf-8") as f:
            f.write(json.dumps(alert) + "\n")


app = App(on_alert=_alert)


class Label(BaseModel):
    label: str
    score: float


class Extraction(BaseModel):
    vendor: str
    amount: float
    confidence: float
    risk_flags: list[str] = []


class Args(BaseModel):
    n: int = 0


class Done(BaseModel):
    ok: bool = True


@app.tool(idempotent=True, timeout=5)
async def record(args: Args, ctx: ToolContext) -> Done:
    """Does nothing; the step after a reviewed extraction."""
    return Done()


@app.tool(idempotent=True, timeout=5)
async def always_wrong(args: Args, ctx: ToolContext) -> Done:
    """Fails its output check every time: the plan that uses it cannot succeed."""
    raise SemanticError("the answer is wrong again", code="wrong")


app.schema(Label)
app.schema(Extraction)
app.route("small", ["local:cheap"])
app.route("medium", ["scripted:reader"])
app.tenant_budget("acme", daily_usd=float(os.environ.get("LLM_APP_DAILY_USD", "1000")))

planner = ScriptedModel("planner")
planner.when(
    lambda request: "looping" in request.messages[1].content,
    {"steps": [{"id": "try", "tool": "always_wrong", "args": {"n": 1}}]},
)
planner.when(
    lambda request: "unknown_tool" in request.messages[1].content,
    {"steps": [{"id": "go", "tool": "launch_rockets", "args": {}}]},
)
app.model("scripted:planner", planner)
app.route("large", ["scripted:planner"])

reader = ScriptedModel(
    "reader", default={"vendor": "acme", "amount": 12.5, "confidence": 0.4, "risk_flags": []}
)
app.model("scripted:reader", reader)
for name, answer in (
    ("a", {"label": "spam", "score": 0.9}),
    ("b", {"label": "Spam ", "score": 0.9}),
    ("c", {"label": "ham", "score": 0.2}),
):
    app.model(f"scripted:{name}", ScriptedModel(name, default=answer))

app.workflow(
    "classify",
    input=Args,
    templates=[
        Template(
            name="classify",
            steps=[
                StepSpec(
                    id="label",
                    kind="llm",
                    llm={
                        "prompt": "Classify message number ${input.n} as spam or ham.",
                        "output": "Label",
                        "purpose": "classification",
                        "max_tokens": 40,
                    },
                )
            ],
        )
    ],
    budget=Budget(on_exceeded="escalate"),
)
app.workflow(
    "looping",
    input=Args,
    templates=[],
    planner="llm",
    max_replans=2,
    allowed_tools=["always_wrong"],
)
app.workflow("unknown_tool", input=Args, templates=[], planner="llm")
app.workflow(
    "reviewed",
    input=Args,
    review_confidence=0.8,
    templates=[
        Template(
            name="reviewed",
            steps=[
                StepSpec(
                    id="extract",
                    kind="llm",
                    llm={
                        "prompt": "Extract invoice ${input.n}",
                        "output": "Extraction",
                        "purpose": "extraction",
                        "tier": "medium",
                    },
                ),
                StepSpec(id="book", tool="record", args={"n": 1}, depends_on=["extract"]),
            ],
        )
    ],
)
app.workflow(
    "consensus",
    input=Args,
    templates=[
        Template(
            name="consensus",
            steps=[
                StepSpec(
                    id="vote",
                    kind="llm",
                    llm={
                        "prompt": "Classify ${input.n}",
                        "output": "Label",
                        "consensus": 3,
                        "consensus_models": ["scripted:a", "scripted:b", "scripted:c"],
                    },
                )
            ],
        )
    ],
)
