"""The gateway: every model call goes through here.

For each call it picks the model (the tier's chain, falling back on outages), answers from the
tenant's cache when the call is cacheable, reserves the worst case against the job's and the
tenant's budgets before the provider sees anything (a refusal raises `BudgetExceeded`), calls
the provider, settles the ledger row to the actual cost, validates structured output with
pydantic (re-asking with the validation errors, a bounded number of times, each re-ask budgeted
and in the ledger), and calls the alert hook once per budget that crosses its warning ratio.

Tool calling goes the same way: a call that offers `tools` may come back as a turn of tool calls
(`LlmResult.tool_calls`, not validated against the output schema, since it is no answer yet),
reserved, routed, settled and cached like any other call. The caller runs the tools and calls
again with the transcript (`Message.assistant_tool_calls`, `Message.tool_result`).

`embed` does the same for embeddings requests (one model, no fallback, no cache): reserve,
send, settle, with ledger rows of purpose `embedding`.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel, ValidationError

from stalwart.domain.agents import AgentTurn, TurnWrite
from stalwart.domain.budgets import (
    BudgetLine,
    BudgetRecord,
    BudgetWarning,
    CallResult,
    CallScope,
    NewCall,
    job_budget_key,
    tenant_budget_keys,
    to_nanos,
)
from stalwart.errors import BudgetExceeded, ConfigurationError, ErrorClass, SemanticError
from stalwart.llm.calls import EmbeddingResult, LlmCall, LlmResult
from stalwart.llm.embeddings import EMBEDDING_PURPOSE, EmbeddingModel
from stalwart.llm.pricing import Pricing
from stalwart.llm.routing import ModelRegistry, Router
from stalwart.llm.telemetry import chat_span, record_chat
from stalwart.llm.tokens import estimate_messages, estimate_tokens
from stalwart.llm.types import (
    Message,
    Model,
    ModelRequest,
    ModelResponse,
    ProviderError,
    ToolCall,
)
from stalwart.settings import Settings
from stalwart.types import canonical_hash

log = logging.getLogger("stalwart.llm")
AlertHook = Callable[[dict[str, Any]], Any]
T = TypeVar("T")
# A provider that hangs past its own timeout is cut off this much later.
GUARD_SECONDS = 5.0


class Ledger(Protocol):
    """The part of the store the gateway writes to (the `Store` protocol has it all)."""

    async def llm_reserve(self, call: NewCall, *, actor: str) -> int:
        """Reserve a call's worst case; raises `BudgetExceeded`."""
        ...

    async def llm_settle(
        self,
        call_id: int,
        result: CallResult,
        *,
        actor: str,
        warn_ratio: float = 0.8,
        turn: TurnWrite | None = None,
    ) -> list[BudgetWarning]:
        """Settle a reserved call (and record the agent turn it answered)."""
        ...

    async def llm_record(
        self,
        call: NewCall,
        result: CallResult,
        *,
        actor: str,
        refused_by: str | None = None,
    ) -> tuple[int, list[BudgetWarning]]:
        """Record a call that reserved nothing."""
        ...

    async def llm_cache_get(self, tenant_id: str, key: str) -> dict[str, Any] | None:
        """A cached answer, or None."""
        ...

    async def llm_cache_put(
        self,
        tenant_id: str,
        key: str,
        *,
        provider: str,
        model: str,
        response: dict[str, Any],
        ttl_seconds: float | None,
        actor: str,
    ) -> None:
        """Store an answer."""
        ...

    async def budget_list(
        self, *, tenant_id: str | None = None, keys: Sequence[str] | None = None
    ) -> list[BudgetRecord]:
        """Budget rows."""
        ...


@dataclass(slots=True)
class Reservation:
    """A request's ledger row reserved ahead (`Gateway.reservation`): `new` to reserve in the
    caller's transaction, `call_id` once reserved, `used` once its request went (or it was
    given back)."""

    ref: str
    new: NewCall
    call_id: int | None = None
    used: bool = False


class InvalidOutputError(SemanticError):
    """The model's answers did not match the output schema, after every re-ask."""


@dataclass(frozen=True, slots=True)
class TenantBudget:
    """A tenant's LLM spend limits per UTC day and month, in USD."""

    daily_usd: float | None = None
    monthly_usd: float | None = None


def parse_json(text: str) -> Any:
    """The JSON value in a model's answer: the whole text, else a fenced block, else the first
    `{...}` span. Raises ValueError when there is none."""
    stripped = text.strip()
    try:
        return json.loads(stripped)
    except ValueError:
        pass
    fenced = re.search(r"```(?:json)?\s*(.*?)```", stripped, re.DOTALL)
    if fenced:
        try:
            return json.loads(fenced.group(1))
        except ValueError:
            pass
    start, end = stripped.find("{"), stripped.rfind("}")
    if start != -1 and end > start:
        return json.loads(stripped[start : end + 1])
    raise ValueError("the answer holds no JSON object")


@functools.lru_cache(maxsize=256)
def schema_of(output: type[BaseModel]) -> dict[str, Any]:
    """The JSON schema sent to providers for `output` (built once per class: pydantic takes
    about 0.1 ms to build one). Callers must not change it."""
    return output.model_json_schema()


def _problems(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}"
            for e in exc.errors(include_url=False, include_input=False)
        )
    return str(exc)


class Gateway:
    """One gateway per process (the worker's, the client's)."""

    def __init__(
        self,
        *,
        store: Ledger,
        router: Router,
        models: ModelRegistry,
        pricing: Pricing,
        settings: Settings,
        tenant_budgets: dict[str, TenantBudget] | None = None,
        on_alert: AlertHook | None = None,
        actor: str = "gateway",
    ) -> None:
        self.store = store
        self.router = router
        self.models = models
        self.pricing = pricing
        self.settings = settings
        self.tenant_budgets = tenant_budgets or {}
        self.on_alert = on_alert
        self.actor = actor

    # -- scopes -------------------------------------------------------------------------------

    def scope(
        self,
        tenant_id: str,
        job_id: str,
        *,
        step_key: str | None = None,
        attempt: int = 0,
        purpose: str = "",
        job_max_usd: float | None = None,
        job_max_tokens: int | None = None,
    ) -> CallScope:
        """The scope of a call for a job: its ledger identity and the budgets it is charged to
        (the job's, the tenant's day and month). A call outside any job (`job_id` "", such as
        embedding documents from the CLI) is charged to the tenant's budgets only."""
        tenant = self.tenant_budgets.get(tenant_id) or TenantBudget(
            self.settings.tenant_daily_usd, self.settings.tenant_monthly_usd
        )
        day, month = tenant_budget_keys(tenant_id, time.time())
        lines: tuple[BudgetLine, ...] = (
            BudgetLine(day, tenant_id, "tenant_day", to_nanos(tenant.daily_usd)),
            BudgetLine(month, tenant_id, "tenant_month", to_nanos(tenant.monthly_usd)),
        )
        if job_id:
            job = BudgetLine(
                job_budget_key(job_id), tenant_id, "job", to_nanos(job_max_usd), job_max_tokens
            )
            lines = (job, *lines)
        return CallScope(tenant_id, job_id, step_key, attempt, purpose, lines)

    # -- calls --------------------------------------------------------------------------------

    async def call(
        self, call: LlmCall, scope: CallScope, *, reserved: Reservation | None = None
    ) -> LlmResult:
        """Make `call` for `scope`. Raises `BudgetExceeded` (nothing sent), `ProviderError`
        (every model of the chain failed; the last error) or `InvalidOutputError`. `reserved`:
        the first request's worst case, reserved ahead (`reservation`); a reservation the call
        does not use is given back."""
        try:
            return await self._call(call, scope, reserved)
        finally:
            if reserved is not None:
                await self.release(reserved)

    async def release(self, reservation: Reservation) -> None:
        """Give back a reservation made ahead whose request never went (nothing charged)."""
        if reservation.call_id is None or reservation.used:
            return
        reservation.used = True
        await self._finish(
            reservation.call_id,
            CallResult(
                "abandoned",
                error_class=ErrorClass.CANCELLED.value,
                error="reserved ahead and not sent",
            ),
        )

    async def reservation(self, call: LlmCall, scope: CallScope) -> Reservation:
        """The ledger row of `call`'s first request (its first model, its worst case), to
        reserve ahead in a transaction of the caller's (an agent loop reserves its next turn
        with the end of the call before it) and hand back to `call(..., reserved=)`."""
        tier = self.router.tier_for(call.purpose, call.tier)
        chain = list(call.models) if call.models else self.router.chain(tier)
        if not chain:
            raise ConfigurationError(f"tier {tier!r} routes no model")
        model = await self.models.ready(chain[0])
        request = self._request(model, call, scope, list(call.messages), 0)
        return Reservation(chain[0], self._reserve_for(model, tier, request, call, scope, 1))

    async def refused(self, reservation: Reservation, exc: BudgetExceeded) -> None:
        """Record a reservation made ahead that a budget refused, as `call` records its own."""
        _, warnings = await self.store.llm_record(
            reservation.new,
            CallResult("refused", error_class=ErrorClass.BUDGET.value, error=exc.message),
            actor=self.actor,
            refused_by=exc.budget,
        )
        await self._alert_all(warnings)

    async def _call(
        self, call: LlmCall, scope: CallScope, reserved: Reservation | None
    ) -> LlmResult:
        tier = self.router.tier_for(call.purpose, call.tier)
        chain = list(call.models) if call.models else self.router.chain(tier)
        seq = [0]
        last: ProviderError | None = None
        for ref in chain:
            try:
                ahead = reserved if reserved is not None and ref == reserved.ref else None
                return await self._with_model(ref, tier, call, scope, seq, ahead)
            except ProviderError as exc:
                if not exc.falls_back:
                    raise
                last = exc
                log.warning(
                    "model %s failed (%s); %s",
                    ref,
                    exc.message,
                    "trying the next model" if ref != chain[-1] else "no model left",
                    extra={"action": "llm_fallback", "job": scope.job_id, "step": scope.step_key},
                )
        assert last is not None
        raise last

    def _request(
        self, model: Model, call: LlmCall, scope: CallScope, messages: list[Message], ask: int
    ) -> ModelRequest:
        return ModelRequest(
            model=model.model,
            messages=tuple(messages),
            max_tokens=call.max_tokens,
            temperature=call.temperature,
            schema=schema_of(call.output) if call.output is not None else None,
            schema_name=call.output.__name__ if call.output is not None else "answer",
            timeout_seconds=self.settings.llm_timeout_seconds,
            meta={"step": scope.step_key, "purpose": call.purpose, "ask": ask},
            tools=tuple(call.tools),
            tool_choice=call.tool_choice,
            parallel_tool_calls=call.parallel_tool_calls,
        )

    async def _with_model(
        self,
        ref: str,
        tier: str,
        call: LlmCall,
        scope: CallScope,
        seq: list[int],
        ahead: Reservation | None = None,
    ) -> LlmResult:
        model = await self.models.ready(ref)
        messages = list(call.messages)
        reasks = self.settings.llm_max_reasks if call.max_reasks is None else call.max_reasks
        result = LlmResult("", None, None, model.provider, model.model, tier)
        problems = ""
        for ask in range(reasks + 1):
            request = self._request(model, call, scope, messages, ask)
            key = _cache_key(ref, request) if call.cacheable else None
            with chat_span(model, request, call, scope, tier, self.settings.trace_content) as span:
                cost_before = result.cost_nanos
                cached = await self._cached(model, tier, call, scope, seq, key, result)
                if cached is not None:
                    span.set_attribute("stalwart.cache_hit", True)
                    return cached
                response, call_id, started = await self._send(
                    model, tier, request, call, scope, seq, ahead if ask == 0 else None
                )
                latency = (time.perf_counter() - started) * 1000
                result.calls += 1
                try:
                    # A turn of tool calls is no answer yet: only a final answer is validated.
                    # A model that calls tools it was not offered is held to an answer.
                    data, output = (
                        (None, None)
                        if response.tool_calls and call.tools
                        else self._validate(response.text, call.output)
                    )
                    valid = True
                except (ValueError, ValidationError) as exc:
                    problems, valid = _problems(exc), False
                turn = _turn(call, response, model, call_id) if valid and call.checkpoint else None
                await self._settle(
                    call_id,
                    response,
                    model,
                    latency,
                    scope,
                    result,
                    None if valid else problems,
                    turn,
                )
                record_chat(
                    span,
                    response,
                    result.cost_nanos - cost_before,
                    None if valid else "invalid_output",
                    content=self.settings.trace_content,
                )
            if not valid:
                messages += [
                    Message("assistant", response.text),
                    Message(
                        "user",
                        "Your answer does not match the required JSON schema: "
                        f"{problems}. Answer again with only a JSON object that matches it.",
                    ),
                ]
                continue
            if key is not None:
                await self.store.llm_cache_put(
                    scope.tenant_id,
                    key,
                    provider=model.provider,
                    model=model.model,
                    response=_cached_response(response),
                    ttl_seconds=self.settings.llm_cache_ttl_seconds,
                    actor=self.actor,
                )
            result.text, result.data, result.output = response.text, data, output
            result.tool_calls = response.tool_calls if call.tools else ()
            result.finish_reason = response.finish_reason
            result.checkpointed = call.checkpoint is not None
            result.input_tokens, result.output_tokens = (
                response.input_tokens,
                response.output_tokens,
            )
            result.model = response.model or model.model
            return result
        raise InvalidOutputError(
            f"{ref} did not answer in the {call.output.__name__ if call.output else ''} schema "
            f"after {reasks + 1} tries: {problems}",
            code="invalid_output",
            details={"model": ref, "tries": reasks + 1, "problems": problems},
        )

    # -- embeddings -------------------------------------------------------------------------

    async def embed(
        self,
        model_ref: str,
        texts: Sequence[str],
        scope: CallScope,
        *,
        dimensions: int | None = None,
    ) -> EmbeddingResult:
        """Embed `texts` with one request to `model_ref`, for `scope`.

        The worst case (every text's high token estimate at list price) is reserved against the
        scope's budgets first: a refusal raises `BudgetExceeded` and nothing is sent. The ledger
        row, purpose `embedding`, is settled to the input tokens the provider reports. There is
        no fallback (another model's vectors would not be comparable) and no cache. Raises
        `ProviderError` as chat calls do, `ConfigurationError` when the model cannot embed.
        """
        model = await self._embedding_model(model_ref)
        if not texts:
            return EmbeddingResult([], model.provider, model.model)
        scope = replace(scope, purpose=EMBEDDING_PURPOSE)
        estimate = sum(estimate_tokens(text) for text in texts)
        worst = self.pricing.worst_case_nanos(
            model.provider, model.model, input_tokens=estimate, max_output_tokens=0
        )
        call_id = await self._reserve(
            self._new_call(model, None, scope, 1, worst or 0, estimate, None)
        )
        timeout = self.settings.llm_timeout_seconds
        started = time.perf_counter()
        response = await self._guarded(
            call_id,
            model,
            timeout,
            started,
            lambda: model.embed(texts, dimensions=dimensions, timeout_seconds=timeout),
        )
        cost = self.pricing.cost_nanos(
            model.provider, model.model, input_tokens=response.input_tokens, output_tokens=0
        )
        warnings = await self._finish(
            call_id,
            CallResult(
                "ok",
                input_tokens=response.input_tokens,
                cost_nanos=cost or 0,
                priced=cost is not None,
                latency_ms=(time.perf_counter() - started) * 1000,
                model=response.model or None,
            ),
        )
        await self._alert_all(warnings)
        return EmbeddingResult(
            response.vectors,
            model.provider,
            response.model or model.model,
            response.input_tokens,
            cost or 0,
            warnings,
        )

    async def _embedding_model(self, ref: str) -> EmbeddingModel:
        model = await self.models.ready(ref)
        if not isinstance(model, EmbeddingModel):
            raise ConfigurationError(
                f"model {ref!r} cannot embed: use an openai: model or one of an "
                "OpenAI-compatible endpoint (kind 'openai' in STALWART_LLM_ENDPOINTS)",
                field="embedder",
            )
        return model

    @staticmethod
    def _validate(text: str, output: type[BaseModel] | None) -> tuple[Any, BaseModel | None]:
        if output is None:
            return text, None
        data = parse_json(text)
        model = output.model_validate(data)
        return model.model_dump(mode="json"), model

    async def _cached(
        self,
        model: Model,
        tier: str,
        call: LlmCall,
        scope: CallScope,
        seq: list[int],
        key: str | None,
        result: LlmResult,
    ) -> LlmResult | None:
        if key is None:
            return None
        hit = await self.store.llm_cache_get(scope.tenant_id, key)
        if hit is None:
            return None
        try:
            calls = tuple(
                ToolCall.from_text(str(c["id"]), str(c["name"]), str(c["arguments"]))
                for c in (hit.get("tool_calls") or () if call.tools else ())
            )
            data, output = (None, None) if calls else self._validate(hit["text"], call.output)
        except (ValueError, ValidationError, KeyError, TypeError):
            return None  # a cached answer the schema no longer accepts is a miss
        seq[0] += 1
        await self.store.llm_record(
            self._new_call(model, tier, scope, seq[0], 0, 0, call),
            CallResult(
                "cached",
                input_tokens=int(hit.get("input_tokens", 0)),
                output_tokens=int(hit.get("output_tokens", 0)),
                cache_hit=True,
                latency_ms=0.0,
                model=hit.get("model"),
            ),
            actor=self.actor,
        )
        result.text, result.data, result.output, result.cache_hit = hit["text"], data, output, True
        result.tool_calls, result.finish_reason = calls, hit.get("finish_reason")
        return result

    def _new_call(
        self,
        model: Model | EmbeddingModel,
        tier: str | None,
        scope: CallScope,
        seq: int,
        nanos: int,
        tokens: int,
        call: LlmCall | None,
    ) -> NewCall:
        return NewCall(
            scope=scope,
            seq=seq,
            provider=model.provider,
            model=model.model,
            tier=tier,
            reserved_nanos=nanos,
            reserved_tokens=tokens,
            expires_in=self.settings.llm_timeout_seconds + GUARD_SECONDS + 60.0,
            context_tokens=call.context_tokens if call is not None else None,
            context_limit=call.context_limit if call is not None else None,
        )

    async def _send(
        self,
        model: Model,
        tier: str,
        request: ModelRequest,
        call: LlmCall,
        scope: CallScope,
        seq: list[int],
        ahead: Reservation | None = None,
    ) -> tuple[ModelResponse, int, float]:
        seq[0] += 1
        if ahead is not None and ahead.call_id is not None and not ahead.used:
            ahead.used = True  # reserved with the caller's own write: the request goes now
            call_id = ahead.call_id
        else:
            call_id = await self._reserve(
                self._reserve_for(model, tier, request, call, scope, seq[0])
            )
        started = time.perf_counter()
        response = await self._guarded(
            call_id, model, request.timeout_seconds, started, lambda: model.complete(request)
        )
        return response, call_id, started

    def _reserve_for(
        self,
        model: Model,
        tier: str,
        request: ModelRequest,
        call: LlmCall,
        scope: CallScope,
        seq: int,
    ) -> NewCall:
        """The ledger row of `request`, reserving its worst case: its input estimate (messages,
        schema, tools) and `max_tokens` of output at list price."""
        estimate = estimate_messages(request.messages, request.schema, request.tools)
        worst = self.pricing.worst_case_nanos(
            model.provider, model.model, input_tokens=estimate, max_output_tokens=call.max_tokens
        )
        return self._new_call(model, tier, scope, seq, worst or 0, estimate + call.max_tokens, call)

    async def _reserve(self, new: NewCall) -> int:
        """Reserve `new`'s worst case; a refusal is recorded in the ledger, warns, and raises
        `BudgetExceeded`."""
        # On its own task: a cancellation of the caller must not lose the id of a reservation
        # that commits all the same (PostgreSQL's runs on a thread), or it holds its worst case
        # until the reaper's expiry.
        reserving = asyncio.ensure_future(self.store.llm_reserve(new, actor=self.actor))
        try:
            return await asyncio.shield(reserving)
        except asyncio.CancelledError:
            # Cancelled before the request was sent: nothing is charged.
            if not reserving.cancelled():
                await _uncancellable(self._abandon(reserving))
            raise
        except BudgetExceeded as exc:
            _, warnings = await self.store.llm_record(
                new,
                CallResult("refused", error_class=ErrorClass.BUDGET.value, error=exc.message),
                actor=self.actor,
                refused_by=exc.budget,
            )
            await self._alert_all(warnings)
            raise

    async def _guarded(
        self,
        call_id: int,
        model: Model | EmbeddingModel,
        timeout_seconds: float,
        started: float,
        send: Callable[[], Awaitable[T]],
    ) -> T:
        """Await the provider, cut off `GUARD_SECONDS` after its own timeout. A failure settles
        the reserved row as an error and raises `ProviderError`. A cancellation (or the process
        exiting: `SystemExit`, `KeyboardInterrupt`) is no provider error and is re-raised as it
        is, once the row is settled `cancelled`: the request may have reached the provider,
        which may bill it, so the call is charged the worst case it reserved."""
        try:
            async with asyncio.timeout(timeout_seconds + GUARD_SECONDS):
                return await send()
        except Exception as exc:
            error = _as_provider_error(exc, model)
            await self._finish(
                call_id,
                CallResult(
                    "error",
                    latency_ms=(time.perf_counter() - started) * 1000,
                    error_class=error.error_class.value,
                    error=error.message,
                ),
            )
            raise error from exc
        except GeneratorExit:
            raise  # the coroutine is being closed: it may not await any more
        except BaseException as exc:
            await self._finish(
                call_id,
                CallResult(
                    "cancelled",
                    latency_ms=(time.perf_counter() - started) * 1000,
                    error_class=ErrorClass.CANCELLED.value,
                    error=f"{type(exc).__name__} after the request may have been sent: "
                    "charged the worst case it reserved",
                ),
            )
            raise

    async def _finish(
        self, call_id: int, result: CallResult, turn: TurnWrite | None = None
    ) -> list[BudgetWarning]:
        """Settle a reserved call to its end, even if the caller is cancelled meanwhile; with
        `turn`, the agent turn it answered is recorded in the same transaction."""
        if turn is None:  # the ledger's own signature, for stores that know no agent turns
            settling = self.store.llm_settle(
                call_id, result, actor=self.actor, warn_ratio=self.settings.budget_warning_ratio
            )
        else:
            settling = self.store.llm_settle(
                call_id,
                result,
                actor=self.actor,
                warn_ratio=self.settings.budget_warning_ratio,
                turn=turn,
            )
        return await _uncancellable(settling)

    async def _abandon(self, reserving: Awaitable[int]) -> None:
        """Give back a reservation whose caller was cancelled before the request was sent."""
        try:
            call_id = await reserving
        except Exception:
            return  # refused or failed: nothing is held
        await self._finish(
            call_id,
            CallResult(
                "abandoned",
                error_class=ErrorClass.CANCELLED.value,
                error="cancelled before the request was sent",
            ),
        )

    async def _settle(
        self,
        call_id: int,
        response: ModelResponse,
        model: Model,
        latency_ms: float,
        scope: CallScope,
        result: LlmResult,
        problems: str | None,
        turn: TurnWrite | None = None,
    ) -> None:
        cost = self.pricing.cost_nanos(
            model.provider,
            model.model,
            input_tokens=response.input_tokens,
            output_tokens=response.output_tokens,
            cached_tokens=response.cached_tokens,
        )
        warnings = await self._finish(
            call_id,
            CallResult(
                "invalid_output" if problems else "ok",
                input_tokens=response.input_tokens,
                output_tokens=response.output_tokens,
                cached_tokens=response.cached_tokens,
                cost_nanos=cost or 0,
                priced=cost is not None,
                latency_ms=latency_ms,
                error_class=ErrorClass.SEMANTIC.value if problems else None,
                error=problems,
                model=response.model or None,
            ),
            turn
            if turn is None
            else TurnWrite(
                turn.checkpoint,
                replace(turn.turn, cost_nanos=result.cost_nanos + (cost or 0)),
            ),
        )
        result.cost_nanos += cost or 0
        result.warnings += warnings
        await self._alert_all(warnings)

    async def _alert_all(self, warnings: Sequence[BudgetWarning]) -> None:
        for warning in warnings:
            await self._alert({"kind": "budget_warning", **warning.to_dict()})

    async def _alert(self, alert: dict[str, Any]) -> None:
        log.warning(
            "budget %s at %.0f%% of its limit",
            alert.get("key"),
            100 * float(alert.get("ratio", 0)),
            extra={"action": "budget_warning", "job": alert.get("job_id")},
        )
        if self.on_alert is None:
            return
        try:
            outcome = self.on_alert(alert)
            if inspect.isawaitable(outcome):
                await outcome
        except Exception:  # an alert hook must never fail the call that triggered it
            log.exception("the alert hook failed", extra={"action": "alert_hook_failed"})

    async def warm(self) -> list[str]:
        """Make every routed model now, off the event loop, so that no step pays for it (nor
        stalls its worker's heartbeats) later; a worker calls this before it claims work.
        A model that cannot be made is logged and left to fail its first call, as it would
        have. Returns the references made."""
        made = []
        for ref in dict.fromkeys(r for tier in self.router.routes.values() for r in tier):
            if self.models.made(ref):
                continue
            try:
                await self.models.ready(ref)
            except Exception as exc:
                log.warning(
                    "model %s cannot be made: %s",
                    ref,
                    getattr(exc, "message", None) or exc,
                    extra={"action": "model_unavailable", "model": ref},
                )
                continue
            made.append(ref)
        return made

    async def close(self) -> None:
        """Close the models' connections."""
        await self.models.close()


async def _uncancellable(work: Awaitable[T]) -> T:
    """Await `work` to its end even when the caller is cancelled meanwhile (once or more), then
    raise the cancellation. For the ledger's writes: a reservation or settlement cut off halfway
    leaves its row holding money until the reaper's expiry (decision 0034). A failure of `work`
    after a cancellation is logged, and the cancellation raised."""
    task = asyncio.ensure_future(work)
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(task)
            break
        except asyncio.CancelledError:
            if task.done():  # `work` itself was cancelled (its loop is closing)
                raise
            cancelled = True
        except Exception:
            if not cancelled:
                raise
            log.warning(
                "a cancelled call could not be settled",
                exc_info=True,
                extra={"action": "llm_settle_failed"},
            )
            break
    if cancelled:
        raise asyncio.CancelledError
    return result


def _turn(call: LlmCall, response: ModelResponse, model: Model, call_id: int) -> TurnWrite:
    """The agent turn `response` answers, to record with its settle (cost set there), with
    the first call the loop would start at once."""
    assert call.checkpoint is not None
    calls = [c.to_dict() for c in response.tool_calls] if call.tools else []
    first = call.checkpoint.first_call
    return TurnWrite(
        call.checkpoint,
        AgentTurn(
            turn=call.checkpoint.turn,
            attempt=call.checkpoint.attempt,
            text=response.text,
            tool_calls=calls,
            finish_reason=response.finish_reason,
            provider=model.provider,
            model=response.model or model.model,
            input_tokens=response.input_tokens,
            output_tokens=response.output_tokens,
            llm_call_id=call_id,
            summary=call.checkpoint.summary,
        ),
        first(calls) if first is not None and calls else None,
    )


def _as_provider_error(exc: Exception, model: Model | EmbeddingModel) -> ProviderError:
    if isinstance(exc, ProviderError):
        return exc
    if isinstance(exc, TimeoutError):
        return ProviderError(
            f"{model.provider}:{model.model} did not answer in time",
            provider=model.provider,
            model=model.model,
            code="timeout",
        )
    return ProviderError(
        f"{model.provider}:{model.model} failed with an unexpected {type(exc).__name__}: {exc}",
        error_class=ErrorClass.NON_RETRIABLE,
        provider=model.provider,
        model=model.model,
        code="unexpected_exception",
    )


def _cache_key(ref: str, request: ModelRequest) -> str:
    """The hash of everything that decides the answer: the whole transcript (tool calls and
    results included), the schema, the tools offered and how."""
    key: dict[str, Any] = {
        "model": ref,
        "messages": [m.to_dict() for m in request.messages],
        "schema": request.schema,
        "schema_name": request.schema_name,
        "max_tokens": request.max_tokens,
        "temperature": request.temperature,
    }
    if request.tools or request.tool_choice is not None or request.parallel_tool_calls is not None:
        # Only then: a call without tools keeps the key it always had.
        key["tools"] = [tool.to_dict() for tool in request.tools]
        key["tool_choice"] = request.tool_choice
        key["parallel_tool_calls"] = request.parallel_tool_calls
    return canonical_hash(key)


def _cached_response(response: ModelResponse) -> dict[str, Any]:
    """What the cache keeps of an answer: its text and usage, and its tool calls if any."""
    cached: dict[str, Any] = {
        "text": response.text,
        "input_tokens": response.input_tokens,
        "output_tokens": response.output_tokens,
        "model": response.model,
    }
    if response.tool_calls:
        cached["tool_calls"] = [call.to_dict() for call in response.tool_calls]
        cached["finish_reason"] = response.finish_reason
    return cached


__all__ = [
    "EmbeddingResult",
    "Gateway",
    "InvalidOutputError",
    "LlmCall",
    "LlmResult",
    "Reservation",
    "TenantBudget",
    "parse_json",
]
