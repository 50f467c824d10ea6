"""The example app: two workflows over the flaky local service in `examples/service.py`.

* **onboarding** (`{"user_id": "u-1001"}`): fetch the profile, check it against the policy
  engine, open an onboarding ticket (enterprise customers need a person to approve it first),
  then send a welcome notification (not critical: the job completes degraded without it).
* **invoice** (`{"invoice_id": "INV-7-250.00"}`): fetch the invoice, extract vendor, amount,
  currency and due date from its text with a language model (structured output, validated),
  validate them, and pay (payments over 1000, a low extraction confidence or any risk flag need
  a person to approve).

The extraction runs on a **scripted model** by default (`scripted:invoice-reader`, offline, free,
clearly not a real model: it reads the fields with a regular expression). Point it at a real one
by routing the small tier, e.g. `STALWART_LLM_TIERS='{"small": ["openai:gpt-4o-mini"]}'` with
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

import os
import re

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

    # The LLM side: the extraction's output schema, and the model that answers it. Settings'
    # STALWART_LLM_TIERS replaces these routes with real models.
    app.schema(InvoiceExtraction)
    app.model("scripted:invoice-reader", invoice_reader())
    for tier in ("small", "medium", "large"):
        app.route(tier, ["scripted:invoice-reader"])

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
    return app


app = build_app()
"""The app for `stalwart --app examples.app:app ...` (settings from the environment)."""
