"""Embedders: the local model (real, offline, on the CPU) and OpenAI embeddings through the
gateway against the local fake server, priced, budgeted and in the ledger on both backends."""

from __future__ import annotations

import asyncio
import importlib.util
import math
from collections.abc import AsyncIterator, Iterator
from importlib.machinery import ModuleSpec
from pathlib import Path
from typing import cast

import genai_prices
import numpy as np
import pytest
from tests.fakes.provider_server import (
    EMBEDDINGS_PATH,
    Fail,
    Hang,
    Malformed,
    ProviderServer,
    fake_vector,
)

from stalwart.domain.budgets import NANOS_PER_USD
from stalwart.errors import BudgetExceeded, ConfigurationError, ErrorClass, UsageError
from stalwart.llm import embeddings
from stalwart.llm.embeddings import (
    LOCAL_EMBED_FIX,
    EmbedScope,
    GatewayEmbedder,
    LocalEmbedder,
    embedder_from_setting,
    local_embedder_available,
)
from stalwart.llm.gateway import Gateway, TenantBudget
from stalwart.llm.pricing import Pricing
from stalwart.llm.routing import ModelRegistry, Router
from stalwart.llm.scripted import ScriptedModel
from stalwart.llm.types import ProviderError
from stalwart.settings import Settings
from stalwart.store import Store, open_store

MODEL = "text-embedding-3-small"
REF = f"openai:{MODEL}"
needs_local = pytest.mark.usefixtures("local_embedder")  # skips, or fails with CI=true


def unit_norms(matrix: np.ndarray) -> np.ndarray:
    return np.linalg.norm(matrix, axis=1)


# -- the local model ------------------------------------------------------------------------------


@needs_local
async def test_local_rows_are_float32_unit_vectors_of_384() -> None:
    vectors = await LocalEmbedder().embed(["an invoice from ACME", "the cat sat", "hello"])
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    assert np.allclose(unit_norms(vectors), 1.0, atol=1e-5)


@needs_local
async def test_paraphrases_score_higher_than_unrelated_text() -> None:
    query, paraphrase, unrelated = await LocalEmbedder(batch_size=2).embed(
        [
            "How do I reset my account password?",
            "I forgot my password and need to change it.",
            "The recipe calls for two cups of flour and an egg.",
        ]
    )
    assert float(query @ paraphrase) > 0.5 > float(query @ unrelated)


@needs_local
async def test_local_empty_input_loads_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    fresh = embeddings._LocalModel()
    monkeypatch.setattr(embeddings, "_LOCAL", fresh)
    vectors = await LocalEmbedder().embed([])
    assert vectors.shape == (0, 384) and vectors.dtype == np.float32
    assert fresh.loads == 0


@needs_local
async def test_the_model_loads_once_off_the_event_loop_and_prints_nothing(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    fresh = embeddings._LocalModel()
    monkeypatch.setattr(embeddings, "_LOCAL", fresh)
    ticks = 0
    stop = asyncio.Event()

    async def tick() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0.005)

    ticker = asyncio.create_task(tick())
    first, second = await asyncio.gather(
        LocalEmbedder().embed(["one text"]), LocalEmbedder().embed(["one text", "another"])
    )
    stop.set()
    await ticker
    again = await LocalEmbedder().embed(["one text"])
    assert fresh.loads == 1
    assert np.allclose(first[0], second[0], atol=1e-6) and np.allclose(first, again, atol=1e-6)
    assert ticks >= 3  # the loop kept running while the model loaded and encoded
    out, err = capfd.readouterr()
    assert out == ""  # the CLI prints JSON on stdout
    assert "Loading weights" not in err


def test_without_the_extra_local_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, package: str | None = None) -> ModuleSpec | None:
        return None if name == "sentence_transformers" else real(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    assert local_embedder_available() is False
    with pytest.raises(UsageError) as missing:
        LocalEmbedder()
    assert LOCAL_EMBED_FIX in missing.value.message
    assert missing.value.fields["field"] == "embedder"
    assert embedder_from_setting("auto", None) is None
    with pytest.raises(UsageError):
        embedder_from_setting("local", None)


# -- the embedder setting -------------------------------------------------------------------------


@needs_local
def test_setting_local_and_auto_give_the_local_embedder() -> None:
    for value in ("local", "auto", " Local "):
        embedder = embedder_from_setting(value, None)
        assert isinstance(embedder, LocalEmbedder)
        assert (embedder.name, embedder.dimension) == ("local:all-MiniLM-L6-v2", 384)
    assert embedder_from_setting("none", None) is None


def test_setting_openai_needs_a_gateway_and_a_known_size() -> None:
    with pytest.raises(UsageError) as no_gateway:
        embedder_from_setting(REF, None)
    assert no_gateway.value.fields["field"] == "embedder"
    gw = make_gateway(cast(Store, None), "http://127.0.0.1:9/v1")  # nothing is called
    embedder = embedder_from_setting(REF, gw)
    assert isinstance(embedder, GatewayEmbedder)
    assert (embedder.name, embedder.dimension) == (REF, 1536)
    large = embedder_from_setting("openai:text-embedding-3-large", gw)
    assert large is not None and large.dimension == 3072
    assert GatewayEmbedder(gw, REF, dimensions=256).dimension == 256
    with pytest.raises(UsageError) as unknown:
        embedder_from_setting("openai:my-embedder", gw)
    assert unknown.value.fields["field"] == "dimensions"
    with pytest.raises(UsageError):
        GatewayEmbedder(gw, REF, dimensions=4096)


@pytest.mark.parametrize("value", ["", "openai:", "sbert", "anthropic:claude", "cohere:embed"])
def test_other_settings_are_refused_naming_the_accepted_values(value: str) -> None:
    with pytest.raises(UsageError) as refused:
        embedder_from_setting(value, None)
    assert refused.value.fields["field"] == "embedder"
    assert "none, auto, local, openai:<model>" in refused.value.message


# -- through the gateway --------------------------------------------------------------------------


@pytest.fixture
def server() -> Iterator[ProviderServer]:
    with ProviderServer() as running:
        yield running


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "postgres":
        url = str(request.getfixturevalue("pg_url"))
    else:
        url = f"sqlite:///{tmp_path}/e.db"
    s = open_store(url, Settings(database_url=url, sqlite_synchronous="OFF"))
    await s.migrate()
    yield s
    await s.close()


def make_gateway(
    store: Store, base_url: str, scripted: ScriptedModel | None = None, **settings: object
) -> Gateway:
    fields: dict[str, object] = {"llm_timeout_seconds": 5, **settings}
    base = Settings(
        openai_base_url=base_url,
        openai_api_key="sk-test",  # type: ignore[arg-type]
        **fields,  # type: ignore[arg-type]
    )
    return Gateway(
        store=store,
        router=Router({}, base),
        models=ModelRegistry(base, {"scripted:s": scripted} if scripted else {}),
        pricing=Pricing(),
        settings=base,
        tenant_budgets={"poor": TenantBudget(daily_usd=0.000001)},
    )


def table_nanos(input_tokens: int) -> int:
    """What genai-prices itself says the request costs, in nano-USD rounded up."""
    usage = genai_prices.Usage(input_tokens=input_tokens, output_tokens=0)
    price = genai_prices.calc_price(usage, MODEL, provider_id="openai").total_price
    return math.ceil(price * NANOS_PER_USD)


async def test_embeddings_are_priced_budgeted_and_in_the_ledger(
    store: Store, server: ProviderServer
) -> None:
    gw = make_gateway(store, server.openai_base_url)
    texts = ["an invoice from ACME, total 250 EUR", "a receipt for a train ticket"]
    vectors = await GatewayEmbedder(gw, REF).embed(texts, EmbedScope("acme", "j1", "s", 2))
    await gw.close()
    assert vectors.shape == (2, 1536) and vectors.dtype == np.float32
    assert np.allclose(vectors, [fake_vector(t, 1536) for t in texts], atol=1e-6)
    [request] = server.requests
    assert (request.path, request.model, request.inputs) == (EMBEDDINGS_PATH, MODEL, texts)
    [row] = await store.llm_call_list("j1")
    assert (row.purpose, row.outcome, row.provider, row.model, row.tier) == (
        "embedding",
        "ok",
        "openai",
        MODEL,
        None,
    )
    assert (row.tenant_id, row.step_key, row.attempt) == ("acme", "s", 2)
    assert row.input_tokens == request.input_tokens() > 0 and row.output_tokens == 0
    assert row.cost_nanos == table_nanos(row.input_tokens) > 0 and row.priced
    budgets = await store.budget_list(keys=row.budget_keys)
    assert [b.scope for b in budgets] == ["job", "tenant_day", "tenant_month"]
    assert all((b.reserved_nanos, b.spent_nanos) == (0, row.cost_nanos) for b in budgets)


async def test_outside_a_job_the_default_tenant_pays_without_a_job_budget(
    store: Store, server: ProviderServer
) -> None:
    gw = make_gateway(store, server.openai_base_url, default_tenant="acme")
    await GatewayEmbedder(gw, REF).embed(["a document"])
    await gw.close()
    [row] = await store.llm_call_list("")
    assert (row.tenant_id, row.job_id, row.purpose) == ("acme", "", "embedding")
    assert all(key.startswith("tenant:acme:") for key in row.budget_keys)
    assert len(row.budget_keys) == 2
    assert {b.scope for b in await store.budget_list(tenant_id="acme")} == {
        "tenant_day",
        "tenant_month",
    }


async def test_batches_are_requests_of_their_own_and_dimensions_are_asked(
    store: Store, server: ProviderServer
) -> None:
    gw = make_gateway(store, server.openai_base_url)
    embedder = GatewayEmbedder(gw, REF, dimensions=256, batch_size=2)
    texts = [f"text number {i}" for i in range(5)]
    vectors = await embedder.embed(texts, EmbedScope("acme", "j1"))
    empty = await embedder.embed([], EmbedScope("acme", "j1"))
    await gw.close()
    assert vectors.shape == (5, 256) and empty.shape == (0, 256)
    assert np.allclose(vectors, [fake_vector(t, 256) for t in texts], atol=1e-6)
    assert [r.inputs for r in server.requests] == [texts[0:2], texts[2:4], texts[4:]]
    assert all((r.body or {}).get("dimensions") == 256 for r in server.requests)
    rows = await store.llm_call_list("j1")
    assert [r.input_tokens for r in rows] == [r.input_tokens() for r in server.requests]


async def test_a_budget_that_cannot_cover_the_call_refuses_before_any_request(
    store: Store, server: ProviderServer
) -> None:
    gw = make_gateway(store, server.openai_base_url)
    with pytest.raises(BudgetExceeded) as refused:
        await GatewayEmbedder(gw, REF).embed(["x" * 600], EmbedScope("poor", "j1"))
    await gw.close()
    assert server.count() == 0
    assert refused.value.budget.startswith("tenant:poor:day:")
    [row] = await store.llm_call_list("j1")
    assert (row.purpose, row.outcome, row.error_class, row.cost_nanos) == (
        "embedding",
        "refused",
        "budget",
        0,
    )


@pytest.mark.parametrize(
    ("fail", "code", "retry_after"),
    [(Fail(429, retry_after=3), "http_429", 3.0), (Fail(500), "http_500", None)],
)
async def test_rate_limits_and_server_errors_are_transient_like_chat(
    store: Store, server: ProviderServer, fail: Fail, code: str, retry_after: float | None
) -> None:
    server.push(fail)
    gw = make_gateway(store, server.openai_base_url)
    with pytest.raises(ProviderError) as failed:
        await GatewayEmbedder(gw, REF).embed(["a text"], EmbedScope("acme", "j1"))
    await gw.close()
    assert failed.value.error_class is ErrorClass.TRANSIENT
    assert (failed.value.code, failed.value.retry_after) == (code, retry_after)
    assert server.count() == 1
    [row] = await store.llm_call_list("j1")
    assert (row.outcome, row.error_class, row.cost_nanos) == ("error", "transient", 0)
    [day] = [b for b in await store.budget_list(tenant_id="acme") if b.scope == "tenant_day"]
    assert (day.reserved_nanos, day.spent_nanos) == (0, 0)


async def test_a_401_makes_exactly_one_request(store: Store, server: ProviderServer) -> None:
    server.push(Fail(401, message="bad key"))
    gw = make_gateway(store, server.openai_base_url)
    with pytest.raises(ProviderError) as failed:
        await GatewayEmbedder(gw, REF).embed(["a text"], EmbedScope("acme", "j1"))
    await gw.close()
    assert failed.value.error_class is ErrorClass.AUTHORIZATION
    assert server.count() == 1


async def test_a_hanging_provider_times_out_as_transient(
    store: Store, server: ProviderServer
) -> None:
    server.push(Hang(10))
    gw = make_gateway(store, server.openai_base_url, llm_timeout_seconds=0.3)
    with pytest.raises(ProviderError) as failed:
        await GatewayEmbedder(gw, REF).embed(["a text"], EmbedScope("acme", "j1"))
    await gw.close()
    assert (failed.value.error_class, failed.value.code) == (ErrorClass.TRANSIENT, "timeout")


async def test_an_unreadable_answer_is_malformed_and_settled_as_an_error(
    store: Store, server: ProviderServer
) -> None:
    server.push(Malformed())
    gw = make_gateway(store, server.openai_base_url)
    with pytest.raises(ProviderError) as failed:
        await GatewayEmbedder(gw, REF).embed(["a text"], EmbedScope("acme", "j1"))
    await gw.close()
    assert (failed.value.error_class, failed.value.code) == (
        ErrorClass.TRANSIENT,
        "malformed_response",
    )
    [row] = await store.llm_call_list("j1")
    assert (row.outcome, row.cost_nanos) == ("error", 0)


async def test_a_model_that_cannot_embed_is_a_configuration_error(
    store: Store, server: ProviderServer
) -> None:
    gw = make_gateway(store, server.openai_base_url, scripted=ScriptedModel("s"))
    with pytest.raises(ConfigurationError) as wrong:
        await GatewayEmbedder(gw, "scripted:s", dimensions=8).embed(["a text"])
    await gw.close()
    assert wrong.value.fields["field"] == "embedder"
    assert server.count() == 0
