"""Token estimates without a tokenizer: deliberately high, because a reservation must cover the
worst case.

BPE tokenizers of the models we route to average about four characters of English per token;
`estimate_tokens` counts one token per three characters (plus a small overhead per message), so
the estimate sits above the count a provider reports for ordinary text. The ledger always
records the provider's own figures; only reservations use the estimate.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from stalwart.llm.types import Message, ToolSpec

CHARS_PER_TOKEN = 3
MESSAGE_OVERHEAD = 4


def estimate_tokens(text: str) -> int:
    """A high estimate of the tokens in `text`."""
    return -(-len(text) // CHARS_PER_TOKEN)


def estimate_messages(
    messages: Iterable[Message],
    schema: dict[str, Any] | None = None,
    tools: Iterable[ToolSpec] = (),
) -> int:
    """A high estimate of the input tokens of a request: messages (with the tool calls of
    assistant turns), their overhead, the schema, the tools offered."""
    total = 0
    for m in messages:
        total += estimate_tokens(m.content) + MESSAGE_OVERHEAD
        for call in m.tool_calls:
            total += estimate_tokens(call.name) + estimate_tokens(call.arguments) + MESSAGE_OVERHEAD
    if schema is not None:
        total += estimate_tokens(json.dumps(schema, separators=(",", ":")))
    for tool in tools:
        total += estimate_tokens(json.dumps(tool.to_dict(), separators=(",", ":")))
    return total + MESSAGE_OVERHEAD
