"""The worker process: claims ready steps and runs them, with named side tasks.

- the claim loop fills free slots (priority, then due time), chaining a job's next step in the
  same slot when the completion claimed it;
- the heartbeat extends leases every third of the lease time, tells tools their job was
  cancelled, and abandons steps whose lease was lost;
- the reaper recovers expired leases, fails jobs past their wall time and escalates reviews past
  their SLA (calling the escalation hook);
- `stop()` drains: no new claims, running steps get `drain_seconds` to finish, then their leases
  are released without using up an attempt.

If a side task dies, the worker stops rather than run half-alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from stalwart.domain.records import Claim, ReviewRecord
from stalwart.engine.executor import Executor
from stalwart.settings import Settings
from stalwart.store.base import Store
from stalwart.tools.context import ToolContext

log = logging.getLogger("stalwart.worker")

EscalationHook = Callable[..., Awaitable[None] | None]


def default_worker_id() -> str:
    """host:pid, unique among live workers."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(slots=True)
class _Running:
    claim: Claim
    ctx: ToolContext
    task: asyncio.Task[None]


class Worker:
    """Runs steps from the store until stopped."""

    def __init__(
        self,
        *,
        store: Store,
        executor: Executor,
        settings: Settings,
        worker_id: str | None = None,
        concurrency: int | None = None,
        on_review_escalated: EscalationHook | None = None,
    ) -> None:
        self.store = store
        self.executor = executor
        self.settings = settings
        self.worker_id = worker_id or default_worker_id()
        self.concurrency = concurrency or settings.worker_concurrency
        self.on_review_escalated = on_review_escalated
        self._running: dict[int, _Running] = {}
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self.steps_run = 0

    # -- public -----------------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the worker to drain and return from `run`."""
        self._stopping.set()
        self._wake.set()

    def wake(self) -> None:
        """Claim now instead of waiting for the next poll (an in-process hint)."""
        self._wake.set()

    @property
    def busy(self) -> int:
        """Steps running now."""
        return len(self._running)

    async def run(self) -> None:
        """Run until `stop()`; then drain."""
        log.info(
            "worker started",
            extra={
                "action": "worker_started",
                "worker": self.worker_id,
                "concurrency": self.concurrency,
            },
        )
        side = [
            asyncio.create_task(self._heartbeat_loop(), name="stalwart-heartbeat"),
            asyncio.create_task(self._reaper_loop(), name="stalwart-reaper"),
        ]
        main = asyncio.create_task(self._claim_loop(), name="stalwart-claim")
        try:
            done, _ = await asyncio.wait([main, *side], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not main and task.exception() is not None:
                    log.error(
                        "side task %s died; stopping",
                        task.get_name(),
                        exc_info=task.exception(),
                        extra={"action": "worker_side_task_died"},
                    )
                    self.stop()
            if main not in done:
                await main
            elif main.exception() is not None:
                raise main.exception()  # type: ignore[misc]
        finally:
            await self._drain()
            for task in side:
                task.cancel()
            for task in side:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            log.info("worker stopped", extra={"action": "worker_stopped", "worker": self.worker_id})

    # -- claim loop -------------------------------------------------------------------------------

    async def _claim_loop(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            free = self.concurrency - len(self._running)
            claimed = 0
            if free > 0:
                for claim in await self.store.step_claim(
                    self.worker_id, limit=free, lease_seconds=self.settings.lease_seconds
                ):
                    self._start(claim)
                    claimed += 1
                await self.executor.replan_waiting(self.worker_id)
            if claimed and len(self._running) < self.concurrency:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._wake.wait(), timeout=self.settings.poll_interval_seconds
                )

    def _start(self, claim: Claim) -> None:
        ctx = self.executor.context_for(claim)
        task = asyncio.create_task(self._run_chain(claim, ctx), name=f"step-{claim.step_id}")
        self._running[claim.step_id] = _Running(claim, ctx, task)

    async def _run_chain(self, claim: Claim, ctx: ToolContext) -> None:
        current: Claim | None = claim
        try:
            while current is not None:
                next_claim = await self.executor.run(
                    current,
                    ctx,
                    worker_id=self.worker_id,
                    claim_next=not self._stopping.is_set(),
                )
                self.steps_run += 1
                self._running.pop(current.step_id, None)
                current = next_claim
                if current is not None:
                    ctx = self.executor.context_for(current)
                    self._running[current.step_id] = _Running(
                        current,
                        ctx,
                        asyncio.current_task(),  # type: ignore[arg-type]
                    )
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception(
                "step runner crashed",
                extra={"action": "step_runner_crashed", "step": claim.key, "job": claim.job_id},
            )
        finally:
            if current is not None:
                self._running.pop(current.step_id, None)
            self._wake.set()

    # -- heartbeat --------------------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        interval = self.settings.lease_seconds / 3
        while True:
            await asyncio.sleep(interval)
            await self.heartbeat()

    async def heartbeat(self) -> None:
        """Extend this worker's leases once; flag cancellations and abandon lost leases."""
        held = [(r.claim.step_id, r.claim.lease_token) for r in list(self._running.values())]
        if not held:
            return
        beat = await self.store.step_heartbeat(
            self.worker_id, held, lease_seconds=self.settings.lease_seconds
        )
        for step_id in beat.cancelled:
            running = self._running.get(step_id)
            if running is not None:
                running.ctx.cancel()
        for step_id in beat.lost:
            running = self._running.pop(step_id, None)
            if running is not None:
                log.warning(
                    "lease lost; abandoning step",
                    extra={
                        "action": "step_lease_lost",
                        "step": running.claim.key,
                        "job": running.claim.job_id,
                    },
                )
                running.task.cancel()

    # -- reaper -----------------------------------------------------------------------------------

    async def _reaper_loop(self) -> None:
        while True:
            await self.reap()
            await asyncio.sleep(self.settings.reaper_interval_seconds)

    async def reap(self) -> None:
        """One pass of the reaper: expired leases, jobs past wall time, reviews past SLA."""
        reaped = await self.store.leases_reap(actor=f"reaper@{self.worker_id}")
        expired = await self.store.jobs_expire(actor=f"reaper@{self.worker_id}")
        escalated = await self.store.reviews_escalate_overdue(actor=f"reaper@{self.worker_id}")
        if reaped or expired:
            log.info("reaped", extra={"action": "reaped", "leases": reaped, "jobs": len(expired)})
            self._wake.set()
        for review in escalated:
            await self._escalated(review)

    async def _escalated(self, review: ReviewRecord) -> None:
        log.warning(
            "review %s passed its SLA and was escalated",
            review.id,
            extra={"action": "review_escalated", "job": review.job_id, "review": review.id},
        )
        if self.on_review_escalated is None:
            return
        try:
            result: Any = self.on_review_escalated(review=review)
            if asyncio.iscoroutine(result):
                await result
        except Exception:
            log.exception("escalation hook failed", extra={"action": "escalation_hook_failed"})

    # -- drain ------------------------------------------------------------------------------------

    async def _drain(self) -> None:
        if not self._running:
            return
        tasks = {r.task for r in self._running.values()}
        log.info("draining", extra={"action": "worker_draining", "steps": len(tasks)})
        _, pending = await asyncio.wait(tasks, timeout=self.settings.drain_seconds)
        if not pending:
            return
        left = [(r.claim.step_id, r.claim.lease_token) for r in self._running.values()]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        await self.store.step_release(
            left, worker_id=self.worker_id, reason="worker stopped before the step finished"
        )
