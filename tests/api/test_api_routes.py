"""Every route of the HTTP API through a live server (uvicorn, the app factory, a worker): what
each answers when it works, and each error code it can answer, always in the one error shape."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest
import uvicorn
from tests.api.conftest import Live, start_live
from tests.api.helpers import (
    ERROR_KEYS,
    doomed,
    error_of,
    open_dead_letter,
    order,
    sse_events,
    submit,
    wait_job,
    waiting_review,
)
from tests.api.server_app import build_app

from stalwart import Settings
from stalwart.api.factory import create_api
from stalwart.api.server import BackgroundServer, free_port

# -- POST /v1/jobs --------------------------------------------------------------------------------


def test_submit_answers_201_with_the_job_and_its_location(live: Live) -> None:
    with live.http("acme", "submitter") as http:
        response = http.post("/v1/jobs", json={**order(7), "priority": 3})

    assert response.status_code == 201, response.text
    job = response.json()
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert (job["tenant_id"], job["workflow"], job["status"], job["priority"]) == (
        "acme",
        "order",
        "executing",
        3,
    )
    assert job["input"] == {"customer": "ada", "amount": 7.0}
    assert job["idempotency_key"] is None


def test_a_duplicate_idempotency_key_answers_200_with_the_existing_job(live: Live) -> None:
    with live.http("acme", "submitter") as http:
        first = http.post("/v1/jobs", json=order(), headers={"Idempotency-Key": "order-1"})
        again = http.post("/v1/jobs", json=order(), headers={"Idempotency-Key": "order-1"})
        other = http.post("/v1/jobs", json=order(), headers={"Idempotency-Key": "order-2"})
        listed = http.get("/v1/jobs").json()["items"]

    assert (first.status_code, again.status_code, other.status_code) == (201, 200, 201)
    assert again.json()["id"] == first.json()["id"] != other.json()["id"]
    assert again.headers["location"] == f"/v1/jobs/{first.json()['id']}"
    assert first.json()["idempotency_key"] == "order-1"
    assert len(listed) == 2


@pytest.mark.parametrize(
    ("job_input", "field"),
    [
        ({"customer": "ada", "amount": -3}, "input.amount"),
        ({"customer": "ada", "amount": "lots"}, "input.amount"),
        ({"amount": 3}, "input.customer"),
        ({"customer": "", "amount": 3}, "input.customer"),
    ],
)
def test_input_the_workflow_rejects_answers_422_invalid_input_naming_the_field(
    live: Live, job_input: dict[str, object], field: str
) -> None:
    with live.http("acme", "submitter") as http:
        response = http.post("/v1/jobs", json={"workflow": "order", "input": job_input})
        listed = http.get("/v1/jobs").json()["items"]

    body = error_of(response, 422, "invalid_input")
    assert body["field"] == field
    assert field in body["message"]
    assert [e["field"] for e in body["details"]["errors"]] == [field.removeprefix("input.")]
    assert listed == []


def test_a_malformed_request_answers_422_invalid_request(live: Live) -> None:
    json_type = {"Content-Type": "application/json"}
    with live.http("acme", "submitter") as http:
        not_json = http.post("/v1/jobs", content=b"{not json", headers=json_type)
        untyped_text = http.post("/v1/jobs", content=b"plain text")
        a_list = http.post("/v1/jobs", json=[order()])
        no_workflow = http.post("/v1/jobs", json={"input": {}})
        input_not_object = http.post("/v1/jobs", json={"workflow": "order", "input": [1]})
        extra = http.post("/v1/jobs", json={**order(), "colour": "red"})
        priority = http.post("/v1/jobs", json={**order(), "priority": 5000})
        long_key = http.post("/v1/jobs", json=order(), headers={"Idempotency-Key": "k" * 256})
        not_utf8 = http.post("/v1/jobs", content=b'{"workflow": "\xff"}', headers=json_type)

    for response in (not_json, untyped_text, a_list):
        body = error_of(response, 422, "invalid_request")
        assert body["field"] is None
        assert "JSON" in body["message"]
    for response, field in (
        (no_workflow, "workflow"),
        (input_not_object, "input"),
        (extra, "colour"),
        (priority, "priority"),
        (long_key, "header.Idempotency-Key"),
    ):
        body = error_of(response, 422, "invalid_request")
        assert body["field"] == field
        assert body["details"]["errors"][0]["field"] == field
    # A body that is not even text fails in FastAPI before validation: 400, still one shape.
    error_of(not_utf8, 400, "bad_request")


def test_an_unknown_workflow_answers_404_unknown_workflow(live: Live) -> None:
    with live.http("acme", "submitter") as http:
        response = http.post("/v1/jobs", json={"workflow": "nope", "input": {}})

    body = error_of(response, 404, "unknown_workflow")
    assert body["details"] == {"workflow": "nope"}
    assert "order" in body["message"]


def test_input_over_the_payload_limit_answers_413(tmp_path: Path) -> None:
    live, bg = start_live(f"sqlite:///{tmp_path / 's.db'}", workers=0, max_payload_bytes=200)
    try:
        with live.http("acme", "submitter") as http:
            small = http.post("/v1/jobs", json=order(customer="a" * 50))
            large = http.post("/v1/jobs", json=order(customer="a" * 300))
    finally:
        bg.stop()

    assert small.status_code == 201, small.text
    body = error_of(large, 413, "payload_too_large")
    assert body["field"] == "input"
    assert body["details"]["limit"] == 200
    assert body["details"]["size"] > 200


def test_a_full_queue_answers_429_with_retry_after(tmp_path: Path) -> None:
    live, bg = start_live(f"sqlite:///{tmp_path / 's.db'}", workers=0, max_queue_depth=1)
    try:
        with live.http("acme", "submitter") as http:
            first = http.post("/v1/jobs", json=order())
            full = http.post("/v1/jobs", json=order())
        with live.http("globex", "submitter") as http:
            other_tenant = http.post("/v1/jobs", json=order())
    finally:
        bg.stop()

    assert first.status_code == 201, first.text
    body = error_of(full, 429, "queue_full")
    retry_after = full.headers["retry-after"]
    assert retry_after.isdigit() and int(retry_after) >= 1
    assert int(retry_after) == round(body["details"]["retry_after"])
    assert (body["details"]["tenant_id"], body["details"]["depth"]) == ("acme", 1)
    assert other_tenant.status_code == 201, "the cap is per tenant"


# -- GET /v1/jobs ---------------------------------------------------------------------------------


def test_list_filters_by_status_and_workflow_and_pages_with_a_cursor(tmp_path: Path) -> None:
    # No worker: every job stays where the test puts it.
    live, bg = start_live(f"sqlite:///{tmp_path / 's.db'}", workers=0)
    try:
        ids = [submit(live, order(n + 1)) for n in range(5)]
        ids += [submit(live, doomed()), submit(live, doomed())]
        submit(live, order(), tenant="globex")
        with live.http("acme", "submitter") as http:
            assert http.post(f"/v1/jobs/{ids[1]}/cancel").status_code == 200
            pages, cursor = [], None
            while True:
                params: dict[str, str | int] = {"limit": 3}
                if cursor:
                    params["cursor"] = cursor
                page = http.get("/v1/jobs", params=params)
                assert page.status_code == 200, page.text
                pages.append([j["id"] for j in page.json()["items"]])
                cursor = page.json()["next_cursor"]
                if cursor is None:
                    break
                assert cursor == pages[-1][-1]
            cancelled = http.get("/v1/jobs", params={"status": "cancelled"}).json()
            both = http.get("/v1/jobs", params=[("status", "cancelled"), ("status", "executing")])
            by_workflow = http.get("/v1/jobs", params={"workflow": "doomed"}).json()
            combined = http.get("/v1/jobs", params={"workflow": "order", "status": "executing"})
            exact_page = http.get("/v1/jobs", params={"limit": 7}).json()
            bad_limit = http.get("/v1/jobs", params={"limit": 0})
    finally:
        bg.stop()

    assert [len(p) for p in pages] == [3, 3, 1]
    flat = [i for p in pages for i in p]
    assert flat == list(reversed(ids)), "newest first, no duplicates, no gaps"
    assert [j["id"] for j in cancelled["items"]] == [ids[1]]
    assert cancelled["next_cursor"] is None
    assert sorted(j["id"] for j in both.json()["items"]) == sorted(ids)
    assert [j["id"] for j in by_workflow["items"]] == [ids[6], ids[5]]
    assert {j["id"] for j in combined.json()["items"]} == set(ids[:5]) - {ids[1]}
    assert len(exact_page["items"]) == 7 and exact_page["next_cursor"] is None
    assert error_of(bad_limit, 422, "invalid_request")["field"] == "query.limit"


@pytest.mark.parametrize(
    ("path", "status"),
    [("/v1/jobs", "finished"), ("/v1/reviews", "open"), ("/v1/dlq", "pending")],
)
def test_an_unknown_status_filter_is_422_naming_it(live: Live, path: str, status: str) -> None:
    with live.http("acme", "admin") as http:
        answer = http.get(path, params={"status": status})
    body = error_of(answer, 422, "invalid_request")
    assert body["field"] == "query.status.0"
    assert status not in ("", None) and "Input should be" in body["message"]


# -- GET /v1/jobs/{id}, its events and their stream -----------------------------------------------


def test_get_a_job_answers_its_steps_and_cost(live: Live) -> None:
    job_id = submit(live, order(20))
    wait_job(live, job_id, ("completed",))
    with live.http("acme", "submitter") as http:
        response = http.get(f"/v1/jobs/{job_id}")
        missing = http.get("/v1/jobs/job_doesnotexist")

    assert response.status_code == 200, response.text
    job = response.json()
    assert (job["id"], job["status"], job["steps_executed"]) == (job_id, "completed", 2)
    assert job["finished_at"] is not None
    assert [(s["key"], s["status"], s["attempt"]) for s in job["steps"]] == [
        ("find", "succeeded", 1),
        ("pay", "succeeded", 1),
    ]
    assert job["steps"][1]["output"] == {"payment_id": job["steps"][1]["output"]["payment_id"]}
    assert job["cost"] == {"calls": 0, "input_tokens": 0, "output_tokens": 0, "cost_usd": 0.0}
    assert error_of(missing, 404, "not_found")["details"] == {
        "entity": "job",
        "id": "job_doesnotexist",
    }


def test_events_list_in_order_and_after_a_cursor(live: Live) -> None:
    job_id = submit(live, order())
    wait_job(live, job_id, ("completed",))
    with live.http("acme", "submitter") as http:
        everything = http.get(f"/v1/jobs/{job_id}/events").json()
        later = http.get(
            f"/v1/jobs/{job_id}/events", params={"after": everything["items"][2]["id"]}
        )
        two = http.get(f"/v1/jobs/{job_id}/events", params={"limit": 2}).json()
        none_newer = http.get(
            f"/v1/jobs/{job_id}/events", params={"after": everything["next_after"]}
        )
        missing = http.get("/v1/jobs/job_nope/events")
        negative = http.get(f"/v1/jobs/{job_id}/events", params={"after": -1})

    items = everything["items"]
    ids = [e["id"] for e in items]
    assert ids == sorted(ids) and len(set(ids)) == len(ids) and len(ids) > 4
    assert everything["next_after"] == ids[-1]
    assert {e["job_id"] for e in items} == {job_id}
    assert items[-1]["to_status"] == "completed"
    assert later.json()["items"] == items[3:]
    assert two["items"] == items[:2] and two["next_after"] == ids[1]
    assert none_newer.json() == {"items": [], "next_after": ids[-1]}
    error_of(missing, 404, "not_found")
    assert error_of(negative, 422, "invalid_request")["field"] == "query.after"


def _stream(
    live: Live, job_id: str, tenant: str = "acme", role: str = "submitter", **headers: str
) -> tuple[int, list[dict[str, str]]]:
    with (
        live.http(tenant, role) as http,
        http.stream("GET", f"/v1/jobs/{job_id}/events/stream", headers=headers) as response,
    ):
        if response.status_code != 200:
            response.read()
            return response.status_code, [response.json()]
        assert response.headers["content-type"].startswith("text/event-stream")
        return 200, sse_events(response)


def test_the_event_stream_sends_a_finished_jobs_events_then_end_and_resumes(live: Live) -> None:
    job_id = submit(live, order())
    wait_job(live, job_id, ("completed",))
    with live.http("acme", "submitter") as http:
        listed = http.get(f"/v1/jobs/{job_id}/events").json()["items"]

    status, streamed = _stream(live, job_id)
    assert status == 200
    *events, end = streamed
    assert [e["event"] for e in events] == [e["kind"] for e in listed]
    assert [int(e["id"]) for e in events] == [e["id"] for e in listed]
    assert [json.loads(e["data"]) for e in events] == listed
    assert (end["event"], json.loads(end["data"])) == ("end", {"status": "completed"})
    assert end["id"] == str(listed[-1]["id"])

    # A client that reconnects with Last-Event-ID gets only what it missed.
    status, resumed = _stream(live, job_id, **{"Last-Event-ID": str(listed[2]["id"])})
    assert status == 200
    assert [int(e["id"]) for e in resumed[:-1]] == [e["id"] for e in listed[3:]]
    assert resumed[-1]["event"] == "end"

    # Another tenant's job, or none, answers 404 before the stream opens.
    assert _stream(live, job_id, tenant="globex")[0] == 404
    status, [body] = _stream(live, "job_nope")
    assert (status, body["code"]) == (404, "not_found")


def test_the_event_stream_follows_a_running_job_to_its_end(live: Live) -> None:
    review = waiting_review(live)
    seen: list[dict[str, str]] = []
    with (
        live.http("acme", "submitter") as http,
        http.stream("GET", f"/v1/jobs/{review['job_id']}/events/stream") as response,
    ):
        current: dict[str, str] = {}
        for line in response.iter_lines():
            if line:
                name, _, value = line.partition(":")
                current[name] = value.strip()
                continue
            seen.append(current)
            current = {}
            if seen[-1]["event"] == "review_requested":
                # The history is replayed; the job waits. Decide while the stream is open.
                with live.http("acme", "reviewer") as reviewer:
                    decided = reviewer.post(f"/v1/reviews/{review['id']}/approve")
                assert decided.status_code == 200, decided.text
            if seen[-1]["event"] == "end":
                break

    kinds = [e["event"] for e in seen]
    assert kinds.index("review_approved") > kinds.index("review_requested")
    assert (kinds[-1], json.loads(seen[-1]["data"])) == ("end", {"status": "completed"})
    ids = [int(e["id"]) for e in seen[:-1]]
    assert ids == sorted(set(ids))


# -- POST /v1/jobs/{id}/cancel --------------------------------------------------------------------


def test_cancel_answers_200_and_a_finished_job_answers_409(live: Live) -> None:
    parked = waiting_review(live)["job_id"]
    finished = submit(live, order())
    wait_job(live, finished, ("completed",))
    with live.http("acme", "submitter") as http:
        cancelled = http.post(f"/v1/jobs/{parked}/cancel", json={"reason": "customer called"})
        again = http.post(f"/v1/jobs/{parked}/cancel")
        done = http.post(f"/v1/jobs/{finished}/cancel")
        missing = http.post("/v1/jobs/job_nope/cancel")
        events = http.get(f"/v1/jobs/{parked}/events").json()["items"]
        bad_body = http.post(f"/v1/jobs/{parked}/cancel", json={"why": "x"})

    assert cancelled.status_code == 200, cancelled.text
    assert (cancelled.json()["status"], cancelled.json()["cancel_requested"]) == (
        "cancelled",
        True,
    )
    [event] = [e for e in events if e["to_status"] == "cancelled" and e["step_id"] is None]
    assert (event["actor"], event["reason"]) == ("acme-submitter", "customer called")
    for response in (again, done):
        body = error_of(response, 409, "invalid_transition")
        assert body["message"]
    error_of(missing, 404, "not_found")
    assert error_of(bad_body, 422, "invalid_request")["field"] == "why"


# -- /v1/reviews ----------------------------------------------------------------------------------


def test_reviews_list_and_get(live: Live) -> None:
    review = waiting_review(live)
    with live.http("acme", "reviewer") as http:
        listed = http.get("/v1/reviews").json()["items"]
        decided_only = http.get("/v1/reviews", params={"status": "approved"}).json()["items"]
        one = http.get(f"/v1/reviews/{review['id']}")
        missing = http.get("/v1/reviews/rev_nope")

    assert [r["id"] for r in listed] == [review["id"]]
    assert decided_only == []
    assert one.status_code == 200
    got = one.json()
    assert got == review
    assert (got["kind"], got["status"], got["step_key"]) == ("approval", "pending", "pay")
    assert got["asked"] == "Pay for this order?"
    assert got["reason"] == "Orders over 100 need a reviewer."
    assert [o["name"] for o in got["options"]] == ["approve", "reject"]
    assert got["context"]["args"] == {"customer": "ada", "amount": 500.0}
    assert (got["decision"], got["decided_by"], got["decided_at"]) == (None, None, None)
    error_of(missing, 404, "not_found")


def test_approve_records_the_keys_name_and_a_decided_review_answers_409(live: Live) -> None:
    review = waiting_review(live)
    with live.http("acme", "reviewer") as http:
        approved = http.post(f"/v1/reviews/{review['id']}/approve", json={"comment": "fine"})
        again = http.post(f"/v1/reviews/{review['id']}/approve", json={"comment": "twice"})
        reject_after = http.post(f"/v1/reviews/{review['id']}/reject")
        missing = http.post("/v1/reviews/rev_nope/approve")
    job = wait_job(live, review["job_id"], ("completed",))
    with live.http("acme", "reviewer") as http:
        events = http.get(f"/v1/jobs/{review['job_id']}/events").json()["items"]
        stored = http.get(f"/v1/reviews/{review['id']}").json()

    assert approved.status_code == 200, approved.text
    body = approved.json()
    assert (body["status"], body["decision"], body["decided_by"], body["comment"]) == (
        "approved",
        "approved",
        "acme-reviewer",
        "fine",
    )
    assert body["decided_at"] is not None
    assert stored == body
    assert job["status"] == "completed"
    [event] = [e for e in events if e["kind"] == "review_approved"]
    assert (event["actor"], event["data"]["reviewer"], event["reason"]) == (
        "acme-reviewer",
        "acme-reviewer",
        "fine",
    )
    for response in (again, reject_after):
        error_of(response, 409, "already_decided")
    error_of(missing, 404, "not_found")


def test_reject_with_a_comment_rejects_the_job(live: Live) -> None:
    review = waiting_review(live)
    with live.http("acme", "admin") as http:
        rejected = http.post(f"/v1/reviews/{review['id']}/reject", json={"comment": "too much"})
        again = http.post(f"/v1/reviews/{review['id']}/approve")
        too_long = http.post(f"/v1/reviews/{review['id']}/reject", json={"comment": "x" * 10_001})
    job = wait_job(live, review["job_id"], ("rejected",))
    with live.http("acme", "admin") as http:
        events = http.get(f"/v1/jobs/{review['job_id']}/events").json()["items"]

    assert rejected.status_code == 200, rejected.text
    body = rejected.json()
    assert (body["status"], body["decision"], body["decided_by"], body["comment"]) == (
        "rejected",
        "rejected",
        "acme-admin",
        "too much",
    )
    assert job["finished_at"] is not None
    [event] = [e for e in events if e["kind"] == "review_rejected"]
    assert (event["actor"], event["data"]["reviewer"], event["reason"]) == (
        "acme-admin",
        "acme-admin",
        "too much",
    )
    error_of(again, 409, "already_decided")
    assert error_of(too_long, 422, "invalid_request")["field"] == "comment"


# -- /v1/dlq --------------------------------------------------------------------------------------


def test_dead_letters_list_get_and_redrive_once(live: Live) -> None:
    letter = open_dead_letter(live)
    with live.http("acme", "operator") as http:
        listed = http.get("/v1/dlq").json()["items"]
        one = http.get(f"/v1/dlq/{letter['id']}")
        missing = http.get("/v1/dlq/dlq_nope")
        redriven = http.post(f"/v1/dlq/{letter['id']}/redrive", json={"reason": "upstream fixed"})
        again = http.post(f"/v1/dlq/{letter['id']}/redrive")
        after = http.get(f"/v1/dlq/{letter['id']}").json()
        redriven_list = http.get("/v1/dlq", params={"status": "redriven"}).json()["items"]
        missing_redrive = http.post("/v1/dlq/dlq_nope/redrive")

    assert [d["id"] for d in listed] == [letter["id"]]
    assert one.status_code == 200 and one.json() == letter
    assert (letter["workflow"], letter["status"], letter["step_key"]) == ("doomed", "open", "call")
    assert letter["error"] is not None and letter["redriven_at"] is None
    error_of(missing, 404, "not_found")

    assert redriven.status_code == 200, redriven.text
    job = redriven.json()
    assert (job["id"], job["status"], job["error"]) == (letter["job_id"], "executing", None)
    assert (after["status"], after["redriven_by"]) == ("redriven", "acme-operator")
    assert [d["id"] for d in redriven_list] == [letter["id"]]
    body = error_of(again, 409, "not_redrivable")
    assert body["details"]["status"] == "redriven"
    error_of(missing_redrive, 404, "not_found")


# -- health ---------------------------------------------------------------------------------------


def test_healthz_and_readyz_answer_200(live: Live) -> None:
    health = httpx.get(f"{live.url}/healthz")
    ready = httpx.get(f"{live.url}/readyz")

    assert (health.status_code, health.json()) == (200, {"status": "ok", "checks": {}})
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "checks": {"database": "ok", "migrations": "ok"}}


def test_readyz_answers_503_while_migrations_are_pending(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    settings = Settings(database_url=url)
    api = create_api(build_app(settings), settings=settings, workers=0)
    bg = BackgroundServer(
        uvicorn.Config(api, host="127.0.0.1", port=free_port(), log_level="warning")
    )
    bg.start()
    try:
        ready = httpx.get(f"{bg.url}/readyz")
        health = httpx.get(f"{bg.url}/healthz")
    finally:
        bg.stop()

    assert health.status_code == 200
    assert ready.status_code == 503
    body = ready.json()
    assert body["status"] == "not_ready"
    assert body["checks"]["database"] == "ok"
    assert "pending" in body["checks"]["migrations"]


# -- errors and authentication --------------------------------------------------------------------


def test_an_unknown_route_answers_404_and_a_wrong_method_405_in_the_one_shape(live: Live) -> None:
    with live.http("acme", "admin") as http:
        for path in ("/nope", "/v1/nope", f"/v1/jobs/{'x'}/nope"):
            error_of(http.get(path), 404, "not_found")
        error_of(http.delete("/v1/jobs"), 405, "method_not_allowed")


def _wrong_secret(token: str) -> str:
    prefix, key_id, secret = token.split("_", 2)
    return f"{prefix}_{key_id}_{'A' if secret[0] != 'A' else 'B'}{secret[1:]}"


def test_a_missing_malformed_wrong_or_revoked_key_answers_401(live: Live) -> None:
    token = live.keys[("acme", "submitter")]
    cases = {
        "missing": {},
        "bare scheme": {"Authorization": "Bearer"},
        "nonsense": {"Authorization": "Bearer nonsense"},
        "basic": {"Authorization": "Basic YTpi"},
        "wrong secret": {"Authorization": f"Bearer {_wrong_secret(token)}"},
        "unknown key id": {"Authorization": "Bearer stw_0000000000_secret"},
        "wrong secret as X-API-Key": {"X-API-Key": _wrong_secret(token)},
    }
    assert httpx.get(f"{live.url}/v1/jobs", headers={"Authorization": f"Bearer {token}"}).is_success
    for name, headers in cases.items():
        response = httpx.get(f"{live.url}/v1/jobs", headers=headers)
        body = error_of(response, 401, "unauthenticated")
        assert response.headers["www-authenticate"].startswith("Bearer"), name
        assert body["field"] == "authorization", name

    async def revoke() -> None:
        client = live.client()
        try:
            await client.key_revoke("acme-submitter", tenant="acme", actor="test")
        finally:
            await client.store.close()

    asyncio.run(revoke())
    revoked = httpx.get(f"{live.url}/v1/jobs", headers={"Authorization": f"Bearer {token}"})
    error_of(revoked, 401, "unauthenticated")
    assert revoked.headers["www-authenticate"].startswith("Bearer")
    # Every kind of bad key gets the same answer: nothing tells a revoked key from a made-up one.
    missing = httpx.get(f"{live.url}/v1/jobs").json()
    assert revoked.json() == missing


def test_the_x_api_key_header_is_accepted(live: Live) -> None:
    headers = {"X-API-Key": live.keys[("acme", "submitter")]}
    submitted = httpx.post(f"{live.url}/v1/jobs", json=order(), headers=headers)
    listed = httpx.get(f"{live.url}/v1/jobs", headers=headers)

    assert submitted.status_code == 201, submitted.text
    assert [j["id"] for j in listed.json()["items"]] == [submitted.json()["id"]]


def test_every_error_has_exactly_code_message_field_details(live: Live) -> None:
    review = waiting_review(live)
    with live.http("acme", "reviewer") as http:
        http.post(f"/v1/reviews/{review['id']}/approve")
        responses = [
            httpx.get(f"{live.url}/v1/jobs"),
            http.post("/v1/jobs", json=order()),
            http.get("/v1/jobs/job_nope"),
            http.post(f"/v1/reviews/{review['id']}/approve"),
            http.get("/v1/jobs", params={"limit": "many"}),
            http.get("/v1/elsewhere"),
            http.put("/v1/reviews"),
        ]
    assert [r.status_code for r in responses] == [401, 403, 404, 409, 422, 404, 405]
    for response in responses:
        assert set(response.json()) == ERROR_KEYS, response.text
