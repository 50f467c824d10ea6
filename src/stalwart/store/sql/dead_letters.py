"""Dead letters in the SQL store: listing them and reading one (by its id or its job's)."""

from __future__ import annotations

from collections.abc import Sequence

from stalwart.domain.records import DeadLetterRecord
from stalwart.errors import NotFoundError
from stalwart.store.sql.base import SqlBase, scope_filter
from stalwart.store.sql.rows import DEAD_LETTER_COLUMNS, dead_letter_from_row


class DeadLetterStore(SqlBase):
    """The dead letters part of `SqlStore`."""

    async def dead_letter_list(
        self, *, tenant_id: str | None = None, statuses: Sequence[str] = ("open",), limit: int = 50
    ) -> list[DeadLetterRecord]:
        """Dead letters, newest first."""
        where, params = scope_filter(tenant_id, statuses)
        rows = await self._read(
            f"SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters WHERE {' AND '.join(where)} "
            "ORDER BY created DESC LIMIT ?",
            (*params, limit),
        )
        return [dead_letter_from_row(r) for r in rows]

    async def dead_letter_get(
        self, dead_letter_id: str, *, tenant_id: str | None = None
    ) -> DeadLetterRecord:
        """One dead letter, by its id or by its job's id (the newest for that job)."""
        rows = await self._read(
            f"SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters WHERE id = ? OR job_id = ? "
            "ORDER BY created DESC LIMIT 1",
            (dead_letter_id, dead_letter_id),
        )
        if not rows or (tenant_id is not None and rows[0][1] != tenant_id):
            raise NotFoundError(
                f"no dead letter {dead_letter_id!r}", entity="dead_letter", id=dead_letter_id
            )
        return dead_letter_from_row(rows[0])


__all__ = ["DeadLetterStore"]
