"""Schemathesis against a live server, as acme's admin: no 5xx, and every response (status,
content type, body) matches the OpenAPI document. And the document lists every route the API
promises.

The cases are generated from the document the app factory builds (`@schema.parametrize()`, one
test per operation, positive and negative data) and sent to a live server that a test below
shows serves that same document at `/openapi.json`. (`schemathesis.pytest.from_fixture`, which
would load it from the server's URL, fails on pytest 9 in schemathesis 4.32.) The event stream
is included: a generated id is never a job's, so it answers 404 before any stream opens.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from tests.api.conftest import Live, start_live
from tests.api.server_app import build_app

from stalwart.api.factory import create_api

CHECKS = [
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
    content_type_conformance,
]
STREAM = "/v1/jobs/{job_id}/events/stream"
DOCUMENT = create_api(build_app(), ui=False).openapi()

ROUTES = {
    ("post", "/v1/jobs"),
    ("get", "/v1/jobs"),
    ("get", "/v1/jobs/{job_id}"),
    ("get", "/v1/jobs/{job_id}/events"),
    ("get", STREAM),
    ("post", "/v1/jobs/{job_id}/cancel"),
    ("get", "/v1/reviews"),
    ("get", "/v1/reviews/{review_id}"),
    ("post", "/v1/reviews/{review_id}/approve"),
    ("post", "/v1/reviews/{review_id}/reject"),
    ("get", "/v1/dlq"),
    ("get", "/v1/dlq/{dead_letter_id}"),
    ("post", "/v1/dlq/{dead_letter_id}/redrive"),
    ("post", "/v1/webhooks/{workflow}"),
    ("get", "/healthz"),
    ("get", "/readyz"),
}


def _seed(live: Live) -> None:
    """A finished job, one waiting for a reviewer and one dead-lettered, so the list routes
    answer real items for the schema checks."""
    with live.http("acme", "admin") as http:
        for workflow, amount in (("order", 5), ("order", 500), ("doomed", 5)):
            created = http.post(
                "/v1/jobs",
                json={"workflow": workflow, "input": {"customer": "c", "amount": amount}},
            )
            assert created.status_code == 201, created.text

    async def settled() -> None:
        client = live.client()
        try:
            for _ in range(400):
                if await client.reviews(tenant="acme") and await client.dead_letters(tenant="acme"):
                    return
                await asyncio.sleep(0.05)
            raise AssertionError("the seeded jobs did not park")
        finally:
            await client.store.close()

    asyncio.run(settled())


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """One live server for every operation of the run, seeded."""
    path: Path = tmp_path_factory.mktemp("schemathesis") / "server.db"
    live, bg = start_live(f"sqlite:///{path}")
    try:
        _seed(live)
        yield live
    finally:
        bg.stop()


schema = schemathesis.openapi.from_dict(DOCUMENT)


@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_the_api_conforms_to_its_openapi_document(case: schemathesis.Case, server: Live) -> None:
    auth = {"Authorization": f"Bearer {server.keys[('acme', 'admin')]}"}
    case.call_and_validate(base_url=server.url, headers=auth, checks=CHECKS, timeout=10)


def test_real_resources_conform_to_the_document(server: Live) -> None:
    """Generated cases cannot guess an id or a workflow, so their success bodies are mostly lists
    and errors: these cases call each route with acme's real job, review and dead letter."""
    auth = {"Authorization": f"Bearer {server.keys[('acme', 'admin')]}"}
    with server.http("acme", "admin") as http:
        job = http.get("/v1/jobs", params={"status": "completed"}).json()["items"][0]
        review = http.get("/v1/reviews").json()["items"][0]
        letter = http.get("/v1/dlq").json()["items"][0]
    order = {"workflow": "order", "input": {"customer": "c", "amount": 500}}
    cases = [
        ("/v1/jobs", "POST", {}, {"Idempotency-Key": "st-1"}, order, 201),
        ("/v1/jobs", "POST", {}, {"Idempotency-Key": "st-1"}, order, 200),
        ("/v1/jobs/{job_id}", "GET", {"job_id": job["id"]}, {}, None, 200),
        ("/v1/jobs/{job_id}/events", "GET", {"job_id": job["id"]}, {}, None, 200),
        (STREAM, "GET", {"job_id": job["id"]}, {}, None, 200),
        ("/v1/jobs/{job_id}/cancel", "POST", {"job_id": job["id"]}, {}, {}, 409),
        ("/v1/reviews/{review_id}", "GET", {"review_id": review["id"]}, {}, None, 200),
        ("/v1/reviews/{review_id}/approve", "POST", {"review_id": review["id"]}, {}, {}, 200),
        ("/v1/reviews/{review_id}/reject", "POST", {"review_id": review["id"]}, {}, {}, 409),
        ("/v1/dlq/{dead_letter_id}", "GET", {"dead_letter_id": letter["id"]}, {}, None, 200),
        ("/v1/dlq/{dead_letter_id}/redrive", "POST", {"dead_letter_id": letter["id"]}, {}, {}, 200),
        ("/v1/dlq/{dead_letter_id}/redrive", "POST", {"dead_letter_id": letter["id"]}, {}, {}, 409),
        ("/v1/webhooks/{workflow}", "POST", {"workflow": "event"}, {}, {"id": "e1"}, 201),
        ("/v1/webhooks/{workflow}", "POST", {"workflow": "event"}, {}, {"id": "e1"}, 200),
        ("/v1/webhooks/{workflow}", "POST", {"workflow": "event"}, {}, [1], 422),
        ("/v1/webhooks/{workflow}", "POST", {"workflow": "order"}, {}, order["input"], 201),
        ("/readyz", "GET", {}, {}, None, 200),
    ]
    for path, method, path_parameters, headers, body, status in cases:
        operation = schema[path][method]
        kwargs = {} if body is None else {"body": body, "media_type": "application/json"}
        case = operation.Case(path_parameters=path_parameters, headers=headers, **kwargs)
        response = case.call_and_validate(
            base_url=server.url, headers=auth, checks=CHECKS, timeout=10
        )
        assert response.status_code == status, (method, path, response.text)


def test_the_served_document_is_the_one_tested(server: Live) -> None:
    assert httpx.get(f"{server.url}/openapi.json", timeout=10).json() == DOCUMENT


def test_openapi_lists_every_route_of_the_api(server: Live) -> None:
    document = httpx.get(f"{server.url}/openapi.json", timeout=10).json()
    listed = {(method, path) for path, ops in document["paths"].items() for method in ops}
    assert listed >= ROUTES, sorted(ROUTES - listed)
