"""`job_target`: how a job's status follows from its steps' statuses."""

from __future__ import annotations

import pytest

from stalwart.domain.progress import job_target
from stalwart.domain.states import JobStatus, StepStatus, check_job_transition

J = JobStatus
S = StepStatus


@pytest.mark.parametrize(
    ("current", "counts", "target"),
    [
        # every step final: evaluate, from executing or waiting_approval
        (J.EXECUTING, {S.SUCCEEDED: 3}, J.EVALUATING),
        (J.EXECUTING, {S.SUCCEEDED: 2, S.SKIPPED: 1, S.CANCELLED: 1, S.REJECTED: 1}, J.EVALUATING),
        (J.WAITING_APPROVAL, {S.SUCCEEDED: 1, S.SKIPPED: 1}, J.EVALUATING),
        (J.EXECUTING, {}, J.EVALUATING),
        (J.EXECUTING, {S.SUCCEEDED: 2, S.READY: 0}, J.EVALUATING),  # zero counts ignored
        # nothing runnable, something waits for a human: waiting_approval
        (J.EXECUTING, {S.SUCCEEDED: 1, S.AWAITING_APPROVAL: 1}, J.WAITING_APPROVAL),
        (J.EXECUTING, {S.INTERRUPTED: 1, S.PENDING: 2}, J.WAITING_APPROVAL),
        # something runnable: stay executing
        (J.EXECUTING, {S.AWAITING_APPROVAL: 1, S.RUNNING: 1}, None),
        (J.EXECUTING, {S.AWAITING_APPROVAL: 1, S.RETRY_WAIT: 1}, None),
        (J.EXECUTING, {S.AWAITING_APPROVAL: 1, S.READY: 1}, None),
        (J.EXECUTING, {S.PENDING: 2, S.READY: 1}, None),
        # open but neither runnable nor parked (e.g. a failed step awaiting its decision)
        (J.EXECUTING, {S.FAILED: 1}, None),
        (J.EXECUTING, {S.DEAD_LETTERED: 1}, None),
        # waiting_approval: back to executing once something is runnable again
        (J.WAITING_APPROVAL, {S.READY: 1, S.PENDING: 1}, J.EXECUTING),
        (J.WAITING_APPROVAL, {S.RUNNING: 1, S.AWAITING_APPROVAL: 1}, J.EXECUTING),
        (J.WAITING_APPROVAL, {S.RETRY_WAIT: 1}, J.EXECUTING),
        (J.WAITING_APPROVAL, {S.AWAITING_APPROVAL: 2}, None),
        (J.WAITING_APPROVAL, {S.INTERRUPTED: 1, S.PENDING: 1}, None),
    ],
)
def test_job_target(current: JobStatus, counts: dict[str, int], target: JobStatus | None) -> None:
    assert job_target(current, counts) is target


@pytest.mark.parametrize(
    "current", [s for s in JobStatus if s not in (J.EXECUTING, J.WAITING_APPROVAL)]
)
def test_only_live_jobs_move(current: JobStatus) -> None:
    assert job_target(current, {S.SUCCEEDED: 1}) is None
    assert job_target(current, {S.AWAITING_APPROVAL: 1}) is None


def test_plain_string_statuses() -> None:
    assert job_target("executing", {"succeeded": 2}) is J.EVALUATING
    assert job_target("waiting_approval", {"ready": 1}) is J.EXECUTING


def test_unknown_step_status_is_refused() -> None:
    with pytest.raises(ValueError, match="exploded"):
        job_target(J.EXECUTING, {"exploded": 1})


@pytest.mark.parametrize("current", [J.EXECUTING, J.WAITING_APPROVAL])
def test_every_target_is_an_allowed_transition(current: JobStatus) -> None:
    """Whatever mix of step statuses a job has, the move `job_target` asks for is one the
    job state machine allows (the store applies it through `job_transition`)."""
    statuses = list(StepStatus)
    seen: set[JobStatus | None] = set()
    for mask in range(1 << len(statuses)):
        counts = {s.value: 1 for i, s in enumerate(statuses) if mask >> i & 1}
        target = job_target(current, counts)
        seen.add(target)
        if target is not None:
            check_job_transition(current, target)
    assert J.EVALUATING in seen and None in seen
