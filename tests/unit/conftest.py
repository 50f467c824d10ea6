"""Shared fixtures for the unit tests: a small tool registry (`tools`)."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from stalwart.domain.retry import RetryPolicy
from stalwart.tools.context import ToolContext
from stalwart.tools.registry import ToolRegistry


class FetchArgs(BaseModel):
    user_id: str
    limit: int = 10


class Profile(BaseModel):
    user_id: str
    email: str


class SendArgs(BaseModel):
    to: str
    body: str


class Sent(BaseModel):
    message_id: str


class ChargeArgs(BaseModel):
    amount: float
    currency: str = "EUR"


class Receipt(BaseModel):
    receipt_id: str


async def fetch_profile(args: FetchArgs, ctx: ToolContext) -> Profile:
    """Fetch a user's profile."""
    return Profile(user_id=args.user_id, email=f"{args.user_id}@example.com")


async def send_email(args: SendArgs, ctx: ToolContext) -> Sent:
    return Sent(message_id=f"m-{args.to}")


async def charge(args: ChargeArgs, ctx: ToolContext) -> Receipt:
    return Receipt(receipt_id="r-1")


async def find_charge(args: ChargeArgs, ctx: ToolContext) -> Receipt | None:
    return None


CHARGE_RETRY = RetryPolicy(max_attempts=5, base_seconds=2, cap_seconds=30)


def make_registry() -> ToolRegistry:
    """fetch_profile (low risk, idempotent, timeout 10), send_email (high risk, timeout 5),
    charge (medium risk, no timeout, its own retry policy, reconcile)."""
    tools = ToolRegistry()
    tools.register(fetch_profile, timeout=10, idempotent=True)
    tools.register(send_email, timeout=5, idempotent=False, risk="high")
    tools.register(
        charge, idempotent=False, risk="medium", retry=CHARGE_RETRY, reconcile=find_charge
    )
    return tools


@pytest.fixture
def tools() -> ToolRegistry:
    return make_registry()
