"""Shared steps of the API tests: submit through HTTP and wait for a job to reach a status, for a
review to wait or a dead letter to open, always through the API as the tenant's admin."""

from __future__ import annotations

import time
from typing import Any

import httpx
from tests.api.conftest import Live

ERROR_KEYS = {"code", "message", "field", "fix", "details"}
FINISHED = ("completed", "failed", "rejected", "cancelled", "dead_lettered", "escalated")


def order(amount: float = 5, customer: str = "ada") -> dict[str, Any]:
    """The body of `POST /v1/jobs` for an order (over 100 waits for a reviewer)."""
    return {"workflow": "order", "input": {"customer": customer, "amount": amount}}


def doomed(customer: str = "ada") -> dict[str, Any]:
    """The body of `POST /v1/jobs` for a job that dead-letters after two attempts."""
    return {"workflow": "doomed", "input": {"customer": customer, "amount": 1}}


def error_of(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The error body of `response`, checked: that status, the one shape, that code."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    assert set(body) == ERROR_KEYS, body
    assert body["code"] == code, body
    assert isinstance(body["message"], str) and body["message"]
    assert isinstance(body["details"], dict)
    return body


def submit(live: Live, body: dict[str, Any], tenant: str = "acme", **headers: str) -> str:
    """Submit as the tenant's submitter; the new job's id."""
    with live.http(tenant, "submitter") as http:
        response = http.post("/v1/jobs", json=body, headers=headers)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def wait_job(
    live: Live, job_id: str, statuses: tuple[str, ...], tenant: str = "acme", timeout: float = 60
) -> dict[str, Any]:
    """Poll the job (as the tenant's admin) until its status is one of `statuses`."""
    deadline = time.monotonic() + timeout
    with live.http(tenant, "admin") as http:
        while True:
            job: dict[str, Any] = http.get(f"/v1/jobs/{job_id}").json()
            if job.get("status") in statuses:
                return job
            assert time.monotonic() < deadline, f"job {job_id} is still {job.get('status')}"
            time.sleep(0.05)


def waiting_review(live: Live, tenant: str = "acme", amount: float = 500) -> dict[str, Any]:
    """A new order over 100, parked: its pending review."""
    job_id = submit(live, order(amount), tenant)
    wait_job(live, job_id, ("waiting_approval",), tenant)
    with live.http(tenant, "admin") as http:
        reviews = http.get("/v1/reviews").json()["items"]
    [review] = [r for r in reviews if r["job_id"] == job_id]
    return dict(review)


def open_dead_letter(live: Live, tenant: str = "acme") -> dict[str, Any]:
    """A new doomed job, dead-lettered: its open dead letter."""
    job_id = submit(live, doomed(), tenant)
    wait_job(live, job_id, ("dead_lettered",), tenant)
    with live.http(tenant, "admin") as http:
        letter = http.get(f"/v1/dlq/{job_id}")
    assert letter.status_code == 200, letter.text
    return dict(letter.json())


def sse_events(response: httpx.Response) -> list[dict[str, Any]]:
    """The events of a server-sent event stream, read to its end: id, event and raw data."""
    events, current = [], {}
    for line in response.iter_lines():
        if not line:
            if current:
                events.append(current)
                current = {}
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        current[name] = value.removeprefix(" ")
    if current:
        events.append(current)
    return events
