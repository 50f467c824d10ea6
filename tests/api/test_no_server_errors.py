"""No input is a server error, on any route of the server (the API from its OpenAPI document,
`/metrics`, and the UI's pages and forms), on SQLite and PostgreSQL.

Every request starts from a valid one (real ids, a real workflow, an admin key, the UI session
and its CSRF token) and changes some of its parts (its slots: path ids, query values, headers,
JSON properties, form fields):

- the sweep puts each value that once answered 500 (NaN and Infinity, NUL, lone surrogates and
  invalid UTF-8, 64-bit overflows, deep nesting, control characters in headers) into each slot
  in turn, so every such value meets every parameter of every route;
- the property (hypothesis, derandomized, a few dozen examples a route) mixes those values with
  ordinary, missing and random ones in several slots at once.

Requests are raw (percent-encoded bytes, JSON text written by hand) so that nothing a client
library would refuse to send is left out. The assertion is the same everywhere: status < 500.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from fastapi.routing import APIRoute
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.api.conftest import Live, start_live
from tests.api.helpers import doomed, order, wait_job
from tests.api.server_app import build_app
from tests.browser.conftest import browser_client, csrf_of, sign_in
from tests.pgserver import PgServer

from stalwart.api.factory import create_api

EXAMPLES = 30
API = create_api(build_app())
DOCUMENT = API.openapi()
COMPONENTS = DOCUMENT["components"]["schemas"]
WEBHOOK_FIELDS = ("customer", "amount", "id", "type", "order")  # the test app's, any object

# -- the routes and their slots -------------------------------------------------------------------


@dataclass(frozen=True)
class Slot:
    """One part of a request: `where` is path, query, header, json (a body property) or form."""

    where: str
    name: str


@dataclass(frozen=True)
class Route:
    """One route and the slots a request to it has."""

    method: str
    path: str
    slots: tuple[Slot, ...] = ()
    json_body: bool = False
    ui: bool = False

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


def _path_slots(path: str) -> list[Slot]:
    return [Slot("path", name) for name in re.findall(r"{(\w+)", path)]


def _properties(operation: dict[str, Any]) -> tuple[str, ...]:
    schema = operation["requestBody"]["content"]["application/json"]["schema"]
    refs = [schema.get("$ref")] + [s.get("$ref") for s in schema.get("anyOf", [])]
    ref = next((r for r in refs if r), None)
    if ref is None:
        return WEBHOOK_FIELDS
    return tuple(COMPONENTS[ref.rsplit("/", 1)[1]]["properties"])


def api_routes() -> list[Route]:
    """Every operation of the OpenAPI document, and `/metrics` (kept out of it)."""
    routes = [Route("GET", "/metrics")]
    for path, operations in DOCUMENT["paths"].items():
        for method, operation in operations.items():
            slots = _path_slots(path)
            for param in operation.get("parameters", []):
                if param["in"] in ("query", "header"):
                    slots.append(Slot(param["in"], param["name"]))
            has_body = "requestBody" in operation
            if has_body:
                slots += [Slot("json", name) for name in _properties(operation)]
            if path.startswith("/v1/webhooks"):
                slots += [Slot("header", h) for h in ("Idempotency-Key", "X-Event-Id")]
            routes.append(Route(method.upper(), path, tuple(slots), json_body=has_body))
    return routes


def ui(method: str, path: str, *names: str) -> Route:
    """A UI route: its path ids, then query values (GET) or form fields (POST)."""
    where = "query" if method == "GET" else "form"
    slots = _path_slots(path) + [Slot(where, name) for name in names]
    return Route(method, path, tuple(slots), ui=True)


UI_ROUTES = [
    ui("GET", "/ui"),
    ui("GET", "/ui/", "done"),
    ui("GET", "/ui/login", "next"),
    ui("POST", "/ui/login", "key", "csrf", "next"),
    ui("POST", "/ui/logout", "csrf"),
    ui("GET", "/ui/jobs", "status", "workflow", "before"),
    ui("GET", "/ui/jobs/{job_id}", "done"),
    ui("POST", "/ui/jobs/{job_id}/cancel", "csrf", "reason"),
    ui("GET", "/ui/reviews"),
    ui("GET", "/ui/reviews/{review_id}"),
    ui("POST", "/ui/reviews/{review_id}/approve", "csrf", "comment"),
    ui("POST", "/ui/reviews/{review_id}/reject", "csrf", "comment"),
    ui("GET", "/ui/dlq"),
    ui("GET", "/ui/dlq/{letter_id}"),
    ui("POST", "/ui/dlq/{letter_id}/redrive", "csrf", "reason"),
    ui("GET", "/ui/{path:path}"),
]
ROUTES = api_routes() + UI_ROUTES


def test_every_route_of_the_server_is_covered() -> None:
    served = {
        (method, route.path)
        for route in API.routes
        if isinstance(route, APIRoute)
        for method in route.methods
    }
    assert served - {(r.method, r.path) for r in ROUTES} == set()


# -- the values -----------------------------------------------------------------------------------

# What once answered 500 somewhere, as the bytes of a path id, query value or form field.
BAD_TEXT = [
    b"a\x00b",
    "x\ud800".encode("utf-8", "surrogatepass"),
    b"\xff\xfe",
    str(2**70).encode(),
    str(2**63).encode(),
    b"-1",
    b"NaN",
    b"a\tb",
    b"x" * 300,
    b"",
]
# ... as a header value (h11 sends no NUL, CR, LF or DEL, nor blanks around a value).
BAD_HEADER = [b"a\tb", b"\xff\xfe", b"caf\xc3\xa9", str(2**70).encode(), b"-1", b"x" * 300]
# ... as raw JSON: what Python's parser reads although JSON has no such thing.
BAD_JSON = [
    "NaN",
    "-Infinity",
    "1e400",
    str(2**70),
    '"a\\u0000b"',
    '"\\ud800"',
    '{"\\u0000": 1, "\\udfff": 2}',
    "[" * 5_000 + "]" * 5_000,
    "9" * 5_000,
]
# ... as a job input: each bad value in a field of the model, and outside it.
BAD_INPUT = [f'{{"customer": "ada", "amount": {bad}, "note": {bad}}}' for bad in BAD_JSON[:7]] + [
    f'{{"customer": {bad}, "amount": 5}}' for bad in BAD_JSON[4:6]
]

VALID_TEXT: dict[str, list[bytes]] = {
    "status": [b"pending", b"completed", b"open"],
    "workflow": [b"order", b"event"],
    "limit": [b"5"],
    "after": [b"0", b"3"],
    "q": [b"refund"],
    "collection": [b"docs"],
    "k": [b"3"],
    "min_similarity": [b"0.5"],
    "episodes": [b"false", b"true"],
    "done": [b"approved"],
    "next": [b"/ui/jobs"],
    "reason": [b"why"],
    "comment": [b"ok"],
    "Idempotency-Key": [b"key-1"],
    "X-Event-Id": [b"evt-1"],
    "Last-Event-ID": [b"2"],
}
VALID_JSON: dict[str, list[str]] = {
    "workflow": ['"order"', '"event"'],
    "input": ['{"customer": "ada", "amount": 5}', '{"kind": "k", "order": "o"}'],
    "priority": ["0"],
    "comment": ['"ok"'],
    "reason": ['"why"'],
    "customer": ['"ada"'],
    "amount": ["5"],
    "id": ['"evt-1"'],
    "type": ['"order.paid"'],
    "order": ['"o-1"'],
}
OMIT = None


@dataclass
class Target:
    """A seeded live server: real ids to use, an admin key, a signed-in UI session."""

    live: Live
    http: httpx.Client
    ids: dict[str, list[bytes]] = field(default_factory=dict)
    cookie: str = ""
    csrf: str = ""

    def valid(self, slot: Slot) -> list[Any]:
        """Valid values of `slot` on this server (never empty)."""
        if slot.where == "json":
            return VALID_JSON.get(slot.name, ['"x"'])
        if slot.name in self.ids:
            return self.ids[slot.name]
        if slot.name == "csrf":
            return [self.csrf.encode()]
        if slot.name == "key":
            return [self.live.keys[("acme", "admin")].encode()]
        return VALID_TEXT.get(slot.name, [b"x"])

    def bad(self, slot: Slot) -> list[Any]:
        """The values of `slot` that once answered 500 somewhere."""
        if slot.where == "json":
            return BAD_INPUT if slot.name == "input" else BAD_JSON
        return BAD_HEADER if slot.where == "header" else BAD_TEXT


def build(route: Route, target: Target, values: Mapping[Slot, Any], auth: bytes) -> dict[str, Any]:
    """The raw request for `route` with `values` in its slots (absent or None: left out)."""
    path, query, headers, props, form = route.path, [], [], [], []
    for slot in route.slots:
        value = values.get(slot)
        if slot.where == "path":
            value = target.valid(slot)[0] if value is None else value
            pattern = "{" + re.escape(slot.name) + "(:path)?}"
            path = re.sub(pattern, quote(value, safe=""), path)
        elif value is None:
            continue
        elif slot.where == "query":
            query.append(f"{slot.name}={quote(value, safe='')}")
        elif slot.where == "header":
            headers.append((slot.name.encode(), value))
        elif slot.where == "json":
            props.append(f"{json.dumps(slot.name)}: {value}")
        else:
            form.append(f"{slot.name}={quote(value, safe='')}")
    content = None
    if route.json_body:
        headers.append((b"Content-Type", b"application/json"))
        content = ("{" + ", ".join(props) + "}").encode("utf-8", "surrogatepass")
    if route.ui:
        headers.append((b"Cookie", target.cookie.encode()))
        if route.method == "POST":
            headers.append((b"Content-Type", b"application/x-www-form-urlencoded"))
            content = "&".join(form).encode()
    else:
        headers.append((b"Authorization", auth))
    url = path + ("?" + "&".join(query) if query else "")
    return {"method": route.method, "url": url, "headers": headers, "content": content}


def send(target: Target, request: dict[str, Any]) -> int:
    """Send a raw request; its status (only: an event stream of a running job never ends)."""
    target.http.cookies.clear()  # a login's or logout's cookie must not ride along
    with target.http.stream(**request) as response:
        if response.status_code >= 500:
            response.read()
            raise AssertionError(f"{response.status_code} for {request}: {response.text}")
        return response.status_code


# -- the servers ----------------------------------------------------------------------------------


def _seed(live: Live) -> dict[str, list[bytes]]:
    """A finished job, one waiting for a reviewer, one dead-lettered: their ids."""
    with live.http("acme", "admin") as http:
        made = [http.post("/v1/jobs", json=body).json()["id"] for body in (order(5), doomed())]
        waiting = [http.post("/v1/jobs", json=order(500)).json()["id"] for _ in range(3)]
    wait_job(live, made[0], ("completed",))
    wait_job(live, made[1], ("dead_lettered",))
    for job_id in waiting:
        wait_job(live, job_id, ("waiting_approval",))
    with live.http("acme", "admin") as http:
        reviews = [r["id"].encode() for r in http.get("/v1/reviews").json()["items"]]
        letter = http.get(f"/v1/dlq/{made[1]}").json()["id"].encode()
    jobs = [made[0].encode(), made[1].encode(), waiting[0].encode()]
    return {
        "job_id": jobs,
        "before": jobs,
        "cursor": jobs,
        "review_id": reviews,
        "dead_letter_id": [letter, made[1].encode()],
        "letter_id": [letter],
        "workflow": [b"order", b"event", b"doomed"],
        "path": [b"anything"],
    }


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def target(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Target]:
    """One seeded server per backend for every test of the module."""
    pg: PgServer | None = None
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('fuzz') / 'server.db'}"
    else:
        pg = request.getfixturevalue("pg_server")
        url = pg.fresh_database(request.getfixturevalue("pg_template"))
    live, background = start_live(url)
    # One client (and its connections) for every request: making one costs more than a request.
    http = httpx.Client(base_url=live.url, timeout=30.0)
    try:
        found = Target(live, http, _seed(live))
        with browser_client(live) as browser:
            assert sign_in(browser, live.keys[("acme", "admin")]).status_code == 303
            found.cookie = "; ".join(f"{k}={v}" for k, v in browser.cookies.items())
            found.csrf = csrf_of(browser.get("/ui/").text)
        yield found
    finally:
        http.close()
        background.stop()
        if pg is not None:
            pg.drop_database(url.rsplit("/", 1)[1])


def _admin(target: Target) -> bytes:
    return f"Bearer {target.live.keys[('acme', 'admin')]}".encode()


# -- the sweep and the property -------------------------------------------------------------------


@pytest.mark.parametrize("route", ROUTES, ids=str)
def test_each_bad_value_in_each_slot_is_not_a_server_error(route: Route, target: Target) -> None:
    valid = {slot: target.valid(slot)[0] for slot in route.slots}
    send(target, build(route, target, valid, _admin(target)))
    for slot in route.slots:
        for bad in target.bad(slot):
            send(target, build(route, target, {**valid, slot: bad}, _admin(target)))


def _value(slot: Slot, target: Target) -> st.SearchStrategy[Any]:
    """Bad, valid, missing or random: the bad ones first, where hypothesis starts."""
    if slot.where == "json":
        random: st.SearchStrategy[Any] = st.text(max_size=8).map(json.dumps) | st.integers().map(
            str
        )
    elif slot.where == "header":
        random = st.text("abc \t-_é", max_size=8).map(lambda s: s.strip(" \t").encode())
    else:
        random = st.binary(max_size=8) | st.text(max_size=8).map(str.encode)
    options = st.sampled_from(target.bad(slot)) | st.sampled_from(target.valid(slot)) | random
    return options if slot.where == "path" else options | st.just(OMIT)


AUTH = st.sampled_from([b"", b"Bearer \xff", b"Bearer stw_x_y", b"Basic eA=="])


@pytest.mark.parametrize("route", ROUTES, ids=str)
@settings(
    max_examples=EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
@given(data=st.data())
def test_no_mix_of_values_is_a_server_error(
    route: Route, target: Target, data: st.DataObject
) -> None:
    values = {slot: data.draw(_value(slot, target), label=str(slot)) for slot in route.slots}
    auth = data.draw(st.just(_admin(target)) | AUTH, label="Authorization")
    send(target, build(route, target, values, auth))


def test_the_servers_still_work_afterwards(target: Target) -> None:
    with target.live.http("acme", "admin") as http:
        made = http.post("/v1/jobs", json=order(7))
    assert made.status_code == 201, made.text
    wait_job(target.live, made.json()["id"], ("completed",))
