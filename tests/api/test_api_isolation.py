"""The tenant isolation matrix: each role x each route x the caller's own tenant (acme, which owns
the job, review and dead letter) or another (globex).

The table is written out by hand, not derived from `GRANTS`: a role without a route's permission
answers 403 whatever the tenant (the permission is checked before anything is looked up), and a
key of another tenant answers 404 for acme's resources, exactly as for a missing one, and lists
none of them."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from tests.api.conftest import Live, start_live
from tests.api.helpers import (
    error_of,
    open_dead_letter,
    order,
    submit,
    wait_job,
    waiting_review,
)

from stalwart import Client, Settings
from stalwart.store import open_store

SUB, REV, OPS, ADM = "submitter", "reviewer", "operator", "admin"
OWN, OTHER = "acme", "globex"

# What each call answers on acme's resources: per role, (acme's own key, globex's key).
# fmt: off
TABLE: dict[str, tuple[tuple[int, int], ...]] = {
    #                                   submitter   reviewer    operator    admin
    "POST /v1/jobs":                   ((201, 201), (403, 403), (403, 403), (201, 201)),
    "GET /v1/jobs":                    ((200, 200), (200, 200), (200, 200), (200, 200)),
    "GET /v1/jobs/{id}":               ((200, 404), (200, 404), (200, 404), (200, 404)),
    "GET /v1/jobs/{id}/events":        ((200, 404), (200, 404), (200, 404), (200, 404)),
    "GET /v1/jobs/{id}/events/stream": ((200, 404), (200, 404), (200, 404), (200, 404)),
    "GET /v1/jobs/{id}/transcript":    ((200, 404), (200, 404), (200, 404), (200, 404)),
    "POST /v1/jobs/{id}/cancel":       ((200, 404), (403, 403), (200, 404), (200, 404)),
    "GET /v1/reviews":                 ((403, 403), (200, 200), (200, 200), (200, 200)),
    "GET /v1/reviews/{id}":            ((403, 403), (200, 404), (200, 404), (200, 404)),
    "POST /v1/reviews/{id}/approve":   ((403, 403), (200, 404), (403, 403), (200, 404)),
    "POST /v1/reviews/{id}/reject":    ((403, 403), (200, 404), (403, 403), (200, 404)),
    "GET /v1/dlq":                     ((403, 403), (403, 403), (200, 200), (200, 200)),
    "GET /v1/dlq/{id}":                ((403, 403), (403, 403), (200, 404), (200, 404)),
    "POST /v1/dlq/{id}/redrive":       ((403, 403), (403, 403), (200, 404), (200, 404)),
    "POST /v1/webhooks/order":         ((201, 201), (403, 403), (403, 403), (201, 201)),
    "GET /v1/memory/collections":      ((200, 200), (200, 200), (200, 200), (200, 200)),
    "GET /v1/memory/search":           ((200, 200), (200, 200), (200, 200), (200, 200)),
    "GET /v1/jobs/{id}/similar":       ((200, 404), (200, 404), (200, 404), (200, 404)),
}
# fmt: on
ROLES = (SUB, REV, OPS, ADM)
EXPECTED = {route: dict(zip(ROLES, row, strict=True)) for route, row in TABLE.items()}
# Routes that change what they act on: a call expected to succeed gets a fresh resource.
CHANGES = {
    "POST /v1/jobs/{id}/cancel",
    "POST /v1/reviews/{id}/approve",
    "POST /v1/reviews/{id}/reject",
    "POST /v1/dlq/{id}/redrive",
}
CASES = [
    (route, role, tenant, statuses[0 if tenant == OWN else 1])
    for route, by_role in EXPECTED.items()
    for role, statuses in by_role.items()
    for tenant in (OWN, OTHER)
]


@dataclass
class Acme:
    """Acme's resources that every case reads or tries to touch; none of them may change."""

    job: dict[str, Any]  # completed
    review: dict[str, Any]  # pending
    letter: dict[str, Any]  # open


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """One server for the whole matrix (each case takes fresh resources where it must)."""
    path = tmp_path_factory.mktemp("isolation") / "server.db"
    live, bg = start_live(f"sqlite:///{path}")
    try:
        yield live
    finally:
        bg.stop()


@pytest.fixture(scope="module")
def acme(server: Live) -> Acme:
    job_id = submit(server, order())
    job = wait_job(server, job_id, ("completed",))
    # globex has resources of its own too: its lists are not empty, just without acme's.
    wait_job(server, submit(server, order(), OTHER), ("completed",), OTHER)
    waiting_review(server, OTHER)
    open_dead_letter(server, OTHER)
    # Each tenant's knowledge: one collection each, of the same name, told apart by its text.
    asyncio.run(_knowledge(server.database_url))
    return Acme(job, waiting_review(server), open_dead_letter(server))


async def _knowledge(url: str) -> None:
    store = open_store(url)
    try:
        memory = Client(store, settings=Settings(database_url=url, embedder="none")).memory
        for tenant in (OWN, OTHER):
            text = f"{tenant} refund policy: refunds are paid within 14 days.".encode()
            await memory.add(tenant, "policies", [("refunds.md", text)])
    finally:
        await store.close()


def _resource(route: str, fresh: bool, server: Live, acme: Acme) -> str:
    """The acme id a route acts on: the shared one, or a new one for a change that succeeds."""
    if "/reviews/{id}" in route:
        return str((waiting_review(server) if fresh else acme.review)["id"])
    if "/dlq/{id}" in route:
        return str((open_dead_letter(server) if fresh else acme.letter)["id"])
    if "/jobs/{id}" in route:
        # A job parked for a reviewer can be cancelled; the shared one is finished.
        return str(waiting_review(server)["job_id"]) if fresh else str(acme.job["id"])
    return ""


def _stream(http: httpx.Client, path: str) -> httpx.Response:
    with http.stream("GET", path) as response:
        response.read()
    return response


CALLS: dict[str, Callable[[httpx.Client, str], httpx.Response]] = {
    "POST /v1/jobs": lambda http, _: http.post("/v1/jobs", json=order()),
    "GET /v1/jobs": lambda http, _: http.get("/v1/jobs", params={"limit": 500}),
    "GET /v1/jobs/{id}": lambda http, i: http.get(f"/v1/jobs/{i}"),
    "GET /v1/jobs/{id}/events": lambda http, i: http.get(f"/v1/jobs/{i}/events"),
    "GET /v1/jobs/{id}/events/stream": lambda http, i: _stream(http, f"/v1/jobs/{i}/events/stream"),
    "GET /v1/jobs/{id}/transcript": lambda http, i: http.get(f"/v1/jobs/{i}/transcript"),
    "POST /v1/jobs/{id}/cancel": lambda http, i: http.post(f"/v1/jobs/{i}/cancel"),
    "GET /v1/reviews": lambda http, _: http.get("/v1/reviews", params={"limit": 500}),
    "GET /v1/reviews/{id}": lambda http, i: http.get(f"/v1/reviews/{i}"),
    "POST /v1/reviews/{id}/approve": lambda http, i: http.post(
        f"/v1/reviews/{i}/approve", json={"comment": "ok"}
    ),
    "POST /v1/reviews/{id}/reject": lambda http, i: http.post(
        f"/v1/reviews/{i}/reject", json={"comment": "no"}
    ),
    "GET /v1/dlq": lambda http, _: http.get("/v1/dlq", params={"limit": 500}),
    "GET /v1/dlq/{id}": lambda http, i: http.get(f"/v1/dlq/{i}"),
    "POST /v1/dlq/{id}/redrive": lambda http, i: http.post(f"/v1/dlq/{i}/redrive"),
    "POST /v1/webhooks/order": lambda http, _: http.post(
        "/v1/webhooks/order", json={"customer": "ada", "amount": 5}
    ),
    "GET /v1/memory/collections": lambda http, _: http.get("/v1/memory/collections"),
    "GET /v1/memory/search": lambda http, _: http.get(
        "/v1/memory/search", params={"q": "refund policy days"}
    ),
    "GET /v1/jobs/{id}/similar": lambda http, i: http.get(f"/v1/jobs/{i}/similar"),
}


def test_the_matrix_covers_every_route_role_and_tenant() -> None:
    assert set(CALLS) == set(EXPECTED)
    assert len(CASES) == 18 * 4 * 2
    assert all(len(row) == 4 for row in TABLE.values())


@pytest.mark.parametrize(("route", "role", "tenant", "expected"), CASES)
def test_isolation(
    server: Live, acme: Acme, route: str, role: str, tenant: str, expected: int
) -> None:
    resource = _resource(route, route in CHANGES and expected == 200, server, acme)
    with server.http(tenant, role) as http:
        response = CALLS[route](http, resource)

    assert response.status_code == expected, response.text
    if expected == 403:
        body = error_of(response, 403, "forbidden")
        assert body["details"]["role"] == role
    elif expected == 404:
        body = error_of(response, 404, "not_found")
        assert body["details"]["id"] == resource
    else:
        _check_success(server, acme, route, role, tenant, resource, response)


def _check_success(
    server: Live,
    acme: Acme,
    route: str,
    role: str,
    tenant: str,
    resource: str,
    response: httpx.Response,
) -> None:
    if route == "GET /v1/jobs/{id}/events/stream":
        kinds = [ln[7:] for ln in response.text.splitlines() if ln.startswith("event: ")]
        assert kinds[0] == "job_submitted" and kinds[-1] == "end", kinds
        return
    body = response.json()
    if route in ("POST /v1/jobs", "POST /v1/webhooks/order"):
        assert body["tenant_id"] == tenant, "a new job belongs to the caller's tenant"
    elif route in ("GET /v1/jobs", "GET /v1/reviews", "GET /v1/dlq"):
        shared = {acme.job["id"], acme.review["id"], acme.letter["id"]}
        ids = {item["id"] for item in body["items"]}
        if tenant == OWN:
            assert ids & shared, "acme's list shows acme's resource"
        else:
            assert body["items"], "globex's list shows globex's own"
            assert not ids & shared
            with server.http(OTHER, "admin") as http:
                for item in body["items"]:
                    job = http.get(f"/v1/jobs/{item.get('job_id', item['id'])}")
                    assert job.status_code == 200 and job.json()["tenant_id"] == OTHER, item
    elif route == "GET /v1/jobs/{id}/events":
        assert body["items"] and {e["job_id"] for e in body["items"]} == {resource}
    elif route == "GET /v1/jobs/{id}/transcript":
        assert body["items"] == [] and body["turns"] == 0, "an order job has no agent step"
    elif route == "POST /v1/jobs/{id}/cancel":
        assert (body["id"], body["status"]) == (resource, "cancelled")
    elif route == "POST /v1/reviews/{id}/approve":
        assert (body["id"], body["status"], body["decided_by"]) == (
            resource,
            "approved",
            f"acme-{role}",
        )
    elif route == "POST /v1/reviews/{id}/reject":
        assert (body["id"], body["status"], body["decided_by"]) == (
            resource,
            "rejected",
            f"acme-{role}",
        )
    elif route == "POST /v1/dlq/{id}/redrive":
        assert body["status"] == "executing"
    elif route == "GET /v1/memory/collections":
        assert [(c["name"], c["documents"]) for c in body["items"]] == [("policies", 1)]
    elif route == "GET /v1/memory/search":
        assert body["items"] and body["method"] == "bm25"
        assert all(h["text"].startswith(f"{tenant} refund") for h in body["items"]), body
    elif route == "GET /v1/jobs/{id}/similar":
        assert all(h["meta"]["job"] != resource for h in body["items"])
    else:  # one acme resource, read
        assert body["id"] == resource, route


def test_a_missing_id_answers_exactly_as_another_tenants(server: Live, acme: Acme) -> None:
    with server.http(OTHER, "admin") as http:
        theirs = http.get(f"/v1/jobs/{acme.job['id']}").json()
        made_up = http.get("/v1/jobs/job_doesnotexist").json()
    assert theirs == json.loads(json.dumps(made_up).replace("job_doesnotexist", acme.job["id"]))


def test_another_tenants_job_as_a_cursor_pages_like_a_made_up_one(server: Live, acme: Acme) -> None:
    with server.http(OTHER, "admin") as http:
        own = http.get("/v1/jobs").json()["items"]
        theirs = http.get("/v1/jobs", params={"cursor": acme.job["id"]}).json()
        made_up = http.get("/v1/jobs", params={"cursor": "job_doesnotexist"}).json()
        first = http.get("/v1/jobs", params={"cursor": own[0]["id"]}).json()
    assert theirs == made_up == {"items": [], "next_cursor": None}
    assert [j["id"] for j in first["items"]] == [j["id"] for j in own[1:]]


def test_an_idempotency_key_is_per_tenant(server: Live) -> None:
    key = {"Idempotency-Key": "shared-key"}
    with server.http(OWN, "submitter") as http:
        ours = http.post("/v1/jobs", json=order(), headers=key)
    with server.http(OTHER, "submitter") as http:
        theirs = http.post("/v1/jobs", json=order(), headers=key)
        again = http.post("/v1/jobs", json=order(), headers=key)

    assert (ours.status_code, theirs.status_code, again.status_code) == (201, 201, 200)
    assert (ours.json()["tenant_id"], theirs.json()["tenant_id"]) == (OWN, OTHER)
    assert ours.json()["id"] != theirs.json()["id"] == again.json()["id"]


def test_the_shared_resources_are_untouched(server: Live, acme: Acme) -> None:
    with server.http(OWN, "admin") as http:
        job = http.get(f"/v1/jobs/{acme.job['id']}").json()
        review = http.get(f"/v1/reviews/{acme.review['id']}").json()
        letter = http.get(f"/v1/dlq/{acme.letter['id']}").json()
    assert (job["status"], job["updated_at"]) == ("completed", acme.job["updated_at"])
    assert review == acme.review
    assert letter == acme.letter


def test_a_reviewer_cannot_submit_and_a_submitter_cannot_approve(server: Live, acme: Acme) -> None:
    with server.http(OWN, "reviewer") as http:
        submitted = http.post("/v1/jobs", json=order())
    with server.http(OWN, "submitter") as http:
        approved = http.post(f"/v1/reviews/{acme.review['id']}/approve")
        rejected = http.post(f"/v1/reviews/{acme.review['id']}/reject")
    with server.http(OWN, "admin") as http:
        review = http.get(f"/v1/reviews/{acme.review['id']}").json()

    body = error_of(submitted, 403, "forbidden")
    assert body["details"] == {"role": "reviewer", "permission": "submit"}
    assert "submitter, admin" in body["message"]
    for response in (approved, rejected):
        body = error_of(response, 403, "forbidden")
        assert body["details"] == {"role": "submitter", "permission": "review:decide"}
    assert review["status"] == "pending"
