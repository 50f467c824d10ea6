"""`POST /v1/webhooks/{workflow}` through a live server: signed deliveries, their tenant, the
event id that deduplicates redeliveries (also when five arrive at once, on both backends), and the
workflows that take a submitter key instead of a signature."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.api.conftest import Live, start_live
from tests.api.helpers import error_of, wait_job
from tests.api.server_app import WEBHOOK_SECRET

from stalwart.domain.webhooks import sign

EVENT = "/v1/webhooks/event"


def _body(event_id: str = "evt-1", **fields: Any) -> bytes:
    return json.dumps({"id": event_id, "type": "order.paid", "order": "o-1", **fields}).encode()


def _signed(body: bytes, **headers: str) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "X-Signature-256": sign(WEBHOOK_SECRET, body),
        **headers,
    }


def _key(live: Live, tenant: str, role: str) -> str:
    return live.keys[(tenant, role)]


def _jobs(live: Live, tenant: str = "acme", workflow: str = "event") -> list[dict[str, Any]]:
    with live.http(tenant, "admin") as http:
        page = http.get("/v1/jobs", params={"workflow": workflow, "limit": 500}).json()
    return list(page["items"])


def test_a_signed_delivery_makes_a_job_of_the_webhooks_tenant(live: Live) -> None:
    body = _body()
    response = httpx.post(f"{live.url}{EVENT}", content=body, headers=_signed(body))

    assert response.status_code == 201, response.text
    job = response.json()
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert (job["tenant_id"], job["workflow"]) == ("acme", "event")
    assert job["input"] == {"kind": "order.paid", "order": "o-1"}, "the webhook's transform"
    assert job["idempotency_key"] == "webhook:event:evt-1"
    done = wait_job(live, job["id"], ("completed",))
    assert done["steps"][0]["output"] == {"value": "o-1"}
    with live.http("acme", "admin") as http:
        [submitted] = [
            e
            for e in http.get(f"/v1/jobs/{job['id']}/events").json()["items"]
            if e["kind"] == "job_submitted"
        ]
    assert submitted["actor"] == "webhook:event"


def test_a_bare_hex_signature_is_accepted(live: Live) -> None:
    body = _body()
    bare = sign(WEBHOOK_SECRET, body).removeprefix("sha256=")
    response = httpx.post(f"{live.url}{EVENT}", content=body, headers={"X-Signature-256": bare})
    assert response.status_code == 201, response.text


def test_a_wrong_or_missing_signature_answers_401(live: Live) -> None:
    body = _body()
    wrong_secret = {"X-Signature-256": sign("not-the-secret", body)}
    other_body = {"X-Signature-256": sign(WEBHOOK_SECRET, _body("evt-2"))}
    responses = {
        "wrong secret": httpx.post(f"{live.url}{EVENT}", content=body, headers=wrong_secret),
        "signature of another body": httpx.post(
            f"{live.url}{EVENT}", content=body, headers=other_body
        ),
        "garbage": httpx.post(
            f"{live.url}{EVENT}", content=body, headers={"X-Signature-256": "sha256=zz"}
        ),
        "missing, and no key": httpx.post(f"{live.url}{EVENT}", content=body),
    }

    for name, response in responses.items():
        error = error_of(response, 401, "bad_signature")
        assert error["field"] == "X-Signature-256", name
    assert _jobs(live) == []


async def _deliver_at_once(url: str, body: bytes, headers: dict[str, str], n: int) -> list[Any]:
    """POST the same delivery `n` times, released together on `n` connections."""
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        start = asyncio.Event()

        async def deliver() -> httpx.Response:
            await start.wait()
            return await http.post(EVENT, content=body, headers=headers)

        tasks = [asyncio.create_task(deliver()) for _ in range(n)]
        await asyncio.sleep(0.05)
        start.set()
        return list(await asyncio.gather(*tasks))


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_the_same_event_posted_five_times_at_once_makes_one_job(
    backend: str, request: pytest.FixtureRequest
) -> None:
    live: Live = request.getfixturevalue("live" if backend == "sqlite" else "live_pg")
    made = []
    for round_ in range(3):  # three events, each delivered five times at once
        body = _body(f"evt-concurrent-{round_}")
        responses = asyncio.run(_deliver_at_once(live.url, body, _signed(body), 5))

        statuses = sorted(r.status_code for r in responses)
        assert statuses == [200, 200, 200, 200, 201], [r.text for r in responses]
        [job_id] = {r.json()["id"] for r in responses}
        made.append(job_id)
    assert sorted(j["id"] for j in _jobs(live)) == sorted(made)


def test_the_idempotency_key_header_deduplicates_too(live: Live) -> None:
    first, second = _body("evt-a"), _body("evt-b")  # different body ids, one Idempotency-Key
    one = httpx.post(
        f"{live.url}{EVENT}", content=first, headers=_signed(first, **{"Idempotency-Key": "k1"})
    )
    two = httpx.post(
        f"{live.url}{EVENT}", content=second, headers=_signed(second, **{"Idempotency-Key": "k1"})
    )
    other = httpx.post(
        f"{live.url}{EVENT}", content=second, headers=_signed(second, **{"Idempotency-Key": "k2"})
    )
    delivery = httpx.post(
        f"{live.url}{EVENT}", content=first, headers=_signed(first, **{"Webhook-Id": "msg-9"})
    )
    redelivery = httpx.post(
        f"{live.url}{EVENT}", content=second, headers=_signed(second, **{"Webhook-Id": "msg-9"})
    )

    assert [r.status_code for r in (one, two, other, delivery, redelivery)] == [
        201,
        200,
        201,
        201,
        200,
    ]
    assert one.json()["id"] == two.json()["id"] != other.json()["id"]
    assert one.json()["idempotency_key"] == "webhook:event:k1"
    assert delivery.json()["id"] == redelivery.json()["id"]
    assert delivery.json()["idempotency_key"] == "webhook:event:msg-9"
    assert len(_jobs(live)) == 3


def test_a_delivery_without_an_event_id_is_not_deduplicated(live: Live) -> None:
    body = json.dumps({"type": "order.paid", "order": "o-1"}).encode()
    first = httpx.post(f"{live.url}{EVENT}", content=body, headers=_signed(body))
    second = httpx.post(f"{live.url}{EVENT}", content=body, headers=_signed(body))

    assert (first.status_code, second.status_code) == (201, 201)
    assert first.json()["idempotency_key"] is None
    assert first.json()["id"] != second.json()["id"]


def test_a_workflow_without_a_secret_needs_a_submitter_key(live: Live) -> None:
    payload = {"customer": "ada", "amount": 5}
    no_key = httpx.post(f"{live.url}/v1/webhooks/order", json=payload)
    signed = httpx.post(
        f"{live.url}/v1/webhooks/order",
        content=json.dumps(payload).encode(),
        headers=_signed(json.dumps(payload).encode()),
    )
    with live.http("acme", "reviewer") as http:
        reviewer = http.post("/v1/webhooks/order", json=payload)
    with live.http("acme", "submitter") as http:
        submitter = http.post("/v1/webhooks/order", json=payload, headers={"X-Event-Id": "e-1"})
        again = http.post("/v1/webhooks/order", json=payload, headers={"X-Event-Id": "e-1"})
        invalid = http.post("/v1/webhooks/order", json={"customer": "ada", "amount": -1})

    assert error_of(no_key, 401, "unauthenticated")["field"] == "authorization"
    assert no_key.headers["www-authenticate"].startswith("Bearer")
    error_of(signed, 401, "unauthenticated")  # a signature means nothing without a secret
    assert error_of(reviewer, 403, "forbidden")["details"]["permission"] == "submit"
    assert submitter.status_code == 201, submitter.text
    assert (submitter.json()["tenant_id"], submitter.json()["workflow"]) == ("acme", "order")
    assert again.status_code == 200 and again.json()["id"] == submitter.json()["id"]
    assert error_of(invalid, 422, "invalid_input")["field"] == "input.amount"
    assert len(_jobs(live, workflow="order")) == 1


def test_a_body_that_is_not_a_json_object_answers_422(live: Live) -> None:
    for raw in (b"[1, 2]", b'"text"', b"{not json", b"\xff\xfe"):
        response = httpx.post(f"{live.url}{EVENT}", content=raw, headers=_signed(raw))
        body = error_of(response, 422, "invalid_input")
        assert body["field"] == "body", raw
        assert "JSON object" in body["message"]
    assert _jobs(live) == []


def test_an_unknown_workflow_answers_404(live: Live) -> None:
    body = _body()
    response = httpx.post(f"{live.url}/v1/webhooks/nope", content=body, headers=_signed(body))
    assert error_of(response, 404, "unknown_workflow")["details"] == {"workflow": "nope"}


def test_a_body_over_the_payload_limit_answers_413(tmp_path: Path) -> None:
    live, bg = start_live(f"sqlite:///{tmp_path / 's.db'}", workers=0, max_payload_bytes=200)
    try:
        body = _body(note="x" * 300)
        response = httpx.post(f"{live.url}{EVENT}", content=body, headers=_signed(body))
    finally:
        bg.stop()
    assert error_of(response, 413, "payload_too_large")["field"] == "body"


def test_a_signed_delivery_with_another_tenants_key_runs_as_the_keys_tenant(live: Live) -> None:
    """Observed behaviour: when a request carries an API key, the key decides, not the
    signature. The signature is not checked at all (even a wrong one passes), the job belongs to
    the key's tenant (globex, not the webhook's acme), the key's role must allow submitting, and
    the dedup key is per tenant, so acme's delivery of the same event is a job of its own."""
    body = _body("evt-keyed")
    globex = {"Authorization": f"Bearer {_key(live, 'globex', 'submitter')}"}
    keyed = httpx.post(f"{live.url}{EVENT}", content=body, headers=_signed(body, **globex))
    wrong_signature = httpx.post(
        f"{live.url}{EVENT}",
        content=body,
        headers={**globex, "X-Signature-256": sign("wrong", body)},
    )
    reviewer = httpx.post(
        f"{live.url}{EVENT}",
        content=body,
        headers=_signed(body, Authorization=f"Bearer {_key(live, 'globex', 'reviewer')}"),
    )
    signed_only = httpx.post(f"{live.url}{EVENT}", content=body, headers=_signed(body))
    bad_key = httpx.post(
        f"{live.url}{EVENT}", content=body, headers=_signed(body, Authorization="Bearer nonsense")
    )

    assert keyed.status_code == 201, keyed.text
    assert keyed.json()["tenant_id"] == "globex"
    assert wrong_signature.status_code == 200
    assert wrong_signature.json()["id"] == keyed.json()["id"]
    error_of(reviewer, 403, "forbidden")
    assert signed_only.status_code == 201
    assert signed_only.json()["tenant_id"] == "acme"
    assert signed_only.json()["id"] != keyed.json()["id"]
    error_of(bad_key, 401, "unauthenticated")
    assert [j["id"] for j in _jobs(live, "globex")] == [keyed.json()["id"]]
    assert [j["id"] for j in _jobs(live, "acme")] == [signed_only.json()["id"]]
