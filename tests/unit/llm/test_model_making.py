"""Making a model (importing its SDK, building its client) never runs on the event loop: a
first call that has to make its model leaves the loop free, and a worker makes its routed models
before it claims any work, so no step's lease pays for it."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from pydantic import BaseModel

from stalwart import App
from stalwart.llm import routing
from stalwart.llm.gateway import LlmCall
from stalwart.llm.scripted import ScriptedModel
from stalwart.llm.types import Message, Model
from stalwart.settings import Settings
from stalwart.store import Store, open_store

SLOW_SECONDS = 2.0  # how long making the model blocks its thread (`import openai` takes 0.5-2 s)


class Label(BaseModel):
    label: str


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = open_store(f"sqlite:///{tmp_path}/m.db", Settings(sqlite_synchronous="OFF"))
    await s.migrate()
    yield s
    await s.close()


@pytest.fixture
def made(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Models of OpenAI-compatible endpoints are made by a stand-in that blocks its thread for
    `SLOW_SECONDS`, as importing an SDK does; each make is recorded (name, thread)."""
    calls: list[tuple[str, str]] = []

    def slow(name: str, provider: str, *args: object) -> Model:
        time.sleep(SLOW_SECONDS)
        calls.append((name, threading.current_thread().name))
        return ScriptedModel(name, default={"label": "spam"})

    monkeypatch.setattr(routing, "_openai", slow)
    return calls


def app_with(*refs: str) -> App:
    app = App(
        Settings(
            llm_endpoints={"local": {"kind": "openai", "base_url": "http://127.0.0.1:9/v1"}},
            llm_tiers={"small": list(refs)},
        )
    )
    return app


async def max_lag_while(work: Callable[[], object]) -> float:
    """The longest the event loop was held up (beyond a 10 ms tick) while `work` ran."""
    lag = 0.0
    done = asyncio.Event()

    async def probe() -> None:
        nonlocal lag
        while not done.is_set():
            before = time.monotonic()
            await asyncio.sleep(0.01)
            lag = max(lag, time.monotonic() - before - 0.01)

    prober = asyncio.create_task(probe())
    await asyncio.sleep(0)
    try:
        await work()  # type: ignore[misc]
    finally:
        done.set()
        await prober
    return lag


async def test_a_first_call_makes_its_model_off_the_event_loop(
    store: Store, made: list[tuple[str, str]]
) -> None:
    gw = app_with("local:slow").gateway(store)
    ask = LlmCall(messages=(Message("user", "spam?"),), tier="small", output=Label)

    lag = await max_lag_while(lambda: gw.call(ask, gw.scope("acme", "j1")))

    [(name, thread)] = made
    assert name == "slow" and thread != threading.main_thread().name
    # Made on the loop, the 2 s would stall every heartbeat; on a thread, the loop ticks on.
    assert lag < SLOW_SECONDS / 2


async def test_concurrent_first_calls_make_the_model_once(
    store: Store, made: list[tuple[str, str]]
) -> None:
    gw = app_with("local:slow").gateway(store)
    ask = LlmCall(messages=(Message("user", "spam?"),), tier="small", output=Label)
    await asyncio.gather(*(gw.call(ask, gw.scope("acme", f"j{n}")) for n in range(3)))
    assert [name for name, _ in made] == ["slow"]


async def test_a_worker_makes_its_routed_models_before_it_claims(
    store: Store, made: list[tuple[str, str]], caplog: pytest.LogCaptureFixture
) -> None:
    app = app_with("local:slow", "nowhere:model")
    worker = app.worker(store=store)
    with caplog.at_level(logging.WARNING, logger="stalwart.llm"):
        await worker.start()

    assert [name for name, _ in made] == ["slow"]
    gateway = worker.executor.gateway
    assert gateway is not None and gateway.models.made("local:slow")
    # A model that cannot be made does not stop the worker: it is logged, and its first call
    # fails as it would have.
    [record] = [r for r in caplog.records if getattr(r, "action", "") == "model_unavailable"]
    assert "nowhere:model" in record.getMessage()
