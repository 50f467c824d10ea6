"""The timing app: a tool that fails on schedule and a tool under a tight rate limit, to check
that workers wake when a retry or a rate limit's next token is due, not at their next poll.

`flaky` fails with a transient error on its first three attempts and succeeds on the fourth,
retried after 0.1, 0.2 and 0.4 s (no jitter); `trickle` returns at once, at most ten starts a
second with a bucket of one.
"""

from __future__ import annotations

from pydantic import BaseModel

from stalwart import App, RetryPolicy, StepSpec, Template, ToolContext
from stalwart.errors import TransientError

app = App()

BACKOFF = RetryPolicy(max_attempts=4, base_seconds=0.1, cap_seconds=10, jitter=False)


class Args(BaseModel):
    n: int = 0


class Done(BaseModel):
    ok: bool = True


@app.tool(idempotent=True, timeout=10, retry=BACKOFF)
async def flaky(args: Args, ctx: ToolContext) -> Done:
    """Fails transiently until its fourth attempt."""
    if ctx.attempt < BACKOFF.max_attempts:
        raise TransientError(f"attempt {ctx.attempt} fails on purpose")
    return Done()


@app.tool(idempotent=True, rate_limit="10/s", burst=1, timeout=10)
async def trickle(args: Args, ctx: ToolContext) -> Done:
    """Returns at once; at most ten starts a second across all workers, no burst."""
    return Done()


class JobInput(BaseModel):
    n: int = 0


app.workflow(
    "flaky",
    input=JobInput,
    templates=[Template(name="one", steps=[StepSpec(id="f", tool="flaky")])],
)
app.workflow(
    "trickle",
    input=JobInput,
    templates=[Template(name="one", steps=[StepSpec(id="t", tool="trickle")])],
)
