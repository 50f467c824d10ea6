"""Metrics over HTTP during a run of mixed outcomes: the server's `/metrics` and a worker
subprocess's `--metrics-port` report the same global figures, read from the database."""

from __future__ import annotations

import time

import httpx
from tests.api.conftest import Live, start_live
from tests.api.helpers import doomed, order, submit, wait_job
from tests.observability.conftest import (
    Scrape,
    WorkerProcesses,
    scrape,
    wait_until,
)

from stalwart.api.server import free_port

PARKED_OR_DONE = ("completed", "failed", "rejected", "cancelled", "dead_lettered", "escalated")


def broken(customer: str) -> dict[str, object]:
    """A job whose only tool refuses for good: escalated to a human at its first attempt."""
    return {"workflow": "broken", "input": {"customer": customer, "amount": 1}}


def _reviews(live: Live) -> list[dict[str, object]]:
    with live.http("acme", "admin") as http:
        return list(http.get("/v1/reviews").json()["items"])


def _decide(live: Live, review_id: object, verdict: str) -> None:
    with live.http("acme", "reviewer") as http:
        answer = http.post(f"/v1/reviews/{review_id}/{verdict}", json={"comment": "test"})
    assert answer.status_code == 200, answer.text


def test_metrics_over_http_during_a_mixed_run_from_the_server_and_a_worker(
    db_url: str, worker_processes: WorkerProcesses
) -> None:
    live, bg = start_live(db_url, workers=0)  # the work runs in a worker subprocess below
    try:
        _run(live, db_url, worker_processes)
    finally:
        bg.stop()


def _run(live: Live, db_url: str, worker_processes: WorkerProcesses) -> None:
    server_metrics = f"{live.url}/metrics"
    empty = scrape(server_metrics)
    assert empty.value("stalwart_exporter_caught_up") == 1
    assert empty.total("stalwart_job_outcomes_total") == 0
    assert empty.total("stalwart_queue_depth") == 0

    small = [submit(live, order(5, f"small-{i}")) for i in range(3)]
    vip = submit(live, {**order(6, "vip"), "priority": 5})
    big = [submit(live, order(500, f"big-{i}")) for i in range(2)]
    dead = [submit(live, doomed(f"doomed-{i}")) for i in range(2)]
    refused = submit(live, broken("refused"))

    # Nothing runs yet: every first step waits in the queue, by priority.
    queued = scrape(server_metrics)
    assert queued.value("stalwart_jobs_submitted_total", workflow="order", tenant="acme") == 6
    assert queued.value("stalwart_jobs_submitted_total", workflow="doomed", tenant="acme") == 2
    assert queued.value("stalwart_jobs_submitted_total", workflow="broken", tenant="acme") == 1
    assert queued.total("stalwart_job_outcomes_total") == 0
    assert queued.total("stalwart_queue_depth", queue="ready") == 9
    assert queued.value("stalwart_queue_depth", queue="ready", workflow="order", priority="5") == 1
    assert queued.value("stalwart_queue_depth", queue="ready", workflow="order", priority="0") == 5
    assert queued.value("stalwart_queue_depth", queue="ready", workflow="doomed", priority="0") == 2

    port = free_port()
    worker = worker_processes.start(db_url, "--metrics-port", str(port), name="metrics")
    worker_metrics = f"http://127.0.0.1:{port}/metrics"

    # The big orders run their first step, then wait for a reviewer.
    for job_id in big:
        wait_job(live, job_id, ("waiting_approval",), timeout=30)
    waiting = scrape(server_metrics)
    assert waiting.total("stalwart_approvals_waiting", status="pending") == 2
    assert waiting.value("stalwart_approvals_past_sla", tenant="acme", workflow="order") == 0
    assert waiting.total("stalwart_approval_sla_headroom_seconds") > 3000  # an hour's SLA
    pending = {r["job_id"]: r["id"] for r in _reviews(live) if r["status"] == "pending"}
    _decide(live, pending[big[0]], "approve")
    _decide(live, pending[big[1]], "reject")

    for job_id in [*small, vip, *big, *dead, refused]:
        wait_job(live, job_id, PARKED_OR_DONE, timeout=30)
    wait_until(
        lambda: scrape(server_metrics).total("stalwart_queue_depth") == 0, 10, "an empty queue"
    )

    final = scrape(server_metrics)
    _check_final(final)

    # The worker's endpoint: the same global counters, and its own process's figures.
    wait_until(lambda: _answers(worker_metrics), 20, "the worker's metrics endpoint")
    from_worker = scrape(worker_metrics)
    assert from_worker.counters() == final.counters()
    assert from_worker.total("stalwart_queue_depth") == 0
    assert from_worker.value("stalwart_worker_steps_running", worker="w0-metrics") == 0
    assert from_worker.value("stalwart_worker_concurrency", worker="w0-metrics") == 10
    # 6 lookups, 5 payments, 4 doomed attempts, 1 refused
    assert from_worker.value("stalwart_worker_steps_total", worker="w0-metrics") == 16
    assert from_worker.has("process_cpu_seconds_total") or from_worker.has("python_info")
    assert worker.stop() == 0, worker_processes.logs()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.HTTPError:
        time.sleep(0.1)
        return False


def _check_final(m: Scrape) -> None:
    outcomes = {
        (labels["workflow"], labels["outcome"]): value
        for (name, ls), value in m.samples.items()
        if name == "stalwart_job_outcomes_total"
        for labels in [dict(ls)]
    }
    assert outcomes == {
        ("order", "completed"): 5,  # 3 small, the vip, the approved big one
        ("order", "rejected"): 1,
        ("doomed", "dead_lettered"): 2,
        ("broken", "escalated"): 1,
    }
    # Failed attempts by tool and class; each doomed job was retried once, then dead-lettered.
    assert (
        m.value(
            "stalwart_step_errors_total", workflow="doomed", tool="flaky", error_class="transient"
        )
        == 4
    )
    assert (
        m.value(
            "stalwart_step_errors_total",
            workflow="broken",
            tool="refuse",
            error_class="non_retriable",
        )
        == 1
    )
    assert m.total("stalwart_step_retries_total") == 2
    assert (
        m.value(
            "stalwart_step_retries_total", workflow="doomed", tool="flaky", error_class="transient"
        )
        == 2
    )
    assert (
        m.value(
            "stalwart_step_attempts_total", workflow="order", tool="lookup", outcome="succeeded"
        )
        == 6
    )
    assert (
        m.value("stalwart_step_attempts_total", workflow="order", tool="pay", outcome="succeeded")
        == 5
    )  # 3 small, the vip, the approved big one: the rejected payment never ran
    assert m.total("stalwart_step_attempts_total", outcome="error") == 5
    assert m.total("stalwart_step_duration_seconds_count") == 16
    assert m.value("stalwart_approvals_requested_total", workflow="order", kind="approval") == 2
    assert m.value("stalwart_approvals_decided_total", workflow="order", decision="approved") == 1
    assert m.value("stalwart_approvals_decided_total", workflow="order", decision="rejected") == 1
    assert (
        m.value("stalwart_job_duration_seconds_count", workflow="order", outcome="completed") == 5
    )
    assert m.value("stalwart_job_cost_usd_count", workflow="doomed", outcome="dead_lettered") == 2
    assert m.total("stalwart_lease_expiries_total") == 0
    # The state now: nothing queued or running, no approval waiting, three dead letters open
    # (an escalated job opens one too).
    assert m.total("stalwart_queue_depth") == 0
    assert m.total("stalwart_steps_running") == 0
    assert m.total("stalwart_approvals_waiting") == 0
    assert m.value("stalwart_dead_letters_open", tenant="acme", workflow="doomed") == 2
    assert m.value("stalwart_dead_letters_open", tenant="acme", workflow="broken") == 1
    assert m.value("stalwart_workers_live") == 1
