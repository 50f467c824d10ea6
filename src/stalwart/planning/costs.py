"""A plan's estimated cost, checked against the job's budget before any step runs.

Tool steps cost their declared `cost_usd`. An llm step costs one call of the first model of its
tier at list price, with `max_tokens` of output and an input estimated from its prompt (each
`${...}` reference still to be filled in at run time counts `REF_TOKENS`); consensus multiplies
the calls and a judge adds one. Human steps cost nothing. A model with no known price counts as
0 and is listed in `unpriced`, so the caller can tell "free" from "unknown".

An agent step costs its worst case, which is what budgets reserve: `max_turns` model turns, each
with `max_tokens` of output, and as many tool calls as it may make. A turn's input is the first
request (instructions, prompt and the JSON of the tools offered, as the gateway counts them; a
reference counts `REF_TOKENS`) plus, for every earlier turn, what that turn added to the
transcript: its answer (at most `max_tokens`) and the results of its calls (`TURN_RESULT_TOKENS`,
the size of a reference). So turn k (from 0) reads `first + k * (max_tokens +
TURN_RESULT_TOKENS)` tokens, and the turns together grow as the square of `max_turns`
(`context_window` is not taken into account: a summarized transcript should read less). The
calls cost the dearest offered tool's `cost_usd` each (a model may call the dearest every time),
for `max_tool_calls` calls, or one per turn (`max_turns`) when parallel calls are off; a tool
without a `cost_usd` counts 0 and retries are not counted, as for tool steps.

When the estimate is over the budget, `CostEstimator.fit` simplifies the plan by dropping
non-critical steps that nothing depends on, most expensive first, and rejects it when even its
critical steps cost too much.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from stalwart.domain.agents import DEFAULT_INSTRUCTIONS, AgentSpec
from stalwart.domain.budgets import nanos, usd
from stalwart.domain.plans import LlmSpec, Plan, PlanStep
from stalwart.domain.refs import find_refs, ref_step
from stalwart.errors import PlanValidationError
from stalwart.llm.pricing import Pricing
from stalwart.llm.routing import Router, split_ref
from stalwart.llm.tokens import estimate_messages, estimate_tokens
from stalwart.llm.types import Message
from stalwart.llm.types import ToolSpec as OfferedTool
from stalwart.tools.registry import ToolRegistry

REF_TOKENS = 500
"""Input tokens counted for each `${...}` reference in an llm step's prompt or system text."""
JUDGE_INPUT_TOKENS = 1_000
"""Input tokens counted for a judge's call (the question and the output it looks at)."""
TURN_RESULT_TOKENS = REF_TOKENS
"""Input tokens counted, in every later turn of an agent step, for the results of one turn's
tool calls."""


@dataclass(slots=True)
class PlanCost:
    """A plan's estimated cost in USD: the total, per step id, and the llm steps whose model
    has no known price (counted as 0)."""

    total_usd: float
    steps: dict[str, float] = field(default_factory=dict)
    unpriced: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _StepCost:
    nanos: int = 0
    priced: bool = True

    def add(self, amount: int | None) -> None:
        if amount is None:
            self.priced = False
        else:
            self.nanos += amount


class CostEstimator:
    """Estimates plans' costs at list price and fits plans into budgets."""

    def __init__(
        self, router: Router, pricing: Pricing, *, tools: ToolRegistry | None = None
    ) -> None:
        self.router = router
        self.pricing = pricing
        # The tools agent steps are offered: their schemas are input and their calls cost their
        # `cost_usd`. None: agent steps count neither.
        self.tools = tools

    # -- estimates ----------------------------------------------------------------------------

    def estimate(self, plan: Plan) -> PlanCost:
        """The plan's estimated cost (see the module doc)."""
        costs = {step.id: self._step_cost(step) for step in plan.steps}
        return PlanCost(
            total_usd=usd(sum(c.nanos for c in costs.values())),
            steps={sid: usd(c.nanos) for sid, c in costs.items()},
            unpriced=[sid for sid, c in costs.items() if not c.priced],
        )

    def step_nanos(self, step: PlanStep) -> int:
        """One step's estimated cost in nano-USD (unpriced models count 0)."""
        return self._step_cost(step).nanos

    def _step_cost(self, step: PlanStep) -> _StepCost:
        cost = _StepCost()
        if step.kind == "tool":
            cost.add(nanos(step.cost_usd or 0.0))
        elif step.kind == "llm" and step.llm is not None:
            self._add_llm(cost, step.llm)
        elif step.kind == "agent" and step.agent is not None:
            self._add_agent(cost, step.agent)
        if step.judge is not None:
            cost.add(self._tier_call(step.judge.tier, JUDGE_INPUT_TOKENS, step.judge.max_tokens))
        return cost

    def _add_llm(self, cost: _StepCost, llm: LlmSpec) -> None:
        refs = len(find_refs(llm.prompt)) + len(find_refs(llm.system))
        tokens = estimate_tokens(llm.prompt + llm.system) + REF_TOKENS * refs
        if llm.consensus_models:
            models = llm.consensus_models[: llm.consensus] if llm.consensus else None
            for ref in models or llm.consensus_models:
                cost.add(self._model_call(ref, tokens, llm.max_tokens))
            return
        one = self._tier_call(Router.tier_for(llm.purpose, llm.tier), tokens, llm.max_tokens)
        cost.add(None if one is None else one * (llm.consensus or 1))

    def _add_agent(self, cost: _StepCost, agent: AgentSpec) -> None:
        """The worst case of the loop (see the module doc)."""
        registry = self.tools or ToolRegistry()
        specs = [s for name in agent.tools if (s := registry.get(name)) is not None]
        offered = [
            OfferedTool(s.name, s.description, s.args_model.model_json_schema()) for s in specs
        ]
        instructions = agent.instructions or DEFAULT_INSTRUCTIONS
        messages = [Message("system", instructions), Message("user", agent.prompt)]
        refs = len(find_refs(agent.prompt)) + len(find_refs(agent.instructions))
        first = estimate_messages(messages, tools=offered) + REF_TOKENS * refs
        tier = Router.tier_for(agent.purpose, agent.tier)
        growth = agent.max_tokens + TURN_RESULT_TOKENS
        for turn in range(agent.max_turns):
            cost.add(self._tier_call(tier, first + turn * growth, agent.max_tokens))
        calls = agent.max_tool_calls
        if agent.parallel_tool_calls is False:
            calls = min(calls, agent.max_turns)
        dearest = max((nanos(s.cost_usd or 0.0) for s in specs), default=0)
        cost.add(calls * dearest)

    def _tier_call(self, tier: str, input_tokens: int, output_tokens: int) -> int | None:
        """One call to the first model of `tier`; None when the tier has no route or the model
        no price."""
        if not self.router.has(tier):
            return None
        return self._model_call(self.router.chain(tier)[0], input_tokens, output_tokens)

    def _model_call(self, ref: str, input_tokens: int, output_tokens: int) -> int | None:
        provider, model = split_ref(ref)
        return self.pricing.worst_case_nanos(
            provider, model, input_tokens=input_tokens, max_output_tokens=output_tokens
        )

    # -- budgets ------------------------------------------------------------------------------

    def annotate(self, plan: Plan) -> Plan:
        """The plan with `notes["estimated_usd"]` (and `notes["unpriced_steps"]` when some llm
        or agent step's model has no known price)."""
        return _with_notes(plan, self.estimate(plan), [])

    def fit(self, plan: Plan, max_usd: float) -> Plan:
        """The plan, simplified if needed so that its estimate fits `max_usd`.

        Drops non-critical steps that no remaining step depends on, most expensive first (a
        drop can free the step it depended on), until the estimate fits; then puts back the
        dropped steps that turn out not to be needed. Records `notes["estimated_usd"]` and,
        when steps were dropped, `notes["dropped_for_budget"]`. Raises `PlanValidationError`
        when the plan is over budget even without its droppable steps.
        """
        limit = nanos(max_usd)
        costs = {step.id: self.step_nanos(step) for step in plan.steps}
        kept = [step.id for step in plan.steps]
        dropped: list[str] = []
        while _total(costs, kept) > limit:
            victim = _most_expensive_leaf(plan, kept, costs)
            if victim is None:
                raise _over_budget(plan, costs, kept, dropped, max_usd)
            kept.remove(victim)
            dropped.append(victim)
        dropped = _restore(plan, costs, kept, dropped, limit)
        fitted = _without(plan, set(dropped))
        return _with_notes(fitted, self.estimate(fitted), dropped)


def _total(costs: dict[str, int], kept: list[str]) -> int:
    return sum(costs[sid] for sid in kept)


def _depended_on(plan: Plan, kept: list[str]) -> set[str]:
    live = set(kept)
    return {dep for step in plan.steps if step.id in live for dep in step.depends_on}


def _most_expensive_leaf(plan: Plan, kept: list[str], costs: dict[str, int]) -> str | None:
    """The costliest non-critical step no kept step depends on; ties go to the later step."""
    needed = _depended_on(plan, kept)
    live = set(kept)
    leaves = [s.id for s in plan.steps if s.id in live and not s.critical and s.id not in needed]
    if not leaves:
        return None
    return max(reversed(leaves), key=lambda sid: costs[sid])


def _restore(
    plan: Plan, costs: dict[str, int], kept: list[str], dropped: list[str], limit: int
) -> list[str]:
    """Put back, last dropped first, the dropped steps whose dependencies are all kept and that
    still fit (a free step dropped only to reach its costly dependency stays dropped with it).
    Mutates `kept`; returns the steps that stay dropped."""
    order = {step.id: index for index, step in enumerate(plan.steps)}
    still: list[str] = []
    for sid in reversed(dropped):
        step = plan.step(sid)
        fits = _total(costs, kept) + costs[sid] <= limit
        if fits and all(dep in kept for dep in step.depends_on):
            kept.append(sid)
            kept.sort(key=order.__getitem__)
        else:
            still.append(sid)
    return [sid for sid in dropped if sid in still]


def _without(plan: Plan, dropped: set[str]) -> Plan:
    """The plan without the `dropped` steps, none of which a kept step refers to."""
    if not dropped:
        return plan
    steps = [step for step in plan.steps if step.id not in dropped]
    for step in steps:
        refs = {ref_step(path) for path in find_refs(step.args)}
        if step.llm is not None:
            refs |= {ref_step(p) for p in find_refs(step.llm.prompt) + find_refs(step.llm.system)}
        if step.agent is not None:
            texts = find_refs(step.agent.prompt) + find_refs(step.agent.instructions)
            refs |= {ref_step(p) for p in texts}
        assert not (set(step.depends_on) | refs) & dropped, (
            f"step {step.id} still refers to a step dropped for budget"
        )
    return plan.model_copy(update={"steps": steps})


def _with_notes(plan: Plan, cost: PlanCost, dropped: list[str]) -> Plan:
    notes = {**plan.notes, "estimated_usd": cost.total_usd}
    if dropped:
        notes["dropped_for_budget"] = dropped
    if cost.unpriced:
        notes["unpriced_steps"] = cost.unpriced
    return plan.model_copy(update={"notes": notes})


def _over_budget(
    plan: Plan, costs: dict[str, int], kept: list[str], dropped: list[str], max_usd: float
) -> PlanValidationError:
    ranked = sorted(kept, key=lambda sid: -costs[sid])[:3]
    biggest = ", ".join(f"{sid} {_money(usd(costs[sid]))}" for sid in ranked if costs[sid])
    detail = f"dropped: {', '.join(dropped)}" if dropped else "no step could be dropped"
    if biggest:
        detail += f"; the costliest steps: {biggest}"
    total = _money(usd(_total(costs, kept)))
    return PlanValidationError(
        [
            {
                "step": "",
                "problem": f"estimated cost {total} is over the job's budget "
                f"{_money(max_usd)} even without its non-critical steps ({detail})",
            }
        ]
    )


def _money(value: float) -> str:
    text = f"{value:.6f}".rstrip("0")
    whole, _, cents = text.partition(".")
    return f"${whole}.{cents.ljust(2, '0')}"


__all__ = ["JUDGE_INPUT_TOKENS", "REF_TOKENS", "TURN_RESULT_TOKENS", "CostEstimator", "PlanCost"]
