"""Limits shared by every worker: concurrency caps, rate limits and circuit breakers.

A limit belongs to a key: `tool:<name>` (every step of that tool, whatever the job) or
`tenant:<id>` (every step of that tenant's jobs). The store enforces them while it claims, in the
claim's own transaction, so what one worker takes another cannot: a cap is a set of slot rows
(`cap` of them) and a running step holds one; a rate limit is a token bucket row; a breaker is a
small state machine on the key's row. A step that a limit holds back stays ready (delayed, never
failed, no attempt used) and runs when the limit lets it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from stalwart.domain.records import json_ready
from stalwart.errors import ConfigurationError

RATE_UNITS = {"s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "hour": 3600.0}
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(\d+(?:\.\d+)?)?\s*([a-z]+)\s*$")
_KEY = re.compile(r"^(tool|tenant):[^\s]+$")


class BreakerState(StrEnum):
    """Closed: calls flow. Open: calls wait for the cool-down. Half-open: one probe runs."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


# The breaker's transitions: failures open it, the cool-down lets one probe through, the probe's
# outcome closes or re-opens it.
BREAKER_TRANSITIONS: dict[BreakerState, frozenset[BreakerState]] = {
    BreakerState.CLOSED: frozenset({BreakerState.OPEN}),
    BreakerState.OPEN: frozenset({BreakerState.HALF_OPEN}),
    BreakerState.HALF_OPEN: frozenset({BreakerState.CLOSED, BreakerState.OPEN}),
}


def tool_key(name: str) -> str:
    """The limit key of a tool."""
    return f"tool:{name}"


def tenant_key(tenant_id: str) -> str:
    """The limit key of a tenant."""
    return f"tenant:{tenant_id}"


def parse_rate(value: str | float, *, field: str = "rate_limit") -> float:
    """`"20/s"`, `"600/min"`, `"5/10s"`, or a number per second, as events per second."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        if value <= 0:
            raise ConfigurationError(f"{field} must be positive, got {value}", field=field)
        return float(value)
    match = _RATE.match(str(value).lower())
    if not match or match.group(3) not in RATE_UNITS:
        raise ConfigurationError(
            f"{field} {value!r} is not a rate; write it like '20/s', '600/min' or '5/10s'",
            field=field,
        )
    count = float(match.group(1))
    per = float(match.group(2) or 1) * RATE_UNITS[match.group(3)]
    if count <= 0:
        raise ConfigurationError(f"{field} {value!r} must allow at least one event", field=field)
    return count / per


@dataclass(frozen=True, slots=True)
class Breaker:
    """Open after `failures` failed attempts within `window` seconds; after `cooldown` seconds
    let one probe through: its success closes the breaker, its failure opens it again."""

    failures: int = 5
    window: float = 60.0
    cooldown: float = 30.0

    def __post_init__(self) -> None:
        if self.failures < 1:
            raise ConfigurationError("breaker failures must be 1 or more", field="failures")
        if self.window <= 0 or self.cooldown <= 0:
            raise ConfigurationError(
                "breaker window and cooldown must be positive seconds", field="window"
            )


@dataclass(frozen=True, slots=True)
class LimitSpec:
    """The limits of one key, as an app declares them."""

    key: str
    concurrency: int | None = None
    rate: float | None = None
    burst: float | None = None
    breaker: Breaker | None = None

    def __post_init__(self) -> None:
        if not _KEY.match(self.key):
            raise ConfigurationError(
                f"limit key {self.key!r} must be 'tool:<name>' or 'tenant:<id>'", field="key"
            )
        if self.concurrency is not None and self.concurrency < 1:
            raise ConfigurationError(
                f"{self.key}: concurrency must be 1 or more (or None for no cap)",
                field="concurrency",
            )
        if self.rate is not None and self.rate <= 0:
            raise ConfigurationError(f"{self.key}: rate must be positive", field="rate_limit")
        if self.burst is not None and self.burst < 1:
            raise ConfigurationError(f"{self.key}: burst must be 1 or more", field="burst")
        if self.breaker is not None and not self.key.startswith("tool:"):
            raise ConfigurationError(
                f"{self.key}: circuit breakers belong to tools (tool:<name>)", field="breaker"
            )

    @property
    def bucket_size(self) -> float | None:
        """Tokens the bucket holds when full: `burst`, else one second's worth (at least 1)."""
        if self.rate is None:
            return None
        return self.burst if self.burst is not None else max(1.0, self.rate)

    @property
    def empty(self) -> bool:
        """True when the spec limits nothing."""
        return self.concurrency is None and self.rate is None and self.breaker is None


def counts_for_breaker(error_class: str) -> bool:
    """Failures that say the tool (or what it calls) is unwell: timeouts and transient errors.
    Bad arguments, policy refusals and cancellations do not trip a breaker."""
    return error_class in ("transient", "timeout")


@dataclass(slots=True)
class LimitRecord:
    """A key's limits and their live state, for operators."""

    key: str
    concurrency: int | None
    in_use: int
    rate: float | None
    burst: float | None
    tokens: float | None
    paused_until: float | None
    pause_reason: str | None
    breaker_state: str
    breaker_failures: int | None
    breaker_count: int
    breaker_since: float | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return json_ready(self)
