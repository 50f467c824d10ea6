"""Rendering for the CLI: rich tables for people, JSON for scripts, one line per error."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from stalwart.domain.agents import AgentCall, CallStatus, Transcript
from stalwart.domain.budgets import to_usd
from stalwart.types import to_datetime

STATUS_STYLE = {
    "completed": "green",
    "succeeded": "green",
    "approved": "green",
    "executing": "cyan",
    "running": "cyan",
    "ready": "cyan",
    "waiting_approval": "yellow",
    "awaiting_approval": "yellow",
    "pending": "dim",
    "retry_wait": "yellow",
    "escalated": "magenta",
    "interrupted": "magenta",
    "dead_lettered": "red",
    "failed": "red",
    "rejected": "red",
    "cancelled": "dim",
    "skipped": "dim",
    "open": "red",
    "invalid": "yellow",
    "refused": "red",
}

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def status(text: str | None) -> str:
    """A status word, coloured."""
    if not text:
        return ""
    style = STATUS_STYLE.get(text)
    return f"[{style}]{text}[/]" if style else text


def when(epoch: float | None) -> str:
    """A time as 'YYYY-mm-dd HH:MM:SS (3m ago)'."""
    moment = to_datetime(epoch)
    if moment is None:
        return ""
    return f"{moment:%Y-%m-%d %H:%M:%S} ({ago(epoch)})"


def ago(epoch: float | None) -> str:
    """A relative time: '12s ago', 'in 4m'."""
    if epoch is None:
        return ""
    delta = time.time() - epoch
    future = delta < 0
    delta = abs(delta)
    if delta < 60:
        text = f"{delta:.0f}s"
    elif delta < 3600:
        text = f"{delta / 60:.0f}m"
    elif delta < 86400:
        text = f"{delta / 3600:.1f}h"
    else:
        text = f"{delta / 86400:.1f}d"
    return f"in {text}" if future else f"{text} ago"


def table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> Table:
    """A plain rich table."""
    grid = Table(title=title, title_justify="left", header_style="bold")
    for column in columns:
        grid.add_column(column, overflow="fold")
    for row in rows:
        grid.add_row(*("" if v is None else str(v) for v in row))
    return grid


def dump_json(value: Any) -> None:
    """Print JSON for scripts (to stdout, nothing else)."""
    print(json.dumps(value, indent=2, default=str, ensure_ascii=False))


def short(value: Any, limit: int = 80) -> str:
    """Compact JSON of a value, cut to `limit` characters."""
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def usd(nanos: int | None) -> str:
    """An amount of nano-dollars as `$0.000123`; `-` when there is none."""
    amount = to_usd(nanos)
    return "-" if amount is None else f"${amount:.6f}"


def one_line(value: Any, limit: int = 80) -> str:
    """`short`, on one line (newlines and runs of blanks become one space), escaped for rich
    markup: for text that a model or a tool wrote."""
    return escape(short(" ".join(value.split()) if isinstance(value, str) else value, limit))


def transcript(t: Transcript, *, limit: int = 100) -> list[str]:
    """An agent step's transcript as lines of rich markup: a head line with its totals, then
    each turn (model, tokens, cost), the model's text, and each tool call as
    `tool(arguments) -> status: result or error`. What the model and the tools wrote is escaped
    and cut to `limit` characters."""
    tokens = sum(turn.input_tokens + turn.output_tokens for turn in t.turns)
    nanos = sum(turn.cost_nanos for turn in t.turns)
    turns = "1 turn" if len(t.turns) == 1 else f"{len(t.turns)} turns"
    lines = [f"[bold]agent {escape(t.step_key)}[/]: {turns}, {tokens} tokens, {usd(nanos)}"]
    if not t.turns:
        lines[0] += "  [dim](no turn yet)[/]"
    for turn in t.turns:
        model = escape(f"{turn.provider}:{turn.model}" if turn.provider else turn.model or "-")
        line = (
            f"  turn {turn.turn}  {model}  {turn.input_tokens} in / {turn.output_tokens} out  "
            f"{usd(turn.cost_nanos)}"
        )
        if turn.attempt > 1:
            line += f"  [dim](attempt {turn.attempt})[/]"
        if turn.summary:
            line += "  [dim](asked with a summary of the turns before)[/]"
        lines.append(line)
        if turn.text.strip():
            lines.append(f"    [dim]>[/] {one_line(turn.text, limit)}")
        lines += [f"    {call_line(call, limit=limit)}" for call in turn.calls]
    return lines


def call_line(call: AgentCall, *, limit: int = 100) -> str:
    """One tool call of an agent loop: `tool(arguments) -> status: what came of it`."""
    parsed = call.parsed()
    args = one_line(call.arguments if parsed is None else parsed, limit // 2)
    head = f"{escape(call.tool)}({args}) -> {status(call.status)}"
    decision = call.decision or {}
    who = f" by {escape(str(decision['reviewer']))}" if decision.get("reviewer") else ""
    if call.status == CallStatus.SUCCEEDED.value:
        return f"{head}: {one_line(call.result, limit)}"
    if call.status == CallStatus.AWAITING_APPROVAL.value:
        return f"{head}: waits for review {escape(call.review_id or '?')}"
    if call.status == CallStatus.APPROVED.value:
        return f"{head}{who}: runs when the step is claimed again"
    if call.status == CallStatus.REJECTED.value:
        comment = decision.get("comment")
        return f"{head}{who}" + (f": {one_line(comment, limit)}" if comment else "")
    if call.error:
        code = call.error.get("code") or call.error.get("error_class")
        message = call.error.get("message") or call.error
        return f"{head}: " + (f"{escape(str(code))}: " if code else "") + one_line(message, limit)
    if call.status == CallStatus.RUNNING.value:
        return f"{head} [dim](attempt {call.attempts})[/]"
    return head
