"""`ScriptedModel`: an offline stand-in for a language model, for tests and the demo.

It is not a model and never pretends to be one: its provider is `scripted`, it costs nothing
(unless you price it in settings), and it answers only what its script says. Answers are chosen,
in order, by the step the call is for (`on_step`), then by the first matching rule (`when`), then
by the default. An answer is a string, a dict (sent as JSON), a pydantic model, a function of the
request that returns one of those, a `CallTools` (a turn that calls tools), or a
`ProviderError` to raise (to rehearse outages).

```python
model = ScriptedModel("demo")
model.on_step("extract", {"vendor": "acme", "amount": 250.0, ...})
model.when(r"summar", "a short summary")          # a regex over the last user message
model.when(lambda req: req.meta.get("purpose") == "evaluation", {"passed": True})
app.model("scripted:demo", model)

# an agent's turns: call two tools at once, then answer
model.on_step(
    "research",
    CallTools(("search", {"q": "acme"}), ("lookup", {"id": 7})),
    {"answer": "acme is a customer"},
)
```
"""

from __future__ import annotations

import itertools
import json
import re
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, TypeAlias

from pydantic import BaseModel

from stalwart.llm.types import ModelRequest, ModelResponse, ProviderError, ToolCall


class CallTools:
    """A scripted turn that calls tools: each call a `(name, arguments)` pair, where the
    arguments are a dict or raw JSON text (text that does not parse rehearses a model's broken
    JSON); `text` is any text the model writes alongside. The calls get ids `call_1`, `call_2`,
    ... in the order the model makes them."""

    def __init__(self, *calls: tuple[str, Mapping[str, Any] | str], text: str = "") -> None:
        if not calls:
            raise ValueError("CallTools needs at least one (name, arguments) call")
        self.calls = calls
        self.text = text


Answer: TypeAlias = (
    str | dict[str, Any] | BaseModel | CallTools | ProviderError | Callable[[ModelRequest], Any]
)
Matcher: TypeAlias = str | Callable[[ModelRequest], bool]


def _tokens(text: str) -> int:
    return -(-len(text) // 4)


class ScriptedModel:
    """A scripted offline model (provider `scripted`). Every request is kept in `requests`."""

    provider = "scripted"

    def __init__(self, name: str = "default", *, default: Answer | None = None) -> None:
        self.model = name
        self.default = default
        self.requests: list[ModelRequest] = []
        self._by_step: dict[str, deque[Answer]] = {}
        self._rules: list[tuple[Matcher, Answer]] = []
        self._call_ids = itertools.count(1)

    def on_step(self, step: str, *answers: Answer) -> ScriptedModel:
        """Answer calls made for step `step` with `answers`, one per call, in order; the last
        one repeats."""
        self._by_step.setdefault(step, deque()).extend(answers)
        return self

    def when(self, matcher: Matcher, answer: Answer) -> ScriptedModel:
        """Answer calls that `matcher` accepts (a regex searched in the last user message, or a
        predicate on the request) with `answer`."""
        self._rules.append((matcher, answer))
        return self

    def _choose(self, request: ModelRequest) -> Answer:
        step = str(request.meta.get("step") or "")
        queue = self._by_step.get(step)
        if queue:
            return queue.popleft() if len(queue) > 1 else queue[0]
        last = next((m.content for m in reversed(request.messages) if m.role == "user"), "")
        for matcher, answer in self._rules:
            hit = re.search(matcher, last) if isinstance(matcher, str) else matcher(request)
            if hit:
                return answer
        if self.default is not None:
            return self.default
        raise ProviderError(
            f"scripted model {self.model!r} has no answer for step {step or '-'!r} "
            f"(purpose {request.meta.get('purpose') or '-'!r}); add one with on_step() or when()",
            error_class="non_retriable",
            provider=self.provider,
            model=self.model,
            code="no_scripted_answer",
        )

    async def complete(self, request: ModelRequest) -> ModelResponse:
        """Answer from the script."""
        self.requests.append(request)
        answer = self._choose(request)
        if callable(answer) and not isinstance(answer, BaseModel):
            answer = answer(request)
        if isinstance(answer, ProviderError):
            raise answer
        calls: tuple[ToolCall, ...] = ()
        if isinstance(answer, CallTools):
            calls = tuple(self._tool_call(name, arguments) for name, arguments in answer.calls)
            text = answer.text
        elif isinstance(answer, BaseModel):
            text = answer.model_dump_json()
        elif isinstance(answer, dict):
            text = json.dumps(answer)
        else:
            text = str(answer)
        prompt = sum(
            _tokens(m.content) + 3 + sum(_tokens(c.arguments) for c in m.tool_calls)
            for m in request.messages
        )
        written = text + "".join(call.name + call.arguments for call in calls)
        return ModelResponse(
            text=text,
            input_tokens=prompt,
            output_tokens=min(_tokens(written), request.max_tokens),
            model=self.model,
            finish_reason="tool_calls" if calls else "stop",
            tool_calls=calls,
        )

    def _tool_call(self, name: str, arguments: Mapping[str, Any] | str) -> ToolCall:
        call_id = f"call_{next(self._call_ids)}"
        if isinstance(arguments, str):
            return ToolCall.from_text(call_id, name, arguments)
        return ToolCall.from_object(call_id, name, arguments)

    async def close(self) -> None:
        """Nothing to release."""
