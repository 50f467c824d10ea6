"""The exporter on store-built data, on both backends: counters and histograms read from the
event log and the ledger (exactly once, the same in every process, including ids a slow
transaction commits late and calls still in flight), gauges from the current state, and the
Prometheus rules file over the names it emits."""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from prometheus_client import generate_latest
from tests.observability.conftest import Scrape, parse, settings_for
from tests.store.conformance import (
    ACTOR,
    agent_step,
    claim_one,
    decision,
    failure,
    make_step,
    submit,
)

from stalwart.domain.agents import AgentCall, AgentTurn, TurnCheckpoint
from stalwart.domain.budgets import CallResult, CallScope, NewCall
from stalwart.domain.failures import Outcome, decide
from stalwart.domain.limits import Breaker, LimitSpec
from stalwart.domain.observability import FeedEvent
from stalwart.domain.records import Claim, StepError
from stalwart.domain.retry import RetryPolicy
from stalwart.errors import StoreUnavailableError
from stalwart.observability.metrics import (
    COUNTERS,
    GAUGES,
    HISTOGRAMS,
    MetricsExporter,
    metric_names,
    metrics_registry,
)
from stalwart.store import Store, open_store
from stalwart.store.base import WorkerInfo

RULES_FILE = Path(__file__).resolve().parents[2] / "docs" / "prometheus" / "stalwart-rules.yml"
USD = 1_000_000_000


async def read(exporter: MetricsExporter) -> Scrape:
    """Refresh and render the exporter as Prometheus would get it."""
    await exporter.refresh()
    return parse(generate_latest(metrics_registry(exporter, process=False)).decode())


def call(job_id: str, *, model: str = "m1", context: tuple[int, int] | None = None) -> NewCall:
    tokens, limit = context or (None, None)
    return NewCall(
        CallScope("acme", job_id, "a", 1, "step"),
        1,
        "scripted",
        model,
        "small",
        0,
        0,
        60.0,
        context_tokens=tokens,
        context_limit=limit,
    )


async def mixed_history(store: Store) -> dict[str, str]:
    """One job of each outcome, a retry, a lost lease, an approval and a model call."""
    done = await submit(store, workflow="alpha")
    claim = await claim_one(store)
    await store.llm_record(
        call(done.id, context=(400, 1000)),
        CallResult(
            "ok",
            input_tokens=100,
            output_tokens=20,
            cached_tokens=5,
            cost_nanos=2 * USD // 1000,
            latency_ms=250,
        ),
        actor=ACTOR,
    )
    assert (await store.step_complete(claim, {"ok": 1}, worker_id="w1")).recorded

    failed = await submit(store, workflow="alpha")
    claim = await claim_one(store)
    await store.step_fail(claim, failure("budget"), decision(Outcome.FAIL_JOB), worker_id="w1")

    dead = await submit(store, workflow="beta")
    claim = await claim_one(store)
    await store.step_fail(claim, failure("transient"), decision(Outcome.RETRY), worker_id="w1")
    claim = await claim_one(store)
    await store.step_fail(
        claim, failure("transient"), decision(Outcome.DEAD_LETTER), worker_id="w1"
    )

    escalated = await submit(store, workflow="beta")
    claim = await claim_one(store)
    await store.step_fail(
        claim, failure("non_retriable"), decision(Outcome.ESCALATE), worker_id="w1"
    )

    cancelled = await submit(store, workflow="alpha")
    await store.job_cancel(cancelled.id, actor=ACTOR)

    lost = await submit(store, workflow="gamma")
    await claim_one(store, lease_seconds=0.05)
    await asyncio.sleep(0.1)
    assert await store.leases_reap(actor="reaper") == 1
    claim = await claim_one(store)
    await store.step_complete(claim, {"ok": 2}, worker_id="w1")

    approved = await submit(store, make_step("pay", requires_approval=True), workflow="gamma")
    assert await store.step_claim("w1", limit=1, lease_seconds=30) == []  # parked
    [review] = await store.review_list(statuses=["pending"])
    await store.review_decide(review.id, approve=True, reviewer="ops")
    claim = await claim_one(store)
    await store.step_complete(claim, {"paid": True}, worker_id="w1")
    return {
        "completed": done.id,
        "failed": failed.id,
        "dead": dead.id,
        "escalated": escalated.id,
        "cancelled": cancelled.id,
        "lost": lost.id,
        "approved": approved.id,
    }


async def test_counters_and_histograms_come_from_the_event_log(store: Store) -> None:
    await mixed_history(store)

    m = await read(MetricsExporter(store))

    outcomes = {
        (dict(ls)["workflow"], dict(ls)["outcome"]): v
        for (name, ls), v in m.samples.items()
        if name == "stalwart_job_outcomes_total"
    }
    assert outcomes == {
        ("alpha", "completed"): 1,
        ("alpha", "failed"): 1,
        ("alpha", "cancelled"): 1,
        ("beta", "dead_lettered"): 1,
        ("beta", "escalated"): 1,
        ("gamma", "completed"): 2,
    }
    assert m.total("stalwart_jobs_submitted_total") == 7
    assert m.value("stalwart_jobs_submitted_total", workflow="beta", tenant="acme") == 2
    # Attempts: alpha 2, beta 3, gamma 3 (the lost one, its rerun, the payment).
    assert (
        m.value("stalwart_step_attempts_total", workflow="alpha", tool="noop", outcome="succeeded")
        == 1
    )
    assert (
        m.value("stalwart_step_attempts_total", workflow="alpha", tool="noop", outcome="error") == 1
    )
    assert (
        m.value("stalwart_step_attempts_total", workflow="beta", tool="noop", outcome="error") == 3
    )
    assert (
        m.value("stalwart_step_attempts_total", workflow="gamma", tool="noop", outcome="lost") == 1
    )
    assert (
        m.value("stalwart_step_attempts_total", workflow="gamma", tool="noop", outcome="succeeded")
        == 2
    )
    assert (
        m.value("stalwart_step_errors_total", workflow="beta", tool="noop", error_class="transient")
        == 2
    )
    assert (
        m.value(
            "stalwart_step_errors_total", workflow="beta", tool="noop", error_class="non_retriable"
        )
        == 1
    )
    assert (
        m.value("stalwart_step_errors_total", workflow="alpha", tool="noop", error_class="budget")
        == 1
    )
    assert (
        m.value(
            "stalwart_step_retries_total", workflow="beta", tool="noop", error_class="transient"
        )
        == 1
    )
    assert (
        m.value(
            "stalwart_lease_expiries_total", workflow="gamma", tool="noop", cause="lease_expired"
        )
        == 1
    )
    assert m.value("stalwart_approvals_requested_total", workflow="gamma", kind="approval") == 1
    assert m.value("stalwart_approvals_decided_total", workflow="gamma", decision="approved") == 1
    # Histograms: every ended attempt has a duration; each outcome its job's duration and cost.
    assert m.total("stalwart_step_duration_seconds_count") == 8
    assert (
        m.value("stalwart_job_duration_seconds_count", workflow="gamma", outcome="completed") == 2
    )
    assert (
        m.value(
            "stalwart_job_duration_seconds_bucket", workflow="gamma", outcome="completed", le="+Inf"
        )
        == 2
    )
    assert m.value("stalwart_job_cost_usd_count", workflow="alpha", outcome="completed") == 1
    assert m.value("stalwart_job_cost_usd_sum", workflow="alpha", outcome="completed") == 0.002
    assert (
        m.value("stalwart_job_cost_usd_bucket", workflow="alpha", outcome="completed", le="0.001")
        == 0
    )
    assert (
        m.value("stalwart_job_cost_usd_bucket", workflow="alpha", outcome="completed", le="0.005")
        == 1
    )
    # The ledger: calls, tokens by model, cost per tenant, context utilization.
    model = {"provider": "scripted", "model": "m1"}
    assert m.value("stalwart_llm_calls_total", **model, outcome="ok") == 1
    assert m.value("stalwart_llm_tokens_total", **model, type="input") == 100
    assert m.value("stalwart_llm_tokens_total", **model, type="output") == 20
    assert m.value("stalwart_llm_tokens_total", **model, type="cached") == 5
    assert m.value("stalwart_llm_cost_usd_total", tenant="acme", **model) == 0.002
    assert m.value("stalwart_llm_context_utilization_ratio_sum", **model) == 0.4
    assert m.value("stalwart_llm_context_utilization_ratio_bucket", **model, le="0.4") == 1
    assert m.value("stalwart_llm_call_duration_seconds_sum", **model) == 0.25


async def test_every_process_reports_the_same_totals_and_counts_each_event_once(
    store: Store, db_url: str
) -> None:
    first = MetricsExporter(store)
    await mixed_history(store)
    before = await read(first)
    again = await read(first)
    assert again.counters() == before.counters()

    job = await submit(store, workflow="alpha")
    claim = await claim_one(store)
    await store.step_complete(claim, {}, worker_id="w1")
    after = await read(first)
    assert (
        after.value(
            "stalwart_job_outcomes_total", workflow="alpha", tenant="acme", outcome="completed"
        )
        == 2
    )

    # Another process, started now, reads the whole log: the very same figures.
    other_store = open_store(db_url, settings_for(db_url))
    try:
        other = await read(MetricsExporter(other_store, batch=3))
    finally:
        await other_store.close()
    assert other.counters() == after.counters()
    assert job.id


async def test_counters_are_left_out_until_the_whole_log_is_read(store: Store) -> None:
    await mixed_history(store)
    slow = MetricsExporter(store, batch=2, catch_up_seconds=0.0)

    first = await read(slow)

    assert first.value("stalwart_exporter_caught_up") == 0
    assert not first.has("stalwart_job_outcomes_total")
    assert first.has("stalwart_workers_live")  # the state needs no history
    for _ in range(100):
        done = await read(slow)
        if done.value("stalwart_exporter_caught_up") == 1:
            break
    assert done.counters() == (await read(MetricsExporter(store))).counters()


async def test_a_call_in_flight_counts_once_it_settles(store: Store) -> None:
    job = await submit(store)
    exporter = MetricsExporter(store)
    call_id = await store.llm_reserve(call(job.id), actor=ACTOR)

    during = await read(exporter)
    assert during.total("stalwart_llm_calls_total") == 0

    await store.llm_settle(
        call_id, CallResult("ok", input_tokens=10, output_tokens=3, cost_nanos=500), actor=ACTOR
    )
    settled = await read(exporter)
    assert (
        settled.value("stalwart_llm_calls_total", provider="scripted", model="m1", outcome="ok")
        == 1
    )
    assert (
        settled.value("stalwart_llm_tokens_total", provider="scripted", model="m1", type="input")
        == 10
    )
    assert (await read(exporter)).counters() == settled.counters()


class HidingStore:
    """A store whose event tail misses one id the first time (as a PostgreSQL transaction
    that took its id before a later one but commits after it)."""

    def __init__(self, store: Store, hide: int) -> None:
        self.store = store
        self.hide = hide
        self.hidden = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    async def event_feed(self, after_id: int = 0, **kw: Any) -> list[FeedEvent]:
        rows = await self.store.event_feed(after_id, **kw)
        if not self.hidden and kw.get("ids") is None:
            self.hidden = True
            return [r for r in rows if r.id != self.hide]
        return rows


async def test_an_id_skipped_by_the_tail_is_read_at_the_next_refresh(store: Store) -> None:
    await submit(store, workflow="alpha")
    await submit(store, workflow="beta")
    events = await store.event_feed(0)
    [second] = [e for e in events if e.kind == "job_submitted" and e.workflow == "beta"]
    exporter = MetricsExporter(HidingStore(store, second.id))  # type: ignore[arg-type]

    first = await read(exporter)
    assert first.value("stalwart_jobs_submitted_total", workflow="beta", tenant="acme") == 0
    assert first.value("stalwart_jobs_submitted_total", workflow="alpha", tenant="acme") == 1

    later = await read(exporter)
    assert later.value("stalwart_jobs_submitted_total", workflow="beta", tenant="acme") == 1
    assert (await read(exporter)).counters() == later.counters()


async def test_an_event_committed_after_a_later_one_is_counted_once(pg_url: str) -> None:
    """PostgreSQL for real: a transaction takes an event id, another commits a later one, the
    exporter reads past the gap; the first commits; the next refresh counts it, once."""
    store = open_store(pg_url, settings_for(pg_url))
    try:
        exporter = MetricsExporter(store)
        async with await psycopg.AsyncConnection.connect(pg_url) as slow:
            await slow.execute(
                "INSERT INTO events (tenant_id, job_id, kind, actor, reason, at) "
                "VALUES ('acme', 'job_late', 'job_submitted', 'slow', '', "
                "extract(epoch from clock_timestamp()))"
            )
            await submit(store, workflow="alpha")  # commits events with later ids
            before = await read(exporter)
            assert (
                before.value("stalwart_jobs_submitted_total", workflow="alpha", tenant="acme") == 1
            )
            assert before.value("stalwart_jobs_submitted_total", workflow="", tenant="acme") == 0
            await slow.commit()
        after = await read(exporter)
        assert after.value("stalwart_jobs_submitted_total", workflow="", tenant="acme") == 1
        assert (await read(exporter)).counters() == after.counters()
    finally:
        await store.close()


async def test_gauges_report_the_state_now(store: Store) -> None:
    tool = "t"
    await store.limits_configure(
        [LimitSpec(f"tool:{tool}", breaker=Breaker(failures=1, window=60, cooldown=600))]
    )
    await store.worker_register(WorkerInfo("w1", "host", 1, 4, [tool], "0"))
    broken = await submit(store, make_step("a", tool=tool), make_step("b", tool=tool))
    first = await claim_one(store)
    await store.step_fail(first, failure("transient"), decision(Outcome.RETRY), worker_id="w1")
    # The breaker is open: both steps of tool t wait behind it.
    await submit(store, make_step("x", tool="u"), workflow="queued", priority=7)
    await submit(store, make_step("y", tool="u"), workflow="queued", priority=7)
    running = await submit(store, make_step("r", tool="v"), workflow="busy", priority=9)
    claim = await claim_one(store)
    assert claim.job_id == running.id
    parked = await submit(
        store,
        make_step("p", tool="u", requires_approval=True),
        workflow="gated",
        review_sla_seconds=0.05,
        priority=8,
    )
    assert await store.step_claim("w1", limit=1, lease_seconds=30) == []
    await asyncio.sleep(0.1)  # its SLA passes
    dead = await submit(store, workflow="dead", priority=10)
    claim = await claim_one(store)
    await store.step_fail(claim, failure(), decision(Outcome.DEAD_LETTER), worker_id="w1")

    m = await read(MetricsExporter(store))

    assert m.value("stalwart_queue_depth", queue="ready", workflow="queued", priority="7") == 2
    assert m.value("stalwart_queue_depth", queue="ready", workflow="wf", priority="0") == 1
    assert m.value("stalwart_queue_depth", queue="retry_wait", workflow="wf", priority="0") == 1
    assert m.value("stalwart_steps_running", workflow="busy", tool="v") == 1
    assert m.value("stalwart_breaker_state", key="tool:t", state="open") == 1
    assert m.value("stalwart_breaker_state", key="tool:t", state="closed") == 0
    assert m.value("stalwart_limit_held_back", key="tool:t") == 1
    assert m.value("stalwart_steps_delayed_by_limits", key="tool:t") == 2
    assert (
        m.value(
            "stalwart_approvals_waiting",
            tenant="acme",
            workflow="gated",
            kind="approval",
            status="pending",
        )
        == 1
    )
    assert m.value("stalwart_approvals_past_sla", tenant="acme", workflow="gated") == 1
    assert m.value("stalwart_approval_sla_headroom_seconds", tenant="acme", workflow="gated") < 0
    assert m.value("stalwart_approval_oldest_age_seconds", tenant="acme", workflow="gated") >= 0.05
    assert m.value("stalwart_dead_letters_open", tenant="acme", workflow="dead") == 1
    assert m.value("stalwart_workers_live") == 1
    assert m.value("stalwart_breaker_transitions_total", key="tool:t", state="open") == 1
    assert broken.id and parked.id and dead.id


async def test_a_429_counts_as_a_rate_limit_delay_and_a_pause(store: Store) -> None:
    await store.limits_configure([LimitSpec("tool:t", concurrency=2)])
    await submit(store, make_step("a", tool="t"))
    claim = await claim_one(store)
    error = StepError("transient", "slow down", code="http_429", retry_after=0.5)
    verdict = decide(
        error,
        attempt=claim.attempt,
        policy=RetryPolicy(max_attempts=3, base_seconds=0.01, jitter=False),
        critical=True,
        replans=0,
        max_replans=1,
    )
    await store.step_fail(claim, error, verdict, worker_id="w1")

    m = await read(MetricsExporter(store))

    assert m.value("stalwart_rate_limit_delays_total", tool="t") == 1
    assert m.value("stalwart_rate_limit_delay_seconds_total", tool="t") == 0.5
    assert m.value("stalwart_limit_pauses_total", key="tool:t") == 1
    assert m.value("stalwart_limit_paused_seconds", key="tool:t") > 0
    assert m.value("stalwart_limit_slots_in_use", key="tool:t") == 0


async def agent_turn(store: Store, claim: Claim, number: int, *calls: AgentCall) -> None:
    """Record turn `number` of a claimed agent step, then end each of its `calls` with the
    status it carries (an invalid call never runs)."""
    turn = AgentTurn(
        number,
        claim.attempt,
        "",
        [{"id": c.call_id, "name": c.tool, "arguments": c.arguments} for c in calls],
        model="m1",
        input_tokens=10,
        output_tokens=5,
    )
    checkpoint = TurnCheckpoint(claim.step_id, claim.lease_token, number, claim.attempt)
    assert await store.agent_turn_record(claim, checkpoint, turn, actor=ACTOR)
    for call in calls:
        status, ran = call.status, call.status != "invalid"
        if ran:
            assert (await store.agent_call_start(claim, call, actor=ACTOR)).started
        call.status = status
        assert await store.agent_call_finish(claim, call, actor=ACTOR, ran=ran)


def stopped(code: str) -> StepError:
    """An agent loop's failure, as the engine words it (`agent_max_turns`...)."""
    return StepError("non_retriable", f"the agent loop stopped: {code}", code=code)


async def test_agent_turns_tool_calls_and_escalations_come_from_the_event_log(
    store: Store,
) -> None:
    acme = await submit(store, agent_step("research"), workflow="agents")
    claim = await claim_one(store)
    await agent_turn(
        store,
        claim,
        1,
        AgentCall(1, 0, "c1", "lookup_vendor", '{"vendor": "ACME"}', "succeeded", result={}),
        AgentCall(1, 1, "c2", "lookup_vendor", "{", "invalid", error={"code": "invalid"}),
    )
    await agent_turn(store, claim, 2)
    escalate = decision(Outcome.ESCALATE)
    assert await store.step_fail(claim, stopped("agent_max_turns"), escalate, worker_id="w1")

    await submit(store, agent_step("research"), workflow="agents", tenant="globex")
    claim = await claim_one(store)
    failed = AgentCall(1, 0, "c1", "send_payment", "{}", "failed", error={"code": "http_503"})
    await agent_turn(store, claim, 1, failed)
    retry = decision(Outcome.RETRY)
    assert await store.step_fail(claim, stopped("agent_tool_refused"), retry, worker_id="w1")
    claim = await claim_one(store)  # a retried attempt is no escalation; this one is
    assert await store.step_fail(claim, stopped("agent_tool_refused"), escalate, worker_id="w1")

    await submit(store, workflow="agents")  # a tool step's failure is not an agent's
    claim = await claim_one(store)
    other = StepError("non_retriable", "refused", code="http_403")
    assert await store.step_fail(claim, other, escalate, worker_id="w1")

    exporter = MetricsExporter(store)
    m = await read(exporter)

    assert m.value("stalwart_agent_turns_total", workflow="agents", tenant="acme") == 2
    assert m.value("stalwart_agent_turns_total", workflow="agents", tenant="globex") == 1
    calls = {
        (dict(ls)["tool"], dict(ls)["outcome"]): v
        for (name, ls), v in m.samples.items()
        if name == "stalwart_agent_tool_calls_total" and dict(ls)["workflow"] == "agents"
    }
    assert calls == {
        ("lookup_vendor", "succeeded"): 1,
        ("lookup_vendor", "invalid"): 1,
        ("send_payment", "failed"): 1,
    }
    escalations = {
        dict(ls)["reason"]: v
        for (name, ls), v in m.samples.items()
        if name == "stalwart_agent_escalations_total"
    }
    assert escalations == {"max_turns": 1, "tool_refused": 1}
    assert (await store.job_get(acme.id)).status == "escalated"
    # Each is counted once: a second scrape adds nothing.
    again = await read(exporter)
    assert again.total("stalwart_agent_turns_total") == 3
    assert again.total("stalwart_agent_escalations_total") == 2


def test_the_prometheus_rules_file_names_only_metrics_the_exporter_emits() -> None:
    rules = yaml.safe_load(RULES_FILE.read_text())
    [group] = rules["groups"]
    alerts = {r["alert"]: r for r in group["rules"]}
    assert set(alerts) == {
        "StalwartSuccessRateDrop",
        "StalwartCostPerJobSpike",
        "StalwartApprovalsPastSla",
        "StalwartDeadLetters",
    }
    emitted = metric_names()
    for name, rule in alerts.items():
        used = set(re.findall(r"\bstalwart_[a-z0-9_]+", rule["expr"]))
        assert used, name
        assert used <= emitted, (name, used - emitted)
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"]


def test_metric_names_follow_the_conventions() -> None:
    for name in [*COUNTERS, *GAUGES, *HISTOGRAMS]:
        assert re.fullmatch(r"stalwart_[a-z0-9_]+", name), name
        assert not name.endswith("_total"), name  # added on exposition
    for name, (_, labels, _) in HISTOGRAMS.items():
        assert name.endswith(("_seconds", "_usd", "_ratio")), name
        assert "job_id" not in labels


@pytest.mark.parametrize("name", sorted(COUNTERS))
def test_no_counter_is_labelled_by_an_unbounded_id(name: str) -> None:
    assert not {"job_id", "job", "step_id", "review_id"} & set(COUNTERS[name][1])


def test_a_database_outage_during_a_scrape_is_one_warning_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Unreachable:
        async def refresh(self) -> None:
            raise StoreUnavailableError("the database cannot be reached: connection refused")

        def collect(self) -> list[Any]:
            return []

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        registry = metrics_registry(Unreachable(), loop=loop, process=False)  # type: ignore[arg-type]
        with caplog.at_level(logging.INFO, logger="stalwart"):
            generate_latest(registry)  # serves the last figures (none here)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=60)
        loop.close()
    [record] = [r for r in caplog.records if getattr(r, "action", "") == "metrics_refresh_failed"]
    assert (record.levelno, record.exc_info) == (logging.WARNING, None)
    assert "connection refused" in record.getMessage()
