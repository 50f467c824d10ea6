"""The job and step state machines: every allowed transition, and refusals."""

from __future__ import annotations

import itertools
import re

import pytest

from stalwart.domain.events import Event
from stalwart.domain.states import (
    JOB_EVENTS,
    JOB_OPEN,
    JOB_TERMINAL,
    JOB_TRANSITIONS,
    STEP_EVENTS,
    STEP_TERMINAL,
    STEP_TRANSITIONS,
    JobStatus,
    StepStatus,
    check_job_transition,
    check_step_transition,
    job_transition,
    step_transition,
)
from stalwart.errors import InvalidTransitionError

J = JobStatus
S = StepStatus

JOB_ALLOWED = [(cur, tgt) for cur, targets in JOB_TRANSITIONS.items() for tgt in sorted(targets)]
STEP_ALLOWED = [(cur, tgt) for cur, targets in STEP_TRANSITIONS.items() for tgt in sorted(targets)]
JOB_DISALLOWED = [
    (cur, tgt) for cur in JobStatus for tgt in JobStatus if tgt not in JOB_TRANSITIONS[cur]
]
STEP_DISALLOWED = [
    (cur, tgt) for cur in StepStatus for tgt in StepStatus if tgt not in STEP_TRANSITIONS[cur]
]


def _id(pair: tuple[str, str]) -> str:
    return f"{pair[0]}->{pair[1]}"


# -- the tables ------------------------------------------------------------------------------------


def test_every_status_has_a_row_in_its_table() -> None:
    assert set(JOB_TRANSITIONS) == set(JobStatus)
    assert set(STEP_TRANSITIONS) == set(StepStatus)


def test_tables_only_name_known_statuses() -> None:
    for targets in JOB_TRANSITIONS.values():
        assert targets <= set(JobStatus)
    for step_targets in STEP_TRANSITIONS.values():
        assert step_targets <= set(StepStatus)


def test_no_status_transitions_to_itself() -> None:
    assert all(cur not in targets for cur, targets in JOB_TRANSITIONS.items())
    assert all(cur not in targets for cur, targets in STEP_TRANSITIONS.items())


def test_terminal_statuses_are_the_design_ones() -> None:
    assert {J.COMPLETED, J.FAILED, J.REJECTED, J.CANCELLED} == JOB_TERMINAL
    assert {S.SUCCEEDED, S.REJECTED, S.SKIPPED, S.CANCELLED} == STEP_TERMINAL
    assert set(JobStatus) - JOB_TERMINAL == JOB_OPEN


def test_design_paths_are_allowed() -> None:
    """The paths DESIGN.md section 3 draws, walked end to end."""
    job_path = [J.INTAKE, J.VALIDATING, J.PLANNING, J.EXECUTING, J.WAITING_APPROVAL]
    job_path += [J.EXECUTING, J.REPLANNING, J.EXECUTING, J.EVALUATING, J.COMPLETED]
    for cur, tgt in itertools.pairwise(job_path):
        check_job_transition(cur, tgt)
    # a parked job whose last waiting step ends, or whose rejected step was critical
    check_job_transition(J.WAITING_APPROVAL, J.EVALUATING)
    check_job_transition(J.WAITING_APPROVAL, J.DEAD_LETTERED)
    step_path = [S.PENDING, S.READY, S.AWAITING_APPROVAL, S.READY, S.RUNNING, S.RETRY_WAIT]
    step_path += [S.READY, S.RUNNING, S.FAILED, S.DEAD_LETTERED]
    for cur, tgt in itertools.pairwise(step_path):
        check_step_transition(cur, tgt)
    for cur, tgt in [
        (S.RUNNING, S.SUCCEEDED),
        (S.RUNNING, S.INTERRUPTED),
        (S.PENDING, S.SKIPPED),
        (S.READY, S.SKIPPED),
        (S.AWAITING_APPROVAL, S.REJECTED),
    ]:
        check_step_transition(cur, tgt)


# -- event kinds -----------------------------------------------------------------------------------


def test_every_status_maps_to_an_event_kind() -> None:
    assert set(JOB_EVENTS) == set(JobStatus)
    assert set(STEP_EVENTS) == set(StepStatus)


def test_event_kinds_are_prefixed_snake_case_and_unique() -> None:
    for prefix, kinds in (("job_", JOB_EVENTS.values()), ("step_", STEP_EVENTS.values())):
        kinds = list(kinds)
        assert len(set(kinds)) == len(kinds)
        for kind in kinds:
            assert isinstance(kind, str)
            assert re.fullmatch(rf"{prefix}[a-z]+(_[a-z]+)*", kind), kind


def test_event_kinds_are_past_tense_or_a_state() -> None:
    """`kind` records what happened: a past participle (`..ed`); two kinds name the state
    entered instead. Any new kind that is neither fails here."""
    states = {"job_waiting_approval", "step_ready"}
    for kind in [*JOB_EVENTS.values(), *STEP_EVENTS.values()]:
        if kind in states:
            continue
        assert kind.endswith("ed"), kind


def test_final_status_event_kinds_name_the_status() -> None:
    for status in (J.COMPLETED, J.FAILED, J.REJECTED, J.CANCELLED, J.DEAD_LETTERED, J.ESCALATED):
        assert JOB_EVENTS[status] == f"job_{status.value}"
    for step_status in (S.SUCCEEDED, S.FAILED, S.SKIPPED, S.CANCELLED, S.DEAD_LETTERED):
        assert STEP_EVENTS[step_status] == f"step_{step_status.value}"


# -- allowed transitions ---------------------------------------------------------------------------


@pytest.mark.parametrize("pair", JOB_ALLOWED, ids=_id)
def test_allowed_job_transition_returns_its_event(pair: tuple[JobStatus, JobStatus]) -> None:
    cur, tgt = pair
    event = job_transition(
        "job_1", "acme", cur, tgt, actor="worker:w1", reason="because", data={"n": 1}, at=12.5
    )
    assert isinstance(event, Event)
    assert event.kind == JOB_EVENTS[tgt]
    assert (event.from_status, event.to_status) == (cur.value, tgt.value)
    assert type(event.from_status) is str and type(event.to_status) is str
    assert (event.job_id, event.tenant_id) == ("job_1", "acme")
    assert (event.actor, event.reason, event.data, event.at) == (
        "worker:w1",
        "because",
        {"n": 1},
        12.5,
    )
    assert event.step_id is None and event.step_key is None and event.id is None


@pytest.mark.parametrize("pair", STEP_ALLOWED, ids=_id)
def test_allowed_step_transition_returns_its_event(pair: tuple[StepStatus, StepStatus]) -> None:
    cur, tgt = pair
    event = step_transition(
        "job_1", "acme", 7, "fetch", cur, tgt, actor="reaper", reason="lease expired", at=3.0
    )
    assert event.kind == STEP_EVENTS[tgt]
    assert (event.from_status, event.to_status) == (cur.value, tgt.value)
    assert (event.step_id, event.step_key) == (7, "fetch")
    assert (event.job_id, event.tenant_id) == ("job_1", "acme")
    assert (event.actor, event.reason, event.at) == ("reaper", "lease expired", 3.0)
    assert event.data is None


def test_transitions_accept_plain_strings() -> None:
    event = job_transition("j", "t", "planning", "executing", actor="planner", at=1.0)
    assert event.kind == "job_execution_started"
    assert (event.from_status, event.to_status) == ("planning", "executing")
    step_event = step_transition("j", "t", 1, "a", "running", "succeeded", actor="w", at=1.0)
    assert step_event.kind == "step_succeeded"


def test_time_defaults_to_now(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("stalwart.domain.states.epoch_now", lambda: 1234.0)
    assert job_transition("j", "t", J.INTAKE, J.VALIDATING, actor="api").at == 1234.0
    assert step_transition("j", "t", 1, "a", S.PENDING, S.READY, actor="w").at == 1234.0
    assert job_transition("j", "t", J.INTAKE, J.VALIDATING, actor="api").reason == ""


# -- refused transitions ---------------------------------------------------------------------------


@pytest.mark.parametrize("pair", JOB_DISALLOWED, ids=_id)
def test_disallowed_job_transition_raises(pair: tuple[JobStatus, JobStatus]) -> None:
    cur, tgt = pair
    with pytest.raises(InvalidTransitionError) as info:
        job_transition("j", "t", cur, tgt, actor="x")
    err = info.value
    assert (err.entity, err.current, err.target) == ("job", cur.value, tgt.value)
    assert f"from {cur.value} to {tgt.value}" in err.message


@pytest.mark.parametrize("pair", STEP_DISALLOWED, ids=_id)
def test_disallowed_step_transition_raises(pair: tuple[StepStatus, StepStatus]) -> None:
    cur, tgt = pair
    with pytest.raises(InvalidTransitionError) as info:
        step_transition("j", "t", 1, "a", cur, tgt, actor="x")
    err = info.value
    assert (err.entity, err.current, err.target) == ("step", cur.value, tgt.value)
    assert f"from {cur.value} to {tgt.value}" in err.message


@pytest.mark.parametrize(
    ("cur", "tgt"),
    [
        (J.INTAKE, J.EXECUTING),  # skips validation and planning
        (J.PLANNING, J.COMPLETED),
        (J.EXECUTING, J.COMPLETED),  # must evaluate first
        (J.WAITING_APPROVAL, J.COMPLETED),
        (J.REPLANNING, J.COMPLETED),
        (J.ESCALATED, J.COMPLETED),
        (J.DEAD_LETTERED, J.COMPLETED),
    ],
)
def test_sample_of_refused_job_shortcuts(cur: JobStatus, tgt: JobStatus) -> None:
    with pytest.raises(InvalidTransitionError):
        check_job_transition(cur, tgt)


@pytest.mark.parametrize(
    ("cur", "tgt"),
    [
        (S.PENDING, S.RUNNING),  # dependencies first
        (S.READY, S.SUCCEEDED),  # never succeeds without running
        (S.RETRY_WAIT, S.RUNNING),  # back to ready before a new claim
        (S.AWAITING_APPROVAL, S.RUNNING),  # approval makes it ready, not running
        (S.RUNNING, S.SKIPPED),
        (S.RUNNING, S.DEAD_LETTERED),  # it fails first
        (S.FAILED, S.SUCCEEDED),
    ],
)
def test_sample_of_refused_step_shortcuts(cur: StepStatus, tgt: StepStatus) -> None:
    with pytest.raises(InvalidTransitionError):
        check_step_transition(cur, tgt)


@pytest.mark.parametrize("final", sorted(JOB_TERMINAL))
def test_nothing_leaves_a_final_job_status(final: JobStatus) -> None:
    for tgt in JobStatus:
        with pytest.raises(InvalidTransitionError) as info:
            check_job_transition(final, tgt)
        assert "none: it is final" in info.value.message


@pytest.mark.parametrize("final", sorted(STEP_TERMINAL))
def test_nothing_leaves_a_final_step_status(final: StepStatus) -> None:
    for tgt in StepStatus:
        with pytest.raises(InvalidTransitionError) as info:
            check_step_transition(final, tgt)
        assert "none: it is final" in info.value.message


def test_refusal_lists_what_is_allowed() -> None:
    with pytest.raises(InvalidTransitionError) as info:
        check_step_transition(S.PENDING, S.SUCCEEDED)
    assert "allowed from pending: cancelled, ready, skipped" in info.value.message
    assert info.value.to_dict()["current"] == "pending"


def test_unknown_status_is_a_value_error_not_a_transition() -> None:
    with pytest.raises(ValueError, match="bogus"):
        check_job_transition("bogus", J.EXECUTING)
    with pytest.raises(ValueError, match="bogus"):
        check_step_transition(S.READY, "bogus")
