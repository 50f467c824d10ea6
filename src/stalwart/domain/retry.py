"""Retry policy and backoff: exponential with full jitter and a cap, Retry-After honoured."""

from __future__ import annotations

import random

from pydantic import BaseModel, ConfigDict, Field

# Jitter draws from a generator of its own: never the global `random` state, which belongs to
# the application (and which a library must not disturb from a worker thread).
_JITTER = random.Random()

DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_BASE_SECONDS = 1.0
DEFAULT_CAP_SECONDS = 60.0


class RetryPolicy(BaseModel):
    """How often and how far apart a step is retried after transient failures.

    `max_attempts` counts every execution, the first included: 1 means never retry.
    The delay before attempt n+1 is uniform in [0, min(cap, base * 2**(n-1))] (full jitter).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_attempts: int = Field(DEFAULT_MAX_ATTEMPTS, ge=1)
    base_seconds: float = Field(DEFAULT_BASE_SECONDS, ge=0)
    cap_seconds: float = Field(DEFAULT_CAP_SECONDS, ge=0)
    jitter: bool = True

    def delay_seconds(
        self, attempt: int, *, retry_after: float | None = None, rng: random.Random | None = None
    ) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based).

        A `retry_after` from the failure (a 429's Retry-After) wins when it asks for longer.
        """
        ceiling = min(self.cap_seconds, self.base_seconds * (2 ** max(0, attempt - 1)))
        delay = (rng or _JITTER).uniform(0, ceiling) if self.jitter else ceiling
        if retry_after is not None and retry_after > delay:
            return float(retry_after)
        return delay

    def exhausted(self, attempt: int) -> bool:
        """True when `attempt` executions used up the policy."""
        return attempt >= self.max_attempts
