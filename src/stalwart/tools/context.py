"""ToolContext: what a running tool knows about its step, and how it learns it was cancelled."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from stalwart.errors import ErrorClass, ToolError
from stalwart.types import to_datetime


class StepCancelledError(ToolError):
    """The job was cancelled while this step ran."""

    error_class = ErrorClass.CANCELLED


class MemorySearch(Protocol):
    """What a tool may search: the tenant's knowledge (set by the worker; see
    `stalwart.engine.recall.Recall.knowledge`)."""

    async def knowledge(
        self,
        tenant_id: str,
        query: str,
        *,
        collections: Sequence[str] | None = ...,
        k: int = ...,
        min_similarity: float = ...,
        scope: Any = ...,
    ) -> list[Any]:
        """The best chunks for `query`."""
        ...

    async def episodes(
        self,
        tenant_id: str,
        query: str,
        *,
        k: int = ...,
        min_similarity: float = ...,
        workflow: str | None = ...,
        exclude_job: str | None = ...,
        scope: Any = ...,
    ) -> list[Any]:
        """The past episodes most like `query`."""
        ...


@dataclass(slots=True)
class ToolContext:
    """Passed to every tool call.

    `idempotency_key` is `tenant:job:step`, stable across attempts: pass it to external APIs so
    a retried call does not repeat its effect. `cancelled` turns true within one heartbeat of
    `stalwart jobs cancel`; long tools should check it (or call `raise_if_cancelled`).
    """

    tenant_id: str
    job_id: str
    step_id: str
    attempt: int
    idempotency_key: str
    deadline: float
    workflow: str = ""
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("stalwart.tool"))
    _cancel: asyncio.Event = field(default_factory=asyncio.Event)
    effects: list[tuple[str, tuple[Any, ...]]] = field(default_factory=list)
    # The tenant's memory, for tools that search it (the built-in `memory_search`).
    memory: MemorySearch | None = None

    def on_commit(self, sql: str, params: Sequence[Any] = ()) -> None:
        """Register a write to your own tables in Stalwart's database that runs inside this
        step's completion transaction, fenced by its lease: it is applied exactly once, or not
        at all (a failed attempt, a lost lease, a worker that died). Write `?` placeholders on
        either backend. Registered writes are discarded if the attempt fails."""
        if not isinstance(sql, str) or not sql.strip():
            raise ValueError("on_commit needs an SQL statement (str) with ? placeholders")
        self.effects.append((sql, tuple(params)))

    @property
    def deadline_at(self) -> datetime:
        """When this attempt times out (aware UTC)."""
        value = to_datetime(self.deadline)
        assert value is not None
        return value

    @property
    def cancelled(self) -> bool:
        """True once the job was cancelled."""
        return self._cancel.is_set()

    def seconds_left(self) -> float:
        """Seconds until this attempt's timeout."""
        return max(0.0, self.deadline - time.time())

    def cancel(self) -> None:
        """Set the cancellation flag (done by the worker, not by tools)."""
        self._cancel.set()

    async def wait_cancelled(self) -> None:
        """Wait until the job is cancelled."""
        await self._cancel.wait()

    def raise_if_cancelled(self) -> None:
        """Raise `StepCancelledError` if the job was cancelled."""
        if self.cancelled:
            raise StepCancelledError("the job was cancelled", code="cancelled")
