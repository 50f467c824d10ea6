"""LLM steps in the executor's hands: error classes to decisions, the budget fallback to a
cheaper tier, consensus, working memory, and the evaluator's severities. A real SQLite store,
scripted models."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from stalwart.domain.failures import Outcome, decide
from stalwart.domain.plans import Check, Judge, LlmSpec
from stalwart.domain.records import Claim
from stalwart.domain.retry import RetryPolicy
from stalwart.engine.evaluator import Evaluator
from stalwart.engine.llm_steps import LlmStepRunner, normalized
from stalwart.engine.memory import WorkingMemory
from stalwart.errors import ErrorClass
from stalwart.llm.gateway import Gateway, TenantBudget
from stalwart.llm.pricing import ModelPrice, Pricing
from stalwart.llm.routing import ModelRegistry, Router
from stalwart.llm.scripted import ScriptedModel
from stalwart.llm.types import ProviderError
from stalwart.planning.workflows import Budget, Workflow
from stalwart.settings import Settings
from stalwart.store import Store, open_store


class Label(BaseModel):
    label: str
    confidence: float = 1.0


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = open_store(f"sqlite:///{tmp_path}/l.db", Settings(sqlite_synchronous="OFF"))
    await s.migrate()
    yield s
    await s.close()


def runner(
    store: Store,
    models: dict[str, ScriptedModel],
    routes: dict[str, list[str]],
    *,
    prices: dict[str, ModelPrice] | None = None,
    budgets: dict[str, TenantBudget] | None = None,
    **settings: Any,
) -> LlmStepRunner:
    base = Settings(**settings)
    gateway = Gateway(
        store=store,
        router=Router(routes, base),
        models=ModelRegistry(base, dict(models)),
        pricing=Pricing(prices or {}),
        settings=base,
        tenant_budgets=budgets,
    )
    flow = Workflow("wf", BaseModel, (), budget=Budget(on_exceeded="cheaper_tier"))
    return LlmStepRunner(gateway, {"Label": Label}, {"wf": flow}, base)


def claim(llm: dict[str, Any], *, outputs: dict[str, Any] | None = None, **spec: Any) -> Claim:
    return Claim(
        step_id=1,
        job_id="j1",
        tenant_id="acme",
        workflow="wf",
        plan_version=1,
        key="think",
        kind="llm",
        tool=None,
        attempt=1,
        lease_token=1,
        lease_expires=0,
        spec={"llm": LlmSpec.model_validate(llm).model_dump(mode="json"), **spec},
        job_input={"text": "hello"},
        outputs=outputs or {},
        tool_schema_hash=None,
        reconcile_pending=False,
        deadline=None,
        max_replans=1,
    )


def context(c: Claim) -> dict[str, Any]:
    return {"input": c.job_input, "steps": {k: {"output": v} for k, v in c.outputs.items()}}


@pytest.mark.parametrize(
    ("error", "outcome"),
    [
        (ProviderError("slow down", status=429, code="http_429", retry_after=2), Outcome.RETRY),
        (ProviderError("down", status=503, code="http_503"), Outcome.RETRY),
        (ProviderError("key", error_class="authorization", status=401), Outcome.ESCALATE),
        (ProviderError("key", error_class="authorization", status=403), Outcome.ESCALATE),
        (ProviderError("bad", error_class="non_retriable", status=400), Outcome.ESCALATE),
        ("not json at all", Outcome.REPLAN),
    ],
)
async def test_each_provider_failure_becomes_the_right_decision(
    store: Store, error: Any, outcome: Outcome
) -> None:
    model = ScriptedModel("m", default=error)
    run = runner(store, {"scripted:m": model}, {"small": ["scripted:m"]}, llm_max_reasks=1)
    c = claim({"prompt": "classify ${input.text}", "output": "Label", "tier": "small"})
    result = await run.run(c, context(c))
    assert result.error is not None and result.output is None
    decision = decide(
        result.error, attempt=1, policy=RetryPolicy(), critical=True, replans=0, max_replans=1
    )
    assert decision.outcome is outcome
    if isinstance(error, str):  # invalid answers: asked 1 + max_reasks times, then semantic
        assert len(model.requests) == 2 and result.error.error_class == ErrorClass.SEMANTIC
    else:
        assert len(model.requests) == 1


async def test_a_refused_call_falls_back_to_a_cheaper_tier(store: Store) -> None:
    big = ScriptedModel("big", default={"label": "big"})
    small = ScriptedModel("small", default={"label": "small"})
    run = runner(
        store,
        {"scripted:big": big, "scripted:small": small},
        {"large": ["scripted:big"], "small": ["scripted:small"]},
        prices={"scripted:big": ModelPrice(input_per_mtok=1e6, output_per_mtok=1e6)},
        budgets={"acme": TenantBudget(daily_usd=1.0)},
    )
    c = claim(
        {"prompt": "think hard", "output": "Label", "tier": "large"}, on_budget="cheaper_tier"
    )
    result = await run.run(c, context(c))
    assert result.output == {"label": "small", "confidence": 1.0}
    assert big.requests == []  # refused before the provider
    rows = await run.gateway.store.llm_call_list("j1")  # type: ignore[attr-defined]
    assert [(r.model, r.outcome) for r in rows] == [("big", "refused"), ("small", "ok")]


async def test_consensus_takes_the_majority_or_escalates(store: Store) -> None:
    models = {
        "scripted:a": ScriptedModel("a", default={"label": "Spam"}),
        "scripted:b": ScriptedModel("b", default={"label": " spam"}),
        "scripted:c": ScriptedModel("c", default={"label": "ham"}),
        "scripted:d": ScriptedModel("d", default={"label": "eggs"}),
    }
    run = runner(store, models, {"small": list(models)})
    agree = claim({"prompt": "x", "output": "Label", "tier": "small", "consensus": 3})
    result = await run.run(agree, context(agree))
    assert result.output is not None and normalized(result.output["label"]) == '"spam"'
    split = claim(
        {
            "prompt": "x",
            "output": "Label",
            "consensus": 3,
            "consensus_models": ["scripted:a", "scripted:c", "scripted:d"],
        }
    )
    result = await run.run(split, context(split))
    assert result.error is not None and result.error.code == "consensus_disagreement"
    assert result.error.error_class == ErrorClass.CRITICAL
    assert set(result.error.details["answers"]) == {"scripted:a", "scripted:c", "scripted:d"}


async def test_a_long_context_is_summarized_and_utilization_recorded(store: Store) -> None:
    model = ScriptedModel("m", default={"label": "done"})
    model.when(lambda request: request.meta.get("purpose") == "summarization", "short summary")
    run = runner(store, {"scripted:m": model}, {"small": ["scripted:m"]})
    outputs = {f"s{n}": {"text": "word " * 400} for n in range(4)}
    c = claim(
        {"prompt": "decide", "output": "Label", "tier": "small", "context_window": 1200},
        outputs=outputs,
    )
    result = await run.run(c, context(c))
    assert result.output == {"label": "done", "confidence": 1.0}
    purposes = [r.meta["purpose"] for r in model.requests]
    assert purposes == ["summarization", "reasoning"]
    final = model.requests[-1].messages[-1].content
    assert "short summary" in final and "## summary of input, steps.s0.output" in final
    rows = await run.gateway.store.llm_call_list("j1")  # type: ignore[attr-defined]
    assert all(r.context_limit == 1200 and r.context_tokens for r in rows)
    assert rows[-1].context_utilization is not None and rows[-1].context_utilization <= 0.75


def test_working_memory_leaves_a_small_context_alone() -> None:
    memory = WorkingMemory.for_step(
        {"a": 1}, {"x": {"b": 2}}, mode="dependencies", window=1000, ratio=0.75
    )
    assert [i.label for i in memory.items] == ["input", "steps.x.output"]
    assert memory.tokens < 100
    assert WorkingMemory.for_step({}, {}, mode="none", window=1000, ratio=0.75).items == []


async def test_checks_by_severity_and_the_judge(store: Store) -> None:
    judge_model = ScriptedModel("j")
    judge_model.when(r"polite", {"passed": False, "reason": "it is rude"})
    judge_model.when(r"short", {"passed": True, "reason": "fine"})
    run = runner(store, {"scripted:j": judge_model}, {"small": ["scripted:j"]})
    evaluator = Evaluator(run.gateway)
    c = claim({"prompt": "x"})

    def scope(purpose: str) -> Any:
        return run.scope(c, purpose)

    output = {"confidence": 0.6, "missing_fields": ["due_date"]}
    soft = [Check(expect="missing_fields == []", on_fail="soft")]
    verdict = await evaluator.evaluate("think", output, {}, soft, None, scope)
    assert verdict.error is None and "missing_fields" in verdict.warnings[0]
    hard = [Check(expect="confidence >= 0.85")]
    verdict = await evaluator.evaluate("think", output, {}, hard, None, scope)
    assert verdict.error is not None and verdict.error.error_class == ErrorClass.SEMANTIC
    assert "output.confidence is 0.6" in verdict.error.message
    critical = [Check(expect={"output.confidence": {"gt": 0.9}}, on_fail="critical")]
    verdict = await evaluator.evaluate("think", output, {}, critical, None, scope)
    assert verdict.error is not None and verdict.error.error_class == ErrorClass.CRITICAL
    rude = Judge(question="Is it polite?")
    verdict = await evaluator.evaluate("think", output, {}, [], rude, scope)
    assert verdict.error is not None and "it is rude" in verdict.error.message
    fine = Judge(question="Is it short?", on_fail="soft")
    assert (await evaluator.evaluate("think", output, {}, [], fine, scope)).error is None
    rows = await run.gateway.store.llm_call_list("j1")  # type: ignore[attr-defined]
    assert [r.purpose for r in rows] == ["evaluation", "evaluation"]
