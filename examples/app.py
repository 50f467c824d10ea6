"""The example app: three workflows over the flaky local service in `examples/service.py`.

* **onboarding** (`{"user_id": "u-1001"}`): fetch the profile, check it against the policy
  engine, open an onboarding ticket (enterprise customers need a person to approve it first),
  then send a welcome notification (not critical: the job completes degraded without it).
* **invoice** (`{"invoice_id": "INV-7-250.00"}`): fetch the invoice, extract vendor, amount,
  currency and due date from its text with a language model (structured output, validated),
  validate them, and pay (payments over 1000, a low extraction confidence or any risk flag need
  a person to approve).
* **support** (`{"order_id": "ORD-2033-59.90", "message": "..."}`): one `agent` step answers a
  customer who was charged twice. It may call three tools: look the order up, check the refund
  policy, and issue a refund, which waits for a person to approve it; it answers in the
  `SupportReply` schema.

The extraction runs on a **scripted model** by default (`scripted:invoice-reader`, offline, free,
clearly not a real model: it reads the fields with a regular expression), and so does the agent
(`scripted:support-agent`, on the large tier that the `reasoning` purpose uses: a few `if`s over
the tool results it has read). Point them at a real one by routing the tiers, e.g.
`STALWART_LLM_TIERS='{"small": ["openai:gpt-4o-mini"], "large": ["openai:gpt-4o"]}'` with
`STALWART_OPENAI_API_KEY`, or any OpenAI-compatible server with `STALWART_OPENAI_BASE_URL`.

Tools call the service over HTTP with `httpx`; the engine classifies what goes wrong (5xx, 429
and timeouts are retried with backoff, other 4xx are not). The templates live in
`examples/templates/`. Run it with a worker, against the service on its default port:

```sh
python -m examples.service --failure-rate 0.2 &
stalwart --app examples.app:app submit invoice -i '{"invoice_id": "INV-7-250.00"}'
stalwart --app examples.app:app worker
```
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Literal

import httpx
from pydantic import BaseModel, Field

from stalwart import (
    App,
    Budget,
    ModelRequest,
    NonRetriableError,
    RetryPolicy,
    ScriptedModel,
    Settings,
    ToolContext,
)
from stalwart.llm import CallTools

DEFAULT_SERVICE_URL = "http://127.0.0.1:8765"
SERVICE_URL_ENV = "STALWART_DEMO_SERVICE_URL"

# Short timeouts and quick backoff keep the demo fast; a real API would get seconds and minutes.
# Eight attempts make an unlucky streak of random failures (25% each) vanishingly unlikely, while
# a real outage still runs out of attempts within about two seconds.
HTTP_TIMEOUT = 1.0
HTTP_RETRY = RetryPolicy(max_attempts=8, base_seconds=0.05, cap_seconds=0.5)
# Pure tools fail the same way every time: retrying them cannot help.
PURE_TIMEOUT = 1.0
PURE_RETRY = RetryPolicy(max_attempts=1)


def service_url() -> str:
    """The base URL of the service, read at call time so the demo can point tools at it."""
    return os.environ.get(SERVICE_URL_ENV, DEFAULT_SERVICE_URL).rstrip("/")


def _client() -> httpx.AsyncClient:
    # The tool's own timeout (HTTP_TIMEOUT) fires first; this one is only a backstop.
    return httpx.AsyncClient(base_url=service_url(), timeout=10.0)


# -- workflow inputs ------------------------------------------------------------------------------


class OnboardingInput(BaseModel):
    """Input of the onboarding workflow."""

    user_id: str = Field(min_length=1, examples=["u-1001"])


class InvoiceInput(BaseModel):
    """Input of the invoice workflow."""

    invoice_id: str = Field(min_length=1, examples=["INV-7-250.00"])


class SupportInput(BaseModel):
    """Input of the support workflow."""

    order_id: str = Field(min_length=1, examples=["ORD-2033-59.90"])
    message: str = Field(min_length=1, examples=["I was charged twice for my order."])


# -- onboarding tools -----------------------------------------------------------------------------


class UserRef(BaseModel):
    user_id: str


class Profile(BaseModel):
    user_id: str
    name: str
    email: str
    plan: str
    country: str


class PolicyArgs(BaseModel):
    user_id: str
    country: str
    plan: str


class PolicyDecision(BaseModel):
    allowed: bool
    reasons: list[str] = Field(default_factory=list)


class TicketArgs(BaseModel):
    user_id: str
    subject: str


class Ticket(BaseModel):
    ticket_id: str
    replayed: bool = False


class NotificationArgs(BaseModel):
    user_id: str
    message: str


class Notification(BaseModel):
    notification_id: str
    replayed: bool = False


async def fetch_profile(args: UserRef, ctx: ToolContext) -> Profile:
    """Read the user's profile from the directory."""
    async with _client() as http:
        response = await http.get(f"/profiles/{args.user_id}")
        response.raise_for_status()
        return Profile.model_validate(response.json())


async def validate_policy(args: PolicyArgs, ctx: ToolContext) -> PolicyDecision:
    """Ask the policy engine whether this user may be onboarded; refuse if not."""
    async with _client() as http:
        response = await http.post("/policy/check", json=args.model_dump())
        response.raise_for_status()
        decision = PolicyDecision.model_validate(response.json())
    if not decision.allowed:
        reasons = "; ".join(decision.reasons) or "no reason given"
        raise NonRetriableError(
            f"policy refuses to onboard {args.user_id}: {reasons}", code="policy_refused"
        )
    return decision


async def create_ticket(args: TicketArgs, ctx: ToolContext) -> Ticket:
    """Open the onboarding ticket."""
    async with _client() as http:
        response = await http.post(
            "/tickets",
            json=args.model_dump(),
            headers={"Idempotency-Key": ctx.idempotency_key},
        )
        response.raise_for_status()
        return Ticket.model_validate(response.json())


async def notify_user(args: NotificationArgs, ctx: ToolContext) -> Notification:
    """Send the welcome notification."""
    async with _client() as http:
        response = await http.post(
            "/notifications",
            json=args.model_dump(),
            headers={"Idempotency-Key": ctx.idempotency_key},
        )
        response.raise_for_status()
        return Notification.model_validate(response.json())


# -- invoice tools --------------------------------------------------------------------------------


class InvoiceRef(BaseModel):
    invoice_id: str


class InvoiceDocument(BaseModel):
    invoice_id: str
    text: str


class InvoiceExtraction(BaseModel):
    """What the extraction step must answer (the LLM's output schema)."""

    vendor: str = Field(description="Who sent the invoice.")
    amount: float = Field(description="Total due.")
    currency: str = Field(description="ISO 4217 code, e.g. EUR.")
    due_date: str | None = Field(None, description="YYYY-MM-DD, if the invoice states one.")
    confidence: float = Field(ge=0, le=1, description="How sure the reading is, 0 to 1.")
    missing_fields: list[str] = Field(default_factory=list)
    risk_flags: list[str] = Field(
        default_factory=list, description="Anything a reviewer should look at before paying."
    )


class InvoiceCheckArgs(BaseModel):
    amount: float
    currency: str


class InvoiceCheck(BaseModel):
    ok: bool


class PaymentArgs(BaseModel):
    invoice_id: str
    amount: float
    vendor: str


class Payment(BaseModel):
    payment_id: str
    replayed: bool = False


_INVOICE_TEXT = re.compile(
    r"from (?P<vendor>[A-Za-z0-9_\-]+)\.\s+Total due:\s*(?P<amount>\d+(?:\.\d+)?)\s+"
    r"(?P<currency>[A-Z]{3})"
)
_DUE_DATE = re.compile(r"Due date:\s*(?P<due>\d{4}-\d{2}-\d{2})")


async def fetch_invoice(args: InvoiceRef, ctx: ToolContext) -> InvoiceDocument:
    """Download the invoice document."""
    async with _client() as http:
        response = await http.get(f"/invoices/{args.invoice_id}")
        response.raise_for_status()
        return InvoiceDocument.model_validate(response.json())


def read_invoice(request: ModelRequest) -> dict[str, object]:
    """The scripted invoice reader's answer: the fields a regular expression finds in the
    prompt. A stand-in for a model, so the demo and tests run offline."""
    text = request.messages[-1].content
    found = _INVOICE_TEXT.search(text)
    due = _DUE_DATE.search(text)
    if found is None:
        return {
            "vendor": "unknown",
            "amount": 0.0,
            "currency": "EUR",
            "due_date": None,
            "confidence": 0.1,
            "missing_fields": ["vendor", "amount", "currency"],
            "risk_flags": ["unreadable_invoice"],
        }
    return {
        "vendor": found["vendor"],
        "amount": float(found["amount"]),
        "currency": found["currency"],
        "due_date": due["due"] if due else None,
        "confidence": 0.96 if due else 0.7,
        "missing_fields": [] if due else ["due_date"],
        "risk_flags": [],
    }


def invoice_reader() -> ScriptedModel:
    """The scripted model behind the `small` tier in the demo and tests."""
    return ScriptedModel("invoice-reader", default=read_invoice)


async def validate_invoice(args: InvoiceCheckArgs, ctx: ToolContext) -> InvoiceCheck:
    """Check the extracted fields before any money moves (no network)."""
    if args.amount <= 0:
        raise NonRetriableError(f"invoice amount must be positive, not {args.amount:g}")
    if args.currency != "EUR":
        raise NonRetriableError(f"only EUR invoices are paid here, not {args.currency}")
    return InvoiceCheck(ok=True)


async def pay_invoice(args: PaymentArgs, ctx: ToolContext) -> Payment:
    """Pay the vendor."""
    async with _client() as http:
        response = await http.post(
            "/payments",
            json=args.model_dump(),
            headers={"Idempotency-Key": ctx.idempotency_key},
        )
        response.raise_for_status()
        return Payment.model_validate(response.json())


# -- support tools and the support agent ----------------------------------------------------------


class OrderRef(BaseModel):
    order_id: str = Field(min_length=1)


class Charge(BaseModel):
    charge_id: str
    amount: float


class Order(BaseModel):
    order_id: str
    customer: str
    item: str
    amount: float
    currency: str
    charges: list[Charge]


RefundReason = Literal["duplicate_charge", "damaged", "changed_mind"]


class PolicyQuery(BaseModel):
    reason: RefundReason
    amount: float = Field(gt=0)


class RefundPolicy(BaseModel):
    eligible: bool
    refundable: float
    rule: str


class RefundArgs(BaseModel):
    order_id: str = Field(min_length=1)
    amount: float = Field(gt=0)
    reason: RefundReason


class Refund(BaseModel):
    refund_id: str
    replayed: bool = False


class SupportReply(BaseModel):
    """What the support agent answers (its output schema)."""

    order_id: str
    refund_id: str | None = Field(None, description="The refund issued, if any.")
    refunded: float = Field(0.0, description="The amount refunded, in EUR.")
    reply: str = Field(description="The message to send the customer.")


async def lookup_order(args: OrderRef, ctx: ToolContext) -> Order:
    """Look an order up: customer, item, amount and every charge made for it."""
    async with _client() as http:
        response = await http.get(f"/orders/{args.order_id}")
        response.raise_for_status()
        return Order.model_validate(response.json())


async def check_refund_policy(args: PolicyQuery, ctx: ToolContext) -> RefundPolicy:
    """What the refund policy allows for this reason and amount (no network)."""
    if args.reason == "duplicate_charge":
        return RefundPolicy(
            eligible=True, refundable=args.amount, rule="a duplicate charge is refunded in full"
        )
    if args.reason == "damaged":
        return RefundPolicy(
            eligible=True,
            refundable=args.amount,
            rule="damaged goods are refunded in full once returned",
        )
    return RefundPolicy(eligible=False, refundable=0.0, rule="a change of mind gets store credit")


async def issue_refund(args: RefundArgs, ctx: ToolContext) -> Refund:
    """Refund an amount of an order to the customer's card."""
    async with _client() as http:
        response = await http.post(
            "/refunds",
            json=args.model_dump(),
            headers={"Idempotency-Key": ctx.idempotency_key},
        )
        response.raise_for_status()
        return Refund.model_validate(response.json())


_ORDER_ID = re.compile(r"\bORD-\d+(?:-\d+(?:\.\d{1,2})?)?")


def _tool_results(request: ModelRequest) -> dict[str, Any]:
    """The results the agent has read so far, by tool name (the last one per tool)."""
    names = {call.id: call.name for m in request.messages for call in m.tool_calls}
    results: dict[str, Any] = {}
    for message in request.messages:
        if message.role == "tool" and message.tool_call_id in names:
            try:
                results[names[message.tool_call_id]] = json.loads(message.content)
            except ValueError:
                results[names[message.tool_call_id]] = {"error": {"message": message.content}}
    return results


def _failed(result: Any) -> bool:
    return not isinstance(result, dict) or "error" in result


def support_agent(request: ModelRequest) -> CallTools | dict[str, object]:
    """The scripted support agent's next turn: a function of the customer's message and the tool
    results it has read, so the demo and tests run offline and the same way every time. Look
    the order up; if a charge was made twice, check the policy, then refund the duplicate (a
    person approves that call); answer in `SupportReply`."""
    prompt = next((m.content for m in request.messages if m.role == "user"), "")
    found = _ORDER_ID.search(prompt)
    order_id = found.group(0) if found else ""
    done = _tool_results(request)

    def answer(reply: str, refund: dict[str, Any] | None = None) -> dict[str, object]:
        return {
            "order_id": order_id,
            "refund_id": refund["refund_id"] if refund else None,
            "refunded": refund["amount"] if refund else 0.0,
            "reply": reply,
        }

    if "lookup_order" not in done:
        return CallTools(("lookup_order", {"order_id": order_id}), text="Looking the order up.")
    order = done["lookup_order"]
    if _failed(order):
        return answer(f"I could not find order {order_id}; a colleague will get back to you.")
    charges = order["charges"]
    if len(charges) < 2:
        return answer(
            f"Order {order_id} was charged once ({order['amount']:.2f} EUR): nothing to refund."
        )
    duplicate = charges[-1]["amount"]
    if "check_refund_policy" not in done:
        return CallTools(
            ("check_refund_policy", {"reason": "duplicate_charge", "amount": duplicate}),
            text=f"Charged {len(charges)} times; checking the refund policy.",
        )
    policy = done["check_refund_policy"]
    if _failed(policy) or not policy["eligible"]:
        return answer("The refund policy does not cover this; a colleague will follow up.")
    if "issue_refund" not in done:
        return CallTools(
            (
                "issue_refund",
                {
                    "order_id": order_id,
                    "amount": policy["refundable"],
                    "reason": "duplicate_charge",
                },
            ),
            text="The policy refunds it in full; refunding the duplicate charge.",
        )
    refund = done["issue_refund"]
    if _failed(refund):
        return answer("Your refund needs a second look; a colleague will get back to you.")
    return answer(
        f"Sorry, {order['customer']}: your {order['item']} was charged twice. I refunded the "
        f"duplicate {policy['refundable']:.2f} EUR (refund {refund['refund_id']}); it reaches "
        "your card in 3 to 5 business days.",
        {"refund_id": refund["refund_id"], "amount": policy["refundable"]},
    )


def support_model() -> ScriptedModel:
    """The scripted model behind the `large` tier (the agent's `reasoning` purpose)."""
    return ScriptedModel("support-agent", default=support_agent)


# -- the app --------------------------------------------------------------------------------------


def build_app(settings: Settings | None = None) -> App:
    """The example app on `settings` (default: from `STALWART_*` environment variables)."""
    app = App(settings or Settings())

    # Reads: running them twice is harmless.
    app.tool(timeout=HTTP_TIMEOUT, retry=HTTP_RETRY, idempotent=True)(fetch_profile)
    app.tool(timeout=HTTP_TIMEOUT, retry=HTTP_RETRY, idempotent=True)(validate_policy)
    app.tool(timeout=HTTP_TIMEOUT, retry=HTTP_RETRY, idempotent=True)(fetch_invoice)
    # Creating POSTs are idempotent too: they send ctx.idempotency_key (stable across attempts)
    # as the Idempotency-Key header, so a retry replays the first response instead of creating
    # a second ticket, notification or payment.
    app.tool(timeout=HTTP_TIMEOUT, retry=HTTP_RETRY, risk="medium", idempotent=True)(create_ticket)
    app.tool(timeout=HTTP_TIMEOUT, retry=HTTP_RETRY, idempotent=True)(notify_user)
    # Medium, not high: under the default approval policy a high-risk tool always needs a
    # person; the invoice template asks for one only above an amount.
    app.tool(timeout=HTTP_TIMEOUT, retry=HTTP_RETRY, risk="medium", idempotent=True)(pay_invoice)
    # A pure function of its arguments.
    app.tool(timeout=PURE_TIMEOUT, retry=PURE_RETRY, idempotent=True)(validate_invoice)
    # The support agent's tools: a read, a pure policy check, and a refund that sends its call's
    # idempotency key. Medium like pay_invoice: the support template asks a person for every
    # refund its agent issues (`approve: {issue_refund: true}`).
    app.tool(timeout=HTTP_TIMEOUT, retry=HTTP_RETRY, idempotent=True)(lookup_order)
    app.tool(timeout=PURE_TIMEOUT, retry=PURE_RETRY, idempotent=True)(check_refund_policy)
    app.tool(timeout=HTTP_TIMEOUT, retry=HTTP_RETRY, risk="medium", idempotent=True)(issue_refund)

    # The LLM side: the extraction's output schema, and the model that answers it. Settings'
    # STALWART_LLM_TIERS replaces these routes with real models.
    app.schema(InvoiceExtraction)
    app.schema(SupportReply)
    app.model("scripted:invoice-reader", invoice_reader())
    app.model("scripted:support-agent", support_model())
    for tier in ("small", "medium"):
        app.route(tier, ["scripted:invoice-reader"])
    app.route("large", ["scripted:support-agent"])

    budget = Budget(max_steps=40, max_wall_seconds=3600, max_usd=0.05, max_tokens=20_000)
    app.workflow(
        "onboarding",
        input=OnboardingInput,
        templates=["templates/onboarding.yaml"],
        budget=budget,
        max_replans=1,
        description="Onboard a new customer: profile, policy check, ticket, welcome message.",
    )
    app.workflow(
        "invoice",
        input=InvoiceInput,
        templates=["templates/invoice.yaml"],
        budget=budget,
        max_replans=1,
        review_confidence=0.8,
        description="Pay a vendor invoice: fetch, extract (LLM), validate, pay.",
    )
    app.workflow(
        "support",
        input=SupportInput,
        templates=["templates/support.yaml"],
        budget=budget,
        description="Answer a customer about an order: an agent looks it up and may refund.",
    )
    return app


app = build_app()
"""The app for `stalwart --app examples.app:app ...` (settings from the environment)."""
