"""Running `agent` steps: a model offered an allow-list of tools, called turn by turn, durably.

The loop lives inside one attempt of one step, and every piece of it is a checkpoint (decision
0039). A model turn is recorded in the transaction that settles its ledger row; a tool call is
written `running` before the tool runs and finished, with the tool's `on_commit` effects, in one
fenced transaction. Each attempt starts by reading the transcript back: a recorded turn is not
asked again, a finished call is not run again, and a call found `running` was cut off by a
crash, so it follows the tool-step rules (idempotent: again under the same key; a reconcile
function: reconcile; otherwise a person decides).

Tool calls are hardened like tool steps: arguments are validated before the call and invalid
ones go back to the model as a structured error (at most `max_tool_errors`); transient failures
are retried under the tool's retry policy before a result goes back; permission and policy
errors stop the loop and go to a person, never back to the model. A call that needs approval
parks the step (no worker slot held) with the transcript in its review. The same call made
`max_repeats` times, `max_tool_calls` calls, or `max_turns` turns without an answer escalate.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from pydantic import BaseModel, ValidationError

from stalwart.domain.agents import (
    CALL_DONE,
    DEFAULT_INSTRUCTIONS,
    AgentCall,
    AgentSpec,
    AgentTurn,
    CallStatus,
    Transcript,
    TurnCheckpoint,
)
from stalwart.domain.conditions import evaluate
from stalwart.domain.plans import TextAnswer
from stalwart.domain.records import Claim, StepError
from stalwart.domain.retry import RetryPolicy
from stalwart.engine.llm_steps import LlmStepRunner, model_call_error
from stalwart.engine.memory import WorkingMemory
from stalwart.engine.tool_spans import traced_invoke
from stalwart.errors import (
    BudgetExceeded,
    ConfigurationError,
    EffectFailedError,
    ErrorClass,
    ToolError,
)
from stalwart.llm.gateway import LlmCall, LlmResult, Reservation, parse_json
from stalwart.llm.tokens import estimate_messages, estimate_tokens
from stalwart.llm.types import Message, ToolCall
from stalwart.llm.types import ToolSpec as OfferedTool
from stalwart.observability import tracing
from stalwart.planning.workflows import Workflow
from stalwart.settings import Settings
from stalwart.store.base import Store
from stalwart.tools.context import MemorySearch, ToolContext
from stalwart.tools.invoke import ToolOutcome, validation_details
from stalwart.tools.registry import ToolRegistry, ToolSpec

log = logging.getLogger("stalwart.engine")

# Error codes of a loop that stops for a person (the executor escalates them whatever the
# step's criticality: a person must look at the transcript).
ESCALATING_CODES = frozenset(
    {"agent_max_turns", "agent_repeated_call", "agent_max_tool_calls", "agent_tool_refused"}
)
# The longest a call waits in-process for a limit to let it through before looking again.
LIMIT_POLL_SECONDS = 1.0


class LeaseLostError(Exception):
    """A fenced write found the step's lease gone: another worker owns the step now."""


def _error(error_class: ErrorClass | str, message: str, code: str, **details: Any) -> ToolOutcome:
    return ToolOutcome(error=StepError(error_class, message, code, details=details or {}))


@dataclass(slots=True)
class _Loop:
    """One attempt's loop: what every turn and call of it needs, and what one step of it hands
    the next (a turn prepared and reserved with the end of the last call; the first call of a
    turn started with the turn's record)."""

    claim: Claim
    spec: AgentSpec
    system: str
    prompt: str
    window: int
    tools: list[OfferedTool]
    offered: dict[str, ToolSpec]
    output_model: type[BaseModel] | None
    transcript: Transcript
    context: dict[str, Any]
    ahead: tuple[LlmCall, Reservation] | None = None
    refused: tuple[Reservation, BudgetExceeded] | None = None
    first: AgentCall | None = None
    started: set[tuple[int, int]] = field(default_factory=set)
    worker_id: str = ""
    # The messages of turns whose calls all have their results (they never change again).
    rendered: dict[int, list[Message]] = field(default_factory=dict)


class AgentStepRunner:
    """Runs one attempt of an agent step: resumes its loop from storage and drives it on."""

    def __init__(
        self,
        llm: LlmStepRunner,
        store: Store,
        tools: ToolRegistry,
        schemas: Mapping[str, type[BaseModel]],
        workflows: Mapping[str, Workflow],
        settings: Settings,
        memory: MemorySearch | None = None,
    ) -> None:
        self.llm = llm
        self.gateway = llm.gateway
        self.store = store
        self.tools = tools
        self.schemas = schemas
        self.workflows = workflows
        self.settings = settings
        self.memory = memory

    async def run(
        self, claim: Claim, ctx: ToolContext, context: dict[str, Any], *, worker_id: str
    ) -> ToolOutcome:
        """The step's output (the answer in its schema, or `{"text": ...}`), its classified
        error, or an outcome with `parked` set: the step waits for a reviewer (already
        recorded)."""
        spec = AgentSpec.model_validate(claim.spec.get("agent") or {})
        attributes = {
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.agent.name": claim.key,
            "stalwart.agent.max_turns": spec.max_turns,
        }
        with tracing.span(f"invoke_agent {claim.key}", None, attributes) as current:
            try:
                outcome = await self._run(claim, ctx, context, spec, worker_id)
            except LeaseLostError:
                outcome = _error(
                    ErrorClass.TRANSIENT, "the step's lease was lost mid-loop", "lease_lost"
                )
            except (ToolError, ConfigurationError) as exc:
                outcome = ToolOutcome(error=model_call_error(exc))
            if outcome.error is not None:
                tracing.fail(current, outcome.error.error_class, outcome.error.message)
            elif outcome.parked:
                current.set_attribute("stalwart.agent.parked", True)
            return outcome

    # -- the loop -------------------------------------------------------------------------------

    async def _run(
        self,
        claim: Claim,
        ctx: ToolContext,
        context: dict[str, Any],
        spec: AgentSpec,
        worker_id: str,
    ) -> ToolOutcome:
        offered: dict[str, ToolSpec] = {}
        for name in spec.tools:
            tool = self.tools.get(name)
            if tool is None:
                return _error(
                    ErrorClass.CRITICAL,
                    f"agent step {claim.key} may call tool {name!r}, which is not registered "
                    "in this worker",
                    "tool_unknown",
                )
            pinned = claim.tool_schema_hashes.get(name)
            if pinned and pinned != tool.schema_hash:
                return _error(
                    ErrorClass.CRITICAL,
                    f"tool {name!r} changed since this job was planned (schema hash "
                    f"{pinned[:12]} became {tool.schema_hash[:12]}); failing closed",
                    "schema_changed",
                )
            offered[name] = tool
        output_model = self.schemas.get(spec.output) if spec.output else None
        if spec.output and output_model is None:
            raise ConfigurationError(
                f"output schema {spec.output!r} of step {claim.key} is not registered in this "
                "worker (app.schema)"
            )
        args = claim.args if isinstance(claim.args, dict) else {}
        prompt = str(args.get("prompt") or spec.prompt)
        system = str(args.get("instructions") or spec.instructions or DEFAULT_INSTRUCTIONS)
        window = spec.context_window or self.settings.context_window_tokens
        memory = WorkingMemory.for_step(
            claim.job_input,
            claim.outputs,
            mode=spec.context,
            window=window,
            ratio=self.settings.context_summarize_ratio,
            order=list(claim.spec.get("depends_on") or []),
        )
        if memory.items:
            reserve = estimate_tokens(prompt) + spec.max_tokens
            await memory.fit(self.llm.summarizer(claim, window), reserve=reserve)
            prompt = f"# Context\n{memory.render()}\n\n# Task\n{prompt}"
        tools = [
            OfferedTool(
                name=t.name,
                description=t.description or t.name,
                parameters=t.args_model.model_json_schema(),
            )
            for t in offered.values()
        ]
        transcript = await self.store.agent_transcript(claim.step_id, key=claim.key)
        loop = _Loop(
            claim=claim,
            spec=spec,
            system=system,
            prompt=prompt,
            window=window,
            tools=tools,
            offered=offered,
            output_model=output_model,
            transcript=transcript,
            context=context,
            worker_id=worker_id,
        )
        try:
            return await self._loop(loop, ctx, worker_id)
        finally:
            if loop.ahead is not None:  # reserved with a call's end, never sent
                await self.gateway.release(loop.ahead[1])

    async def _loop(self, loop: _Loop, ctx: ToolContext, worker_id: str) -> ToolOutcome:
        claim, spec, transcript = loop.claim, loop.spec, loop.transcript
        while True:
            if ctx.cancelled:
                return _error(ErrorClass.CANCELLED, "job cancelled", "cancelled")
            last = transcript.turns[-1] if transcript.turns else None
            if last is not None and not last.tool_calls:
                return self._answer(claim, last, loop.output_model)
            if last is not None:
                stopped = await self._calls(loop, ctx, last, worker_id)
                if stopped is not None:
                    return stopped
            number = len(transcript.turns) + 1
            if number > spec.max_turns:
                return _error(
                    ErrorClass.CRITICAL,
                    f"agent step {claim.key} used its {spec.max_turns} turns without an answer",
                    "agent_max_turns",
                    turns=spec.max_turns,
                )
            ahead, loop.ahead = loop.ahead, None
            if ahead is not None:
                call = ahead[0]  # prepared, and reserved, with the end of the last call
            else:
                summary = await self._maybe_summarize(
                    claim, loop.system, loop.prompt, transcript, loop.window
                )
                call = self._next_call(loop, number, summary)
            result = await self._turn(loop, call, ahead[1] if ahead else None, loop.refused)
            loop.refused = None
            assert call.checkpoint is not None
            turn = AgentTurn(
                turn=number,
                attempt=claim.attempt,
                text=result.text,
                tool_calls=[c.to_dict() for c in result.tool_calls],
                finish_reason=result.finish_reason,
                provider=result.provider,
                model=result.model,
                input_tokens=result.input_tokens,
                output_tokens=result.output_tokens,
                cost_nanos=result.cost_nanos,
                summary=call.checkpoint.summary,
                created=time.time(),
            )
            if not result.checkpointed:  # a cached answer settled no row of its own
                recorded = await self.store.agent_turn_record(
                    claim, call.checkpoint, turn, actor=worker_id
                )
                if not recorded:
                    raise LeaseLostError
            first, loop.first = loop.first, None
            if result.checkpointed and first is not None and first.status == "running":
                # Started with the turn's record (its settle): it runs at once.
                turn.calls.append(first)
                loop.started.add((first.turn, first.index))
            transcript.turns.append(turn)
            if not turn.tool_calls:
                output = result.data if loop.output_model is not None else None
                if output is None:
                    return ToolOutcome(output=TextAnswer(text=result.text).model_dump())
                return ToolOutcome(output=output)

    def _next_call(
        self,
        loop: _Loop,
        number: int,
        summary: tuple[int, str] | None,
        messages: list[Message] | None = None,
    ) -> LlmCall:
        """The request of turn `number`, its checkpoint asking to start the turn's first call
        with the turn's record when the loop would start it at once."""
        if messages is None:
            messages = _messages(loop.system, loop.prompt, loop.transcript, summary, loop.rendered)
        spec = loop.spec

        def first_call(calls: list[dict[str, Any]]) -> AgentCall | None:
            loop.first = self._first_call(loop, number, calls[0])
            return loop.first

        checkpoint = TurnCheckpoint(
            loop.claim.step_id,
            loop.claim.lease_token,
            number,
            loop.claim.attempt,
            summary[1] if summary is not None else None,
            first_call,
            loop.worker_id,
        )
        return LlmCall(
            messages=tuple(messages),
            purpose=spec.purpose,
            tier=spec.tier,
            output=loop.output_model,
            max_tokens=spec.max_tokens,
            temperature=spec.temperature,
            tools=loop.tools,
            parallel_tool_calls=spec.parallel_tool_calls,
            context_tokens=estimate_messages(messages, None, loop.tools),
            context_limit=loop.window,
            checkpoint=checkpoint,
        )

    def _first_call(self, loop: _Loop, number: int, asked: dict[str, Any]) -> AgentCall | None:
        """The first call of turn `number` if the loop would start it at once (a pure check of
        what `_call` checks before it starts a call): else None, and `_call` decides."""
        spec = loop.spec
        if number >= spec.max_turns:
            return None  # the last turn's calls are not run: the loop escalates
        call = AgentCall(
            turn=number,
            index=0,
            call_id=str(asked.get("id") or f"call_{number}_0"),
            tool=str(asked.get("name") or ""),
            arguments=str(asked.get("arguments") or ""),
            status="new",
        )
        tool = loop.offered.get(call.tool)
        parsed = call.parsed()
        if tool is None or not isinstance(parsed, dict):
            return None
        try:
            tool.args_model.model_validate(parsed)
        except ValidationError:
            return None
        if self._needs_approval(loop.claim, spec, tool, parsed, loop.context):
            return None
        if self._over_bounds(spec, loop.transcript, call) is not None:
            return None
        return call

    def _answer(
        self, claim: Claim, turn: AgentTurn, output_model: type[BaseModel] | None
    ) -> ToolOutcome:
        """The step's output from a recorded final turn (a resumed attempt after the answer was
        recorded but before the step completed)."""
        if output_model is None:
            return ToolOutcome(output=TextAnswer(text=turn.text).model_dump())
        try:
            data = output_model.model_validate(parse_json(turn.text)).model_dump(mode="json")
        except (ValueError, ValidationError) as exc:
            return _error(
                ErrorClass.SEMANTIC,
                f"the recorded answer of agent step {claim.key} no longer matches "
                f"{output_model.__name__}: {exc}",
                "invalid_output",
            )
        return ToolOutcome(output=data)

    async def _turn(
        self,
        loop: _Loop,
        call: LlmCall,
        reserved: Reservation | None,
        refused: tuple[Reservation, BudgetExceeded] | None,
    ) -> LlmResult:
        """Ask the model for the next turn, its worst case reserved first (ahead, with the end
        of the last call, or by the gateway); a refused reservation tries each cheaper tier
        when the workflow says so."""
        claim, spec = loop.claim, loop.spec
        tier = self.gateway.router.tier_for(call.purpose, call.tier)
        on_budget = str(claim.spec.get("on_budget") or "fail")
        while True:
            try:
                if refused is not None:
                    await self.gateway.refused(*refused)
                    raise refused[1]
                return await self.gateway.call(
                    replace(call, tier=tier), self.llm.scope(claim, spec.purpose), reserved=reserved
                )
            except BudgetExceeded:
                refused, reserved = None, None
                cheaper = self.gateway.router.cheaper(tier)
                if on_budget != "cheaper_tier" or cheaper is None:
                    raise
                tier = cheaper

    # -- summarization --------------------------------------------------------------------------

    async def _maybe_summarize(
        self, claim: Claim, system: str, prompt: str, transcript: Transcript, window: int
    ) -> tuple[int, str] | None:
        """The summary the next request carries: the last one recorded, or a new one when the
        transcript outgrew `context_summarize_ratio` of the window (every turn but the last is
        summarized; the last stays whole, its calls and results with it). Returns (the first
        turn kept whole, the summary), or None."""
        current = _last_summary(transcript)
        if not self._due(system, prompt, transcript, window):
            return current
        start = current[0] if current is not None else 1
        keep = transcript.turns[-1].turn
        earlier = _render(
            [t for t in transcript.turns if start <= t.turn < keep],
            current[1] if current is not None else None,
        )
        text = await self.llm.summarizer(claim, window)(earlier, max(256, window // 8))
        return keep, text

    def _due(
        self,
        system: str,
        prompt: str,
        transcript: Transcript,
        window: int,
        messages: list[Message] | None = None,
    ) -> bool:
        """Whether the next request must carry a new summary: the transcript since the last
        one (`messages`: the request with the last summary) outgrew `context_summarize_ratio`
        of the window, over at least three turns."""
        current = _last_summary(transcript)
        if messages is None:
            messages = _messages(system, prompt, transcript, current)
        start = current[0] if current is not None else 1
        whole = sum(1 for t in transcript.turns if t.turn >= start)
        limit = window * self.settings.context_summarize_ratio
        return whole >= 3 and estimate_messages(messages, None, ()) > limit

    # -- tool calls -----------------------------------------------------------------------------

    async def _calls(
        self, loop: _Loop, ctx: ToolContext, turn: AgentTurn, worker_id: str
    ) -> ToolOutcome | None:
        """Run the calls the model asked for in `turn` that have no result yet, in order. None
        when every call has its result; else why the loop stops (an error, or a park)."""
        claim, spec = loop.claim, loop.spec
        stored = {c.index: c for c in turn.calls}
        open_calls = [
            i
            for i in range(len(turn.tool_calls))
            if i not in stored or stored[i].status not in CALL_DONE
        ]
        if open_calls and turn.turn >= spec.max_turns:
            return _error(
                ErrorClass.CRITICAL,
                f"agent step {claim.key} used its {spec.max_turns} turns without an answer "
                f"(its last turn asked for {len(turn.tool_calls)} more tool call(s))",
                "agent_max_turns",
                turns=spec.max_turns,
            )
        for index, asked in enumerate(turn.tool_calls):
            call = stored.get(index)
            if call is not None and call.status in CALL_DONE:
                continue
            if call is None:
                call = AgentCall(
                    turn=turn.turn,
                    index=index,
                    call_id=str(asked.get("id") or f"call_{turn.turn}_{index}"),
                    tool=str(asked.get("name") or ""),
                    arguments=str(asked.get("arguments") or ""),
                    status="new",
                )
                turn.calls.append(call)
                turn.calls.sort(key=lambda c: c.index)
            stopped = await self._call(loop, ctx, turn, call, worker_id)
            if stopped is not None:
                return stopped
        return None

    async def _call(
        self, loop: _Loop, ctx: ToolContext, turn: AgentTurn, call: AgentCall, worker_id: str
    ) -> ToolOutcome | None:
        """One call, from wherever it stands to its result (None: the loop goes on)."""
        claim, spec, transcript = loop.claim, loop.spec, loop.transcript
        offered, context = loop.offered, loop.context
        tool = offered.get(call.tool)
        if (call.turn, call.index) in loop.started and tool is not None:
            # Started with its turn's record a moment ago: checked already, it runs now.
            loop.started.discard((call.turn, call.index))
            parsed = call.parsed()
            assert isinstance(parsed, dict)
            return await self._execute(loop, ctx, turn, call, tool, parsed, worker_id, True)
        if tool is None:
            return await self._invalid(
                claim,
                spec,
                transcript,
                call,
                "unknown_tool",
                f"there is no tool {call.tool!r} here; the tools are: " + ", ".join(offered),
                worker_id,
            )
        parsed = call.parsed()
        if not isinstance(parsed, dict):
            return await self._invalid(
                claim,
                spec,
                transcript,
                call,
                "invalid_json",
                f"the arguments of {call.tool} are not a JSON object",
                worker_id,
            )
        try:
            tool.args_model.model_validate(parsed)
        except ValidationError as exc:
            return await self._invalid(
                claim,
                spec,
                transcript,
                call,
                "invalid_arguments",
                f"the arguments of {call.tool} are not valid",
                worker_id,
                errors=validation_details(exc),
            )
        if call.status in ("new", CallStatus.SKIPPED.value, CallStatus.REFUSED.value):
            stopped = await self._bounds(claim, spec, transcript, call, worker_id)
            if stopped is not None:
                return stopped
        if call.status != CallStatus.APPROVED.value:
            if call.status == CallStatus.RUNNING.value and not tool.idempotent:
                # Cut off mid-run by a crash: its effect may or may not have happened.
                if tool.reconcile is None:
                    return await self._park_interrupted(
                        claim, spec, transcript, call, tool, context, worker_id
                    )
            elif call.status in (
                "new",
                CallStatus.AWAITING_APPROVAL.value,
            ) and self._needs_approval(claim, spec, tool, parsed, context):
                return await self._park(claim, spec, transcript, call, tool, context, worker_id)
        return await self._execute(loop, ctx, turn, call, tool, parsed, worker_id, False)

    @staticmethod
    def _over_bounds(
        spec: AgentSpec, transcript: Transcript, call: AgentCall
    ) -> tuple[str, int] | None:
        """Which of the loop's limits a new call passes (`agent_repeated_call`: the same call
        `max_repeats` times; `agent_max_tool_calls`), with the count; None within them."""
        earlier = [c for c in transcript.calls if c is not call]
        signature = call.signature()
        same = sum(
            1
            for c in earlier
            if c.status != CallStatus.INVALID.value and c.signature() == signature
        )
        if same + 1 >= spec.max_repeats:
            return "agent_repeated_call", same + 1
        ran = sum(1 for c in earlier if c.attempts > 0)
        if ran >= spec.max_tool_calls:
            return "agent_max_tool_calls", ran
        return None

    async def _bounds(
        self,
        claim: Claim,
        spec: AgentSpec,
        transcript: Transcript,
        call: AgentCall,
        worker_id: str,
    ) -> ToolOutcome | None:
        """The loop's limits on a new call: the same call too often, too many calls."""
        over = self._over_bounds(spec, transcript, call)
        if over is None:
            return None
        code, count = over
        call.status = CallStatus.SKIPPED.value
        if code == "agent_repeated_call":
            call.error = {"code": code, "message": f"the same call was made {count} times"}
            await self._finish(claim, call, worker_id, ran=False)
            return _error(
                ErrorClass.CRITICAL,
                f"agent step {claim.key} made the same call {call.tool}({call.arguments}) "
                f"{count} times (max_repeats={spec.max_repeats}); a person must look",
                code,
                tool=call.tool,
                arguments=call.parsed(),
                times=count,
            )
        call.error = {"code": code, "message": "no tool calls left"}
        await self._finish(claim, call, worker_id, ran=False)
        return _error(
            ErrorClass.CRITICAL,
            f"agent step {claim.key} made its {spec.max_tool_calls} tool calls "
            "(max_tool_calls) without an answer",
            code,
            calls=count,
        )

    async def _invalid(
        self,
        claim: Claim,
        spec: AgentSpec,
        transcript: Transcript,
        call: AgentCall,
        code: str,
        message: str,
        worker_id: str,
        errors: list[dict[str, Any]] | None = None,
    ) -> ToolOutcome | None:
        """A call the model got wrong: the errors go back to it, at most `max_tool_errors`
        times; past that the step fails `invalid_arguments`."""
        call.status = CallStatus.INVALID.value
        call.error = {"code": code, "message": message}
        if errors:
            call.error["errors"] = errors
        await self._finish(claim, call, worker_id, ran=False)
        wrong = sum(1 for c in transcript.calls if c.status == CallStatus.INVALID.value)
        if wrong > spec.max_tool_errors:
            return _error(
                ErrorClass.INVALID_ARGUMENTS,
                f"agent step {claim.key}: the model made {wrong} invalid tool calls "
                f"(max_tool_errors={spec.max_tool_errors}); the last: {message}",
                "agent_tool_errors",
                errors=errors or [],
            )
        return None

    def _needs_approval(
        self,
        claim: Claim,
        spec: AgentSpec,
        tool: ToolSpec,
        args: dict[str, Any],
        context: dict[str, Any],
    ) -> bool:
        """Declared per tool on the step (`approve`: true, or a condition on the call), else
        the workflow's risk levels."""
        rule = spec.approve.get(tool.name)
        if isinstance(rule, bool):
            return rule
        if isinstance(rule, dict):
            return evaluate(rule, {**context, "args": args})
        workflow = self.workflows.get(claim.workflow)
        levels = workflow.approval.risk_levels if workflow is not None else ("high",)
        return tool.risk in levels

    async def _park(
        self,
        claim: Claim,
        spec: AgentSpec,
        transcript: Transcript,
        call: AgentCall,
        tool: ToolSpec,
        context: dict[str, Any],
        worker_id: str,
    ) -> ToolOutcome:
        rule = spec.approve.get(tool.name)
        why = f"agent step {claim.key} calls {tool.name}, which needs a reviewer" + (
            " (its risk is " + tool.risk + ")" if rule is None else ""
        )
        reject = (
            "the model is told the call was rejected (your comment is its result)"
            if spec.on_tool_reject == "tell_model"
            else "the step fails"
        )
        return await self._park_as(
            claim,
            transcript,
            call,
            worker_id,
            kind="agent_call",
            reason=why,
            asked=f"Approve the call {tool.name}({_short(call.arguments)})?",
            options=[
                {"name": "approve", "impact": "the call runs and the loop goes on"},
                {"name": "reject", "impact": reject},
            ],
            context=self._review_context(claim, spec, transcript, call, tool),
        )

    async def _park_interrupted(
        self,
        claim: Claim,
        spec: AgentSpec,
        transcript: Transcript,
        call: AgentCall,
        tool: ToolSpec,
        context: dict[str, Any],
        worker_id: str,
    ) -> ToolOutcome:
        return await self._park_as(
            claim,
            transcript,
            call,
            worker_id,
            kind="agent_interrupted",
            reason=f"call {call.turn}.{call.index} of agent step {claim.key} to {tool.name} was "
            "cut off while it ran; the tool is not idempotent and has no reconcile function, so "
            "its effect may or may not have happened",
            asked=f"Run {tool.name}({_short(call.arguments)}) again (same idempotency key)?",
            options=[
                {"name": "approve", "impact": "the call runs again and the loop goes on"},
                {
                    "name": "reject",
                    "impact": "the call does not run again; the model is told"
                    if spec.on_tool_reject == "tell_model"
                    else "the step fails",
                },
            ],
            context=self._review_context(claim, spec, transcript, call, tool),
        )

    async def _park_as(
        self,
        claim: Claim,
        transcript: Transcript,
        call: AgentCall,
        worker_id: str,
        **review: Any,
    ) -> ToolOutcome:
        parked = await self.store.agent_park(claim, call, actor=worker_id, **review)
        if not parked:
            raise LeaseLostError
        log.info(
            "agent step parked for a reviewer",
            extra={"action": "agent_parked", "job": claim.job_id, "step": claim.key},
        )
        return ToolOutcome(parked=True)

    def _review_context(
        self,
        claim: Claim,
        spec: AgentSpec,
        transcript: Transcript,
        call: AgentCall,
        tool: ToolSpec,
    ) -> dict[str, Any]:
        """What the reviewer sees: the goal, the transcript so far, the exact call."""
        args = claim.args if isinstance(claim.args, dict) else {}
        return {
            "agent": True,
            "workflow": claim.workflow,
            "step": claim.key,
            "goal": str(args.get("prompt") or spec.prompt),
            "tool": tool.name,
            "risk": tool.risk,
            "args": call.parsed(),
            "call": {"turn": call.turn, "index": call.index, "id": call.call_id},
            "transcript": transcript.to_dict()["turns"],
        }

    async def _execute(
        self,
        loop: _Loop,
        ctx: ToolContext,
        turn: AgentTurn,
        call: AgentCall,
        tool: ToolSpec,
        args: dict[str, Any],
        worker_id: str,
        started: bool,
    ) -> ToolOutcome | None:
        """Run the call under its limits, timeout and retry policy, and write its end (`started`:
        it was started with its turn's record)."""
        claim = loop.claim
        reconcile = not started and call.status == CallStatus.RUNNING.value and not tool.idempotent
        policy = tool.retry or RetryPolicy()
        limited = False
        while True:
            if started:
                started = False
            else:
                start = await self.store.agent_call_start(claim, call, actor=worker_id)
                if start.lease_lost:
                    raise LeaseLostError
                if not start.started:
                    wait = LIMIT_POLL_SECONDS
                    if start.wait_until is not None:
                        wait = min(LIMIT_POLL_SECONDS, max(0.01, start.wait_until - time.time()))
                    if await _cancelled_within(ctx, wait):
                        return _error(ErrorClass.CANCELLED, "job cancelled", "cancelled")
                    continue
                limited = start.limited
            outcome, effects = await self._invoke(claim, ctx, call, tool, args, reconcile)
            if reconcile and outcome.error is None and outcome.output is None:
                reconcile = False  # nothing happened: the call itself runs
                outcome, effects = await self._invoke(claim, ctx, call, tool, args, False)
            reconcile = False
            error = outcome.error
            if error is None:
                call.status, call.result, call.error = (
                    CallStatus.SUCCEEDED.value,
                    outcome.output,
                    None,
                )
                try:
                    await self._finish_read(loop, ctx, turn, call, worker_id, effects, limited)
                except EffectFailedError as exc:
                    call.status = CallStatus.REFUSED.value
                    call.result, call.error = (
                        None,
                        {"code": "effect_failed", "message": exc.message},
                    )
                    await self._finish(claim, call, worker_id, limited=limited)
                    return _error(ErrorClass.NON_RETRIABLE, exc.message, "effect_failed")
                return None
            kind = ErrorClass(error.error_class)
            if kind is ErrorClass.TRANSIENT:
                refund = error.asks_to_wait
                if refund or not policy.exhausted(call.attempts):
                    delay = (
                        float(error.retry_after or 0.0)
                        if refund
                        else policy.delay_seconds(call.attempts, retry_after=error.retry_after)
                    )
                    if refund:
                        call.attempts = max(call.attempts - 1, 0)
                    call.status, call.error = CallStatus.RETRY_WAIT.value, error.to_dict()
                    await self._finish(claim, call, worker_id, outcome=error, limited=limited)
                    if await _cancelled_within(ctx, delay):
                        return _error(ErrorClass.CANCELLED, "job cancelled", "cancelled")
                    continue
                # Retries exhausted: the model reads the error and may try something else.
                call.status, call.error = CallStatus.FAILED.value, error.to_dict()
            elif kind is ErrorClass.INVALID_ARGUMENTS:
                call.status, call.error = CallStatus.INVALID.value, error.to_dict()
            elif kind is ErrorClass.SEMANTIC:
                call.status, call.error = CallStatus.FAILED.value, error.to_dict()
            elif kind in (ErrorClass.AUTHORIZATION, ErrorClass.NON_RETRIABLE):
                call.status, call.error = CallStatus.REFUSED.value, error.to_dict()
                await self._finish(claim, call, worker_id, outcome=error, limited=limited)
                return ToolOutcome(
                    error=StepError(
                        kind,
                        f"agent step {claim.key}: tool {tool.name} refused the call "
                        f"({error.message}); a person must decide, the model is not asked",
                        "agent_tool_refused",
                        exception_type=error.exception_type,
                        details={"tool": tool.name, "arguments": args, "error": error.to_dict()},
                    )
                )
            else:  # cancelled, critical, budget: the step's own failure.
                call.status, call.error = CallStatus.REFUSED.value, error.to_dict()
                await self._finish(claim, call, worker_id, outcome=error, limited=limited)
                return ToolOutcome(error=error)
            await self._finish_read(loop, ctx, turn, call, worker_id, (), limited, error)
            return None

    async def _finish_read(
        self,
        loop: _Loop,
        ctx: ToolContext,
        turn: AgentTurn,
        call: AgentCall,
        worker_id: str,
        effects: Sequence[tuple[str, tuple[Any, ...]]],
        limited: bool,
        outcome: StepError | None = None,
    ) -> None:
        """Write the end of a call whose result the model will read. When it is the last of its
        turn, the next turn is prepared now and its worst case reserved in the same transaction
        (decision 0039: one transaction for a call's end and the next turn's reservation)."""
        prepared: LlmCall | None = None
        reservation: Reservation | None = None
        done = {c.index for c in turn.calls if c.status in CALL_DONE}
        last = len(done) == len(turn.tool_calls) and turn.turn < loop.spec.max_turns
        if last and not ctx.cancelled:
            summary = _last_summary(loop.transcript)
            messages = _messages(loop.system, loop.prompt, loop.transcript, summary, loop.rendered)
            if not self._due(loop.system, loop.prompt, loop.transcript, loop.window, messages):
                prepared = self._next_call(loop, turn.turn + 1, summary, messages)
        if prepared is not None:
            reservation = await self.gateway.reservation(
                prepared, self.llm.scope(loop.claim, loop.spec.purpose)
            )
        finished = await self.store.agent_call_finish(
            loop.claim,
            call,
            actor=worker_id,
            effects=effects,
            outcome=outcome,
            limited=limited,
            reserve=reservation.new if reservation is not None else None,
        )
        if not finished:
            raise LeaseLostError
        if prepared is None or reservation is None:
            return
        if finished.refused is not None:
            loop.refused = (reservation, finished.refused)
        elif finished.reserved is not None:
            reservation.call_id = finished.reserved
        loop.ahead = (prepared, reservation)

    async def _invoke(
        self,
        claim: Claim,
        ctx: ToolContext,
        call: AgentCall,
        tool: ToolSpec,
        args: dict[str, Any],
        reconcile: bool,
    ) -> tuple[ToolOutcome, list[tuple[str, tuple[Any, ...]]]]:
        """The tool (or its reconcile function) in an `execute_tool {tool}` span, with a context
        of its own: the idempotency key `{tenant}:{job}:{step}:{turn}.{index}`."""
        seconds = float(tool.timeout_seconds or self.settings.lease_seconds)
        own = ToolContext(
            tenant_id=claim.tenant_id,
            job_id=claim.job_id,
            step_id=claim.key,
            attempt=call.attempts,
            idempotency_key=f"{claim.idempotency_key}:{call.turn}.{call.index}",
            deadline=time.time() + seconds,
            workflow=claim.workflow,
            memory=self.memory,
        )
        if ctx.cancelled:
            own.cancel()
        watch = asyncio.ensure_future(_mirror_cancel(ctx, own))
        try:
            outcome = await traced_invoke(
                tool,
                args,
                own,
                call_id=call.call_id,
                timeout_seconds=seconds,
                content=self.settings.trace_content,
                reconcile=reconcile,
                **{"stalwart.agent.turn": call.turn},
            )
        finally:
            watch.cancel()
        return outcome, own.effects

    async def _finish(
        self,
        claim: Claim,
        call: AgentCall,
        worker_id: str,
        *,
        outcome: StepError | None = None,
        ran: bool = True,
        limited: bool = False,
    ) -> None:
        done = await self.store.agent_call_finish(
            claim, call, actor=worker_id, outcome=outcome, ran=ran, limited=limited
        )
        if not done:
            raise LeaseLostError


async def _mirror_cancel(outer: ToolContext, inner: ToolContext) -> None:
    """Cancel a call's own context when its step is cancelled."""
    await outer.wait_cancelled()
    inner.cancel()


async def _cancelled_within(ctx: ToolContext, seconds: float) -> bool:
    """Wait `seconds`; True when the job was cancelled meanwhile."""
    try:
        async with asyncio.timeout(max(0.0, seconds)):
            await ctx.wait_cancelled()
    except TimeoutError:
        return False
    return True


def _short(text: str, size: int = 200) -> str:
    return text if len(text) <= size else text[: size - 1] + "…"


def _last_summary(transcript: Transcript) -> tuple[int, str] | None:
    """(the turn that carried it, the summary) of the latest summarized request, or None."""
    for turn in reversed(transcript.turns):
        if turn.summary is not None:
            return turn.turn - 1, turn.summary
    return None


def _messages(
    system: str,
    prompt: str,
    transcript: Transcript,
    summary: tuple[int, str] | None,
    rendered: dict[int, list[Message]] | None = None,
) -> list[Message]:
    """The request of the next turn: instructions, the task, a summary of the earlier turns if
    there is one, and the turns since, each with its calls' results in the order asked.
    `rendered` keeps the messages of turns whose calls all have their results (they do not
    change again), so a loop renders each turn once, not once a turn after it."""
    messages = [Message("system", system), Message("user", prompt)]
    first = 1
    if summary is not None:
        first = summary[0]
        messages.append(Message("user", f"# Summary of the work so far\n{summary[1]}"))
    for turn in transcript.turns:
        if turn.turn < first:
            continue
        kept = rendered.get(turn.turn) if rendered is not None else None
        if kept is None:
            kept, whole = _turn_messages(turn)
            if whole and rendered is not None:
                rendered[turn.turn] = kept
        messages += kept
    return messages


def _turn_messages(turn: AgentTurn) -> tuple[list[Message], bool]:
    """One turn's messages, and whether every call it asked for has its result in them."""
    calls = [
        ToolCall.from_text(str(c.get("id")), str(c.get("name")), str(c.get("arguments")))
        for c in turn.tool_calls
    ]
    if not calls:
        return [Message("assistant", turn.text)], True
    out = [Message.assistant_tool_calls(calls, turn.text)]
    results = {c.index: c for c in turn.calls}
    for index, asked in enumerate(calls):
        done = results.get(index)
        if done is None or done.status not in CALL_DONE:
            continue
        out.append(
            Message.tool_result(
                asked.id,
                done.answer(),
                is_error=done.status != CallStatus.SUCCEEDED.value,
            )
        )
    return out, len(out) == len(calls) + 1


def _render(turns: list[AgentTurn], summary: str | None) -> str:
    """Turns as text, for a summary."""
    lines = [f"Earlier summary: {summary}"] if summary else []
    for turn in turns:
        if turn.text:
            lines.append(f"Assistant (turn {turn.turn}): {turn.text}")
        for call in turn.calls:
            lines.append(f"Called {call.tool}({call.arguments}) -> {call.answer()}")
    return "\n".join(lines)


__all__ = ["ESCALATING_CODES", "AgentStepRunner", "LeaseLostError"]
