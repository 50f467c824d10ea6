"""The gateway end to end: real SQLite store, real SDK against the local provider server, or the
scripted model. Caching, routing fallback, re-asks, refusals that never reach the provider."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from pydantic import BaseModel
from tests.fakes.provider_server import Fail, ProviderServer, Reply

from stalwart.domain.budgets import CallScope
from stalwart.errors import BudgetExceeded, ErrorClass
from stalwart.llm.gateway import Gateway, InvalidOutputError, LlmCall, TenantBudget, parse_json
from stalwart.llm.pricing import ModelPrice, Pricing
from stalwart.llm.routing import ModelRegistry, Router
from stalwart.llm.scripted import ScriptedModel
from stalwart.llm.types import Message, ProviderError
from stalwart.settings import Settings
from stalwart.store import Store, open_store


class Answer(BaseModel):
    label: str
    score: float


PRICES = {
    "local:cheap": ModelPrice(input_per_mtok=1.0, output_per_mtok=2.0),
    "local:backup": ModelPrice(input_per_mtok=1.0, output_per_mtok=2.0),
}


@pytest.fixture
def server() -> Iterator[ProviderServer]:
    with ProviderServer(lambda req: {"label": "ok", "score": 0.9}) as running:
        yield running


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = open_store(f"sqlite:///{tmp_path}/g.db", Settings(sqlite_synchronous="OFF"))
    await s.migrate()
    yield s
    await s.close()


def make_gateway(
    store: Store,
    server: ProviderServer,
    *,
    chain: tuple[str, ...] = ("local:cheap",),
    scripted: ScriptedModel | None = None,
    **settings: object,
) -> Gateway:
    base = Settings(
        llm_endpoints={"local": {"kind": "openai", "base_url": server.openai_base_url}},
        llm_timeout_seconds=5,
        **settings,  # type: ignore[arg-type]
    )
    registry = ModelRegistry(base, {"scripted:s": scripted} if scripted else {})
    routes = {"small": list(chain), "medium": list(chain), "large": list(chain)}
    return Gateway(
        store=store,
        router=Router(routes, base),
        models=registry,
        pricing=Pricing(PRICES),
        settings=base,
        tenant_budgets={"poor": TenantBudget(daily_usd=0.000001)},
    )


def ask(text: str = "classify this", *, max_tokens: int = 50, **fields: object) -> LlmCall:
    return LlmCall(
        messages=(Message("user", text),),
        purpose="classification",
        output=Answer,
        max_tokens=max_tokens,
        **fields,  # type: ignore[arg-type]
    )


def scope_of(gw: Gateway, tenant: str = "acme", job: str = "j1") -> CallScope:
    return gw.scope(tenant, job, step_key="s", attempt=1, purpose="classification")


async def test_a_call_is_validated_priced_and_in_the_ledger(
    store: Store, server: ProviderServer
) -> None:
    gw = make_gateway(store, server)
    result = await gw.call(ask(), scope_of(gw))
    await gw.close()
    assert isinstance(result.output, Answer) and result.output.label == "ok"
    assert result.data == {"label": "ok", "score": 0.9}
    [row] = await store.llm_call_list("j1")
    request = server.requests[0]
    assert (row.outcome, row.provider, row.model, row.tier) == ("ok", "local", "cheap", "small")
    assert row.input_tokens == request.input_tokens() > 0
    expected = Pricing(PRICES).cost_nanos(
        "local", "cheap", input_tokens=row.input_tokens, output_tokens=row.output_tokens
    )
    assert row.cost_nanos == expected > 0
    # The reservation was the worst case and is fully settled.
    [job_budget] = [b for b in await store.budget_list() if b.key == "job:j1"]
    assert (job_budget.reserved_nanos, job_budget.spent_nanos) == (0, row.cost_nanos)


async def test_cacheable_calls_hit_the_tenants_cache_only_with_equal_parameters(
    store: Store, server: ProviderServer
) -> None:
    gw = make_gateway(store, server)
    first = await gw.call(ask(cacheable=True), scope_of(gw))
    again = await gw.call(ask(cacheable=True), scope_of(gw, job="j2"))
    assert (first.cache_hit, again.cache_hit) == (False, True)
    assert again.data == first.data and server.count() == 1
    # Another tenant, another prompt, another max_tokens, a non-cacheable call: all miss.
    await gw.call(ask(cacheable=True), scope_of(gw, tenant="globex"))
    await gw.call(ask("classify that", cacheable=True), scope_of(gw))
    await gw.call(ask(cacheable=True, max_tokens=60), scope_of(gw))
    await gw.call(ask(), scope_of(gw))
    await gw.close()
    assert server.count() == 5
    [hit] = [r for r in await store.llm_call_list("j2")]
    assert (hit.outcome, hit.cache_hit, hit.cost_nanos) == ("cached", True, 0)


async def test_routing_falls_back_along_the_chain_on_a_500(
    store: Store, server: ProviderServer
) -> None:
    server.push(Fail(500, message="upstream exploded"), model="cheap")
    gw = make_gateway(store, server, chain=("local:cheap", "local:backup"))
    result = await gw.call(ask(), scope_of(gw))
    await gw.close()
    assert result.model == "backup"
    assert [r.model for r in server.requests] == ["cheap", "backup"]
    rows = await store.llm_call_list("j1")
    assert [(r.model, r.outcome, r.error_class) for r in rows] == [
        ("cheap", "error", "transient"),
        ("backup", "ok", None),
    ]
    assert rows[0].cost_nanos == 0


async def test_a_401_does_not_fall_back(store: Store, server: ProviderServer) -> None:
    server.push(Fail(401, message="bad key"), model="cheap")
    gw = make_gateway(store, server, chain=("local:cheap", "local:backup"))
    with pytest.raises(ProviderError) as failed:
        await gw.call(ask(), scope_of(gw))
    await gw.close()
    assert failed.value.error_class is ErrorClass.AUTHORIZATION
    assert server.count() == 1


async def test_every_model_down_raises_the_last_transient_error(
    store: Store, server: ProviderServer
) -> None:
    server.push(Fail(503), model="cheap")
    server.push(Fail(429, retry_after=3), model="backup")
    gw = make_gateway(store, server, chain=("local:cheap", "local:backup"))
    with pytest.raises(ProviderError) as failed:
        await gw.call(ask(), scope_of(gw))
    await gw.close()
    assert failed.value.error_class is ErrorClass.TRANSIENT
    assert (failed.value.code, failed.value.retry_after) == ("http_429", 3.0)


async def test_invalid_answers_are_reasked_with_the_errors_up_to_the_bound(
    store: Store, server: ProviderServer
) -> None:
    server.push(Reply("I think it is fine"))
    server.push(Reply({"label": "ok"}))  # score missing
    server.push(Reply({"label": "ok", "score": 0.5}))
    gw = make_gateway(store, server, llm_max_reasks=2)
    result = await gw.call(ask(), scope_of(gw))
    assert result.data == {"label": "ok", "score": 0.5} and result.calls == 3
    assert "score" in server.requests[2].message_texts[-1]
    assert [r.outcome for r in await store.llm_call_list("j1")] == [
        "invalid_output",
        "invalid_output",
        "ok",
    ]
    # Never valid: semantic after 1 + max_reasks asks, each one in the ledger and budgeted.
    for _ in range(3):
        server.push(Reply("nope"))
    with pytest.raises(InvalidOutputError) as invalid:
        await gw.call(ask(), scope_of(gw, job="j2"))
    await gw.close()
    assert invalid.value.error_class is ErrorClass.SEMANTIC
    rows = await store.llm_call_list("j2")
    assert len(rows) == 3 and all(r.outcome == "invalid_output" for r in rows)
    assert all(r.cost_nanos > 0 for r in rows)


async def test_a_refused_reservation_never_reaches_the_provider(
    store: Store, server: ProviderServer
) -> None:
    gw = make_gateway(store, server)
    with pytest.raises(BudgetExceeded) as refused:
        await gw.call(ask(), scope_of(gw, tenant="poor"))
    await gw.close()
    assert server.count() == 0
    assert refused.value.budget.startswith("tenant:poor:day:")
    [row] = await store.llm_call_list("j1")
    assert (row.outcome, row.error_class, row.cost_nanos) == ("refused", "budget", 0)


async def test_the_alert_hook_hears_each_budget_warning_once(
    store: Store, server: ProviderServer
) -> None:
    alerts: list[dict[str, object]] = []
    gw = make_gateway(store, server)
    gw.on_alert = alerts.append
    worst = Pricing(PRICES).worst_case_nanos(
        "local", "cheap", input_tokens=40, max_output_tokens=50
    )
    assert worst is not None
    limit_usd = worst * 6 / 1e9  # room for the last reservations past 80% of the spend
    scope = gw.scope("acme", "a", step_key="s", purpose="classification", job_max_usd=limit_usd)
    refused = False
    for _ in range(200):
        try:
            await gw.call(ask(), scope)
        except BudgetExceeded:
            refused = True
            break
    await gw.close()
    assert refused
    warned = [a for a in alerts if a["key"] == "job:a"]
    assert len(warned) == 1 and warned[0]["kind"] == "budget_warning"
    assert float(warned[0]["ratio"]) >= 0.8  # type: ignore[arg-type]
    budget = next(b for b in await store.budget_list() if b.key == "job:a")
    assert budget.spent_nanos <= budget.limit_nanos  # type: ignore[operator]
    assert budget.warned and budget.reserved_nanos == 0


async def test_scripted_model_answers_by_step_and_rule(store: Store) -> None:
    model = ScriptedModel("s")
    model.on_step("s", {"label": "first", "score": 1}, {"label": "second", "score": 1})
    model.when(r"other", {"label": "rule", "score": 0})
    with ProviderServer() as unused:
        gw = make_gateway(store, unused, chain=("scripted:s",), scripted=model)
        answers = [(await gw.call(ask(), scope_of(gw))).data["label"] for _ in range(3)]
        other = await gw.call(ask("the other one"), gw.scope("acme", "j1", step_key="x"))
        await gw.close()
    assert answers == ["first", "second", "second"]
    assert other.data["label"] == "rule"
    assert all(r.cost_nanos == 0 for r in await store.llm_call_list("j1"))


def test_parse_json_finds_the_object_in_chatty_answers() -> None:
    assert parse_json('{"a": 1}') == {"a": 1}
    assert parse_json('Sure! ```json\n{"a": 2}\n``` hope it helps') == {"a": 2}
    assert parse_json('Here: {"a": 3}.') == {"a": 3}
    with pytest.raises(ValueError):
        parse_json("no json here")
