"""An agent step's transcript, seen everywhere a job is read, on SQLite and PostgreSQL: the
client, `GET /v1/jobs/{id}/transcript`, `stalwart jobs show` (text and `--json`) and the job page
of the web UI. Each shows every turn (text, model, tokens, cost) and every tool call (arguments,
status, result or error), marks a call waiting for a reviewer with its review, and shows what the
model and the tools wrote as text, never as markup.

The transcript is written through the store's fenced writes, as the engine writes it
(tests/integration/transcripts.py)."""

from __future__ import annotations

import asyncio
import html
import json
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import generate_latest
from pydantic import BaseModel
from starlette.testclient import TestClient
from tests.browser.conftest import csrf_of
from tests.integration.transcripts import RESULT, TEXT, Seeded, seed_database
from tests.observability.conftest import Scrape, parse
from typer.testing import CliRunner, Result

from stalwart import App, Client, Settings, ToolContext
from stalwart.api import create_api
from stalwart.api.schemas import TranscriptList
from stalwart.cli.main import cli
from stalwart.domain.agents import Transcript
from stalwart.domain.budgets import ledger_totals
from stalwart.errors import InputValidationError, NotFoundError
from stalwart.llm import CallTools
from stalwart.llm.scripted import ScriptedModel
from stalwart.observability.metrics import MetricsExporter, metrics_registry
from stalwart.store import open_store


@pytest.fixture
def seeded(db_url: str) -> Seeded:
    """The seeded database of tests/integration/transcripts.py."""
    return asyncio.run(seed_database(db_url))


async def read_transcripts(db_url: str, job_id: str, tenant: str | None) -> list[Transcript]:
    store = open_store(db_url, Settings(database_url=db_url))
    try:
        return await Client(store).transcripts(job_id, tenant=tenant)
    finally:
        await store.close()


def check_transcript(transcript: Transcript) -> None:
    """The transcript `write_transcript` wrote, read back."""
    assert transcript.step_key == "research"
    assert [t.turn for t in transcript.turns] == [1, 2]
    first, second = transcript.turns
    assert (first.text, first.model, first.input_tokens, first.output_tokens) == (
        TEXT,
        "tiny-1",
        120,
        30,
    )
    assert [c.tool for c in first.calls] == ["lookup_vendor", "lookup_vendor"]
    lookup, broken = first.calls
    assert (lookup.status, lookup.result, lookup.attempts) == ("succeeded", RESULT, 1)
    assert lookup.parsed()["vendor"] == "ACME"
    assert (broken.status, broken.parsed(), broken.error) == (
        "invalid",
        None,
        {"code": "invalid_arguments", "message": "the arguments are not JSON <i>"},
    )
    [pay] = second.calls
    assert (pay.tool, pay.status) == ("send_payment", "awaiting_approval")
    assert pay.review_id


# -- the client -----------------------------------------------------------------------------------


def test_the_client_reads_each_agent_steps_transcript_for_its_tenant(
    db_url: str, seeded: Seeded
) -> None:
    [transcript] = asyncio.run(read_transcripts(db_url, seeded.job_id, "acme"))
    check_transcript(transcript)
    assert transcript.turns[1].calls[0].review_id == seeded.review_id
    assert asyncio.run(read_transcripts(db_url, seeded.job_id, None))[0].turns  # every tenant
    assert asyncio.run(read_transcripts(db_url, seeded.plain_id, "acme")) == []
    [empty] = asyncio.run(read_transcripts(db_url, seeded.other_id, "globex"))
    assert (empty.step_key, empty.turns) == ("research", [])

    with pytest.raises(NotFoundError):
        asyncio.run(read_transcripts(db_url, seeded.job_id, "globex"))
    with pytest.raises(InputValidationError) as bad:
        asyncio.run(read_transcripts(db_url, "job_\x00", "acme"))
    assert bad.value.field == "job_id"


# -- the HTTP API and the web UI ------------------------------------------------------------------


async def keys(db_url: str) -> dict[str, str]:
    """A key per (tenant, role) we need: acme's submitter and reviewer, globex's admin."""
    store = open_store(db_url, Settings(database_url=db_url))
    try:
        client = Client(store)
        made = {}
        for tenant, role in (("acme", "submitter"), ("acme", "reviewer"), ("globex", "admin")):
            created = await client.key_create(tenant=tenant, role=role, name=f"{tenant}-{role}")
            made[f"{tenant}-{role}"] = created.token
        return made
    finally:
        await store.close()


@pytest.fixture
def served(db_url: str, seeded: Seeded) -> Iterator[tuple[TestClient, dict[str, str]]]:
    """The API and UI on the seeded database, without workers (nothing else moves the job)."""
    tokens = asyncio.run(keys(db_url))
    app = App(Settings(database_url=db_url))
    with TestClient(create_api(app, settings=app.settings, workers=0)) as http:
        yield http, tokens


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_the_api_serves_the_transcript_with_its_totals(
    served: tuple[TestClient, dict[str, str]], seeded: Seeded
) -> None:
    http, tokens = served
    response = http.get(
        f"/v1/jobs/{seeded.job_id}/transcript", headers=bearer(tokens["acme-submitter"])
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["turns"], body["tool_calls"]) == (2, 3)
    assert (body["input_tokens"], body["output_tokens"]) == (320, 70)
    assert body["cost_usd"] == pytest.approx(36_000 / 1e9)
    [transcript] = body["items"]
    assert (transcript["step"], transcript["tokens"]) == ("research", 390)
    assert transcript["cost_usd"] == pytest.approx(36_000 / 1e9)
    first, second = transcript["turns"]
    assert (first["text"], first["model"], first["provider"]) == (TEXT, "tiny-1", "scripted")
    assert (first["input_tokens"], first["output_tokens"]) == (120, 30)
    assert first["cost_usd"] == pytest.approx(12_000 / 1e9)
    assert [c["id"] for c in first["tool_calls"]] == ["c1", "c2"]
    lookup, broken = first["calls"]
    assert lookup["arguments"]["vendor"] == "ACME"  # parsed JSON
    assert (lookup["status"], lookup["result"]) == ("succeeded", RESULT)
    assert (broken["status"], broken["arguments"]) == ("invalid", '{"vendor": ')  # raw text
    assert broken["error"]["code"] == "invalid_arguments"
    [pay] = second["calls"]
    assert (pay["status"], pay["review_id"]) == ("awaiting_approval", seeded.review_id)
    assert pay["arguments"] == {"amount": 500}

    # Same rules as GET /v1/jobs/{id}: the tenant's keys only, ids checked.
    plain = http.get(
        f"/v1/jobs/{seeded.plain_id}/transcript", headers=bearer(tokens["acme-reviewer"])
    )
    assert plain.status_code == 200 and plain.json()["items"] == [], plain.text
    theirs = http.get(
        f"/v1/jobs/{seeded.job_id}/transcript", headers=bearer(tokens["globex-admin"])
    )
    assert (theirs.status_code, theirs.json()["code"]) == (404, "not_found")
    assert http.get(f"/v1/jobs/{seeded.job_id}/transcript").status_code == 401
    bad = http.get("/v1/jobs/job%00x/transcript", headers=bearer(tokens["acme-submitter"]))
    assert (bad.status_code, bad.json()["field"]) == (422, "path.job_id")


def sign_in(http: TestClient, token: str) -> None:
    form = http.get("/ui/login")
    signed = http.post(
        "/ui/login", data={"key": token, "csrf": csrf_of(form.text)}, follow_redirects=False
    )
    assert signed.status_code == 303, signed.text


def section(page: str, start: str, end: str = "</section>") -> str:
    return page.split(start, 1)[1].split(end, 1)[0]


def test_the_job_page_shows_each_turn_and_call_escaped(
    served: tuple[TestClient, dict[str, str]], seeded: Seeded
) -> None:
    http, tokens = served
    sign_in(http, tokens["acme-reviewer"])
    response = http.get(f"/ui/jobs/{seeded.job_id}")
    assert response.status_code == 200, response.text
    page = response.text
    shown = section(page, 'id="transcripts-h"')

    # What the model and the tool wrote is text: escaped once, never markup.
    assert "<b>ACME</b>" not in page and "<script>alert(1)" not in page
    assert "Looking up &lt;b&gt;ACME&lt;/b&gt; [bold red]now[/] &amp; then" in shown
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in shown
    assert "the arguments are not JSON &lt;i&gt;" in shown

    text = html.unescape(shown)
    assert "2 turns, 3 tool calls, 390 tokens, $0.000036" in " ".join(text.split())
    turn_heads = [" ".join(h.split()) for h in text.split('<p class="turn-head">')[1:]]
    assert turn_heads[0].startswith('<strong>Turn 1</strong> · <span class="mono">scripted:tiny-1')
    assert "120 in / 30 out tokens · $0.000012" in turn_heads[0]
    assert "200 in / 40 out tokens · $0.000024" in turn_heads[1]
    assert text.count('<span class="mono">lookup_vendor</span>') == 2
    assert '"vendor": "ACME"' in text and '{"vendor": ' in text and "not valid JSON" in text
    assert '"amount": 500' in text
    # The call waiting for a reviewer: marked, with a link to its review.
    assert 'tr class="call s-awaiting_approval"' in shown
    assert f'href="/ui/reviews/{seeded.review_id}">waits for review</a>' in shown
    # The steps table links to the transcript.
    assert 'href="#transcript-research">transcript</a>' in page

    # A job without agent steps has no transcript section.
    assert 'id="transcripts-h"' not in http.get(f"/ui/jobs/{seeded.plain_id}").text


# -- the CLI ---------------------------------------------------------------------------------------


def stalwart(monkeypatch: pytest.MonkeyPatch, db_url: str, *args: str) -> Result:
    monkeypatch.delenv("STALWART_APP", raising=False)
    monkeypatch.setenv("COLUMNS", "200")
    result = CliRunner().invoke(cli, ["--database-url", db_url, *args])
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    return result


def test_jobs_show_prints_the_transcript_compactly(
    monkeypatch: pytest.MonkeyPatch, db_url: str, seeded: Seeded
) -> None:
    out = stalwart(monkeypatch, db_url, "--tenant", "acme", "jobs", "show", seeded.job_id).stdout
    lines = out.splitlines()
    start = lines.index("agent research: 2 turns, 390 tokens, $0.000036")
    shown = [" ".join(line.split()) for line in lines[start : start + 7]]
    assert shown[1] == "turn 1 scripted:tiny-1 120 in / 30 out $0.000012"
    assert shown[2] == "> Looking up <b>ACME</b> [bold red]now[/] & then"  # printed, not styled
    assert shown[3].startswith('lookup_vendor({"vendor": "ACME", "note": "xxx')
    assert shown[3].endswith('-> succeeded: {"terms": "net 30 <script>alert(1)</script>"}')
    assert len(shown[3]) < 200, "a long argument is cut"
    assert shown[4] == (
        'lookup_vendor({"vendor":) -> invalid: invalid_arguments: the arguments are not JSON <i>'
    )
    assert shown[5] == "turn 2 scripted:tiny-1 200 in / 40 out $0.000024"
    assert shown[6] == (
        f'send_payment({{"amount": 500}}) -> awaiting_approval: waits for review {seeded.review_id}'
    )

    plain = stalwart(monkeypatch, db_url, "jobs", "show", seeded.plain_id).stdout
    assert "agent " not in plain


def test_jobs_show_json_has_the_transcripts(
    monkeypatch: pytest.MonkeyPatch, db_url: str, seeded: Seeded
) -> None:
    body = json.loads(stalwart(monkeypatch, db_url, "--json", "jobs", "show", seeded.job_id).stdout)
    [transcript] = body["transcripts"]
    [expected] = asyncio.run(read_transcripts(db_url, seeded.job_id, None))
    assert transcript == json.loads(json.dumps(expected.to_dict()))
    assert transcript["turns"][1]["calls"][0]["review_id"] == seeded.review_id

    plain = json.loads(
        stalwart(monkeypatch, db_url, "--json", "jobs", "show", seeded.plain_id).stdout
    )
    assert plain["transcripts"] == []


# -- a loop the engine ran ------------------------------------------------------------------------


class Question(BaseModel):
    question: str


class Lookup(BaseModel):
    order: int


class Order(BaseModel):
    order: int
    amount: float


async def run_agent_job(db_url: str) -> str:
    """An agent job run to completion by an in-process worker on the scripted model: a turn that
    looks an order up, then the answer."""
    model = ScriptedModel("agent").on_step(
        "agent",
        CallTools(("lookup_order", {"order": 7}), text="Looking it up."),
        "Order 7 is 12.5.",
    )
    prices = {"scripted:agent": {"input_per_mtok": 3.0, "output_per_mtok": 15.0}}
    app = App(Settings(database_url=db_url, poll_interval_seconds=0.05, llm_prices=prices))
    app.model("scripted:agent", model)
    app.route("small", ["scripted:agent"])

    @app.tool(idempotent=True)
    async def lookup_order(args: Lookup, ctx: ToolContext) -> Order:
        """Look an order up by its number."""
        return Order(order=args.order, amount=12.5)

    step = {"id": "agent", "kind": "agent", "prompt": "${input.question}", "tier": "small"}
    app.workflow(
        "support",
        input=Question,
        templates=[{"name": "support", "steps": [{**step, "tools": ["lookup_order"]}]}],
    )
    store = app.store()
    await store.migrate()
    try:
        client = app.client(store)
        job_id = (await client.submit("support", {"question": "Order 7?"})).job.id
        worker = app.worker(store=store, worker_id="w-agent")
        task = asyncio.create_task(worker.run())
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 60
            while (status := (await client.get(job_id)).status) != "completed":
                assert loop.time() < deadline, f"job {job_id} is still {status}"
                await asyncio.sleep(0.02)
        finally:
            worker.stop()
            await asyncio.wait_for(task, 30)
        return job_id
    finally:
        await store.close()


async def figures(db_url: str, job_id: str) -> tuple[list[Transcript], Any, Scrape]:
    """The job's transcripts, its ledger and the metrics, read back."""
    store = open_store(db_url, Settings(database_url=db_url))
    try:
        client = Client(store)
        transcripts = await client.transcripts(job_id)
        calls = await client.llm_calls(job_id)
        exporter = MetricsExporter(store)
        await exporter.refresh()
        scrape = parse(generate_latest(metrics_registry(exporter, process=False)).decode())
        return transcripts, calls, scrape
    finally:
        await store.close()


def test_a_loop_the_engine_ran_reads_the_same_in_the_transcript_the_ledger_and_the_metrics(
    monkeypatch: pytest.MonkeyPatch, db_url: str
) -> None:
    job_id = asyncio.run(run_agent_job(db_url))
    [transcript], ledger, m = asyncio.run(figures(db_url, job_id))

    assert [len(t.calls) for t in transcript.turns] == [1, 0]
    assert transcript.turns[0].text == "Looking it up."
    assert transcript.turns[1].text == "Order 7 is 12.5."
    # Each turn is a ledger row: the transcript's tokens and cost are the ledger's.
    body = TranscriptList.of([transcript])
    totals = ledger_totals(ledger)
    assert (body.turns, body.tool_calls) == (2, 1)
    assert (body.input_tokens, body.output_tokens) == (
        totals["input_tokens"],
        totals["output_tokens"],
    )
    assert body.cost_usd == pytest.approx(totals["cost_usd"]) and body.cost_usd > 0
    assert m.value("stalwart_agent_turns_total", workflow="support", tenant="default") == 2
    assert (
        m.value(
            "stalwart_agent_tool_calls_total",
            workflow="support",
            tool="lookup_order",
            outcome="succeeded",
        )
        == 1
    )
    assert m.total("stalwart_agent_escalations_total") == 0

    out = stalwart(monkeypatch, db_url, "jobs", "show", job_id).stdout
    assert "agent agent: 2 turns" in out
    assert 'lookup_order({"order": 7}) -> succeeded: {"order": 7, "amount": 12.5}' in out
    assert "> Order 7 is 12.5." in out
