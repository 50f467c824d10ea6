"""An app for bad-input tests: a valid workflow with a strict input schema, and a workflow
whose only template has a dependency cycle (caught when a job is planned)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from stalwart import App, ToolContext

app = App()


class OrderInput(BaseModel):
    customer: str = Field(min_length=1)
    amount: float = Field(gt=0)
    note: str = ""


class LookupArgs(BaseModel):
    key: str


class Found(BaseModel):
    value: str


@app.tool(timeout=5, idempotent=True)
async def lookup(args: LookupArgs, ctx: ToolContext) -> Found:
    """Echo the key back."""
    return Found(value=args.key)


app.workflow(
    "order",
    input=OrderInput,
    templates=[
        {
            "name": "order",
            "steps": [{"id": "find", "tool": "lookup", "args": {"key": "${input.customer}"}}],
        }
    ],
)

# a -> c -> b -> a: each waits for the next, so none could ever start.
app.workflow(
    "cyclic",
    input=OrderInput,
    templates=[
        {
            "name": "cyclic",
            "steps": [
                {"id": "a", "tool": "lookup", "args": {"key": "a"}, "depends_on": ["c"]},
                {"id": "b", "tool": "lookup", "args": {"key": "b"}, "depends_on": ["a"]},
                {"id": "c", "tool": "lookup", "args": {"key": "c"}, "depends_on": ["b"]},
                {"id": "d", "tool": "lookup", "args": {"key": "d"}},
            ],
        }
    ],
)
