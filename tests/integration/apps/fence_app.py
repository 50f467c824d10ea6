"""The fencing app: a step whose first attempt holds on until the test releases it.

`hold` writes `$FENCE_DIR/started` on its first attempt, then polls for `$FENCE_DIR/release`
(asynchronously: the worker keeps heartbeating while it waits; with `$FENCE_IGNORE_CANCEL` set
it ignores cancellation while it waits) and returns a result that names its attempt; later
attempts return at once. `echo` passes that result on.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from pydantic import BaseModel

from stalwart import App, RetryPolicy, ToolContext

app = App()


class HoldArgs(BaseModel):
    tag: str


class Held(BaseModel):
    by: str
    pid: int
    attempt: int


class EchoArgs(BaseModel):
    by: str


class Echoed(BaseModel):
    echoed: str


def _dir() -> Path:
    return Path(os.environ["FENCE_DIR"])


def _mark(name: str, text: str) -> None:
    # Written whole, then renamed: the test reads the marker as soon as it exists.
    part = _dir() / f".{name}.part"
    part.write_text(text, encoding="utf-8")
    part.replace(_dir() / name)


def _released() -> bool:
    return (_dir() / "release").exists()


@app.tool(timeout=120, idempotent=True, retry=RetryPolicy(max_attempts=5, base_seconds=0))
async def hold(args: HoldArgs, ctx: ToolContext) -> Held:
    """First attempt: wait for the release file; later attempts: return at once."""
    if ctx.attempt == 1:
        _mark("started", str(os.getpid()))
        while not _released():  # another process creates the file
            try:
                await asyncio.sleep(0.005)
            except asyncio.CancelledError:
                # With FENCE_IGNORE_CANCEL set it behaves as a tool that ignores cancellation,
                # which a worker giving up its lease cannot stop: fencing must keep its result out.
                if not os.environ.get("FENCE_IGNORE_CANCEL"):
                    raise
        _mark("returned", str(os.getpid()))
    return Held(by=f"attempt-{ctx.attempt}", pid=os.getpid(), attempt=ctx.attempt)


@app.tool(timeout=10, idempotent=True)
async def echo(args: EchoArgs, ctx: ToolContext) -> Echoed:
    """Pass the held result on."""
    return Echoed(echoed=args.by)


class FenceInput(BaseModel):
    tag: str = "fence"


app.workflow(
    "fence",
    input=FenceInput,
    templates=[
        {
            "name": "fence",
            "steps": [
                {"id": "hold", "tool": "hold", "args": {"tag": "${input.tag}"}},
                {"id": "echo", "tool": "echo", "args": {"by": "${steps.hold.output.by}"}},
            ],
        }
    ],
)
