"""The limits app: tools that record when each call starts and ends, under shared limits.

`capped` (at most 2 running across all workers) sleeps 60 ms; `metered` (10 starts a second,
a bucket of 3) returns at once. Each call appends `start`/`end` lines with a wall-clock time to
`$LIMITS_LOG_DIR/<pid>.log`, so the test can rebuild what ran when, across processes.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from pydantic import BaseModel

from stalwart import App, StepSpec, Template, ToolContext

app = App()


class Args(BaseModel):
    n: int = 0


class Done(BaseModel):
    ok: bool = True


def _log(what: str, ctx: ToolContext) -> None:
    path = Path(os.environ["LIMITS_LOG_DIR"]) / f"{os.getpid()}.log"
    with path.open("a", encoding="utf-8") as f:
        f.write(f"{what} {time.time():.6f} {ctx.job_id}\n")


@app.tool(idempotent=True, concurrency=2, timeout=10)
async def capped(args: Args, ctx: ToolContext) -> Done:
    """Runs 60 ms; at most two at once across all workers."""
    _log("start", ctx)
    await asyncio.sleep(0.06)
    _log("end", ctx)
    return Done()


@app.tool(idempotent=True, rate_limit="10/s", burst=3, timeout=10)
async def metered(args: Args, ctx: ToolContext) -> Done:
    """Returns at once; at most ten starts a second across all workers."""
    _log("start", ctx)
    return Done()


class JobInput(BaseModel):
    n: int = 0


app.workflow(
    "capped",
    input=JobInput,
    templates=[Template(name="one", steps=[StepSpec(id="c", tool="capped")])],
)
app.workflow(
    "metered",
    input=JobInput,
    templates=[Template(name="one", steps=[StepSpec(id="m", tool="metered")])],
)
