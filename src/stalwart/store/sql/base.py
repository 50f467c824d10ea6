"""What every part of the SQL store stands on: a backend's write transaction, its reads, and
its clock. `SqlStore` and its mixins (ledger, access, observability) share this one base."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from stalwart.store.sql.tx import Tx

T = TypeVar("T")


class SqlBase(ABC):
    """A backend supplies `_write`, `_read` and `now_sql` (the database's clock, epoch seconds)."""

    now_sql: str

    @abstractmethod
    async def _write(self, actor: str, fn: Callable[[Tx], T]) -> T:
        """Run `fn` in one write transaction and commit, with its events; all or nothing."""

    @abstractmethod
    async def _read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one read-only statement."""

    async def _now(self) -> float:
        """The database's clock now."""
        return float((await self._read(f"SELECT {self.now_sql}"))[0][0])
