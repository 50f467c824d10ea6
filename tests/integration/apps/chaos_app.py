"""The chaos app: settle an invoice against the flaky service, under kill -9.

Every tool talks HTTP to `examples.service.FlakyService` at `$CHAOS_SERVICE_URL`, and every POST
carries `ctx.idempotency_key` as its `Idempotency-Key`, so a step that runs twice can be seen in
the service's side-effect log. Tools sometimes sleep before and after their call, so a SIGKILL
often lands while a step is in flight (and, for `pay`, after the payment took effect but before
the result was recorded). Each process appends what its tools did to
`$CHAOS_LOG_DIR/calls-<pid>.jsonl`.

Workflow `poison` runs one step whose tool SIGKILLs the worker that runs it, every time.

Workflow `settle` (input `invoice_id`, `user_id`):

    fetch (GET /invoices) ──┐
                            ├─> pay (POST /payments, not idempotent, reconciled) ─> notify
    policy (POST /policy) ──┘                                        (POST /notifications)
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import re
import signal
import time
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel

from stalwart import App, RetryPolicy, ToolContext

app = App()
logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request is noise

RETRY = RetryPolicy(max_attempts=20, base_seconds=0.05, cap_seconds=0.4)
TIMEOUT = 1.5
_AMOUNT = re.compile(r"Total due: ([0-9]+(?:\.[0-9]+)?) EUR")


def _url(path: str) -> str:
    return os.environ["CHAOS_SERVICE_URL"].rstrip("/") + path


def record(ctx: ToolContext, what: str, **extra: Any) -> None:
    """Append one line to this process's call log (never read by the app itself)."""
    folder = os.environ.get("CHAOS_LOG_DIR")
    if not folder:
        return
    line = {
        "pid": os.getpid(),
        "job": ctx.job_id,
        "step": ctx.step_id,
        "attempt": ctx.attempt,
        "what": what,
        "at": time.time(),
        **extra,
    }
    with open(Path(folder) / f"calls-{os.getpid()}.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps(line) + "\n")


async def dawdle(chance: float = 0.6, most: float = 0.8) -> None:
    """Sometimes sleep, so kills land mid-step."""
    if random.random() < chance:
        await asyncio.sleep(random.uniform(0.05, most))


class InvoiceArgs(BaseModel):
    invoice_id: str


class Invoice(BaseModel):
    invoice_id: str
    vendor: str
    amount: float
    attempt: int


class PolicyArgs(BaseModel):
    user_id: str


class PolicyResult(BaseModel):
    allowed: bool
    attempt: int


class PayArgs(BaseModel):
    invoice_id: str
    vendor: str
    amount: float


class Paid(BaseModel):
    payment_id: str
    attempt: int
    reconciled: bool = False


class NotifyArgs(BaseModel):
    user_id: str
    message: str


class Notified(BaseModel):
    notification_id: str
    attempt: int


@app.tool(timeout=TIMEOUT, retry=RETRY, idempotent=True)
async def fetch_invoice(args: InvoiceArgs, ctx: ToolContext) -> Invoice:
    """Read an invoice and parse its amount."""
    record(ctx, "start")
    await dawdle()
    async with httpx.AsyncClient(timeout=TIMEOUT) as http:
        response = await http.get(_url(f"/invoices/{args.invoice_id}"))
        response.raise_for_status()
        data = response.json()
    match = _AMOUNT.search(data["text"])
    assert match is not None
    record(ctx, "done")
    return Invoice(
        invoice_id=data["invoice_id"],
        vendor=data["vendor"],
        amount=float(match.group(1)),
        attempt=ctx.attempt,
    )


@app.tool(timeout=TIMEOUT, retry=RETRY, idempotent=True)
async def check_policy(args: PolicyArgs, ctx: ToolContext) -> PolicyResult:
    """Ask the policy engine whether the user may be paid."""
    record(ctx, "start")
    await dawdle()
    body = {"user_id": args.user_id, "country": "FR", "plan": "pro"}
    async with httpx.AsyncClient(timeout=TIMEOUT) as http:
        response = await http.post(_url("/policy/check"), json=body)
        response.raise_for_status()
        data = response.json()
    record(ctx, "done")
    return PolicyResult(allowed=data["allowed"], attempt=ctx.attempt)


async def find_payment(args: PayArgs, ctx: ToolContext) -> Paid | None:
    """Reconcile an interrupted payment: did a payment with our key take effect?"""
    record(ctx, "reconcile")
    async with httpx.AsyncClient(timeout=TIMEOUT) as http:
        response = await http.get(_url("/effects"))
        response.raise_for_status()
        effects = response.json()["effects"]
    for effect in effects:
        if effect["kind"] == "payment" and effect["idempotency_key"] == ctx.idempotency_key:
            record(ctx, "reconciled", payment_id=effect["id"])
            return Paid(payment_id=effect["id"], attempt=ctx.attempt, reconciled=True)
    record(ctx, "reconciled", payment_id=None)
    return None


@app.tool(timeout=TIMEOUT, retry=RETRY, idempotent=False, reconcile=find_payment)
async def pay(args: PayArgs, ctx: ToolContext) -> Paid:
    """Pay an invoice (a side effect: the service records one payment per idempotency key)."""
    record(ctx, "start")
    await dawdle()
    async with httpx.AsyncClient(timeout=TIMEOUT) as http:
        response = await http.post(
            _url("/payments"),
            json=args.model_dump(),
            headers={"Idempotency-Key": ctx.idempotency_key},
        )
        response.raise_for_status()
        data = response.json()
    record(ctx, "effect", payment_id=data["payment_id"], replayed=data["replayed"])
    await dawdle(most=0.4)  # the payment happened; a kill now must not pay twice
    record(ctx, "done")
    return Paid(payment_id=data["payment_id"], attempt=ctx.attempt)


@app.tool(timeout=TIMEOUT, retry=RETRY, idempotent=True)
async def notify(args: NotifyArgs, ctx: ToolContext) -> Notified:
    """Tell the user (idempotent thanks to the Idempotency-Key)."""
    record(ctx, "start")
    await dawdle()
    async with httpx.AsyncClient(timeout=TIMEOUT) as http:
        response = await http.post(
            _url("/notifications"),
            json=args.model_dump(),
            headers={"Idempotency-Key": ctx.idempotency_key},
        )
        response.raise_for_status()
        data = response.json()
    record(ctx, "done")
    return Notified(notification_id=data["notification_id"], attempt=ctx.attempt)


class SettleInput(BaseModel):
    invoice_id: str
    user_id: str


app.workflow(
    "settle",
    input=SettleInput,
    templates=[
        {
            "name": "settle",
            "steps": [
                {
                    "id": "fetch",
                    "tool": "fetch_invoice",
                    "args": {"invoice_id": "${input.invoice_id}"},
                },
                {"id": "policy", "tool": "check_policy", "args": {"user_id": "${input.user_id}"}},
                {
                    "id": "pay",
                    "tool": "pay",
                    "depends_on": ["policy"],
                    "args": {
                        "invoice_id": "${steps.fetch.output.invoice_id}",
                        "vendor": "${steps.fetch.output.vendor}",
                        "amount": "${steps.fetch.output.amount}",
                    },
                },
                {
                    "id": "notify",
                    "tool": "notify",
                    "args": {
                        "user_id": "${input.user_id}",
                        "message": "paid ${steps.pay.output.payment_id}",
                    },
                },
            ],
        }
    ],
)


class PoisonInput(BaseModel):
    idempotent: bool = True


class Nothing(BaseModel):
    pass


@app.tool(timeout=TIMEOUT, retry=RetryPolicy(max_attempts=3, base_seconds=0), idempotent=True)
async def explode(args: Nothing, ctx: ToolContext) -> Nothing:
    """Kill the worker process running this step."""
    record(ctx, "start")
    os.kill(os.getpid(), signal.SIGKILL)
    raise AssertionError("unreachable")


async def no_charge_found(args: Nothing, ctx: ToolContext) -> Nothing | None:
    record(ctx, "reconcile")
    return None


@app.tool(
    timeout=TIMEOUT,
    retry=RetryPolicy(max_attempts=3, base_seconds=0),
    idempotent=False,
    reconcile=no_charge_found,
)
async def explode_charge(args: Nothing, ctx: ToolContext) -> Nothing:
    """Kill the worker process running this step (a non-idempotent tool)."""
    record(ctx, "start")
    os.kill(os.getpid(), signal.SIGKILL)
    raise AssertionError("unreachable")


app.workflow(
    "poison",
    input=PoisonInput,
    templates=[
        {
            "name": "poison",
            "when": {"input.idempotent": True},
            "steps": [{"id": "boom", "tool": "explode"}],
        },
        {
            "name": "poison_charge",
            "when": {"input.idempotent": False},
            "steps": [{"id": "boom", "tool": "explode_charge"}],
        },
    ],
)
