"""What a worker says when things go wrong around its steps: a database outage is one WARNING
line without a traceback, as in every loop; a real failure (a side task that crashed, model
clients that would not close) is logged with its traceback, never swallowed."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from stalwart import App, Settings
from stalwart.errors import StoreUnavailableError
from stalwart.llm.scripted import ScriptedModel
from stalwart.store import Store, open_store

WAIT = 60.0  # a deadline for what should happen at once, however loaded the machine


class FaultyStore:
    """The real store, with the faults a test asks for."""

    def __init__(self, store: Store, *, outage: bool = False, listener_breaks: bool = False):
        self.store = store
        self.outage = outage
        self.listener_breaks = listener_breaks
        self.listening = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    async def episodes_pending(self, *args: Any, **kwargs: Any) -> Any:
        if self.outage:
            raise StoreUnavailableError(
                "the database cannot be reached at 127.0.0.1:5432: connection refused"
            )
        return await self.store.episodes_pending(*args, **kwargs)

    async def listen(self, wake: Callable[[], None]) -> None:
        self.listening.set()
        if not self.listener_breaks:
            return await self.store.listen(wake)
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise RuntimeError("the listener broke while closing") from None


class UnclosableModel(ScriptedModel):
    async def close(self) -> None:
        raise RuntimeError("the model's client would not close")


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = open_store(f"sqlite:///{tmp_path}/w.db", Settings(sqlite_synchronous="OFF"))
    await s.migrate()
    yield s
    await s.close()


def app() -> App:
    return App(Settings(memory_interval_seconds=0.05, poll_interval_seconds=0.05))


async def wait_for(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def records(caplog: pytest.LogCaptureFixture, action: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "action", None) == action]


async def test_a_database_outage_while_recording_episodes_is_one_warning_line(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    faulty = FaultyStore(store, outage=True)
    worker = app().worker(store=faulty, worker_id="w1")  # type: ignore[arg-type]
    caplog.set_level(logging.INFO, logger="stalwart")
    running = asyncio.create_task(worker.run())
    try:
        await wait_for(
            lambda: any(getattr(r, "loop", "") == "memory" for r in caplog.records),
            "the memory loop to meet the outage",
        )
    finally:
        worker.stop()
        await asyncio.wait_for(running, WAIT)

    [first, *_] = [r for r in caplog.records if getattr(r, "loop", "") == "memory"]
    assert (first.levelno, first.action, first.exc_info) == (  # type: ignore[attr-defined]
        logging.WARNING,
        "store_unavailable",
        None,
    )
    assert "connection refused" in first.getMessage() and "\n" not in first.getMessage()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_failures_while_a_worker_stops_are_logged_not_swallowed(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    application = app()
    application.model("scripted:m", UnclosableModel("m"))
    faulty = FaultyStore(store, listener_breaks=True)
    worker = application.worker(store=faulty, worker_id="w1")  # type: ignore[arg-type]
    caplog.set_level(logging.INFO, logger="stalwart")
    running = asyncio.create_task(worker.run())
    await asyncio.wait_for(faulty.listening.wait(), WAIT)
    worker.stop()
    await asyncio.wait_for(running, WAIT)

    [died] = records(caplog, "worker_side_task_died")
    assert died.levelno == logging.ERROR and "stalwart-listen" in died.getMessage()
    assert died.exc_info is not None and "listener broke" in str(died.exc_info[1])
    [unclosed] = records(caplog, "gateway_close_failed")
    assert unclosed.levelno == logging.WARNING
    assert unclosed.exc_info is not None and "would not close" in str(unclosed.exc_info[1])
