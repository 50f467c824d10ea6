"""Plan cost estimates, and fitting plans into the job's budget."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from stalwart.domain.agents import DEFAULT_INSTRUCTIONS
from stalwart.domain.plans import Plan, Template
from stalwart.errors import PlanValidationError
from stalwart.llm.pricing import ModelPrice, Pricing, usd
from stalwart.llm.routing import Router
from stalwart.llm.tokens import estimate_messages, estimate_tokens
from stalwart.llm.types import Message
from stalwart.llm.types import ToolSpec as OfferedTool
from stalwart.planning.costs import (
    JUDGE_INPUT_TOKENS,
    REF_TOKENS,
    TURN_RESULT_TOKENS,
    CostEstimator,
)
from stalwart.planning.planner import TemplatePlanner
from stalwart.planning.workflows import Budget, Workflow
from stalwart.settings import Settings
from stalwart.tools.context import ToolContext
from stalwart.tools.registry import ToolRegistry

# $1 / $2 per million tokens: 1,000 nano-USD per input token, 2,000 per output token.
SMALL_IN, SMALL_OUT = 1_000, 2_000
# $10 / $30 per million tokens.
BIG_IN, BIG_OUT = 10_000, 30_000


class Query(BaseModel):
    q: str


class Found(BaseModel):
    text: str


async def lookup(args: Query, ctx: ToolContext) -> Found:
    """Look something up (costs a cent)."""
    return Found(text=args.q)


async def enrich(args: Query, ctx: ToolContext) -> Found:
    """Enrich a record (costs five cents)."""
    return Found(text=args.q)


async def notify(args: Query, ctx: ToolContext) -> Found:
    """Tell someone (free)."""
    return Found(text=args.q)


class Input(BaseModel):
    q: str


INPUT = {"q": "acme"}


@pytest.fixture
def tools() -> ToolRegistry:
    registry = ToolRegistry()
    registry.register(lookup, timeout=5, idempotent=True, cost_usd=0.01)
    registry.register(enrich, timeout=5, idempotent=True, cost_usd=0.05)
    registry.register(notify, timeout=5, idempotent=True)
    return registry


@pytest.fixture
def estimator() -> CostEstimator:
    router = Router(
        {"small": ["scripted:m"], "medium": ["scripted:m"], "large": ["scripted:big"]},
        Settings(),
    )
    pricing = Pricing(
        {
            "scripted:m": ModelPrice(input_per_mtok=1.0, output_per_mtok=2.0),
            "scripted:big": ModelPrice(input_per_mtok=10.0, output_per_mtok=30.0),
        }
    )
    return CostEstimator(router, pricing)


def workflow(*templates: Template, max_usd: float | None = None) -> Workflow:
    return Workflow(
        name="costs",
        input_model=Input,
        templates=templates,
        budget=Budget(max_usd=max_usd),
    )


def make_plan(tools: ToolRegistry, *steps: dict[str, Any]) -> Plan:
    template = Template.model_validate({"name": "t", "steps": list(steps)})
    return TemplatePlanner(tools).bind(workflow(template), template, INPUT)


LOOKUP = {"id": "look", "tool": "lookup", "args": {"q": "${input.q}"}}


def step(sid: str, tool: str, *, after: str = "look", critical: bool = True) -> dict[str, Any]:
    return {
        "id": sid,
        "tool": tool,
        "args": {"q": f"${{steps.{after}.output.text}}"},
        "critical": critical,
    }


# -- estimates -------------------------------------------------------------------------------------


def test_tool_steps_cost_their_declared_price(
    tools: ToolRegistry, estimator: CostEstimator
) -> None:
    plan = make_plan(
        tools,
        LOOKUP,
        step("enrich", "enrich"),
        step("notify", "notify"),
        {**step("cheap", "enrich"), "cost_usd": 0.001},  # the step's own figure wins
    )
    cost = estimator.estimate(plan)
    assert cost.steps == {"look": 0.01, "enrich": 0.05, "notify": 0.0, "cheap": 0.001}
    assert cost.total_usd == pytest.approx(0.061)
    assert cost.unpriced == []


def llm_step(sid: str = "summarize", **fields: Any) -> dict[str, Any]:
    return {
        "id": sid,
        "kind": "llm",
        "prompt": "Summarize ${steps.look.output.text} for ${input.q}",
        "purpose": "summarization",  # small tier
        "max_tokens": 400,
        **fields,
    }


def summarize_nanos(input_price: int = SMALL_IN, output_price: int = SMALL_OUT) -> int:
    prompt = "Summarize ${steps.look.output.text} for acme"  # input.q bound, the step ref left
    tokens = estimate_tokens(prompt) + REF_TOKENS
    return tokens * input_price + 400 * output_price


def test_an_llm_step_costs_one_call_of_its_tier_at_list_price(
    tools: ToolRegistry, estimator: CostEstimator
) -> None:
    plan = make_plan(tools, LOOKUP, llm_step())
    cost = estimator.estimate(plan)
    assert cost.steps["summarize"] == usd(summarize_nanos())
    assert cost.total_usd == pytest.approx(0.01 + usd(summarize_nanos()))
    big = make_plan(tools, LOOKUP, llm_step(tier="large"))
    assert estimator.estimate(big).steps["summarize"] == usd(summarize_nanos(BIG_IN, BIG_OUT))


def test_the_system_text_counts_too(tools: ToolRegistry, estimator: CostEstimator) -> None:
    system = "You are terse. Context: ${steps.look.output.text}"
    plan = make_plan(tools, LOOKUP, llm_step(system=system))
    extra = (
        estimate_tokens("Summarize ${steps.look.output.text} for acme" + system) + 2 * REF_TOKENS
    ) * SMALL_IN + 400 * SMALL_OUT
    assert estimator.estimate(plan).steps["summarize"] == usd(extra)


def test_consensus_multiplies(tools: ToolRegistry, estimator: CostEstimator) -> None:
    plan = make_plan(tools, LOOKUP, llm_step(consensus=3))
    assert estimator.estimate(plan).steps["summarize"] == usd(3 * summarize_nanos())


def test_consensus_models_are_priced_each(tools: ToolRegistry, estimator: CostEstimator) -> None:
    plan = make_plan(
        tools, LOOKUP, llm_step(consensus=2, consensus_models=["scripted:m", "scripted:big"])
    )
    expected = summarize_nanos() + summarize_nanos(BIG_IN, BIG_OUT)
    assert estimator.estimate(plan).steps["summarize"] == usd(expected)


def test_a_judge_adds_one_call_of_its_tier(tools: ToolRegistry, estimator: CostEstimator) -> None:
    judge = {"question": "Is it faithful?", "tier": "large", "max_tokens": 100}
    plan = make_plan(tools, LOOKUP, llm_step(judge=judge))
    judge_nanos = JUDGE_INPUT_TOKENS * BIG_IN + 100 * BIG_OUT
    assert estimator.estimate(plan).steps["summarize"] == usd(summarize_nanos() + judge_nanos)


def test_human_steps_are_free(tools: ToolRegistry, estimator: CostEstimator) -> None:
    plan = make_plan(tools, LOOKUP, {"id": "ok", "kind": "human", "depends_on": ["look"]})
    assert estimator.estimate(plan).steps["ok"] == 0.0


def test_models_without_a_price_are_listed_as_unpriced(tools: ToolRegistry) -> None:
    router = Router({"small": ["nosuchprovider:nosuchmodel-xyz"]}, Settings())
    estimator = CostEstimator(router, Pricing())
    plan = make_plan(
        tools,
        LOOKUP,
        llm_step("a"),  # small: a model nobody prices
        llm_step("b", tier="large"),  # no route at all
        llm_step("c", consensus=2, consensus_models=["scripted:free", "scripted:free2"]),
    )
    cost = estimator.estimate(plan)
    assert cost.unpriced == ["a", "b"]
    assert cost.steps == {"look": 0.01, "a": 0.0, "b": 0.0, "c": 0.0}  # scripted is free
    assert estimator.annotate(plan).notes == {"estimated_usd": 0.01, "unpriced_steps": ["a", "b"]}


# -- fitting into the budget -----------------------------------------------------------------------


def test_a_plan_that_fits_is_kept_and_annotated(
    tools: ToolRegistry, estimator: CostEstimator
) -> None:
    plan = make_plan(tools, LOOKUP, step("enrich", "enrich", critical=False))
    fitted = estimator.fit(plan, 1.0)
    assert fitted.steps == plan.steps
    assert fitted.notes == {"estimated_usd": pytest.approx(0.06)}
    assert fitted.plan_hash() == plan.plan_hash()


def test_fit_drops_the_most_expensive_non_critical_leaf_first(
    tools: ToolRegistry, estimator: CostEstimator
) -> None:
    plan = make_plan(
        tools,
        LOOKUP,
        step("small", "lookup", critical=False),
        step("big", "enrich", critical=False),
        step("must", "enrich"),
    )  # 0.01 + 0.01 + 0.05 + 0.05
    fitted = estimator.fit(plan, 0.07)
    assert [s.id for s in fitted.steps] == ["look", "small", "must"]
    assert fitted.notes["dropped_for_budget"] == ["big"]
    assert fitted.notes["estimated_usd"] == pytest.approx(0.07)
    tighter = estimator.fit(plan, 0.065)
    assert [s.id for s in tighter.steps] == ["look", "must"]
    assert tighter.notes["dropped_for_budget"] == ["big", "small"]


def test_fit_frees_steps_by_dropping_their_dependents(
    tools: ToolRegistry, estimator: CostEstimator
) -> None:
    plan = make_plan(
        tools,
        LOOKUP,
        step("enrich", "enrich", critical=False),
        step("tell", "notify", after="enrich", critical=False),  # free, but needs enrich
        step("log", "notify", critical=False),  # free and independent: stays
    )
    fitted = estimator.fit(plan, 0.02)
    assert [s.id for s in fitted.steps] == ["look", "log"]
    assert fitted.notes["dropped_for_budget"] == ["tell", "enrich"]
    assert fitted.notes["estimated_usd"] == pytest.approx(0.01)


def test_fit_never_drops_a_step_a_critical_step_needs(
    tools: ToolRegistry, estimator: CostEstimator
) -> None:
    plan = make_plan(
        tools,
        LOOKUP,
        step("enrich", "enrich", critical=False),
        step("tell", "notify", after="enrich"),  # critical
    )
    with pytest.raises(PlanValidationError) as info:
        estimator.fit(plan, 0.02)
    [problem] = info.value.problems
    assert problem["step"] == ""
    assert "estimated cost $0.06 is over the job's budget $0.02" in problem["problem"]
    assert "no step could be dropped" in problem["problem"]


def test_fit_rejects_when_critical_steps_alone_are_over_budget(
    tools: ToolRegistry, estimator: CostEstimator
) -> None:
    plan = make_plan(tools, LOOKUP, step("must", "enrich"), step("extra", "lookup", critical=False))
    with pytest.raises(PlanValidationError) as info:
        estimator.fit(plan, 0.03)
    text = info.value.problems[0]["problem"]
    assert "estimated cost $0.06 is over the job's budget $0.03" in text
    assert "even without its non-critical steps" in text
    assert "dropped: extra" in text
    assert "must $0.05" in text


# -- the template planner ------------------------------------------------------------------------


def test_the_template_planner_fits_plans_into_the_workflow_budget(
    tools: ToolRegistry, estimator: CostEstimator
) -> None:
    template = Template.model_validate(
        {"name": "t", "steps": [LOOKUP, step("enrich", "enrich", critical=False)]}
    )
    planner = TemplatePlanner(tools, costs=estimator)
    plan = planner.plan(workflow(template, max_usd=0.03), INPUT)
    assert [s.id for s in plan.steps] == ["look"]
    assert plan.notes == {"estimated_usd": 0.01, "dropped_for_budget": ["enrich"]}
    unlimited = planner.plan(workflow(template), INPUT)
    assert [s.id for s in unlimited.steps] == ["look", "enrich"]
    assert unlimited.notes == {"estimated_usd": pytest.approx(0.06)}
    with pytest.raises(PlanValidationError):
        planner.plan(workflow(template, max_usd=0.001), INPUT)


def test_without_an_estimator_nothing_changes(tools: ToolRegistry) -> None:
    template = Template.model_validate(
        {"name": "t", "steps": [LOOKUP, step("enrich", "enrich", critical=False)]}
    )
    plan = TemplatePlanner(tools).plan(workflow(template, max_usd=0.001), INPUT)
    assert len(plan.steps) == 2
    assert plan.notes == {}


# -- agent steps -------------------------------------------------------------------------------


def agent_step(sid: str = "research", **fields: Any) -> dict[str, Any]:
    return {
        "id": sid,
        "kind": "agent",
        "prompt": "Research ${input.q} using ${steps.look.output.text}",
        "tools": ["lookup", "enrich", "notify"],
        "purpose": "summarization",  # small tier
        "max_turns": 3,
        "max_tokens": 200,
        "max_tool_calls": 4,
        **fields,
    }


def research_nanos(
    tools: ToolRegistry,
    *,
    turns: int = 3,
    calls: int = 4,
    input_price: int = SMALL_IN,
    output_price: int = SMALL_OUT,
) -> int:
    """The worst case written out: turn k reads the first request plus, for each earlier turn,
    its answer (200) and its calls' results; the dearest tool (enrich, 5 cents) every call."""
    prompt = "Research acme using ${steps.look.output.text}"  # input.q bound
    offered = [
        OfferedTool(spec.name, spec.description, spec.args_model.model_json_schema())
        for name in ("lookup", "enrich", "notify")
        if (spec := tools.get(name)) is not None
    ]
    request = [Message("system", DEFAULT_INSTRUCTIONS), Message("user", prompt)]
    first = estimate_messages(request, tools=offered) + REF_TOKENS
    model = sum(
        (first + k * (200 + TURN_RESULT_TOKENS)) * input_price + 200 * output_price
        for k in range(turns)
    )
    return model + calls * 50_000_000


@pytest.fixture
def agent_estimator(tools: ToolRegistry) -> CostEstimator:
    router = Router({"small": ["scripted:m"], "large": ["scripted:big"]}, Settings())
    pricing = Pricing(
        {
            "scripted:m": ModelPrice(input_per_mtok=1.0, output_per_mtok=2.0),
            "scripted:big": ModelPrice(input_per_mtok=10.0, output_per_mtok=30.0),
        }
    )
    return CostEstimator(router, pricing, tools=tools)


def test_an_agent_step_costs_its_worst_case_of_max_turns(
    tools: ToolRegistry, agent_estimator: CostEstimator
) -> None:
    plan = make_plan(tools, LOOKUP, agent_step())
    cost = agent_estimator.estimate(plan)
    expected = research_nanos(tools)
    assert cost.steps["research"] == usd(expected)
    assert cost.total_usd == pytest.approx(0.01 + usd(expected))
    assert cost.unpriced == []
    # The input grows with every turn: four turns cost more than 4/3 of three.
    four = agent_estimator.estimate(make_plan(tools, LOOKUP, agent_step(max_turns=4)))
    assert four.steps["research"] == usd(research_nanos(tools, turns=4))
    assert (research_nanos(tools, turns=4) - 4 * 50_000_000) > ((expected - 4 * 50_000_000) * 4 / 3)
    big = make_plan(tools, LOOKUP, agent_step(tier="large"))
    assert agent_estimator.estimate(big).steps["research"] == usd(
        research_nanos(tools, input_price=BIG_IN, output_price=BIG_OUT)
    )


def test_without_parallel_calls_an_agent_makes_one_call_a_turn(
    tools: ToolRegistry, agent_estimator: CostEstimator
) -> None:
    plan = make_plan(tools, LOOKUP, agent_step(parallel_tool_calls=False))
    assert agent_estimator.estimate(plan).steps["research"] == usd(research_nanos(tools, calls=3))
    plan = make_plan(tools, LOOKUP, agent_step(parallel_tool_calls=False, max_tool_calls=2))
    assert agent_estimator.estimate(plan).steps["research"] == usd(research_nanos(tools, calls=2))


def test_an_agent_step_on_an_unpriced_tier_is_listed(tools: ToolRegistry) -> None:
    estimator = CostEstimator(Router({}, Settings()), Pricing(), tools=tools)
    plan = make_plan(tools, LOOKUP, agent_step())
    cost = estimator.estimate(plan)
    assert cost.unpriced == ["research"]
    assert cost.steps["research"] == usd(4 * 50_000_000)  # its calls are still priced


def test_fit_drops_a_non_critical_agent_step_like_an_llm_step(
    tools: ToolRegistry, agent_estimator: CostEstimator
) -> None:
    plan = make_plan(tools, LOOKUP, agent_step(critical=False), step("enrich", "enrich"))
    fitted = agent_estimator.fit(plan, 0.1)
    assert [s.id for s in fitted.steps] == ["look", "enrich"]
    assert fitted.notes == {
        "estimated_usd": pytest.approx(0.06),
        "dropped_for_budget": ["research"],
    }
    kept = agent_estimator.fit(plan, 1.0)
    assert [s.id for s in kept.steps] == ["look", "research", "enrich"]
    assert kept.notes["estimated_usd"] == pytest.approx(0.06 + usd(research_nanos(tools)))
    critical = make_plan(tools, LOOKUP, agent_step())
    with pytest.raises(PlanValidationError) as info:
        agent_estimator.fit(critical, 0.1)
    assert "research $0.2" in info.value.problems[0]["problem"]
