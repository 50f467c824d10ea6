"""The partition app: a tool capped at two running at once that runs until the test lets it go.

`held` (idempotent, `concurrency=2`) appends `start <time> <job> <attempt> <pid>` to
`$PARTITION_LOG_DIR/<pid>.log` when it starts, then waits until the file `$PARTITION_RELEASE`
exists, and appends `end ...` when it stops, whether it returned or was cancelled (wall-clock
times, so the test can rebuild what ran when, across processes).
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
    path = Path(os.environ["PARTITION_LOG_DIR"]) / f"{os.getpid()}.log"
    with path.open("a", encoding="utf-8") as f:
        f.write(f"{what} {time.time():.6f} {ctx.job_id} {ctx.attempt} {os.getpid()}\n")


@app.tool(idempotent=True, concurrency=2, timeout=300)
async def held(args: Args, ctx: ToolContext) -> Done:
    """Runs until `$PARTITION_RELEASE` exists; at most two at once across all workers."""
    _log("start", ctx)
    try:
        release = Path(os.environ["PARTITION_RELEASE"])
        # The signal comes from another process: a file, polled.
        while not await asyncio.to_thread(release.exists):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    finally:
        _log("end", ctx)
    return Done()


app.workflow(
    "held",
    input=Args,
    templates=[Template(name="one", steps=[StepSpec(id="h", tool="held")])],
)
