"""Working memory: the context an LLM step sees (the job's input and the outputs it depends on),
with a token estimate. When the context passes its share of the step's window, the oldest part
is compressed by a summarization call, so long jobs do not overflow the model."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from stalwart.llm.tokens import estimate_tokens


@dataclass(frozen=True, slots=True)
class MemoryItem:
    """One piece of context: a label (`input`, `steps.fetch.output`) and its text."""

    label: str
    text: str

    @property
    def tokens(self) -> int:
        """Estimated tokens of the rendered item."""
        return estimate_tokens(self.label) + estimate_tokens(self.text) + 4


class WorkingMemory:
    """A job's context for one LLM step, oldest first."""

    def __init__(self, items: list[MemoryItem], *, window: int, ratio: float) -> None:
        self.items = items
        self.window = window
        self.limit = int(window * ratio)
        self.summarized: list[str] = []

    @classmethod
    def for_step(
        cls,
        job_input: Any,
        outputs: dict[str, Any],
        *,
        mode: str,
        window: int,
        ratio: float,
        order: list[str] | None = None,
    ) -> WorkingMemory:
        """The context of a step: nothing (`none`), or the job input plus the outputs of the
        steps it depends on, in `order` (its `depends_on`; the oldest first), then any other."""
        items: list[MemoryItem] = []
        if mode != "none":
            rank = {key: n for n, key in enumerate(order or [])}
            keys = sorted(outputs, key=lambda k: (rank.get(k, len(rank)), k))
            items.append(MemoryItem("input", _text(job_input)))
            items += [MemoryItem(f"steps.{k}.output", _text(outputs[k])) for k in keys]
        return cls(items, window=window, ratio=ratio)

    @property
    def tokens(self) -> int:
        """Estimated tokens of the whole context."""
        return sum(item.tokens for item in self.items)

    def render(self) -> str:
        """The context as text for the prompt."""
        return "\n\n".join(f"## {item.label}\n{item.text}" for item in self.items)

    async def fit(self, summarize: Callable[[str, int], Awaitable[str]], *, reserve: int) -> bool:
        """Compress the oldest items into one summary when the context plus `reserve` tokens
        (the prompt, the answer) passes the limit. Returns whether it did."""
        if self.tokens + reserve <= self.limit or len(self.items) < 2:
            return False
        budget = max(self.limit - reserve, self.limit // 4)
        old: list[MemoryItem] = []
        while len(self.items) > 1 and sum(i.tokens for i in self.items) > budget // 2:
            old.append(self.items.pop(0))
        if not old:
            return False
        text = "\n\n".join(f"## {item.label}\n{item.text}" for item in old)
        summary = await summarize(text, max(64, budget // 2))
        labels = ", ".join(item.label for item in old)
        self.items.insert(0, MemoryItem(f"summary of {labels}", summary.strip()))
        self.summarized = [item.label for item in old]
        return True


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, sort_keys=True, indent=1)
