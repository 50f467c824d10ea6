"""The agent app: `agent` steps in worker processes, their model served by the test's local
provider server (tests/fakes/provider_server.py) over the OpenAI protocol as `local:cheap`
(`STALWART_LLM_ENDPOINTS`, priced by `STALWART_LLM_PRICES`).

Every tool execution appends one JSON line `{tool, key, job, pid}` to `$AGENT_APP_LOG` before it
does anything else (so executions whose commit never happened are counted too), and records its
effect with `ctx.on_commit` into the test's own table
`agent_effects (job TEXT, tool TEXT, call_key TEXT)` (the test creates it): a row there is an
effect that committed with its call.

Tools (arguments `{"label": str}`): `tool_a`, `tool_b`, `tool_c` answer at once (idempotent);
`slow_idem` (idempotent) and `slow_write` (not idempotent, no reconcile function) block until the
file `$AGENT_APP_GATE` exists, so that a test can kill their worker mid-call.

* `agent_kill`: one agent step offered every tool; what it calls is the test's responder's
  business (the job's `mode` is in the prompt).
* `agent_budget`: one agent step offered `tool_a` and `tool_b`, small turns (`max_tokens` 32);
  tenant `acme` has a daily budget of `$AGENT_APP_DAILY_USD`, and a refused turn escalates the
  job.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

from pydantic import BaseModel

from stalwart import App, Budget, ToolContext

app = App()


class Task(BaseModel):
    mode: str = "plain"
    n: int = 0


class Label(BaseModel):
    label: str


class Done(BaseModel):
    tool: str
    label: str
    key: str


def _executed(tool: str, ctx: ToolContext) -> None:
    path = os.environ.get("AGENT_APP_LOG")
    if path:
        line = {"tool": tool, "key": ctx.idempotency_key, "job": ctx.job_id, "pid": os.getpid()}
        with Path(path).open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(line) + "\n")


def _effect(tool: str, args: Label, ctx: ToolContext) -> Done:
    ctx.on_commit(
        "INSERT INTO agent_effects (job, tool, call_key) VALUES (?, ?, ?)",
        (ctx.job_id, tool, ctx.idempotency_key),
    )
    return Done(tool=tool, label=args.label, key=ctx.idempotency_key)


async def _gate() -> None:
    gate = Path(os.environ["AGENT_APP_GATE"])
    while not await asyncio.to_thread(gate.exists):  # noqa: ASYNC110 - a file the test makes
        await asyncio.sleep(0.05)


@app.tool(idempotent=True, timeout=30)
async def tool_a(args: Label, ctx: ToolContext) -> Done:
    """The first thing to do."""
    _executed("tool_a", ctx)
    return _effect("tool_a", args, ctx)


@app.tool(idempotent=True, timeout=30)
async def tool_b(args: Label, ctx: ToolContext) -> Done:
    """The second thing to do."""
    _executed("tool_b", ctx)
    return _effect("tool_b", args, ctx)


@app.tool(idempotent=True, timeout=30)
async def tool_c(args: Label, ctx: ToolContext) -> Done:
    """The third thing to do."""
    _executed("tool_c", ctx)
    return _effect("tool_c", args, ctx)


@app.tool(idempotent=True, timeout=120)
async def slow_idem(args: Label, ctx: ToolContext) -> Done:
    """A slow idempotent thing: waits for the gate."""
    _executed("slow_idem", ctx)
    await _gate()
    return _effect("slow_idem", args, ctx)


@app.tool(idempotent=False, timeout=120)
async def slow_write(args: Label, ctx: ToolContext) -> Done:
    """A slow write that is not idempotent: waits for the gate."""
    _executed("slow_write", ctx)
    await _gate()
    return _effect("slow_write", args, ctx)


app.route("small", ["local:cheap"])
app.tenant_budget("acme", daily_usd=float(os.environ.get("AGENT_APP_DAILY_USD", "1000")))

app.workflow(
    "agent_kill",
    input=Task,
    templates=[
        {
            "name": "agent_kill",
            "steps": [
                {
                    "id": "agent",
                    "kind": "agent",
                    "prompt": "Mode ${input.mode}: do the three things in order, then answer.",
                    "tools": ["tool_a", "tool_b", "tool_c", "slow_idem", "slow_write"],
                    "tier": "small",
                    "max_tokens": 64,
                    "max_turns": 6,
                }
            ],
        }
    ],
)
app.workflow(
    "agent_budget",
    input=Task,
    templates=[
        {
            "name": "agent_budget",
            "steps": [
                {
                    "id": "agent",
                    "kind": "agent",
                    "prompt": "Job ${input.n}: do what it takes, then answer.",
                    "tools": ["tool_a", "tool_b"],
                    "tier": "small",
                    "max_tokens": 32,
                    "max_turns": 4,
                }
            ],
        }
    ],
    budget=Budget(on_exceeded="escalate"),
)
