"""Running `llm` steps: build the prompt and its context, call the gateway, apply the budget
fallback, and for critical steps ask several models and take the majority."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from typing import Any

from pydantic import BaseModel

from stalwart.domain.budgets import CallScope
from stalwart.domain.plans import LlmSpec, TextAnswer
from stalwart.domain.records import Claim, StepError
from stalwart.domain.refs import UnresolvedReferenceError, resolve
from stalwart.engine.memory import WorkingMemory
from stalwart.errors import BudgetExceeded, ConfigurationError, ErrorClass, ToolError
from stalwart.llm.gateway import Gateway, LlmCall, LlmResult
from stalwart.llm.tokens import estimate_tokens
from stalwart.llm.types import Message
from stalwart.planning.workflows import Workflow
from stalwart.settings import Settings
from stalwart.tools.invoke import ToolOutcome

DEFAULT_SYSTEM = (
    "You are one step of an automated workflow. Do exactly what the task asks, using only the "
    "context given. When an output schema is given, answer only with JSON that matches it."
)
SUMMARY_SYSTEM = (
    "Summarize the context below for a later step of the same job. Keep every name, figure, "
    "date, identifier and decision; drop repetition. Answer with the summary only."
)


def normalized(value: Any) -> str:
    """A canonical form of an answer for voting: keys sorted, strings trimmed and case-folded,
    numbers rounded to 6 places."""

    def norm(v: Any) -> Any:
        if isinstance(v, str):
            return " ".join(v.split()).casefold()
        if isinstance(v, float):
            return round(v, 6)
        if isinstance(v, dict):
            return {k: norm(x) for k, x in v.items()}
        if isinstance(v, list):
            return [norm(x) for x in v]
        return v

    return json.dumps(norm(value), sort_keys=True, separators=(",", ":"))


class LlmStepRunner:
    """Runs one attempt of an llm step through the gateway."""

    def __init__(
        self,
        gateway: Gateway,
        schemas: Mapping[str, type[BaseModel]],
        workflows: Mapping[str, Workflow],
        settings: Settings,
    ) -> None:
        self.gateway = gateway
        self.schemas = schemas
        self.workflows = workflows
        self.settings = settings

    def job_scope(
        self,
        tenant_id: str,
        job_id: str,
        workflow: str,
        purpose: str,
        *,
        step_key: str | None = None,
        attempt: int = 0,
    ) -> CallScope:
        """The gateway scope of a call made for a job: its workflow's budget included."""
        flow = self.workflows.get(workflow)
        budget = flow.budget if flow is not None else None
        return self.gateway.scope(
            tenant_id,
            job_id,
            step_key=step_key,
            attempt=attempt,
            purpose=purpose,
            job_max_usd=budget.max_usd if budget else None,
            job_max_tokens=budget.max_tokens if budget else None,
        )

    def scope(self, claim: Claim, purpose: str) -> CallScope:
        """The gateway scope of a call made for this attempt."""
        return self.job_scope(
            claim.tenant_id,
            claim.job_id,
            claim.workflow,
            purpose,
            step_key=claim.key,
            attempt=claim.attempt,
        )

    async def run(self, claim: Claim, context: dict[str, Any]) -> ToolOutcome:
        """The step's output (the validated answer, or `{"text": ...}` without a schema), or
        its classified error."""
        try:
            return await self._run(claim, context)
        except (ToolError, ConfigurationError) as exc:
            return ToolOutcome(error=model_call_error(exc))

    def summarizer(self, claim: Claim, window: int) -> Callable[[str, int], Awaitable[str]]:
        """What shrinks a step's context to fit `window`: a `summarization` call for the
        attempt, charged to the job."""

        async def summarize(text: str, max_tokens: int) -> str:
            result = await self.gateway.call(
                LlmCall(
                    messages=(Message("system", SUMMARY_SYSTEM), Message("user", text)),
                    purpose="summarization",
                    max_tokens=max_tokens,
                    context_tokens=estimate_tokens(text),
                    context_limit=window,
                ),
                self.scope(claim, "summarization"),
            )
            return result.text

        return summarize

    async def _run(self, claim: Claim, context: dict[str, Any]) -> ToolOutcome:
        spec = LlmSpec.model_validate(claim.spec.get("llm") or {})
        try:
            if isinstance(claim.args, dict) and "prompt" in claim.args:
                # Resolved at claim and stored (decision 0037): what is shown is what is sent.
                prompt = str(claim.args["prompt"])
                system = str(claim.args.get("system") or DEFAULT_SYSTEM)
            else:
                prompt = str(resolve(spec.prompt, context))
                system = str(resolve(spec.system, context)) if spec.system else DEFAULT_SYSTEM
        except UnresolvedReferenceError as exc:
            return ToolOutcome(
                error=StepError(ErrorClass.INVALID_ARGUMENTS, exc.message, "unresolved_reference")
            )
        output_model = self.schemas.get(spec.output) if spec.output else None
        if spec.output and output_model is None:
            raise ConfigurationError(
                f"output schema {spec.output!r} of step {claim.key} is not registered in this "
                "worker (app.schema)"
            )
        window = spec.context_window or self.settings.context_window_tokens
        memory = WorkingMemory.for_step(
            claim.job_input,
            claim.outputs,
            mode=spec.context,
            window=window,
            ratio=self.settings.context_summarize_ratio,
            order=list(claim.spec.get("depends_on") or []),
        )
        reserve = estimate_tokens(prompt + system) + spec.max_tokens
        await memory.fit(self.summarizer(claim, window), reserve=reserve)
        body = f"# Context\n{memory.render()}\n\n# Task\n{prompt}" if memory.items else prompt
        call = LlmCall(
            messages=(Message("system", system), Message("user", body)),
            purpose=spec.purpose,
            tier=spec.tier,
            output=output_model,
            max_tokens=spec.max_tokens,
            temperature=spec.temperature,
            cacheable=spec.cacheable,
            max_reasks=spec.max_reasks,
            context_tokens=estimate_tokens(system + body),
            context_limit=window,
        )
        on_budget = str(claim.spec.get("on_budget") or "fail")
        if spec.consensus:
            return await self._consensus(claim, spec, call)
        return ToolOutcome(output=_output(await self._with_fallback(claim, call, on_budget), call))

    async def _with_fallback(self, claim: Claim, call: LlmCall, on_budget: str) -> LlmResult:
        """Call; when refused for budget and the workflow says so, try each cheaper tier."""
        tier = self.gateway.router.tier_for(call.purpose, call.tier)
        while True:
            try:
                return await self.gateway.call(
                    replace(call, tier=tier), self.scope(claim, call.purpose)
                )
            except BudgetExceeded:
                cheaper = self.gateway.router.cheaper(tier)
                if on_budget != "cheaper_tier" or cheaper is None:
                    raise
                tier = cheaper

    async def _consensus(self, claim: Claim, spec: LlmSpec, call: LlmCall) -> ToolOutcome:
        """Ask N models; the majority of the normalized answers wins, else a human decides."""
        votes = spec.consensus or 2
        tier = self.gateway.router.tier_for(call.purpose, call.tier)
        refs = list(spec.consensus_models or self.gateway.router.chain(tier))[:votes]
        if len(refs) < votes:
            raise ConfigurationError(
                f"step {claim.key} asks a consensus of {votes} models but tier {tier!r} routes "
                f"{len(refs)}; add models to the tier or set consensus_models"
            )
        scope = self.scope(claim, call.purpose)
        answers = await asyncio.gather(
            *(self.gateway.call(replace(call, models=[ref]), scope) for ref in refs),
            return_exceptions=True,
        )
        for answer in answers:
            if isinstance(answer, BudgetExceeded):
                raise answer
            if isinstance(answer, BaseException) and not isinstance(answer, Exception):
                raise answer
        outputs = [_output(a, call) for a in answers if isinstance(a, LlmResult)]
        tally = Counter(normalized(out) for out in outputs)
        if tally:
            best, count = tally.most_common(1)[0]
            if count * 2 > votes:
                return ToolOutcome(output=next(o for o in outputs if normalized(o) == best))
        seen = {
            ref: (a.data if call.output else a.text) if isinstance(a, LlmResult) else f"error: {a}"
            for ref, a in zip(refs, answers, strict=True)
        }
        return ToolOutcome(
            error=StepError(
                ErrorClass.CRITICAL,
                f"step {claim.key}: the {votes} models did not agree (no majority among "
                f"{len(outputs)} answers); a human must decide",
                "consensus_disagreement",
                details={"answers": seen},
            )
        )


def model_call_error(exc: ToolError | ConfigurationError) -> StepError:
    """A model call's failure as a step error: a refused budget (`budget`), the provider's or
    the output's own class (`ProviderError`, `InvalidOutputError`), or no gateway configured
    for it (`critical`)."""
    if isinstance(exc, BudgetExceeded):
        return StepError(ErrorClass.BUDGET, exc.message, "budget_exceeded", details=exc.details)
    if isinstance(exc, ToolError):
        return StepError(
            exc.error_class,
            exc.message,
            exc.code,
            retry_after=exc.retry_after,
            exception_type=type(exc).__name__,
            details=exc.details,
        )
    return StepError(ErrorClass.CRITICAL, exc.message, "llm_not_configured")


def _output(result: LlmResult, call: LlmCall) -> Any:
    """What an llm step records: the validated answer, or `{"text": ...}` without a schema."""
    return result.data if call.output is not None else TextAnswer(text=result.text).model_dump()
