"""What every part of the SQL store stands on: a backend's write transaction, its reads, and
its clock. `SqlStore` and each of its parts (jobs, plans, claims, steps, leases, ..., the ledger,
access, observability) share this one base."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from stalwart.store.sql.tx import Tx

if TYPE_CHECKING:
    from stalwart.domain.records import JobRecord
    from stalwart.errors import CorruptStateError

T = TypeVar("T")


def scope_filter(
    tenant_id: str | None, statuses: Sequence[str] = ()
) -> tuple[list[str], list[Any]]:
    """The WHERE terms and parameters of a listing scoped to a tenant (None: every tenant) and
    to some statuses (empty: every status); callers append their own terms."""
    where, params = ["1 = 1"], list[Any]()
    if tenant_id is not None:
        where.append("tenant_id = ?")
        params.append(tenant_id)
    if statuses:
        where.append(f"status IN ({','.join('?' * len(statuses))})")
        params.extend(statuses)
    return where, params


class SqlBase(ABC):
    """A backend supplies `_write`, `_read` and `now_sql` (the database's clock, epoch seconds)."""

    now_sql: str
    # PostgreSQL runs the two transactions of an agent turn as calls into the server (migration
    # 0009, decision 0040); SQLite runs their statements on its own connection.
    server_turns: bool = False

    @abstractmethod
    async def _write(self, actor: str, fn: Callable[[Tx], T]) -> T:
        """Run `fn` in one write transaction and commit, with its events; all or nothing."""

    @abstractmethod
    async def _read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one read-only statement."""

    async def _now(self) -> float:
        """The database's clock now."""
        return float((await self._read(f"SELECT {self.now_sql}"))[0][0])

    async def _any(self, where: str) -> bool:
        """Whether `where` (a template of `due.py`) matches a row now."""
        return bool(await self._read(f"SELECT 1 {where.format(now=self.now_sql)} LIMIT 1"))

    # Parts other than `JobStore` read a job (its tenant, its plan) or quarantine one: declared
    # here so each part type-checks alone; `JobStore` has them.
    @abstractmethod
    async def job_get(self, job_id: str, *, tenant_id: str | None = None) -> JobRecord:
        """One job; `NotFoundError` if it does not exist for this tenant."""

    @abstractmethod
    async def job_quarantine(self, job_id: str, error: CorruptStateError, *, actor: str) -> None:
        """Quarantine a job whose stored state failed to decode."""
