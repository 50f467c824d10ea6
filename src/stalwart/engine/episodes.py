"""Episodes: what each finished job leaves in memory.

A worker's recorder looks for jobs that ended (completed, failed, rejected, escalated, dead
lettered) and have no episode, reads each one's plan, review decisions, error and cost, writes a
summary, embeds the summaries of a batch at once and stores them. Several workers may record
the same job: the store keeps the first (one episode per job). Nothing on the step path waits
for it; an episode appears within a poll of the job's end.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from stalwart.domain.budgets import NANOS_PER_USD
from stalwart.domain.memory import (
    NewEpisode,
    Vector,
    episode_importance,
    episode_summary,
    job_query,
)
from stalwart.errors import CorruptStateError, NotFoundError, StalwartError

if TYPE_CHECKING:
    from stalwart.llm.embeddings import Embedder
    from stalwart.store.base import Store

log = logging.getLogger("stalwart.memory")

DECISIONS = {"review_approved": "approved", "review_rejected": "rejected"}
# How far back a caught-up recorder still looks: a job's end is visible to others only once its
# transaction commits, and a failed recording is tried again within this window.
SETTLE_SECONDS = 600.0


class EpisodeRecorder:
    """Writes the episodes of ended jobs. `run_once` does one batch; a worker calls it every
    `memory_interval_seconds`."""

    def __init__(
        self, store: Store, embedder: Embedder | None, *, lookback_seconds: float = 7 * 86400
    ) -> None:
        self.store = store
        self.embedder = embedder
        self.since = time.time() - lookback_seconds

    async def run_once(self, limit: int = 50) -> int:
        """Record up to `limit` pending episodes; how many were stored. Once it has caught up,
        later passes look only at jobs that ended in the last `SETTLE_SECONDS`, so a pass does
        not rescan the whole lookback window every few seconds."""
        started = time.time()
        pending = await self.store.episodes_pending(self.since, limit)
        if len(pending) < limit:
            self.since = max(self.since, started - SETTLE_SECONDS)
        if not pending:
            return 0
        costs = await self.store.job_costs([job_id for _, job_id in pending])
        episodes = []
        for tenant, job_id in pending:
            # Job by job: one whose stored state fails to decode is quarantined (and passed
            # over by later batches); every other job of the batch is recorded.
            try:
                episodes.append(await self.build(tenant, job_id, cost_nanos=costs.get(job_id, 0)))
            except CorruptStateError as exc:
                await self._quarantine(job_id, exc)
            except NotFoundError:
                continue  # erased since the batch was read (tenant erasure)
        vectors = await self._embed(episodes)
        stored = 0
        for episode, vector in zip(episodes, vectors, strict=True):
            stored += await self.store.episode_put(replace(episode, vector=vector))
        return stored

    async def _quarantine(self, job_id: str, exc: CorruptStateError) -> None:
        log.warning(
            "job %s has no episode: its stored state is corrupt (%s)",
            job_id,
            exc.message,
            extra={"action": "episode_corrupt", "job": job_id},
        )
        await self.store.job_quarantine(job_id, exc, actor="memory")

    async def build(self, tenant_id: str, job_id: str, *, cost_nanos: int) -> NewEpisode:
        """The episode of one ended job, from its record, plans, events and step outputs, with
        its model spend (`job_costs`, read once per batch)."""
        job = await self.store.job_get(job_id, tenant_id=tenant_id)
        plans = await self.store.plan_list(job_id, tenant_id=tenant_id)
        events = await self.store.event_list(job_id, tenant_id=tenant_id, limit=1000)
        outputs = await step_outputs(self.store, tenant_id, job_id)
        steps: list[str] = []
        if plans:
            raw = plans[-1].plan.get("steps") or []
            steps = [str(s.get("tool") or s.get("id")) for s in raw if isinstance(s, dict)]
        decisions = [(DECISIONS[e.kind], e.actor, e.reason) for e in events if e.kind in DECISIONS]
        error = None
        if job.error:
            error = str(job.error.get("message") or job.error.get("error_class") or "")[:300]
        summary = episode_summary(
            job.workflow,
            job.input,
            outcome=job.status,
            steps=steps,
            decisions=decisions,
            error=error,
            outputs=outputs,
        )
        details: dict[str, Any] = {
            "input": job.input,
            "plan": steps,
            "decisions": [{"decision": d, "reviewer": r, "comment": c} for d, r, c in decisions],
            "error": job.error,
            "plan_versions": len(plans),
        }
        return NewEpisode(
            tenant_id=tenant_id,
            job_id=job_id,
            workflow=job.workflow,
            outcome=job.status,
            summary=summary,
            details=details,
            cost_usd=cost_nanos / NANOS_PER_USD,
            importance=episode_importance(job.status, decisions),
            finished=job.finished or job.updated,
            key_text=job_query(job.workflow, job.input, outputs),
        )

    async def _embed(self, episodes: list[NewEpisode]) -> list[Vector | None]:
        """One vector per episode (None without an embedder or when embedding failed), one
        embedding call per tenant (a tenant's budget pays for its own)."""
        out: list[Vector | None] = [None] * len(episodes)
        if self.embedder is None:
            return out
        from stalwart.llm.embeddings import EmbedScope

        by_tenant: dict[str, list[int]] = {}
        for n, episode in enumerate(episodes):
            by_tenant.setdefault(episode.tenant_id, []).append(n)
        for tenant, positions in by_tenant.items():
            try:
                matrix = await self.embedder.embed(
                    [episodes[n].key_text or episodes[n].summary for n in positions],
                    EmbedScope(tenant_id=tenant),
                )
            except StalwartError as exc:
                # Stored without vectors they are still found lexically: never lose one.
                log.warning(
                    "episodes of tenant %s stored without vectors: %s",
                    tenant,
                    exc.message,
                    extra={"action": "episode_embed_failed", "tenant": tenant},
                )
                continue
            for row, n in enumerate(positions):
                data = np.asarray(matrix[row], dtype=np.float32)
                out[n] = Vector(self.embedder.name, int(data.shape[0]), data.tobytes())
        return out


async def step_outputs(store: Store, tenant_id: str, job_id: str) -> dict[str, Any]:
    """The outputs of a job's succeeded steps (its current plan), by step key."""
    steps = await store.step_list(job_id, tenant_id=tenant_id)
    return {s.key: s.output for s in steps if s.status == "succeeded" and s.output is not None}
