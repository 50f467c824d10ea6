"""`decide`: what follows a failed attempt, for every error class and circumstance."""

from __future__ import annotations

import itertools
import random

import pytest

from stalwart.domain.failures import Decision, Outcome, decide
from stalwart.domain.records import StepError
from stalwart.domain.retry import RetryPolicy
from stalwart.errors import ErrorClass

POLICY = RetryPolicy(max_attempts=3, base_seconds=1, cap_seconds=60, jitter=False)


def _decide(
    error_class: ErrorClass | str,
    *,
    attempt: int = 1,
    critical: bool = True,
    replans: int = 0,
    max_replans: int = 1,
    retry_after: float | None = None,
    policy: RetryPolicy = POLICY,
) -> Decision:
    return decide(
        StepError(str(error_class), "boom", retry_after=retry_after),
        attempt=attempt,
        policy=policy,
        critical=critical,
        replans=replans,
        max_replans=max_replans,
        rng=random.Random(0),
    )


def _expected(
    kind: ErrorClass, *, attempts_left: bool, critical: bool, replans_left: bool
) -> Outcome:
    """The table of DESIGN.md section 4, written out independently of the implementation."""
    if kind is ErrorClass.TRANSIENT:
        if attempts_left:
            return Outcome.RETRY
        return Outcome.DEAD_LETTER if critical else Outcome.SKIP
    if kind is ErrorClass.AUTHORIZATION:
        return Outcome.ESCALATE
    if kind is ErrorClass.NON_RETRIABLE:
        return Outcome.ESCALATE if critical else Outcome.SKIP
    if kind in (ErrorClass.INVALID_ARGUMENTS, ErrorClass.SEMANTIC):
        return Outcome.REPLAN if replans_left else Outcome.ESCALATE
    if kind is ErrorClass.BUDGET:
        return Outcome.FAIL_JOB
    if kind is ErrorClass.CANCELLED:
        return Outcome.CANCEL
    return Outcome.ESCALATE  # critical


MATRIX = list(itertools.product(ErrorClass, [True, False], [True, False], [True, False]))


@pytest.mark.parametrize(
    ("kind", "critical", "attempts_left", "replans_left"),
    MATRIX,
    ids=[
        f"{k}-{'crit' if c else 'noncrit'}-{'att' if a else 'noatt'}-{'rep' if r else 'norep'}"
        for k, c, a, r in MATRIX
    ],
)
def test_decision_matrix(
    kind: ErrorClass, critical: bool, attempts_left: bool, replans_left: bool
) -> None:
    decision = _decide(
        kind,
        attempt=1 if attempts_left else 3,
        critical=critical,
        replans=0 if replans_left else 1,
        max_replans=1,
    )
    expected = _expected(
        kind, attempts_left=attempts_left, critical=critical, replans_left=replans_left
    )
    assert decision.outcome is expected
    assert decision.reason
    if expected is not Outcome.RETRY:
        assert decision.delay_seconds == 0.0


def test_every_error_class_is_covered() -> None:
    for kind in ErrorClass:
        assert isinstance(_decide(kind).outcome, Outcome)


def test_retry_carries_the_backoff_delay() -> None:
    assert _decide(ErrorClass.TRANSIENT, attempt=1).delay_seconds == 1.0
    assert _decide(ErrorClass.TRANSIENT, attempt=2).delay_seconds == 2.0
    decision = _decide(ErrorClass.TRANSIENT, attempt=2)
    assert "attempt 2/3" in decision.reason


def test_retry_delay_is_jittered_with_the_given_rng() -> None:
    policy = RetryPolicy(max_attempts=5, base_seconds=1, cap_seconds=60)
    delay = _decide(ErrorClass.TRANSIENT, attempt=4, policy=policy).delay_seconds
    assert delay == random.Random(0).uniform(0, 8.0)


def test_retry_after_from_the_error_is_honoured() -> None:
    decision = _decide(ErrorClass.TRANSIENT, attempt=1, retry_after=30)
    assert decision.outcome is Outcome.RETRY
    assert decision.delay_seconds == 30.0


def test_retry_after_does_not_extend_an_exhausted_policy() -> None:
    decision = _decide(ErrorClass.TRANSIENT, attempt=3, retry_after=30)
    assert decision.outcome is Outcome.DEAD_LETTER
    assert "3 attempt(s)" in decision.reason


def test_single_attempt_policy_never_retries() -> None:
    decision = _decide(
        ErrorClass.TRANSIENT, attempt=1, policy=RetryPolicy(max_attempts=1), critical=False
    )
    assert decision.outcome is Outcome.SKIP
    assert "degraded" in decision.reason


def test_replans_are_bounded_by_max_replans() -> None:
    assert _decide(ErrorClass.SEMANTIC, replans=1, max_replans=2).outcome is Outcome.REPLAN
    assert "(2/2)" in _decide(ErrorClass.SEMANTIC, replans=1, max_replans=2).reason
    assert _decide(ErrorClass.SEMANTIC, replans=2, max_replans=2).outcome is Outcome.ESCALATE
    no_replans = _decide(ErrorClass.INVALID_ARGUMENTS, replans=0, max_replans=0)
    assert no_replans.outcome is Outcome.ESCALATE
    assert "max_replans=0" in no_replans.reason


def test_authorization_escalates_even_when_not_critical_and_attempts_remain() -> None:
    decision = _decide(ErrorClass.AUTHORIZATION, attempt=1, critical=False)
    assert decision.outcome is Outcome.ESCALATE
    assert "human" in decision.reason


def test_error_class_given_as_plain_string() -> None:
    assert _decide("transient").outcome is Outcome.RETRY


def test_unknown_error_class_is_refused() -> None:
    with pytest.raises(ValueError, match="gremlins"):
        _decide("gremlins")
