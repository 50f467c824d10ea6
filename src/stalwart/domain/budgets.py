"""Budgets and the ledger of model calls: pure data and the rules for naming budgets.

Money is integer nano-USD (`NANOS_PER_USD` per dollar) everywhere below the gateway, so that
reservations and settlements add up exactly on both backends.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Context, Decimal
from typing import Any, Final, Literal

from stalwart.domain.records import json_ready

NANOS_PER_USD: Final = 1_000_000_000
BudgetScope = Literal["job", "tenant_day", "tenant_month"]
MONEY_CONTEXT: Final = Context(prec=60)
"""Our own decimal context: exact for any realistic amount, whatever the thread's context says."""


def decimal_to_nanos(amount_usd: Decimal, rounding: str = ROUND_HALF_EVEN) -> int:
    """An exact USD amount as integer nano-USD, rounded as asked."""
    scaled = MONEY_CONTEXT.multiply(amount_usd, NANOS_PER_USD)
    return int(scaled.to_integral_value(rounding=rounding, context=MONEY_CONTEXT))


def nanos(usd: float | Decimal | str) -> int:
    """USD (a float, a `Decimal` or a decimal string) as integer nano-USD, to the nearest
    nano-USD. A float is read by its shortest representation, so `nanos(usd(n)) == n`."""
    amount = Decimal(repr(usd)) if isinstance(usd, float) else Decimal(usd)
    if not amount.is_finite():
        raise ValueError(f"not a finite amount of USD: {usd!r}")
    return decimal_to_nanos(amount)


def usd(nanos: int) -> float:
    """Nano-USD as (float) USD, for display."""
    return nanos / NANOS_PER_USD


def to_nanos(amount: float | None) -> int | None:
    """`nanos`, with None (no limit) staying None."""
    return None if amount is None else nanos(amount)


def to_usd(amount: int | None) -> float | None:
    """`usd`, with None (no limit) staying None."""
    return None if amount is None else usd(amount)


def job_budget_key(job_id: str) -> str:
    """The key of a job's budget."""
    return f"job:{job_id}"


def tenant_budget_keys(tenant_id: str, at: float) -> tuple[str, str]:
    """The keys of a tenant's daily and monthly budgets for the UTC day of `at` (epoch)."""
    day = datetime.fromtimestamp(at, UTC)
    return (
        f"tenant:{tenant_id}:day:{day:%Y-%m-%d}",
        f"tenant:{tenant_id}:month:{day:%Y-%m}",
    )


@dataclass(frozen=True, slots=True)
class BudgetLine:
    """One budget a call is charged to, with its limits (None: tracked, not limited)."""

    key: str
    tenant_id: str
    scope: BudgetScope
    limit_nanos: int | None = None
    limit_tokens: int | None = None

    @property
    def limited(self) -> bool:
        """Whether the line has any limit."""
        return self.limit_nanos is not None or self.limit_tokens is not None


@dataclass(frozen=True, slots=True)
class CallScope:
    """Who a call is made for: the ledger row's identity and the budgets it is charged to."""

    tenant_id: str
    job_id: str
    step_key: str | None = None
    attempt: int = 0
    purpose: str = ""
    budgets: tuple[BudgetLine, ...] = ()


@dataclass(slots=True)
class NewCall:
    """A ledger row as the gateway opens it, before the provider answers."""

    scope: CallScope
    seq: int
    provider: str
    model: str
    tier: str | None
    reserved_nanos: int
    reserved_tokens: int
    expires_in: float
    context_tokens: int | None = None
    context_limit: int | None = None


@dataclass(slots=True)
class CallResult:
    """How a call ended: the figures the ledger row is settled with. `abandoned`: cancelled
    before its request was sent, charged nothing; `cancelled`: cancelled (or its process
    exiting) after its request may have been sent, charged the worst case it reserved whatever
    the figures say (decision 0034)."""

    outcome: Literal["ok", "invalid_output", "error", "cached", "refused", "abandoned", "cancelled"]
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    cost_nanos: int = 0
    priced: bool = True
    cache_hit: bool = False
    latency_ms: float | None = None
    error_class: str | None = None
    error: str | None = None
    model: str | None = None

    @property
    def tokens(self) -> int:
        """Tokens charged to token budgets (input plus output)."""
        return self.input_tokens + self.output_tokens


@dataclass(frozen=True, slots=True)
class BudgetWarning:
    """A budget crossed its warning ratio (once per budget)."""

    key: str
    tenant_id: str
    job_id: str
    scope: str
    unit: Literal["usd", "tokens"]
    limit: float
    spent: float
    ratio: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return json_ready(self)


@dataclass(slots=True)
class LlmCallRecord:
    """One row of the ledger as stored."""

    id: int
    tenant_id: str
    job_id: str
    step_key: str | None
    attempt: int
    seq: int
    purpose: str
    provider: str
    model: str
    tier: str | None
    outcome: str
    reserved_nanos: int
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    cost_nanos: int
    priced: bool
    cache_hit: bool
    latency_ms: float | None
    context_tokens: int | None
    context_limit: int | None
    error_class: str | None
    error: str | None
    created: float
    budget_keys: list[str] = field(default_factory=list)

    @property
    def cost_usd(self) -> float:
        """The call's cost in USD."""
        return usd(self.cost_nanos)

    @property
    def context_utilization(self) -> float | None:
        """Share of the context window the call's context used."""
        if not self.context_tokens or not self.context_limit:
            return None
        return self.context_tokens / self.context_limit

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, with `cost_usd` and ISO `created_at`."""
        out = json_ready(self, ("created",))
        out["cost_usd"] = self.cost_usd
        return out


@dataclass(slots=True)
class BudgetRecord:
    """One budget row: its limits, spend and reservations in flight."""

    key: str
    tenant_id: str
    scope: str
    limit_nanos: int | None
    limit_tokens: int | None
    spent_nanos: int
    spent_tokens: int
    reserved_nanos: int
    reserved_tokens: int
    warned: bool

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, with USD figures beside the nanos."""
        out = json_ready(self)
        out["limit_usd"] = to_usd(self.limit_nanos)
        out["spent_usd"] = to_usd(self.spent_nanos)
        out["reserved_usd"] = to_usd(self.reserved_nanos)
        return out


def ledger_totals(calls: list[LlmCallRecord]) -> dict[str, Any]:
    """A job's calls summed: calls (cache hits and refusals included), tokens, cost."""
    return {
        "calls": len(calls),
        "cache_hits": sum(1 for c in calls if c.cache_hit),
        "refused": sum(1 for c in calls if c.outcome == "refused"),
        "input_tokens": sum(c.input_tokens for c in calls),
        "output_tokens": sum(c.output_tokens for c in calls),
        "cost_usd": usd(sum(c.cost_nanos for c in calls)),
    }
