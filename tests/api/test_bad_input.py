"""Input the database cannot keep is a typed 4xx naming the field, on both backends, never a 500:
NaN, Infinity, NUL and lone surrogates in job inputs, webhook bodies, comments and reasons; NUL
in path ids and query values; event ids past 64 bits; control characters and non-ASCII bytes in
`Idempotency-Key` and the webhooks' event-id headers; and the UI's forms and filters."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from tests.api.conftest import Live
from tests.api.helpers import error_of, open_dead_letter, order, submit, wait_job, waiting_review
from tests.browser.conftest import browser_client, csrf_of, sign_in

JSON = {"Content-Type": "application/json"}
BIG = str(2**70)


@pytest.fixture(params=["sqlite", "postgres"])
def server(request: pytest.FixtureRequest) -> Live:
    """A live server (one worker) on a fresh database of each backend."""
    live: Live = request.getfixturevalue("live" if request.param == "sqlite" else "live_pg")
    return live


@pytest.fixture
def admin(server: Live) -> Iterator[httpx.Client]:
    """acme's admin over HTTP."""
    with server.http("acme", "admin") as http:
        yield http


def _jobs(http: httpx.Client) -> list[dict[str, Any]]:
    return list(http.get("/v1/jobs", params={"limit": 500}).json()["items"])


# Raw JSON that Python's parser reads but no database can hold: (input text, field at fault).
UNSTORABLE_INPUTS = [
    ('{"customer": "ada", "amount": NaN}', "input.amount"),
    ('{"customer": "ada", "amount": Infinity}', "input.amount"),
    ('{"customer": "ada", "amount": -Infinity}', "input.amount"),
    ('{"customer": "ada", "amount": 1e400}', "input.amount"),
    ('{"customer": "\\ud800", "amount": 5}', "input.customer"),
    ('{"customer": "a\\u0000b", "amount": 5}', "input.customer"),
    ('{"customer": "ada", "amount": 5, "note": {"n\\u0000": 1}}', "input.note.n\\u0000"),
    ('{"customer": "ada", "amount": 5, "tags": ["ok", "\\udfff"]}', "input.tags.1"),
]


def test_unstorable_job_input_is_422_naming_the_field(admin: httpx.Client) -> None:
    for text, field in UNSTORABLE_INPUTS:
        body = '{"workflow": "order", "input": ' + text + "}"
        response = admin.post("/v1/jobs", content=body, headers=JSON)
        assert error_of(response, 422, "invalid_input")["field"] == field, text
    assert _jobs(admin) == []


def test_unstorable_webhook_body_is_422_naming_the_field(admin: httpx.Client) -> None:
    bodies = [
        ('{"customer": "ada", "amount": NaN}', "body.amount"),
        ('{"customer": "\\ud800", "amount": 5}', "body.customer"),
        ('{"customer": "\\u0000", "amount": 5}', "body.customer"),
        ('{"customer": "ada", "amount": 5, "x": 1e999}', "body.x"),
        ('{"x": ' + "[" * 50_000 + "]" * 50_000 + "}", "body"),
        ('{"x": ' + "9" * 5_000 + "}", "body"),
    ]
    for text, field in bodies:
        response = admin.post("/v1/webhooks/order", content=text, headers=JSON)
        assert error_of(response, 422, "invalid_input")["field"] == field, text[:60]
    assert _jobs(admin) == []


def test_a_malformed_id_is_422_on_every_route_that_takes_one(admin: httpx.Client) -> None:
    routes = [
        ("GET", "/v1/jobs/{}", "job_id"),
        ("GET", "/v1/jobs/{}/events", "job_id"),
        ("GET", "/v1/jobs/{}/events/stream", "job_id"),
        ("GET", "/v1/jobs/{}/transcript", "job_id"),
        ("GET", "/v1/jobs/{}/similar", "job_id"),
        ("POST", "/v1/jobs/{}/cancel", "job_id"),
        ("GET", "/v1/reviews/{}", "review_id"),
        ("POST", "/v1/reviews/{}/approve", "review_id"),
        ("POST", "/v1/reviews/{}/reject", "review_id"),
        ("GET", "/v1/dlq/{}", "dead_letter_id"),
        ("POST", "/v1/dlq/{}/redrive", "dead_letter_id"),
    ]
    for method, path, name in routes:
        for bad in ("job_%00x", "%00", "a%09b", "x" * 65):
            response = admin.request(method, path.format(bad))
            assert error_of(response, 422, "invalid_request")["field"] == f"path.{name}", path
    # A well-formed id that is not there is still a plain 404.
    error_of(admin.get("/v1/jobs/job_doesnotexist"), 404, "not_found")


def test_query_values_are_bounded_and_storable(server: Live, admin: httpx.Client) -> None:
    job_id = submit(server, order())
    wait_job(server, job_id, ("completed",))
    cases = [
        ("/v1/jobs", {"workflow": "order\x00"}, "query.workflow"),
        ("/v1/jobs", {"cursor": "job_\x00"}, "query.cursor"),
        ("/v1/memory/search", {"q": "refund\x00"}, "query.q"),
        (f"/v1/jobs/{job_id}/events", {"after": BIG}, "query.after"),
        (f"/v1/jobs/{job_id}/events/stream", {"after": BIG}, "query.after"),
    ]
    for path, params, field in cases:
        response = admin.get(path, params=params)
        assert error_of(response, 422, "invalid_request")["field"] == field, (path, params)
    # The largest 64-bit id is fine: nothing comes after it.
    largest = admin.get(f"/v1/jobs/{job_id}/events", params={"after": 2**63 - 1})
    assert largest.json() == {"items": [], "next_after": 2**63 - 1}


def test_last_event_id_must_be_an_event_id(server: Live, admin: httpx.Client) -> None:
    job_id = submit(server, order())
    wait_job(server, job_id, ("completed",))
    stream = f"/v1/jobs/{job_id}/events/stream"
    for bad in ("9" * 30, BIG, "-1", "abc"):
        response = admin.get(stream, headers={"Last-Event-ID": bad})
        assert error_of(response, 422, "invalid_request")["field"] == "header.Last-Event-ID"
    resumed = admin.get(stream, headers={"Last-Event-ID": str(2**63 - 1)})
    assert resumed.status_code == 200
    assert "event: end" in resumed.text and "event: job_" not in resumed.text


def test_idempotency_key_is_printable_ascii(server: Live, admin: httpx.Client) -> None:
    for bad in (b"a\tb", b"caf\xc3\xa9", b"\xff\xfe"):
        response = admin.post("/v1/jobs", json=order(), headers=[(b"Idempotency-Key", bad)])
        assert error_of(response, 422, "invalid_request")["field"] == "header.Idempotency-Key"
    body = {"customer": "ada", "amount": 5}
    for header in (b"Idempotency-Key", b"X-Event-Id", b"webhook-id"):
        response = admin.post("/v1/webhooks/order", json=body, headers=[(header, b"a\tb")])
        assert error_of(response, 422, "invalid_input")["field"] == header.decode().lower()
    assert _jobs(admin) == []
    # Spaces between printable characters are fine.
    made = admin.post("/v1/jobs", json=order(), headers={"Idempotency-Key": "order 1042"})
    assert made.status_code == 201 and made.json()["idempotency_key"] == "order 1042"


def test_comments_and_reasons_must_be_storable(server: Live, admin: httpx.Client) -> None:
    review = waiting_review(server)
    letter = open_dead_letter(server)
    for verb in ("approve", "reject"):
        for comment in ("ok\x00", "\ud800"):
            response = admin.post(
                f"/v1/reviews/{review['id']}/{verb}",
                content=_json_text({"comment": comment}),
                headers=JSON,
            )
            assert error_of(response, 422, "invalid_request")["field"] == "comment"
    cancel = admin.post(f"/v1/jobs/{review['job_id']}/cancel", json={"reason": "stop\x00"})
    assert error_of(cancel, 422, "invalid_request")["field"] == "reason"
    redrive = admin.post(f"/v1/dlq/{letter['id']}/redrive", json={"reason": "\x00"})
    assert error_of(redrive, 422, "invalid_request")["field"] == "reason"
    # Nothing changed: the review waits, its job too, the dead letter is open.
    assert admin.get(f"/v1/reviews/{review['id']}").json()["status"] == "pending"
    assert admin.get(f"/v1/jobs/{review['job_id']}").json()["status"] == "waiting_approval"
    assert admin.get(f"/v1/dlq/{letter['id']}").json()["status"] == "open"


def test_ui_forms_and_filters_refuse_unstorable_text(server: Live, admin: httpx.Client) -> None:
    review = waiting_review(server)
    with browser_client(server) as ui:
        assert sign_in(ui, server.keys[("acme", "admin")]).status_code == 303
        page = f"/ui/reviews/{review['id']}"
        token = csrf_of(ui.get(page).text)
        for verb in ("approve", "reject"):
            refused = ui.post(f"{page}/{verb}", data={"csrf": token, "comment": "no\x00"})
            assert refused.status_code == 422, refused.text
            assert "comment contains NUL" in refused.text
        cancel = ui.post(
            f"/ui/jobs/{review['job_id']}/cancel", data={"csrf": token, "reason": "\x00"}
        )
        assert cancel.status_code == 422 and "reason contains NUL" in cancel.text
        for path in ("/ui/jobs/job_%00", "/ui/reviews/%00", "/ui/dlq/%00"):
            assert ui.get(path).status_code == 400, path
        for params in ({"workflow": "x\x00"}, {"before": "job_\x00"}):
            assert ui.get("/ui/jobs", params=params).status_code == 400, params
    assert admin.get(f"/v1/reviews/{review['id']}").json()["status"] == "pending"


def _json_text(value: Any) -> str:
    """JSON with lone surrogates kept as escapes (httpx's `json=` cannot encode them)."""
    return json.dumps(value, ensure_ascii=True)
