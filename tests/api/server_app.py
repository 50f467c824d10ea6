"""The app the server tests serve: an order flow whose payment waits for a reviewer, a flow
that always dead-letters, a flow whose tool refuses (escalated), and a webhook flow with an HMAC
secret."""

from __future__ import annotations

from pydantic import BaseModel, Field

from stalwart import App, ApprovalPolicy, Settings, ToolContext, Webhook
from stalwart.errors import NonRetriableError, TransientError

WEBHOOK_SECRET = "whsec-test-0123456789"
WEBHOOK_TENANT = "acme"


class OrderInput(BaseModel):
    customer: str = Field(min_length=1, max_length=100)
    amount: float = Field(gt=0, le=1_000_000)


class LookupArgs(BaseModel):
    key: str


class Found(BaseModel):
    value: str


class PayArgs(BaseModel):
    customer: str
    amount: float


class Paid(BaseModel):
    payment_id: str


class EventInput(BaseModel):
    kind: str
    order: str


def build_app(settings: Settings | None = None) -> App:
    """A fresh app on `settings` (tests pass their own database)."""
    app = App(settings or Settings())

    @app.tool(timeout=5, idempotent=True)
    async def lookup(args: LookupArgs, ctx: ToolContext) -> Found:
        """Echo the key back."""
        return Found(value=args.key)

    @app.tool(timeout=5, idempotent=True)
    async def pay(args: PayArgs, ctx: ToolContext) -> Paid:
        """Pretend to pay, keyed by the step's idempotency key."""
        return Paid(payment_id=f"pay-{ctx.idempotency_key}")

    @app.tool(timeout=5, idempotent=True)
    async def flaky(args: LookupArgs, ctx: ToolContext) -> Found:
        """Always unavailable: its job runs out of attempts and is dead-lettered."""
        raise TransientError("the upstream service is down (503)", code="http_503")

    @app.tool(timeout=5, idempotent=True)
    async def refuse(args: LookupArgs, ctx: ToolContext) -> Found:
        """Always refused: retrying cannot help, so its job is escalated to a human."""
        raise NonRetriableError("the upstream service refused the request (403)", code="http_403")

    app.workflow(
        "order",
        input=OrderInput,
        approval=ApprovalPolicy(sla_seconds=3600),
        templates=[
            {
                "name": "order",
                "steps": [
                    {"id": "find", "tool": "lookup", "args": {"key": "${input.customer}"}},
                    {
                        "id": "pay",
                        "tool": "pay",
                        "description": "Pay for the order",
                        "depends_on": ["find"],
                        "args": {"customer": "${input.customer}", "amount": "${input.amount}"},
                        "requires_approval": {"input.amount": {"gt": 100}},
                        "review": {
                            "reason": "Orders over 100 need a reviewer.",
                            "asked": "Pay for this order?",
                            "options": [
                                {"name": "approve", "impact": "the customer is charged once"},
                                {"name": "reject", "impact": "nothing is charged"},
                            ],
                        },
                    },
                ],
            }
        ],
    )
    app.workflow(
        "doomed",
        input=OrderInput,
        templates=[
            {
                "name": "doomed",
                "steps": [
                    {
                        "id": "call",
                        "tool": "flaky",
                        "args": {"key": "${input.customer}"},
                        "retry": {"max_attempts": 2, "base_seconds": 0.05, "cap_seconds": 0.1},
                    }
                ],
            }
        ],
    )
    app.workflow(
        "broken",
        input=OrderInput,
        templates=[
            {
                "name": "broken",
                "steps": [{"id": "call", "tool": "refuse", "args": {"key": "${input.customer}"}}],
            }
        ],
    )
    app.workflow(
        "event",
        input=EventInput,
        webhook=Webhook(
            tenant=WEBHOOK_TENANT,
            secret=WEBHOOK_SECRET,
            event_id_field="id",
            transform=lambda body: {"kind": body.get("type", ""), "order": body.get("order", "")},
        ),
        templates=[
            {
                "name": "event",
                "steps": [{"id": "note", "tool": "lookup", "args": {"key": "${input.order}"}}],
            }
        ],
    )
    return app


app = build_app()
