"""The evaluator: checks a step's output against its success criteria and says what follows.

Criteria are declarative checks (`"confidence >= 0.85"`, relative to the output, or a condition
mapping over `output`, `input` and `steps`) and, optionally, an LLM judge on a cheap tier. Each
has a severity: `soft` lets the step succeed with a warning event, `hard` fails it as semantic
(the job replans with the failure as context, bounded by max_replans), `critical` halts the job
and escalates it to a human.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from stalwart.domain.budgets import CallScope
from stalwart.domain.conditions import evaluate, parse_expression
from stalwart.domain.plans import Check, Judge, Severity
from stalwart.domain.records import StepError
from stalwart.domain.refs import MISSING, lookup
from stalwart.errors import BudgetExceeded, ErrorClass, StalwartError
from stalwart.llm.gateway import Gateway, LlmCall
from stalwart.llm.types import Message

JUDGE_SYSTEM = (
    "You are a strict reviewer in an automated workflow. Decide whether the output answers the "
    "question with yes (passed true) or no (passed false), and give a one-sentence reason. "
    "Answer only with JSON."
)


class JudgeVerdict(BaseModel):
    """What the judge answers."""

    passed: bool
    reason: str = ""


@dataclass(slots=True)
class Verdict:
    """Warnings to record, and the error that fails the step (None: it passed)."""

    warnings: list[str] = field(default_factory=list)
    error: StepError | None = None


def _failure(severity: Severity, message: str, details: dict[str, Any]) -> StepError | None:
    if severity == "soft":
        return None
    kind = ErrorClass.CRITICAL if severity == "critical" else ErrorClass.SEMANTIC
    return StepError(kind, message, "check_failed", details=details)


def check_condition(check: Check) -> dict[str, Any]:
    """The check as a condition over `{"output", "input", "steps"}`."""
    if isinstance(check.expect, str):
        return parse_expression(check.expect, prefix="output.")
    return check.expect


def _describe(check: Check, context: dict[str, Any]) -> str:
    if check.message:
        return check.message
    condition = check_condition(check)
    seen = []
    for path in condition:
        value = lookup(context, path)
        seen.append(f"{path} is {'missing' if value is MISSING else json.dumps(value)}")
    expect = check.expect if isinstance(check.expect, str) else json.dumps(check.expect)
    return f"check {expect!r} failed ({'; '.join(seen)})"


class Evaluator:
    """Evaluates outputs; the judge needs a gateway (`None`: a judge is a configuration
    error)."""

    def __init__(self, gateway: Gateway | None) -> None:
        self.gateway = gateway

    async def evaluate(
        self,
        step_key: str,
        output: Any,
        context: dict[str, Any],
        checks: list[Check],
        judge: Judge | None,
        scope: Callable[[str], CallScope],
    ) -> Verdict:
        """Run every check, then the judge; the first hard or critical failure wins."""
        verdict = Verdict()
        full = {**context, "output": output}
        for check in checks:
            if evaluate(check_condition(check), full):
                continue
            message = f"step {step_key}: {_describe(check, full)}"
            error = _failure(check.on_fail, message, {"output": output, "check": str(check.expect)})
            if error is not None:
                verdict.error = error
                return verdict
            verdict.warnings.append(message)
        if judge is not None:
            await self._judge(step_key, output, judge, scope, verdict)
        return verdict

    async def _judge(
        self,
        step_key: str,
        output: Any,
        judge: Judge,
        scope: Callable[[str], CallScope],
        verdict: Verdict,
    ) -> None:
        if self.gateway is None:
            verdict.error = StepError(
                ErrorClass.CRITICAL, "a judge needs the LLM gateway; none is configured", "no_llm"
            )
            return
        call = LlmCall(
            messages=(
                Message("system", JUDGE_SYSTEM),
                Message(
                    "user",
                    f"Question: {judge.question}\n\nOutput of step {step_key}:\n"
                    + json.dumps(output, ensure_ascii=False, sort_keys=True),
                ),
            ),
            purpose="evaluation",
            tier=judge.tier,
            output=JudgeVerdict,
            max_tokens=judge.max_tokens,
            temperature=0.0,
        )
        try:
            result = await self.gateway.call(call, scope("evaluation"))
        except BudgetExceeded as exc:
            verdict.error = StepError(ErrorClass.BUDGET, exc.message, "budget_exceeded")
            return
        except StalwartError as exc:
            kind = getattr(exc, "error_class", ErrorClass.NON_RETRIABLE)
            verdict.error = StepError(
                kind, f"the judge of step {step_key} failed: {exc.message}", "judge_failed"
            )
            return
        answer = result.output
        assert isinstance(answer, JudgeVerdict)
        if answer.passed:
            return
        message = f"step {step_key}: the judge said no to {judge.question!r}: {answer.reason}"
        error = _failure(judge.on_fail, message, {"output": output, "judge": answer.reason})
        if error is None:
            verdict.warnings.append(message)
        else:
            verdict.error = error
