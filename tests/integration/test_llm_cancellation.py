"""Cancelled model calls in the ledger, on both backends (decision 0034): a call cancelled
before its request left is `abandoned` and charged nothing; one cancelled after it may have
left (or whose process is exiting) is `cancelled` and charged the worst case it reserved; and a
second cancellation cannot cut its settlement short, which would leave the row `reserved`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import BaseModel

from stalwart.domain.budgets import job_budget_key
from stalwart.errors import ErrorClass
from stalwart.llm.gateway import Gateway, LlmCall
from stalwart.llm.pricing import ModelPrice, Pricing
from stalwart.llm.routing import ModelRegistry, Router
from stalwart.llm.types import Message, ModelRequest, ModelResponse, ProviderError
from stalwart.settings import Settings
from stalwart.store import Store, open_store

WAIT = 60.0  # a deadline for what should happen at once, however loaded the machine


class Label(BaseModel):
    label: str


class HeldModel:
    """A model whose requests wait for the test: `sent` is set once one is in flight; it
    answers when `answer` is set, or raises `raises` at once."""

    provider = "held"
    model = "m"

    def __init__(self, raises: BaseException | None = None) -> None:
        self.raises = raises
        self.calls = 0
        self.sent = asyncio.Event()
        self.answer = asyncio.Event()

    async def complete(self, request: ModelRequest) -> ModelResponse:
        self.calls += 1
        self.sent.set()
        if self.raises is not None:
            raise self.raises
        await self.answer.wait()
        return ModelResponse('{"label": "spam"}', input_tokens=12, output_tokens=4, model="m")

    async def close(self) -> None:
        return None


class GatedStore:
    """The store, with one ledger write held at a gate the test opens: `llm_reserve` after it
    committed (its answer not back yet, as when a cancellation lands while PostgreSQL's thread
    commits), `llm_settle` before it writes."""

    def __init__(self, store: Store, held: str) -> None:
        self.store = store
        self.held = held
        self.reached = asyncio.Event()
        self.gate = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    async def llm_reserve(self, *args: Any, **kwargs: Any) -> int:
        call_id = await self.store.llm_reserve(*args, **kwargs)
        if self.held == "reserve":
            self.reached.set()
            await self.gate.wait()
        return call_id

    async def llm_settle(self, *args: Any, **kwargs: Any) -> Any:
        if self.held == "settle":
            self.reached.set()
            await self.gate.wait()
        return await self.store.llm_settle(*args, **kwargs)


def gateway(store: Any, model: HeldModel) -> Gateway:
    settings = Settings(llm_timeout_seconds=WAIT)
    return Gateway(
        store=store,
        router=Router({"small": ["held:m"]}, settings),
        models=ModelRegistry(settings, {"held:m": model}),
        pricing=Pricing({"held:m": ModelPrice(input_per_mtok=1000.0, output_per_mtok=1000.0)}),
        settings=settings,
    )


async def call(gw: Gateway) -> Any:
    ask = LlmCall(messages=(Message("user", "spam?"),), tier="small", output=Label, max_tokens=200)
    return await gw.call(ask, gw.scope("acme", "j1", step_key="s", attempt=1, job_max_usd=10.0))


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[Store]:
    s = open_store(db_url, Settings(database_url=db_url, sqlite_synchronous="OFF"))
    await s.migrate()
    yield s
    await s.close()


async def ledger(store: Store) -> tuple[Any, tuple[int, int, int, int]]:
    """The job's one ledger row, and its budget's (spent, reserved) nanos and tokens."""
    [row] = await store.llm_call_list("j1")
    [budget] = await store.budget_list(keys=[job_budget_key("j1")])
    return row, (
        budget.spent_nanos,
        budget.reserved_nanos,
        budget.spent_tokens,
        budget.reserved_tokens,
    )


async def cancelled(task: asyncio.Task[Any]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, WAIT)


async def test_a_call_cancelled_once_its_request_is_out_is_charged_its_worst_case(
    store: Store,
) -> None:
    model = HeldModel()
    task = asyncio.create_task(call(gateway(store, model)))
    await asyncio.wait_for(model.sent.wait(), WAIT)
    await cancelled(task)

    row, (spent, reserved, spent_tokens, reserved_tokens) = await ledger(store)
    # Not a provider error: the metrics of provider errors do not count it.
    assert (row.outcome, row.error_class) == ("cancelled", ErrorClass.CANCELLED.value)
    # The provider may bill it: the worst case it held is spent, nothing stays reserved.
    assert row.cost_nanos == row.reserved_nanos > 0
    assert (spent, reserved) == (row.reserved_nanos, 0)
    assert spent_tokens > 0 and reserved_tokens == 0


async def test_a_call_cancelled_before_its_request_left_is_abandoned_and_charged_nothing(
    store: Store,
) -> None:
    model = HeldModel()
    gated = GatedStore(store, "reserve")
    task = asyncio.create_task(call(gateway(gated, model)))
    await asyncio.wait_for(gated.reached.wait(), WAIT)
    task.cancel()
    gated.gate.set()  # the reservation committed; its answer comes back after the cancellation
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, WAIT)

    row, figures = await ledger(store)
    assert model.calls == 0
    assert (row.outcome, row.cost_nanos, row.error_class) == ("abandoned", 0, "cancelled")
    assert figures == (0, 0, 0, 0)  # released at once, not a minute later by the reaper


@pytest.mark.parametrize("answered", [False, True], ids=["in_flight", "answered"])
async def test_a_second_cancellation_cannot_cut_the_settlement_short(
    store: Store, answered: bool
) -> None:
    model = HeldModel()
    gated = GatedStore(store, "settle")
    task = asyncio.create_task(call(gateway(gated, model)))
    await asyncio.wait_for(model.sent.wait(), WAIT)
    if answered:
        model.answer.set()  # the answer is in: cancelled while its settlement is written
    else:
        task.cancel()  # cancelled in flight: the settlement starts
    await asyncio.wait_for(gated.reached.wait(), WAIT)
    task.cancel()  # a step's lease lost, then the worker draining: cancelled again
    gated.gate.set()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, WAIT)

    row, (spent, reserved, _, reserved_tokens) = await ledger(store)
    assert (reserved, reserved_tokens) == (0, 0)
    if answered:
        assert row.outcome == "ok" and 0 < row.cost_nanos == spent < row.reserved_nanos
    else:
        assert row.outcome == "cancelled" and row.cost_nanos == spent == row.reserved_nanos


@pytest.mark.parametrize("exit_exc", [SystemExit, KeyboardInterrupt])
def test_an_exiting_process_is_no_provider_error_and_its_call_is_charged(
    db_url: str, exit_exc: type[BaseException]
) -> None:
    async def scenario() -> None:
        store = open_store(db_url, Settings(database_url=db_url, sqlite_synchronous="OFF"))
        try:
            await store.migrate()
            await call(gateway(store, HeldModel(raises=exit_exc())))
        finally:
            await store.close()

    async def read() -> tuple[Any, tuple[int, int, int, int]]:
        store = open_store(db_url, Settings(database_url=db_url))
        try:
            return await ledger(store)
        finally:
            await store.close()

    # Raised as it is, out of the event loop: not turned into a (non-retriable) ProviderError.
    with pytest.raises(exit_exc) as raised:
        asyncio.run(scenario())
    assert not isinstance(raised.value, ProviderError)
    row, (spent, reserved, _, _) = asyncio.run(read())
    assert (row.outcome, row.error_class) == ("cancelled", "cancelled")
    assert spent == row.cost_nanos == row.reserved_nanos > 0 and reserved == 0
