"""One error shape everywhere: the CLI's `--json` error is the HTTP API's error body for the same
error (`code`, `message`, `field`, `fix`, `details`), on both backends. And the CLI errors a new
user met: an unknown `--status`, an `--app` attribute that is not there, an unreachable
PostgreSQL, and `submit --exit-code` saying how the job ended.

The CLI runs in-process (typer's runner) against a live server's database, whose worker runs the
jobs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from tests.api import server_app
from tests.api.conftest import Live, start_live
from tests.api.helpers import ERROR_KEYS, order, wait_job
from typer.testing import CliRunner

from stalwart.api.server import free_port
from stalwart.cli.main import EXIT_STILL_RUNNING, JOB_EXIT_CODES, cli
from stalwart.domain.states import JOB_PARKED, JOB_TERMINAL, JobStatus
from stalwart.errors import StoreUnavailableError
from stalwart.store import open_store
from stalwart.store.postgres.connection import unreachable

APP = "tests.api.server_app:app"
STATUSES = [s.value for s in JobStatus]


@pytest.fixture(autouse=True)
def _cli_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("STALWART_APP", "STALWART_DATABASE_URL"):
        monkeypatch.delenv(var, raising=False)
    # `--app` gives the imported app the command's database: undone after the test.
    monkeypatch.setattr(server_app.app, "settings", server_app.app.settings)
    monkeypatch.setattr(server_app.app, "_store", None)


@pytest.fixture(params=["sqlite", "postgres"])
def served(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Live]:
    """A live server (API and one worker) on a fresh database of each backend."""
    url = (
        f"sqlite:///{tmp_path / 'shape.db'}"
        if request.param == "sqlite"
        else str(request.getfixturevalue("pg_url"))
    )
    server, bg = start_live(url)
    try:
        yield server
    finally:
        bg.stop()


def stalwart(db_url: str, *args: str) -> Result:
    """`stalwart --database-url db_url ARGS`, in-process; the app's store closed after."""
    try:
        return CliRunner().invoke(cli, ["--database-url", db_url, *args])
    finally:
        store, server_app.app._store = server_app.app._store, None
        if store is not None:
            asyncio.run(store.close())


def json_error(result: Result, exit_code: int = 1) -> dict[str, Any]:
    """The one JSON error line a refused command writes on stderr."""
    assert result.exit_code == exit_code, (result.stdout, result.stderr, result.exception)
    [line] = result.stderr.splitlines()
    body: dict[str, Any] = json.loads(line)
    assert set(body) == ERROR_KEYS, body
    assert result.stdout == ""
    return body


# -- the same error, the same body ----------------------------------------------------------------


def test_cli_json_errors_equal_the_http_errors(served: Live) -> None:
    acme = ["--tenant", "acme", "--json"]
    bad_input = {"customer": "ada", "amount": -3}
    cases: list[tuple[str, int, str, dict[str, Any], list[str]]] = [
        (
            "unknown_workflow",
            404,
            "post",
            {"workflow": "nope", "input": bad_input},
            [*acme, "--app", APP, "submit", "nope", "-i", json.dumps(bad_input)],
        ),
        (
            "invalid_input",
            422,
            "post",
            {"workflow": "order", "input": bad_input},
            [*acme, "--app", APP, "submit", "order", "-i", json.dumps(bad_input)],
        ),
        ("not_found", 404, "get", {}, [*acme, "jobs", "show", "job_nope"]),
    ]
    for code, status, method, body, args in cases:
        with served.http("acme", "admin") as http:
            if method == "post":
                response = http.post("/v1/jobs", json=body)
            else:
                response = http.get("/v1/jobs/job_nope")
        assert response.status_code == status, response.text
        over_http = response.json()
        from_cli = json_error(stalwart(served.database_url, *args))
        assert from_cli == over_http, code
        assert from_cli["code"] == code and from_cli["fix"], from_cli
    # The field at fault is named the same way in both.
    assert from_cli["field"] is None
    invalid = json_error(
        stalwart(served.database_url, *acme, "--app", APP, "submit", "order", "-i", "{}")
    )
    assert invalid["field"] == "input.customer"


def test_a_cancelled_jobs_cancel_is_the_same_conflict_in_cli_and_http(served: Live) -> None:
    with served.http("acme", "admin") as http:
        job = http.post("/v1/jobs", json=order(500)).json()
        wait_job(served, job["id"], ("waiting_approval",))
        assert http.post(f"/v1/jobs/{job['id']}/cancel", json={}).status_code == 200
        again = http.post(f"/v1/jobs/{job['id']}/cancel", json={})
    assert again.status_code == 409, again.text
    from_cli = json_error(
        stalwart(served.database_url, "--tenant", "acme", "--json", "jobs", "cancel", job["id"])
    )
    assert from_cli["code"] == again.json()["code"] == "invalid_transition"
    assert from_cli == again.json()


# -- jobs list --status ---------------------------------------------------------------------------


def test_jobs_list_refuses_an_unknown_status_and_lists_the_statuses(served: Live) -> None:
    body = json_error(stalwart(served.database_url, "--json", "jobs", "list", "--status", "bogus"))
    assert (body["code"], body["field"]) == ("bad_request", "status")
    assert "'bogus'" in body["message"]
    assert all(s in body["message"] for s in STATUSES)
    assert body["details"]["allowed"] == STATUSES
    # The API's rule is the same: every status it accepts is one the CLI lists.
    with served.http("acme", "admin") as http:
        api = http.get("/v1/jobs", params={"status": "bogus"})
    assert api.status_code == 422 and all(f"'{s}'" in api.json()["message"] for s in STATUSES)

    human = stalwart(served.database_url, "jobs", "list", "--status", "bogus")
    assert human.exit_code == 1 and human.stderr.startswith("error: unknown job status 'bogus'")
    ok = stalwart(served.database_url, "--json", "jobs", "list", "--status", "completed")
    assert ok.exit_code == 0, ok.stderr
    assert json.loads(ok.stdout) == []


# -- --app module:attribute -----------------------------------------------------------------------


@pytest.fixture
def billing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A module `billing` with an App named `app`, importable from the current directory."""
    (tmp_path / "billing.py").write_text("from stalwart import App\n\napp = App()\nRATE = 3\n")
    (tmp_path / "ledger.py").write_text("RATE = 3\n\n\ndef total() -> int:\n    return 1\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield f"sqlite:///{tmp_path / 'billing.db'}"
    for name in ("billing", "ledger"):
        sys.modules.pop(name, None)


def test_app_attribute_missing_says_so_and_what_the_module_has(billing: str) -> None:
    body = json_error(stalwart(billing, "--app", "billing:ap", "--json", "submit", "x"))
    assert (body["code"], body["field"]) == ("app_import_error", "app")
    assert "has no attribute 'ap'" in body["message"] and "billing:app" in body["message"]
    assert body["fix"] == "pass --app billing:app"
    assert body["details"] == {
        "module": "billing",
        "attribute": "ap",
        "apps": ["app"],
    }

    no_app = json_error(stalwart(billing, "--app", "ledger:app", "--json", "submit", "x"))
    assert "has no attribute 'app'" in no_app["message"]
    assert "holds no App" in no_app["message"] and "RATE, total" in no_app["message"]

    not_an_app = json_error(stalwart(billing, "--app", "billing:RATE", "--json", "submit", "x"))
    assert "not a stalwart App (found int)" in not_an_app["message"]
    assert "billing:app" in not_an_app["message"]


# -- an unreachable PostgreSQL --------------------------------------------------------------------


def test_an_unreachable_postgres_fails_once_fast_naming_host_and_port(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()  # nothing listens there: every connection is refused at once
    password = "s3cret-pw"
    url = f"postgresql://stalwart:{password}@127.0.0.1:{port}/stalwart"
    # A pool waits this long for a connection before giving up; a first connect does not.
    monkeypatch.setenv("STALWART_PG_CONNECT_TIMEOUT_SECONDS", "60")
    caplog.set_level(logging.DEBUG)
    commands = [
        ["jobs", "list"],
        ["db", "migrate"],
        ["keys", "create", "--role", "admin"],
        ["--app", APP, "submit", "order", "-i", json.dumps({"customer": "a", "amount": 1})],
    ]
    for args in commands:
        started = time.monotonic()
        done = stalwart(url, "--json", *args)
        took = time.monotonic() - started
        body = json_error(done)
        assert body["code"] == "unavailable", body
        assert f"127.0.0.1:{port}" in body["message"] and "refused" in body["message"].lower()
        assert body["details"] == {"host": "127.0.0.1", "port": str(port)}
        assert body["field"] == "database_url"
        assert password not in done.stderr + done.stdout
        assert took < 30, f"{args}: {took:.1f}s, as if a pool waited out its timeout"
    pool_noise = [r for r in caplog.records if r.name.startswith("psycopg")]
    assert pool_noise == [], [r.getMessage() for r in pool_noise]

    with pytest.raises(StoreUnavailableError) as info:
        open_store(url)
    assert (info.value.host, info.value.port) == ("127.0.0.1", str(port))  # type: ignore[attr-defined]


def test_an_unreachable_error_never_shows_the_password() -> None:
    url = "postgresql://bob:p%40ss@db.internal:6543/app"
    error = unreachable(url, OSError('missing "=" after "postgresql://bob:p%40ss@db" (p@ss)'))
    assert "p@ss" not in error.message and "p%40ss" not in error.message
    assert "db.internal:6543" in error.message


# -- submit --exit-code ---------------------------------------------------------------------------


def _submit(live: Live, *args: str) -> Result:
    return stalwart(
        live.database_url,
        "--tenant",
        "acme",
        "--json",
        "--app",
        APP,
        "submit",
        *args,
        "--timeout",
        "120",
    )


def _ended(result: Result) -> str:
    return str(json.loads(result.stdout)["job"]["status"])


def test_submit_exit_code_says_how_the_job_ended(served: Live) -> None:
    small = json.dumps({"customer": "ada", "amount": 5})
    big = json.dumps({"customer": "ada", "amount": 500})
    completed = _submit(served, "order", "-i", small, "--exit-code")
    assert (completed.exit_code, _ended(completed)) == (0, "completed"), completed.stderr
    dead = _submit(served, "doomed", "-i", small, "--exit-code")
    assert (dead.exit_code, _ended(dead)) == (4, "dead_lettered"), dead.stderr
    escalated = _submit(served, "broken", "-i", small, "--exit-code")
    assert (escalated.exit_code, _ended(escalated)) == (6, "escalated"), escalated.stderr
    waiting = _submit(served, "order", "-i", big, "--exit-code")
    assert (waiting.exit_code, _ended(waiting)) == (8, "waiting_approval"), waiting.stderr
    # Without the flag, --wait exits 0 whatever the job's end, as before.
    plain = _submit(served, "doomed", "-i", small, "--wait")
    assert (plain.exit_code, _ended(plain)) == (0, "dead_lettered"), plain.stderr

    # A rejected and a cancelled job, met again through their idempotency keys.
    with served.http("acme", "admin") as http:
        rejected_job = http.post(
            "/v1/jobs", json=order(500), headers={"Idempotency-Key": "to-reject"}
        ).json()
        cancelled_job = http.post(
            "/v1/jobs", json=order(500), headers={"Idempotency-Key": "to-cancel"}
        ).json()
        wait_job(served, rejected_job["id"], ("waiting_approval",))
        reviews = http.get("/v1/reviews").json()["items"]
        [pending] = [r for r in reviews if r["job_id"] == rejected_job["id"]]
        assert http.post(f"/v1/reviews/{pending['id']}/reject", json={}).status_code == 200
        assert http.post(f"/v1/jobs/{cancelled_job['id']}/cancel", json={}).status_code == 200
    wait_job(served, rejected_job["id"], ("rejected",))
    wait_job(served, cancelled_job["id"], ("cancelled",))
    for key, code, status in (("to-reject", 5, "rejected"), ("to-cancel", 7, "cancelled")):
        again = _submit(served, "order", "-i", big, "--idempotency-key", key, "--exit-code")
        assert (again.exit_code, _ended(again)) == (code, status), again.stderr


def test_submit_exit_code_when_the_wait_runs_out(tmp_path: Path) -> None:
    """No worker runs: the job is still executing when --timeout ends the wait."""
    db = f"sqlite:///{tmp_path / 'idle.db'}"
    small = json.dumps({"customer": "ada", "amount": 5})
    done = stalwart(
        db, "--json", "--app", APP, "submit", "order", "-i", small, "--exit-code", "--timeout", "0"
    )
    assert done.exit_code == EXIT_STILL_RUNNING, done.stderr
    assert _ended(done) not in JOB_EXIT_CODES


def test_exit_codes_are_distinct_and_cover_every_ending() -> None:
    endings = {s.value for s in JOB_TERMINAL | JOB_PARKED} | {"waiting_approval"}
    assert set(JOB_EXIT_CODES) == endings
    codes = [*JOB_EXIT_CODES.values(), EXIT_STILL_RUNNING]
    assert len(set(codes)) == len(codes)
    assert JOB_EXIT_CODES["completed"] == 0
    assert not {1, 2} & set(codes), "1 and 2 are Stalwart's own errors and usage mistakes"
