"""`SqlStore`: the `Store` protocol written once, in SQL that SQLite and PostgreSQL both run.

Each write method builds a function of one `Tx` and hands it to the backend's `_write`, which runs
it in one transaction (BEGIN IMMEDIATE on SQLite; READ COMMITTED with row locks on PostgreSQL)
and commits it with its events, or rolls all of it back. The backends differ in the few places
`Tx` names: the row-lock clauses and the clock. See
docs/decisions/0014-one-sql-store-two-backends.md.

`SqlStore` is composed of its parts, one mixin over `SqlBase` per entity, each in its module:
jobs, plans (and replanning), claims, steps, leases, due (what there is to do), limits,
workers, reviews, dead letters, events, the LLM ledger (llm), access, observability and memory.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Callable

from stalwart.store.base import MigrationStatus
from stalwart.store.sql.access import AccessStore
from stalwart.store.sql.agents import AgentStore
from stalwart.store.sql.claims import ClaimStore
from stalwart.store.sql.dead_letters import DeadLetterStore
from stalwart.store.sql.due import DueStore
from stalwart.store.sql.events import EventStore
from stalwart.store.sql.jobs import JobStore
from stalwart.store.sql.leases import LeaseStore
from stalwart.store.sql.limits import LimitStore
from stalwart.store.sql.llm import LlmLedger
from stalwart.store.sql.memory import MemoryStore
from stalwart.store.sql.observability import ObservabilityStore
from stalwart.store.sql.plans import PlanStore
from stalwart.store.sql.reviews import ReviewStore
from stalwart.store.sql.steps import StepStore
from stalwart.store.sql.workers import WorkerStore


class SqlStore(
    JobStore,
    PlanStore,
    ClaimStore,
    StepStore,
    LeaseStore,
    DueStore,
    LimitStore,
    WorkerStore,
    ReviewStore,
    DeadLetterStore,
    EventStore,
    LlmLedger,
    AccessStore,
    ObservabilityStore,
    MemoryStore,
    AgentStore,
    ABC,
):
    """The `Store` protocol in SQL both backends accept. A backend supplies how a write
    transaction runs (`_write`), how a read runs (`_read`), its migrations, and `now_sql`, the
    SQL expression for the database's clock in epoch seconds."""

    url: str
    wakeups: bool = False

    async def listen(self, wake: Callable[[], None]) -> None:
        """No push notifications here: wait to be cancelled (workers poll)."""
        await asyncio.Event().wait()

    @abstractmethod
    async def migrate(self) -> list[int]:
        """Apply pending migrations; return the versions applied now."""

    @abstractmethod
    async def migration_status(self) -> MigrationStatus:
        """Applied and pending migrations."""

    @abstractmethod
    async def close(self) -> None:
        """Release connections."""


__all__ = ["SqlStore"]
