"""How a job's status follows from its steps' statuses. Pure rules, applied by the store."""

from __future__ import annotations

from collections.abc import Mapping

from stalwart.domain.states import STEP_TERMINAL, JobStatus, StepStatus

_RUNNABLE = (StepStatus.READY, StepStatus.RUNNING, StepStatus.RETRY_WAIT)
_PARKED = (StepStatus.AWAITING_APPROVAL, StepStatus.INTERRUPTED)


def job_target(current: JobStatus | str, counts: Mapping[str, int]) -> JobStatus | None:
    """The status a live job should move to, given how many of its steps are in each status.

    Returns None when the job should stay where it is. All steps final: evaluate. Nothing
    runnable but something waits for a human: waiting_approval. Runnable again: executing.
    """
    current = JobStatus(current)
    if current not in (JobStatus.EXECUTING, JobStatus.WAITING_APPROVAL):
        return None
    open_steps = sum(n for status, n in counts.items() if StepStatus(status) not in STEP_TERMINAL)
    if open_steps == 0:
        return JobStatus.EVALUATING
    runnable = sum(counts.get(s, 0) for s in _RUNNABLE)
    parked = sum(counts.get(s, 0) for s in _PARKED)
    if current is JobStatus.EXECUTING and runnable == 0 and parked > 0:
        return JobStatus.WAITING_APPROVAL
    if current is JobStatus.WAITING_APPROVAL and runnable > 0:
        return JobStatus.EXECUTING
    return None
