"""Failure handling by error class (DESIGN.md section 4): what happens after a step fails.

Pure rules, no I/O: the engine asks `decide` and the store applies the answer in one
transaction.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import StrEnum

from stalwart.domain.records import StepError
from stalwart.domain.retry import RetryPolicy
from stalwart.errors import ErrorClass


class Outcome(StrEnum):
    """What the engine does with a failed step."""

    RETRY = "retry"
    REPLAN = "replan"
    ESCALATE = "escalate"
    DEAD_LETTER = "dead_letter"
    SKIP = "skip"
    FAIL_JOB = "fail_job"
    CANCEL = "cancel"


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome, the delay before a retry, and a reason a person can read."""

    outcome: Outcome
    reason: str
    delay_seconds: float = 0.0
    # A retry that gives the attempt back (the service asked us to wait: HTTP 429).
    refund_attempt: bool = False


def decide(
    error: StepError,
    *,
    attempt: int,
    policy: RetryPolicy,
    critical: bool,
    replans: int,
    max_replans: int,
    rng: random.Random | None = None,
    on_budget: str = "fail",
) -> Decision:
    """Decide what follows a failed attempt, from the error's class and the step's policy.

    - transient: retry with backoff until attempts run out; then dead-letter the job if the
      step is critical, else skip it and let the job complete degraded;
    - authorization: always escalate to a human;
    - non-retriable: escalate if critical, else skip;
    - invalid arguments, semantic: replan while replans remain, then escalate;
    - budget (a model call refused): per the workflow's `on_exceeded` — `fail` the job,
      `partial` (skip the step if it is not critical, so the job completes with what it has),
      `escalate`, or `cheaper_tier` (the gateway already tried the cheaper tiers: escalate);
    - critical: halt and escalate; cancelled: cancel.
    """
    kind = ErrorClass(error.error_class)
    if kind is ErrorClass.TRANSIENT and error.asks_to_wait:
        # The service said when to come back: that is a delay, not a failed attempt.
        wait = float(error.retry_after or 0.0)
        return Decision(
            Outcome.RETRY,
            f"rate limited (429): retry after {wait:g}s; attempt not counted",
            wait,
            refund_attempt=True,
        )
    if kind is ErrorClass.TRANSIENT:
        if not policy.exhausted(attempt):
            delay = policy.delay_seconds(attempt, retry_after=error.retry_after, rng=rng)
            return Decision(
                Outcome.RETRY, f"transient failure, attempt {attempt}/{policy.max_attempts}", delay
            )
        why = f"retries exhausted after {attempt} attempt(s)"
        return _exhausted(critical, why)
    if kind is ErrorClass.AUTHORIZATION:
        return Decision(Outcome.ESCALATE, "authorization failure: a human must decide")
    if kind is ErrorClass.NON_RETRIABLE:
        return _exhausted(critical, "non-retriable failure", escalate=True)
    if kind in (ErrorClass.INVALID_ARGUMENTS, ErrorClass.SEMANTIC):
        if replans < max_replans:
            return Decision(Outcome.REPLAN, f"{kind}: replanning ({replans + 1}/{max_replans})")
        return Decision(Outcome.ESCALATE, f"{kind}: no replans left (max_replans={max_replans})")
    if kind is ErrorClass.BUDGET:
        if on_budget == "fail":
            return Decision(Outcome.FAIL_JOB, "budget exceeded")
        if on_budget == "partial" and not critical:
            return Decision(
                Outcome.SKIP, "budget exceeded; step is not critical, job completes partial"
            )
        return Decision(Outcome.ESCALATE, "budget exceeded: a human decides")
    if kind is ErrorClass.CANCELLED:
        return Decision(Outcome.CANCEL, "job cancelled")
    return Decision(Outcome.ESCALATE, "critical failure: job halted")


def _exhausted(critical: bool, why: str, *, escalate: bool = False) -> Decision:
    if not critical:
        return Decision(Outcome.SKIP, f"{why}; step is not critical, job continues degraded")
    if escalate:
        return Decision(Outcome.ESCALATE, f"{why} on a critical step")
    return Decision(Outcome.DEAD_LETTER, f"{why} on a critical step")
