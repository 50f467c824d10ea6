"""Retry policy: exponential backoff with full jitter, a cap, and Retry-After."""

from __future__ import annotations

import random

import pytest
from pydantic import ValidationError

from stalwart.domain.retry import RetryPolicy


def test_defaults() -> None:
    policy = RetryPolicy()
    assert (policy.max_attempts, policy.base_seconds, policy.cap_seconds, policy.jitter) == (
        3,
        1.0,
        60.0,
        True,
    )


@pytest.mark.parametrize(
    ("attempt", "ceiling"),
    [(0, 2.0), (1, 2.0), (2, 4.0), (3, 8.0), (4, 16.0), (5, 30.0), (6, 30.0), (20, 30.0)],
)
def test_without_jitter_the_delay_is_the_exponential_ceiling(attempt: int, ceiling: float) -> None:
    policy = RetryPolicy(base_seconds=2, cap_seconds=30, jitter=False)
    assert policy.delay_seconds(attempt) == ceiling


@pytest.mark.parametrize("attempt", [1, 2, 3, 4, 5, 6, 8])
def test_full_jitter_stays_within_zero_and_the_ceiling(attempt: int) -> None:
    policy = RetryPolicy(base_seconds=1, cap_seconds=20)
    ceiling = min(20.0, 2.0 ** (attempt - 1))
    rng = random.Random(attempt)
    delays = [policy.delay_seconds(attempt, rng=rng) for _ in range(500)]
    assert all(0.0 <= d <= ceiling for d in delays)
    # full jitter, not "equal jitter": the whole range is used, low and high.
    assert min(delays) < ceiling * 0.1
    assert max(delays) > ceiling * 0.9


def test_cap_bounds_every_delay() -> None:
    policy = RetryPolicy(base_seconds=5, cap_seconds=7)
    rng = random.Random(0)
    delays = [policy.delay_seconds(n, rng=rng) for n in range(1, 30) for _ in range(20)]
    assert max(delays) <= 7.0
    assert max(delays) > 6.0


def test_jitter_is_reproducible_with_a_seeded_rng() -> None:
    policy = RetryPolicy(base_seconds=1, cap_seconds=60)
    first = [policy.delay_seconds(n, rng=random.Random(42)) for n in range(1, 6)]
    again = [policy.delay_seconds(n, rng=random.Random(42)) for n in range(1, 6)]
    assert first == again
    expected = [random.Random(42).uniform(0, 2.0 ** (n - 1)) for n in range(1, 6)]
    assert first == expected


def test_jitter_varies_between_draws() -> None:
    policy = RetryPolicy(base_seconds=1, cap_seconds=60)
    rng = random.Random(7)
    assert len({policy.delay_seconds(4, rng=rng) for _ in range(10)}) == 10


def test_retry_after_wins_when_longer() -> None:
    policy = RetryPolicy(base_seconds=1, cap_seconds=10, jitter=False)
    assert policy.delay_seconds(1, retry_after=45) == 45.0
    assert isinstance(policy.delay_seconds(1, retry_after=45), float)
    # a Retry-After longer than the cap still wins: the server asked for it.
    assert policy.delay_seconds(10, retry_after=120.5) == 120.5


def test_retry_after_loses_when_shorter() -> None:
    policy = RetryPolicy(base_seconds=1, cap_seconds=10, jitter=False)
    assert policy.delay_seconds(4, retry_after=2) == 8.0
    assert policy.delay_seconds(4, retry_after=0) == 8.0


def test_retry_after_is_a_floor_under_jitter() -> None:
    policy = RetryPolicy(base_seconds=1, cap_seconds=10)
    rng = random.Random(3)
    delays = [policy.delay_seconds(5, retry_after=4.0, rng=rng) for _ in range(200)]
    assert all(4.0 <= d <= 10.0 for d in delays)
    assert any(d > 4.0 for d in delays)
    assert any(d == 4.0 for d in delays)


def test_zero_base_means_retry_at_once() -> None:
    policy = RetryPolicy(base_seconds=0)
    assert policy.delay_seconds(3, rng=random.Random(1)) == 0.0


@pytest.mark.parametrize(
    ("max_attempts", "attempt", "exhausted"),
    [(1, 1, True), (3, 1, False), (3, 2, False), (3, 3, True), (3, 4, True), (5, 0, False)],
)
def test_exhausted(max_attempts: int, attempt: int, exhausted: bool) -> None:
    assert RetryPolicy(max_attempts=max_attempts).exhausted(attempt) is exhausted


@pytest.mark.parametrize(
    "fields",
    [{"max_attempts": 0}, {"base_seconds": -1}, {"cap_seconds": -0.5}, {"retries": 3}],
)
def test_invalid_policies_are_refused(fields: dict[str, float]) -> None:
    with pytest.raises(ValidationError):
        RetryPolicy(**fields)  # type: ignore[arg-type]


def test_policy_is_frozen() -> None:
    policy = RetryPolicy()
    with pytest.raises(ValidationError):
        policy.max_attempts = 9  # type: ignore[misc]
