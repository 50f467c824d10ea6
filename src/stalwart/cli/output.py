"""Rendering for the CLI: rich tables for people, JSON for scripts, one line per error."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

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
