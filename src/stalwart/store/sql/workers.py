"""Workers in the SQL store: registering one, its heartbeats, its stop, and the list of workers
with what each holds."""

from __future__ import annotations

from typing import Any

from stalwart.store.base import WorkerInfo, WorkerRecord
from stalwart.store.sql.base import SqlBase
from stalwart.store.sql.rows import loads
from stalwart.store.sql.tx import Tx
from stalwart.types import dumps


class WorkerStore(SqlBase):
    """The workers part of `SqlStore`."""

    async def worker_register(self, info: WorkerInfo) -> None:
        """Record a worker as running (again, if its id is known)."""

        def run(tx: Tx) -> None:
            tx.con.execute(
                "INSERT INTO workers (id, host, pid, concurrency, tools, version, status, "
                "started, heartbeat, stopped) VALUES (?,?,?,?,?,?,?,?,?,NULL) "
                "ON CONFLICT (id) DO UPDATE SET host = excluded.host, pid = excluded.pid, "
                "concurrency = excluded.concurrency, tools = excluded.tools, "
                "version = excluded.version, status = excluded.status, "
                "started = excluded.started, heartbeat = excluded.heartbeat, stopped = NULL",
                (
                    info.id,
                    info.host,
                    info.pid,
                    info.concurrency,
                    dumps(sorted(info.tools)),
                    info.version,
                    "running",
                    tx.now,
                    tx.now,
                ),
            )

        await self._write(info.id, run)

    async def worker_beat(self, worker_id: str) -> None:
        """Record that a worker is alive."""

        def run(tx: Tx) -> None:
            tx.con.execute(
                "UPDATE workers SET heartbeat = ?, status = 'running' WHERE id = ?",
                (tx.now, worker_id),
            )

        await self._write(worker_id, run)

    async def worker_stopped(self, worker_id: str) -> None:
        """Record that a worker stopped cleanly."""

        def run(tx: Tx) -> None:
            tx.con.execute(
                "UPDATE workers SET status = 'stopped', stopped = ?, heartbeat = ? WHERE id = ?",
                (tx.now, tx.now, worker_id),
            )

        await self._write(worker_id, run)

    async def worker_list(
        self, *, live_seconds: float, include_stopped: bool = True
    ) -> list[WorkerRecord]:
        """Workers, newest first, with the steps each holds."""
        where = "" if include_stopped else " WHERE stopped IS NULL"
        rows = await self._read(
            f"SELECT {self.now_sql}, id, host, pid, concurrency, tools, version, status, started, "
            f"heartbeat, stopped FROM workers{where} ORDER BY started DESC, id"
        )
        held = await self._read(
            "SELECT lease_owner, id, job_id, key, tool, lease_expires FROM steps "
            "WHERE status = 'running' AND lease_owner IS NOT NULL ORDER BY id"
        )
        holding: dict[str, list[dict[str, Any]]] = {}
        for owner, step_id, job_id, key, tool, expires in held:
            holding.setdefault(owner, []).append(
                {
                    "step_id": step_id,
                    "job_id": job_id,
                    "step": key,
                    "tool": tool,
                    "lease_expires": expires,
                }
            )
        out = []
        for r in rows:
            now = float(r[0])
            live = r[10] is None and now - float(r[9]) <= live_seconds
            out.append(
                WorkerRecord(
                    id=r[1],
                    host=r[2],
                    pid=int(r[3]),
                    concurrency=int(r[4]),
                    tools=loads(r[5], f"tools of worker {r[1]}") or [],
                    version=r[6],
                    status=r[7] if live or r[10] is not None else "dead",
                    started=float(r[8]),
                    heartbeat=float(r[9]),
                    stopped=r[10],
                    live=live,
                    holding=holding.get(r[1], []),
                )
            )
        return out


__all__ = ["WorkerStore"]
