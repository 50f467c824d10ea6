"""Bad input is refused up front with an error that names what is wrong, and nothing is stored.

Through `Client.submit` in-process, and through `stalwart submit` in a subprocess (exit code
non-zero, exactly one error line on stderr).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import BaseModel

from stalwart import App, Settings
from stalwart.client import Client
from stalwart.errors import (
    InputValidationError,
    PayloadTooLargeError,
    PlanValidationError,
    TemplateError,
    UnknownWorkflowError,
)
from stalwart.store import Store, open_store

from .apps import bad_app
from .conftest import APPS, REPO, query

TABLES = ("jobs", "plans", "steps", "events", "idempotency_keys", "reviews", "dead_letters")
GOOD = {"customer": "ada", "amount": 12.5}


def counts(db_url: str) -> dict[str, int]:
    return {t: query(db_url, f"SELECT count(*) FROM {t}")[0][0] for t in TABLES}


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[Store]:
    store = open_store(db_url)
    await store.migrate()
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
async def client(store: Store) -> Client:
    """A client over a database that already holds one good job (so "nothing stored" is a
    comparison, not an empty table)."""
    client = Client(store, app=bad_app.app, settings=Settings(max_payload_bytes=2_000))
    await client.submit("order", GOOD, idempotency_key="baseline")
    return client


async def test_invalid_input_names_each_field(client: Client, db_url: str) -> None:
    before = counts(db_url)
    with pytest.raises(InputValidationError) as info:
        await client.submit(
            "order", {"customer": "", "amount": "lots"}, idempotency_key="k-invalid"
        )
    err = info.value
    assert "input.customer" in err.message and "input.amount" in err.message
    assert err.field == "input.customer"  # type: ignore[attr-defined]
    assert {e["field"] for e in err.errors} == {"customer", "amount"}  # type: ignore[attr-defined]
    with pytest.raises(InputValidationError, match=r"input\.amount"):
        await client.submit("order", {"customer": "ada"})
    with pytest.raises(InputValidationError, match="must be a JSON object"):
        await client.submit("order", ["not", "an", "object"])  # type: ignore[arg-type]
    assert counts(db_url) == before
    assert len(await client.list()) == 1
    # The refused submission did not take the idempotency key: a good one with it is new.
    assert (await client.submit("order", GOOD, idempotency_key="k-invalid")).created


async def test_unknown_workflow_names_the_known_ones(client: Client, db_url: str) -> None:
    before = counts(db_url)
    with pytest.raises(UnknownWorkflowError) as info:
        await client.submit("ordr", GOOD)
    assert "'ordr'" in info.value.message
    assert "known: cyclic, order" in info.value.message
    assert counts(db_url) == before


async def test_cyclic_plan_lists_the_cycle(client: Client, db_url: str) -> None:
    before = counts(db_url)
    with pytest.raises(PlanValidationError) as info:
        await client.submit("cyclic", GOOD, idempotency_key="k-cyclic")
    problems = info.value.problems
    assert len(problems) == 1
    assert problems[0]["step"] in ("a", "b", "c")
    cycle = problems[0]["problem"]
    assert cycle.startswith("dependency cycle: ")
    path = cycle.removeprefix("dependency cycle: ").split(" -> ")
    assert path[0] == path[-1] and sorted(path[:-1]) == ["a", "b", "c"]
    assert "d" not in path
    assert cycle in info.value.message
    assert counts(db_url) == before


async def test_oversized_payload_is_refused(client: Client, db_url: str) -> None:
    before = counts(db_url)
    with pytest.raises(PayloadTooLargeError) as info:
        await client.submit("order", {**GOOD, "note": "x" * 5_000}, idempotency_key="k-big")
    err = info.value
    assert err.limit == 2_000 and err.size > 5_000  # type: ignore[attr-defined]
    assert "max_payload_bytes" in err.message
    assert counts(db_url) == before
    assert (await client.submit("order", GOOD, idempotency_key="k-big")).created


def _nested(depth: int) -> list[object]:
    root: list[object] = []
    inner = root
    for _ in range(depth):
        inner.append([])
        inner = inner[0]  # type: ignore[assignment]
    return root


# Values that Python holds but no database (or JSON) can: each is refused with the field named.
UNSTORABLE = [
    ({**GOOD, "amount": math.nan}, "input.amount", "nan"),
    ({**GOOD, "amount": math.inf}, "input.amount", "inf"),
    ({**GOOD, "amount": "Infinity"}, "input.amount", "inf"),  # the model makes it inf
    ({**GOOD, "note": "\ud800"}, "input.note", "lone surrogate"),
    ({**GOOD, "note": "a\x00b"}, "input.note", "NUL"),
    ({**GOOD, "extra": {"list": [1, "\x00"]}}, "input.extra.list.1", "NUL"),
    ({**GOOD, "bad\x00key": 1}, "input.bad\\u0000key", "NUL"),
    ({**GOOD, "when": datetime.now(UTC)}, "input.when", "not JSON"),
    ({**GOOD, "deep": _nested(5_000)}, "input", "nested too deeply"),
]


@pytest.mark.parametrize(
    ("job_input", "field", "problem"),
    UNSTORABLE,
    ids=[
        "nan",
        "inf",
        "inf-from-text",
        "surrogate",
        "nul",
        "nul-nested",
        "nul-key",
        "type",
        "deep",
    ],
)
async def test_unstorable_input_is_refused_naming_the_field(
    client: Client, db_url: str, job_input: dict[str, object], field: str, problem: str
) -> None:
    before = counts(db_url)
    with pytest.raises(InputValidationError) as info:
        await client.submit("order", job_input, idempotency_key="k-unstorable")
    assert info.value.field == field  # type: ignore[attr-defined]
    assert problem in info.value.message and field in info.value.message
    assert counts(db_url) == before
    assert (await client.submit("order", GOOD, idempotency_key="k-unstorable")).created


@pytest.mark.parametrize("key", ["a\tb", "line\nbreak", "a\x00b", "\ud800"])
async def test_an_idempotency_key_with_control_characters_is_refused(
    client: Client, db_url: str, key: str
) -> None:
    before = counts(db_url)
    with pytest.raises(InputValidationError) as info:
        await client.submit("order", GOOD, idempotency_key=key)
    assert info.value.field == "idempotency_key"  # type: ignore[attr-defined]
    assert counts(db_url) == before


async def test_unstorable_reasons_and_comments_are_refused(client: Client, db_url: str) -> None:
    [job] = await client.list()
    before = counts(db_url)
    with pytest.raises(InputValidationError, match="reason contains NUL"):
        await client.cancel(job.id, reason="oops\x00")
    with pytest.raises(InputValidationError, match="reason contains a lone surrogate"):
        await client.redrive(job.id, reason="\udfff")
    for decide in (client.approve, client.reject):
        with pytest.raises(InputValidationError, match="comment contains NUL"):
            await decide("rev_x", reviewer="ada", comment="\x00")
    assert counts(db_url) == before
    assert (await client.get(job.id)).status == job.status


class Anything(BaseModel):
    customer: str = "x"


def test_malformed_template_names_file_and_field(tmp_path: Path) -> None:
    # SQLite only: template errors are raised before any store is opened, whatever the backend,
    # and the SQLite file that is never created is what shows that nothing touched a database.
    bad_field = tmp_path / "bad_field.yaml"
    bad_field.write_text(
        "name: broken\n"
        "steps:\n"
        "  - id: fetch\n"
        "    tool: lookup\n"
        "    timeout_seconds: -1\n"
        "  - id: send\n"
        "    tool: lookup\n"
        "    retries: 3\n"
    )
    app = App(Settings(database_url=f"sqlite:///{tmp_path / 'never.db'}"))
    with pytest.raises(TemplateError) as info:
        app.workflow("broken", input=Anything, templates=[bad_field])
    message = info.value.message
    assert str(bad_field) in message
    assert "steps[fetch].timeout_seconds" in message
    assert "steps[send].retries" in message
    assert info.value.path == str(bad_field)  # type: ignore[attr-defined]

    bad_yaml = tmp_path / "bad_yaml.yaml"
    bad_yaml.write_text("name: broken\nsteps:\n  - id: fetch\n    tool: [lookup\n")
    with pytest.raises(TemplateError) as info:
        app.workflow("broken", input=Anything, templates=[bad_yaml])
    assert str(bad_yaml) in info.value.message
    assert "line " in info.value.message

    with pytest.raises(TemplateError, match=r"missing\.yaml"):
        app.workflow("broken", input=Anything, templates=[tmp_path / "missing.yaml"])
    assert app.workflows == {}
    assert not (tmp_path / "never.db").exists()


# -- the same through the CLI ---------------------------------------------------------------------


def run_cli(
    db_url: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    full_env.pop("STALWART_APP", None)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "stalwart.cli.main",
            "--database-url",
            db_url,
            "--app",
            f"{APPS}.bad_app:app",
            *args,
        ],
        cwd=REPO,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (["submit", "nope"], {}, "no workflow named 'nope' (known: cyclic, order)"),
        (
            ["submit", "order", "--input", '{"customer": "ada", "amount": -3}'],
            {},
            "input.amount: Input should be greater than 0",
        ),
        (
            ["submit", "cyclic", "--input", json.dumps(GOOD)],
            {},
            "dependency cycle: a -> c -> b -> a",
        ),
        (
            ["submit", "order", "--input", json.dumps({**GOOD, "note": "x" * 500})],
            {"STALWART_MAX_PAYLOAD_BYTES": "200"},
            "the limit is 200 (max_payload_bytes)",
        ),
        (["submit", "order", "--input", '{"customer": '], {}, "--input is not valid JSON"),
        (
            ["submit", "order", "--input", '{"customer": "ada", "amount": NaN}'],
            {},
            "input.amount is nan",
        ),
    ],
    ids=["unknown-workflow", "invalid-input", "cyclic-plan", "oversized", "malformed-json", "nan"],
)
async def test_cli_refuses_with_one_error_line(
    client: Client, db_url: str, args: list[str], env: dict[str, str], expected: str
) -> None:
    before = counts(db_url)
    done = run_cli(db_url, *args, env=env)
    assert done.returncode != 0
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ") and expected in lines[0], lines[0]
    assert done.stdout == ""
    assert counts(db_url) == before


async def test_cli_json_errors_are_one_json_line(client: Client, db_url: str) -> None:
    before = counts(db_url)
    done = run_cli(db_url, "--json", "submit", "order", "--input", '{"customer": "ada"}')
    assert done.returncode != 0
    [line] = done.stderr.splitlines()
    error = json.loads(line)
    assert set(error) == {"code", "message", "field", "fix", "details"}, error
    assert error["code"] == "invalid_input"
    assert error["field"] == "input.amount"
    assert done.stdout == ""
    assert counts(db_url) == before
