"""Tools, workflows and output schemas whose pydantic models are defined inside a function, in a
module with `from __future__ import annotations` (this one): every annotation is a string that
the module's globals cannot resolve, so registration reads the registering function's locals.
The tool then runs in a job on a real worker, on both backends."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from pydantic import BaseModel

from stalwart import App, Settings
from stalwart.store import open_store

if TYPE_CHECKING:
    # Only for the type checker, as linters like it: registration must not need it at run time.
    from stalwart import ToolContext


async def test_a_tool_with_local_models_runs_in_a_job(db_url: str) -> None:
    class Line(BaseModel):
        sku: str
        quantity: int

    class StepArgs(BaseModel):
        order_id: str
        lines: list[Line]

    class StepResult(BaseModel):
        order_id: str
        total_quantity: int
        # A local model named before it is defined: pydantic leaves StepResult incomplete
        # until registration rebuilds it with this function's names.
        receipt: Receipt

    class Receipt(BaseModel):
        number: str

    class OrderInput(BaseModel):
        order_id: str

    app = App(Settings(database_url=db_url, poll_interval_seconds=0.02, embedder="none"))

    @app.tool(timeout=10, idempotent=True)
    async def count_items(args: StepArgs, ctx: ToolContext) -> StepResult:
        total = sum(line.quantity for line in args.lines)
        return StepResult(
            order_id=args.order_id, total_quantity=total, receipt=Receipt(number="r-1")
        )

    app.workflow(
        "orders",
        input=OrderInput,
        templates=[
            {
                "name": "orders",
                "steps": [
                    {
                        "id": "count",
                        "tool": "count_items",
                        "args": {
                            "order_id": "${input.order_id}",
                            "lines": [{"sku": "a", "quantity": 2}, {"sku": "b", "quantity": 3}],
                        },
                    }
                ],
            }
        ],
    )
    spec = app.tools.get("count_items")
    assert spec is not None
    assert (spec.args_model, spec.result_model) == (StepArgs, StepResult)

    store = open_store(db_url, app.settings)
    await store.migrate()
    client = app.client(store)
    worker = app.worker(store=store, worker_id="local-models")
    task = asyncio.create_task(worker.run())
    try:
        job = (await client.submit("orders", {"order_id": "o-7"})).job
        deadline = time.monotonic() + 30
        while (done := await client.get(job.id)).status != "completed":
            assert done.status not in ("failed", "dead_lettered", "escalated"), done.error
            assert time.monotonic() < deadline, done.status
            await asyncio.sleep(0.05)
        (step,) = await client.steps(job.id)
    finally:
        worker.stop()
        await asyncio.wait_for(task, 30)
        await store.close()
    assert step.output == {"order_id": "o-7", "total_quantity": 5, "receipt": {"number": "r-1"}}
