"""A job whose stored state fails to decode is listed marked, never fails the listing: `GET
/v1/jobs` and `stalwart jobs list` (table and `--json`) answer with every job of the tenant, the
corrupt one carrying `corrupt` (what failed to decode). Reading that one job on its own fails
closed with `corrupt_state`, naming it. Both backends; the corruption is raw SQL under the
store. See docs/decisions/0036-corrupt-rows-are-quarantined.md."""

from __future__ import annotations

import json

import pytest
from tests.api.conftest import Live
from tests.api.helpers import error_of, order, submit
from tests.api.test_cli_keys import ok, stalwart
from tests.integration.conftest import execute


@pytest.fixture(params=["sqlite", "postgres"])
def server(request: pytest.FixtureRequest) -> Live:
    live: Live = request.getfixturevalue("live" if request.param == "sqlite" else "live_pg")
    return live


def _jobs_with_one_corrupt(live: Live) -> tuple[list[str], str]:
    ids = [submit(live, order(customer=f"c{n}")) for n in range(4)]
    execute(live.database_url, "UPDATE jobs SET input = '{not json' WHERE id = ?", (ids[1],))
    return ids, ids[1]


def test_get_jobs_answers_200_with_the_corrupt_job_marked(server: Live) -> None:
    ids, bad = _jobs_with_one_corrupt(server)

    with server.http("acme", "admin") as http:
        page = http.get("/v1/jobs")
        single = http.get(f"/v1/jobs/{bad}")

    assert page.status_code == 200, page.text
    items = {j["id"]: j for j in page.json()["items"]}
    assert set(items) == set(ids)
    assert items[bad]["corrupt"] == f"input of job {bad} is not valid JSON"
    assert items[bad]["input"] == {}
    assert [items[i]["corrupt"] for i in ids if i != bad] == [None] * 3
    assert all(items[i]["input"]["customer"] for i in ids if i != bad)
    body = error_of(single, 500, "corrupt_state")
    assert f"input of job {bad}" in body["message"]


def test_jobs_list_prints_every_job_and_names_the_corrupt_one(server: Live) -> None:
    ids, bad = _jobs_with_one_corrupt(server)

    table = ok(stalwart(server.database_url, "--tenant", "acme", "jobs", "list"))
    listed = json.loads(
        ok(stalwart(server.database_url, "--tenant", "acme", "--json", "jobs", "list"))
    )

    assert table.count(" order ") == len(ids)  # one row each (ids wrap in a narrow table)
    assert "corrupt" in table.split(f"job {bad} is corrupt")[0]  # the marker in its row
    assert f"job {bad} is corrupt: input of job {bad} is not valid JSON" in table
    corrupt = {j["id"]: j["corrupt"] for j in listed}
    assert set(corrupt) == set(ids)
    assert corrupt.pop(bad) == f"input of job {bad} is not valid JSON"
    assert set(corrupt.values()) == {None}
