"""The worker process: claims ready steps and runs them, with named side tasks.

- on start it registers itself (id, host, pid) in the workers table, writes the app's limits,
  makes its routed models (on a thread: the first step must not pay for it on the loop),
  and recovers at once the leases it left behind in an earlier life (same `--worker-id`, or a
  dead process with the same host and pid) instead of waiting for them to expire;
- the claim loop fills free slots (priority, then due time), chaining a job's next step in the
  same slot when the completion claimed it. When idle it reads `work_due` once per poll (the
  only query an idle worker makes, besides its heartbeat and its alert turn) and, on PostgreSQL,
  also wakes on LISTEN/NOTIFY; the listener is a hint, the poll the floor;
- the heartbeat extends leases every third of the lease time, tells tools their job was
  cancelled, and abandons steps whose lease was lost;
- the lease watch gives up, by this process's own clock, a step whose lease it could not renew
  in time (`LEASE_TRUST`), before any other worker can take it: it cancels the step's task and
  takes no new work until the database answers again (decision 0032);
- the reaper recovers expired leases, fails jobs past their wall time and escalates reviews past
  their SLA (calling the escalation hook);
- the alert loop evaluates the alert rules every `alert_interval_seconds` (one worker per interval
  among all takes the turn; see `stalwart.observability.alerts`);
- `stop()` drains: no new claims, running steps get `drain_seconds` to finish, then their leases
  are released without using up an attempt.

If a side task dies, the worker stops rather than run half-alive. A database that cannot be
reached (a restart, a network blip) is waited out: each loop logs, backs off and tries again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from stalwart.domain.limits import LimitSpec
from stalwart.domain.records import Claim, ReviewRecord
from stalwart.engine.episodes import EpisodeRecorder
from stalwart.engine.executor import Executor
from stalwart.errors import StoreError
from stalwart.observability.alerts import AlertCallback, AlertEvaluator
from stalwart.settings import Settings
from stalwart.store.base import Store, WorkDue, WorkerInfo
from stalwart.tools.context import ToolContext

log = logging.getLogger("stalwart.worker")

LEASE_TRUST = 0.8
"""The share of `lease_seconds`, counted on this process's monotonic clock from the moment the
request that last took or renewed a lease was sent, for which the worker trusts the lease. Past
it the worker gives the step up itself: the rest of the lease (a fifth) is the margin in which
its tool must stop before the database can let another worker take the step."""

EscalationHook = Callable[..., Awaitable[None] | None]


def default_worker_id() -> str:
    """host:pid, unique among live workers."""
    return f"{socket.gethostname()}:{os.getpid()}"


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(slots=True)
class _Running:
    claim: Claim
    ctx: ToolContext
    task: asyncio.Task[None]
    # When the request that last took or renewed the lease was sent (time.monotonic()).
    renewed_at: float = 0.0

    def __post_init__(self) -> None:
        if not self.renewed_at:
            # A store that does not say when it sent the claim: trust it from now.
            self.renewed_at = self.claim.lease_sent_at or time.monotonic()


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
        limits: list[LimitSpec] | None = None,
        on_alert: AlertCallback | None = None,
        episodes: EpisodeRecorder | None = None,
    ) -> None:
        self.store = store
        self.executor = executor
        self.settings = settings
        self.worker_id = worker_id or default_worker_id()
        self.concurrency = concurrency or settings.worker_concurrency
        self.on_review_escalated = on_review_escalated
        # Alert rules: one worker per interval evaluates them (docs/concepts/observability.md).
        self.alerts = AlertEvaluator(store, settings, on_alert=on_alert)
        # Episodes of ended jobs, for recall (docs/concepts/memory.md); None: not recorded.
        self.episodes = episodes
        self._running: dict[int, _Running] = {}
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self.steps_run = 0
        self.limits = list(limits or [])
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.reclaimed = 0
        self._due: WorkDue | None = None
        self._due_read = 0.0
        self._started = False
        # Set (monotonic time) when a lease was given up unrenewed: no new work until the
        # database answers a request sent after it.
        self._cut_off_at: float | None = None
        # Set when a side task died: the process should exit non-zero so it is restarted.
        self.failed = False
        poll = settings.poll_interval_seconds
        self.poll_seconds = (
            max(poll, settings.notify_poll_interval_seconds) if store.wakeups else poll
        )

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

    async def start(self) -> None:
        """Register this worker, write the app's limits, and recover at once the leases an earlier
        life of this worker left behind (same id; or same host with a pid that is dead)."""
        if self._started:
            return
        self._started = True
        tools = sorted(self.executor.tools.names())
        await self.store.worker_register(
            WorkerInfo(self.worker_id, self.host, self.pid, self.concurrency, tools, _version())
        )
        await self.store.limits_configure(self.limits)
        if self.executor.gateway is not None:
            # Made now, on a thread, not under the first claimed step's lease.
            await self.executor.gateway.warm()
        owners = [self.worker_id]
        for other in await self.store.worker_list(
            live_seconds=self.settings.lease_seconds, include_stopped=False
        ):
            if (
                other.id != self.worker_id
                and other.host == self.host
                and other.holding
                and not pid_alive(other.pid)
            ):
                owners.append(other.id)
        self.reclaimed = await self.store.leases_reclaim(owners, actor=self.worker_id)
        if self.reclaimed:
            log.info(
                "recovered %d leases left by an earlier life of this worker",
                self.reclaimed,
                extra={"action": "leases_reclaimed", "worker": self.worker_id, "owners": owners},
            )

    async def run(self) -> None:
        """Register, run until `stop()`; then drain and mark this worker stopped."""
        await self.start()
        log.info(
            "worker started",
            extra={
                "action": "worker_started",
                "worker": self.worker_id,
                "host": self.host,
                "pid": self.pid,
                "concurrency": self.concurrency,
            },
        )
        side = [
            asyncio.create_task(self._heartbeat_loop(), name="stalwart-heartbeat"),
            asyncio.create_task(self._lease_watch_loop(), name="stalwart-lease-watch"),
            asyncio.create_task(self._reaper_loop(), name="stalwart-reaper"),
            asyncio.create_task(self._alert_loop(), name="stalwart-alerts"),
            asyncio.create_task(self._memory_loop(), name="stalwart-memory"),
            asyncio.create_task(self.store.listen(self.wake), name="stalwart-listen"),
        ]
        main = asyncio.create_task(self._claim_loop(), name="stalwart-claim")
        reported: set[asyncio.Task[None]] = set()
        try:
            done, _ = await asyncio.wait([main, *side], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not main and task.exception() is not None:
                    reported.add(task)
                    log.error(
                        "side task %s died; stopping",
                        task.get_name(),
                        exc_info=task.exception(),
                        extra={"action": "worker_side_task_died"},
                    )
                    self.failed = True
                    self.stop()
            if main not in done:
                await main
            elif main.exception() is not None:
                raise main.exception()  # type: ignore[misc]
        finally:
            await self._drain()
            if self.executor.gateway is not None:
                try:
                    await self.executor.gateway.close()
                except Exception:
                    log.warning(
                        "closing the model clients failed",
                        exc_info=True,
                        extra={"action": "gateway_close_failed", "worker": self.worker_id},
                    )
            for task in side:
                task.cancel()
            ended = await asyncio.gather(*side, return_exceptions=True)
            for task, outcome in zip(side, ended, strict=True):
                # A side task that failed after the first one (or while stopping) is a bug too.
                if isinstance(outcome, Exception) and task not in reported:
                    log.error(
                        "side task %s failed",
                        task.get_name(),
                        exc_info=outcome,
                        extra={"action": "worker_side_task_died", "worker": self.worker_id},
                    )
            try:
                await self.store.worker_stopped(self.worker_id)
            except StoreError as exc:
                log.warning(
                    "could not mark the worker stopped: %s",
                    exc,
                    extra={"action": "store_unavailable", "worker": self.worker_id},
                )
            log.info("worker stopped", extra={"action": "worker_stopped", "worker": self.worker_id})

    # -- claim loop -------------------------------------------------------------------------------

    async def _claim_loop(self) -> None:
        more = False  # the last pass filled slots and may find more at once
        while not self._stopping.is_set():
            if self._cut_off_at is not None and not await self._reach_database():
                continue
            woken = more or self._wake.is_set()
            self._wake.clear()
            try:
                claimed, timeout = await self._claim_once(woken)
            except StoreError as exc:
                await self._store_trouble("claim", exc)
                continue
            more = bool(claimed) and len(self._running) < self.concurrency
            if more:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=timeout)

    async def _claim_once(self, woken: bool) -> tuple[int, float]:
        """One pass: read what is due, claim into free slots, plan again where asked. Returns
        the steps claimed and how long to wait before the next pass if nothing wakes us.

        A pass that was woken (a notification, a finished step) goes straight to the claim,
        whose own read says whether anything is due; `work_due` is read at least once a poll
        interval, so housekeeping is never starved by a busy queue."""
        now = time.monotonic()
        due = self._due
        if due is None or not woken or now - self._due_read >= self.poll_seconds:
            due = self._due = await self.store.work_due()
            self._due_read = now
        else:
            due = WorkDue(now=0.0, next_step_due=0.0, replanning=due.replanning)
        free = self.concurrency - len(self._running)
        claimed = 0
        db_now, next_due = due.now, due.next_step_due
        if free > 0 and due.steps_due:
            claims = await self.store.step_claim(
                self.worker_id, limit=free, lease_seconds=self.settings.lease_seconds
            )
            for claim in claims:
                self._start(claim)
                claimed += 1
            # The claim knows best when what it left behind comes due (a retry, a rate
            # limit's next token); a woken pass has nothing else to go by.
            db_now, next_due = claims.now, claims.next_due
        if due.replanning:
            await self.executor.replan_waiting(self.worker_id)
        timeout = self.poll_seconds
        if next_due is not None and next_due > db_now:
            # It comes due before the next poll: wake for it, less the time this pass took
            # since the database told us its time (early is harmless, late is not).
            wait = next_due - db_now - (time.monotonic() - now)
            timeout = min(timeout, max(0.005, wait))
        return claimed, timeout

    async def _store_trouble(self, loop: str, exc: StoreError) -> None:
        log.warning(
            "%s: database trouble, retrying in 1s: %s",
            loop,
            exc,
            extra={"action": "store_unavailable", "worker": self.worker_id, "loop": loop},
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=1.0)

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
                    claim_next=not self._stopping.is_set() and self._cut_off_at is None,
                )
                self.steps_run += 1
                self._forget(current.step_id)
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
                self._forget(current.step_id)
            self._wake.set()

    def _forget(self, step_id: int) -> None:
        """Drop this task's entry for `step_id`; a task given up late must not drop the entry
        of a newer claim of the same step."""
        running = self._running.get(step_id)
        if running is not None and running.task is asyncio.current_task():
            del self._running[step_id]

    # -- heartbeat --------------------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        interval = self.settings.lease_seconds / 3
        while True:
            await asyncio.sleep(interval)
            try:
                if not await self.heartbeat():
                    await self.store.worker_beat(self.worker_id)
            except StoreError as exc:
                await self._store_trouble("heartbeat", exc)

    async def heartbeat(self) -> bool:
        """Extend this worker's leases once (which also records the worker alive); flag
        cancellations and abandon lost leases. False when it holds no lease."""
        held = [(r.claim.step_id, r.claim.lease_token) for r in list(self._running.values())]
        if not held:
            return False
        sent = time.monotonic()
        beat = await self.store.step_heartbeat(
            self.worker_id, held, lease_seconds=self.settings.lease_seconds
        )
        self._reached(sent)
        for step_id, token in held:
            renewed = self._running.get(step_id)
            if step_id in beat.lost or renewed is None or renewed.claim.lease_token != token:
                continue
            renewed.renewed_at = max(renewed.renewed_at, sent)
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
        return True

    # -- lease watch ------------------------------------------------------------------------------

    async def _lease_watch_loop(self) -> None:
        """Give up the steps whose lease this worker could not renew in time, by its own clock:
        no database is needed to decide it, so it holds when the database cannot be reached."""
        trust = self.settings.lease_seconds * LEASE_TRUST
        while True:
            now = time.monotonic()
            late = [r for r in self._running.values() if now >= r.renewed_at + trust]
            if late:
                self._give_up(late, now)
            # Wake at the next expiry; a step claimed meanwhile expires `trust` after its
            # claim was sent, so a quarter of that is soon enough to look again.
            nearest = min(
                (r.renewed_at + trust for r in self._running.values()), default=now + trust
            )
            await asyncio.sleep(min(max(nearest - now, 0.01), trust / 4))

    def _give_up(self, late: list[_Running], now: float) -> None:
        """Cancel the steps whose lease may be gone (their result would be refused anyway) and
        take no new work until the database answers again."""
        for running in late:
            if self._running.get(running.claim.step_id) is not running:
                continue
            self._running.pop(running.claim.step_id)
            log.warning(
                "lease not renewed for %.1fs of its %.1fs; cancelling step %s before another "
                "worker can take it",
                now - running.renewed_at,
                self.settings.lease_seconds,
                running.claim.key,
                extra={
                    "action": "step_lease_given_up",
                    "worker": self.worker_id,
                    "step": running.claim.key,
                    "job": running.claim.job_id,
                },
            )
            running.task.cancel()
        if self._cut_off_at is None:
            self._cut_off_at = now
            log.warning(
                "cut off from the database: taking no new work until it answers",
                extra={"action": "worker_cut_off", "worker": self.worker_id},
            )

    def _reached(self, sent: float) -> None:
        """A request sent at `sent` got its answer: if it was sent after this worker gave up a
        lease, the database can be reached again and new work may be taken."""
        if self._cut_off_at is not None and sent >= self._cut_off_at:
            self._cut_off_at = None
            log.info(
                "the database answers again: taking new work",
                extra={"action": "worker_reconnected", "worker": self.worker_id},
            )

    async def _reach_database(self) -> bool:
        """One round trip to the database after a cut-off; True when it answered."""
        sent = time.monotonic()
        try:
            await self.store.worker_beat(self.worker_id)
        except StoreError as exc:
            await self._store_trouble("claim", exc)
            return False
        self._reached(sent)
        return True

    # -- reaper -----------------------------------------------------------------------------------

    async def _reaper_loop(self) -> None:
        while True:
            due = self._due
            try:
                # The claim loop's latest `work_due` says whether there is anything to reap.
                if due is None or due.reaping:
                    await self.reap()
            except StoreError as exc:
                await self._store_trouble("reaper", exc)
            await asyncio.sleep(self.settings.reaper_interval_seconds)

    async def reap(self) -> None:
        """One pass of the reaper: expired leases, jobs past wall time, reviews past SLA."""
        actor = f"reaper@{self.worker_id}"
        reaped = await self.store.leases_reap(actor=actor)
        expired = await self.store.jobs_expire(actor=actor)
        escalated = await self.store.reviews_escalate_overdue(actor=actor)
        released = await self.store.llm_reservations_release(actor=actor)
        if released:
            log.warning(
                "released %d model-call reservations whose worker died",
                released,
                extra={"action": "reservations_released", "count": released},
            )
        if reaped or expired:
            log.info("reaped", extra={"action": "reaped", "leases": reaped, "jobs": len(expired)})
            self._wake.set()
        for review in escalated:
            await self._escalated(review)

    async def _memory_loop(self) -> None:
        """Record the episodes of ended jobs and prune knowledge past its retention; a failure
        is logged and tried again at the next interval (memory never stops the worker)."""
        if self.episodes is None:
            await self._stopping.wait()
            return
        pruned_at = -float("inf")  # prune on the first pass: monotonic time may start near 0
        while not self._stopping.is_set():
            try:
                while await self.episodes.run_once() and not self._stopping.is_set():
                    pass
                if time.monotonic() - pruned_at > 3600:
                    await self.store.memory_prune()
                    pruned_at = time.monotonic()
            except StoreError as exc:
                # An outage is waited out, as in every loop: one line, no traceback.
                log.warning(
                    "memory: database trouble, trying again in %gs: %s",
                    self.settings.memory_interval_seconds,
                    exc,
                    extra={
                        "action": "store_unavailable",
                        "worker": self.worker_id,
                        "loop": "memory",
                    },
                )
            except Exception:
                log.exception("recording episodes failed", extra={"action": "memory_failed"})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.settings.memory_interval_seconds)

    async def _alert_loop(self) -> None:
        while True:
            await self.alerts.tick()  # never raises
            await asyncio.sleep(self.settings.alert_interval_seconds)

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


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("stalwart")
    except PackageNotFoundError:
        return ""
