"""The server's tables on both backends: API keys, shared server secrets, and the dashboard's
reads. Mixed into `SqlStore`, over the backend's `_write` and `_read`."""

from __future__ import annotations

import math
import secrets
from collections.abc import Sequence
from typing import Any, TypeVar

from stalwart.domain.access import KeyRecord, NewKey
from stalwart.domain.records import Dashboard
from stalwart.errors import NotFoundError, UsageError
from stalwart.store.sql.base import SqlBase, scope_filter
from stalwart.store.sql.tx import Tx

T = TypeVar("T")

KEY_COLUMNS = (
    "id, tenant_id, name, role, created, created_by, last_used, revoked, revoked_by, digest"
)
# Jobs read for the latency percentile: the newest this many of the window.
LATENCY_SAMPLE = 10_000
DAY = 86400.0


def _key(row: Sequence[Any]) -> tuple[KeyRecord, str]:
    *fields, stored = row
    names = KEY_COLUMNS.split(", ")[:-1]
    return KeyRecord(**dict(zip(names, fields, strict=True))), str(stored)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The nearest-rank `q` percentile (0-100) of `values`, or None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


class AccessStore(SqlBase):
    """API keys, server secrets and the dashboard (mixed into `SqlStore`)."""

    # -- keys -------------------------------------------------------------------------------------

    async def key_create(self, key: NewKey) -> KeyRecord:
        """Store a new key. `UsageError` when the tenant has an active key of that name."""
        rec = key.record

        def run(tx: Tx) -> bool:
            taken = tx.con.execute(
                "SELECT 1 FROM api_keys WHERE tenant_id = ? AND name = ? AND revoked IS NULL",
                (rec.tenant_id, rec.name),
            ).fetchone()
            if taken:
                return False
            tx.con.execute(
                "INSERT INTO api_keys (id, tenant_id, name, role, digest, created, created_by) "
                "VALUES (?,?,?,?,?,?,?)",
                (rec.id, rec.tenant_id, rec.name, rec.role, key.digest, tx.now, rec.created_by),
            )
            return True

        if not await self._write(rec.created_by, run):
            raise UsageError(
                f"tenant {rec.tenant_id!r} already has an active key named {rec.name!r}; pick "
                "another --name or revoke that key first",
                field="name",
            )
        found = await self.key_get(rec.id)
        assert found is not None
        return found[0]

    async def key_get(self, key_id: str) -> tuple[KeyRecord, str] | None:
        """A key and its stored digest, revoked or not; None if there is no such key."""
        rows = await self._read(f"SELECT {KEY_COLUMNS} FROM api_keys WHERE id = ?", (key_id,))
        return _key(rows[0]) if rows else None

    async def key_list(
        self, *, tenant_id: str | None = None, include_revoked: bool = False
    ) -> list[KeyRecord]:
        """Keys, oldest first (never their secrets)."""
        where, params = scope_filter(tenant_id)
        if not include_revoked:
            where.append("revoked IS NULL")
        rows = await self._read(
            f"SELECT {KEY_COLUMNS} FROM api_keys WHERE {' AND '.join(where)} ORDER BY created, id",
            params,
        )
        return [_key(r)[0] for r in rows]

    async def key_revoke(self, key: str, *, tenant_id: str | None = None, actor: str) -> KeyRecord:
        """Revoke an active key, by id or by name (a name needs its tenant). It stops working
        on the next request; its row stays for the audit trail."""

        def run(tx: Tx) -> str | None:
            # Active keys only: revoking a revoked key finds nothing, by id as by name.
            column = "id" if key.startswith("key_") else "name"
            sql = f"SELECT id, tenant_id FROM api_keys WHERE {column} = ? AND revoked IS NULL"
            params = [key]
            if tenant_id is not None:
                sql += " AND tenant_id = ?"
                params.append(tenant_id)
            rows = tx.con.execute(sql, params).fetchall()
            if len(rows) > 1:
                raise UsageError(
                    f"{len(rows)} tenants have an active key named {key!r}; pass --tenant or "
                    "the key's id",
                    field="tenant",
                )
            if not rows:
                return None
            tx.con.execute(
                "UPDATE api_keys SET revoked = ?, revoked_by = ? WHERE id = ? AND revoked IS NULL",
                (tx.now, actor, rows[0][0]),
            )
            return str(rows[0][0])

        key_id = await self._write(actor, run)
        if key_id is None:
            raise NotFoundError(f"no active key {key!r}", entity="key", id=key)
        found = await self.key_get(key_id)
        assert found is not None
        return found[0]

    async def key_touch(self, key_id: str) -> None:
        """Record that a key was just used."""

        def run(tx: Tx) -> None:
            tx.con.execute("UPDATE api_keys SET last_used = ? WHERE id = ?", (tx.now, key_id))

        await self._write(key_id, run)

    # -- secrets ----------------------------------------------------------------------------------

    async def secret_get(self, name: str) -> str:
        """A secret every process of this database shares, created at random on first use."""
        rows = await self._read("SELECT value FROM server_secrets WHERE name = ?", (name,))
        if rows:
            return str(rows[0][0])

        def run(tx: Tx) -> str:
            tx.con.execute(
                "INSERT INTO server_secrets (name, value, created) VALUES (?,?,?) "
                "ON CONFLICT (name) DO NOTHING",
                (name, secrets.token_urlsafe(32), tx.now),
            )
            row = tx.con.execute(
                "SELECT value FROM server_secrets WHERE name = ?", (name,)
            ).fetchone()
            return str(row[0])

        return await self._write("server", run)

    # -- the dashboard ----------------------------------------------------------------------------

    async def dashboard(
        self, *, tenant_id: str | None = None, window_seconds: float = DAY
    ) -> Dashboard:
        """Jobs by status, success rate and p95 latency over the window, the queue, approvals
        waiting, open dead letters and today's model spend (UTC)."""
        now = await self._now()
        scope, params = ("tenant_id = ?", [tenant_id]) if tenant_id is not None else ("1 = 1", [])
        since = now - window_seconds
        by_status = {
            str(s): int(n)
            for s, n in await self._read(
                f"SELECT status, count(*) FROM jobs WHERE {scope} GROUP BY status", params
            )
        }
        finished_rows = await self._read(
            f"SELECT status, finished - created FROM jobs WHERE {scope} AND finished >= ? "
            "AND status <> 'cancelled' ORDER BY finished DESC LIMIT ?",
            (*params, since, LATENCY_SAMPLE),
        )
        completed = [float(d) for s, d in finished_rows if s == "completed"]
        step_rows = await self._read(
            "SELECT s.status, count(*) FROM steps s JOIN jobs j ON j.id = s.job_id "
            f"WHERE {scope.replace('tenant_id', 's.tenant_id')} "
            "AND s.status IN ('ready', 'retry_wait', 'running') "
            "AND j.status IN ('executing', 'waiting_approval') GROUP BY s.status",
            params,
        )
        steps = {str(s): int(n) for s, n in step_rows}
        review = (
            await self._read(
                "SELECT count(*), min(created), "
                "sum(CASE WHEN status = 'escalated' OR sla_deadline < ? THEN 1 ELSE 0 END) "
                f"FROM reviews WHERE {scope} AND status IN ('pending', 'escalated')",
                (now, *params),
            )
        )[0]
        dead = (
            await self._read(
                f"SELECT count(*) FROM dead_letters WHERE {scope} AND status = 'open'", params
            )
        )[0][0]
        cost = (
            await self._read(
                f"SELECT coalesce(sum(cost_nanos), 0) FROM llm_calls WHERE {scope} "
                "AND created >= ?",
                (*params, now - now % DAY),
            )
        )[0][0]
        return Dashboard(
            now=now,
            window_seconds=window_seconds,
            jobs_by_status=by_status,
            finished=len(finished_rows),
            succeeded=len(completed),
            p95_job_seconds=percentile(completed, 95),
            steps_ready=steps.get("ready", 0),
            steps_retrying=steps.get("retry_wait", 0),
            steps_running=steps.get("running", 0),
            jobs_planning=by_status.get("planning", 0) + by_status.get("replanning", 0),
            approvals_waiting=int(review[0]),
            approvals_overdue=int(review[2] or 0),
            oldest_approval=float(review[1]) if review[1] is not None else None,
            dead_letters_open=int(dead),
            cost_today_nanos=int(cost),
        )
