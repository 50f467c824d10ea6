"""Enforcing limits inside a claim's transaction (both backends): which keys hold steps back
now, taking a slot and a token for a step, giving them back, pausing a key, and moving a
circuit breaker. Rules are in `stalwart.domain.limits`; these helpers never commit. `LimitStore`
is the store's part that writes declared limits and reads every key's state.

Why caps never over-admit: a running step holds one of the key's `cap` slot rows. Taking a slot
is one UPDATE of a free row; on PostgreSQL the free row is chosen `FOR UPDATE SKIP LOCKED`, so
two workers racing for the last slot cannot both get it (the loser finds no free row and leaves
its step ready); on SQLite the write lock serialises claims outright.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from stalwart.domain.limits import (
    BreakerState,
    LimitRecord,
    LimitSpec,
    counts_for_breaker,
    tenant_key,
    tool_key,
)
from stalwart.domain.records import StepError
from stalwart.store.sql.base import SqlBase
from stalwart.store.sql.tx import JobHead, Tx

# A limit row as `LimitRow` reads it, with the slots in use as the reader's transaction sees them.
LIMIT_FIELDS = (
    "key, concurrency, rate, burst, tokens, refilled, paused_until, breaker_failures, "
    "breaker_window, breaker_cooldown, breaker_state, breaker_count, breaker_since, "
    "(SELECT count(*) FROM limit_slots s WHERE s.key = limits.key AND s.step_id IS NOT NULL), "
    "pause_reason"
)
# SQL for `LimitRow.limiting` (the time as a `?` parameter).
LIMITING_SQL = (
    "(concurrency IS NOT NULL OR rate IS NOT NULL OR breaker_failures IS NOT NULL OR "
    "paused_until > ? OR breaker_state <> 'closed')"
)


class NotAdmitted(Exception):
    """A limit holds this step back; `key` names which."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


@dataclass(slots=True)
class LimitRow:
    """One key's limits and state as read in this transaction."""

    key: str
    concurrency: int | None
    rate: float | None
    burst: float | None
    tokens: float
    refilled: float
    paused_until: float | None
    breaker_failures: int | None
    breaker_window: float | None
    breaker_cooldown: float | None
    breaker_state: str
    breaker_count: int
    breaker_since: float | None
    in_use: int = 0
    pause_reason: str | None = None

    def available(self, now: float) -> float:
        """Tokens in the bucket now."""
        if self.rate is None or self.burst is None:
            return 0.0
        return min(self.burst, self.tokens + max(0.0, now - self.refilled) * self.rate)

    def held_back(self, now: float) -> bool:
        """True when no step of this key may start now (slots are checked by taking one)."""
        if self.paused_until is not None and self.paused_until > now:
            return True
        if self.breaker_state == BreakerState.HALF_OPEN.value:
            return True  # its probe is out
        if self.breaker_state == BreakerState.OPEN.value:
            return now < (self.breaker_since or 0.0) + (self.breaker_cooldown or 0.0)
        if self.concurrency is not None and self.in_use >= self.concurrency:
            return True
        return self.rate is not None and self.available(now) < 1.0

    def free_at(self, now: float) -> float | None:
        """When time alone lets a step of this key through: `now` or earlier if nothing holds
        it back, the end of a pause or a cool-down, or a rate limit's next token, whichever is
        last. None when a slot or a breaker's probe has to come back first."""
        if self.breaker_state == BreakerState.HALF_OPEN.value:
            return None
        if self.concurrency is not None and self.in_use >= self.concurrency:
            return None
        at = now
        if self.paused_until is not None:
            at = max(at, self.paused_until)
        if self.breaker_state == BreakerState.OPEN.value:
            at = max(at, (self.breaker_since or 0.0) + (self.breaker_cooldown or 0.0))
        if self.rate is not None:
            if self.burst is None or self.burst < 1.0 or self.rate <= 0:
                return None  # a bucket that never holds a whole token
            # `available` reaches one token at this time (tokens grow by `rate` a second).
            at = max(at, self.refilled + (1.0 - self.tokens) / self.rate)
        return at

    def limiting(self, now: float) -> bool:
        """True when the key limits anything at all now (as `LIMITING_SQL` says in SQL)."""
        return (
            self.concurrency is not None
            or self.rate is not None
            or self.breaker_failures is not None
            or (self.paused_until is not None and self.paused_until > now)
            or self.breaker_state != BreakerState.CLOSED.value
        )


@dataclass(slots=True)
class Limits:
    """The limit rows of one claim transaction, and the keys found full while claiming."""

    rows: dict[str, LimitRow]
    full: set[str] = field(default_factory=set)

    def keys_for(self, tool: str | None, tenant_id: str, now: float) -> list[str]:
        """The limited keys a step of `tool` for `tenant_id` must pass, tool first."""
        keys = [tool_key(tool)] if tool else []
        keys.append(tenant_key(tenant_id))
        return [k for k in keys if k in self.rows and self.rows[k].limiting(now)]

    def held_back(self, now: float) -> set[str]:
        """Keys no step may pass now."""
        return {k for k, row in self.rows.items() if row.held_back(now)} | self.full


def load(tx: Tx) -> Limits:
    """Every limit row (a small table: one row per limited tool or tenant), with the slots in
    use as this transaction sees them."""
    rows = tx.con.execute(f"SELECT {LIMIT_FIELDS} FROM limits").fetchall()
    return Limits({r[0]: LimitRow(*r) for r in rows})


def next_free(tx: Tx, limits: Limits) -> float | None:
    """The earliest time a key that holds steps back now lets one through by time alone. Read
    again, not from the claim's `limits`: the claim took tokens, and other workers may have too
    (when `limits` has no rows at all, none were configured: nothing to read)."""
    if not limits.rows:
        return None
    times = []
    for row in load(tx).rows.values():
        if not row.held_back(tx.now):
            continue
        free = row.free_at(tx.now)
        if free is not None:
            # Never "now" for a key held back now: a token a rounding error short waits a
            # moment, not a whole poll.
            times.append(max(free, tx.now + 0.001))
    return min(times, default=None)


def limits_any(tx: Tx, keys: Sequence[str]) -> bool:
    """Whether any of `keys` limits steps now (read inside the transaction: another process may
    have configured a cap or paused a key since this one last looked)."""
    marks = ",".join("?" * len(keys))
    row = tx.con.execute(
        f"SELECT 1 FROM limits WHERE key IN ({marks}) AND {LIMITING_SQL} LIMIT 1",
        (*keys, tx.now),
    ).fetchone()
    return row is not None


def admit(tx: Tx, limits: Limits, job: JobHead, step_id: int, keys: Sequence[str]) -> None:
    """Take what `keys` ask of a step about to run: a probe turn, a token, a slot. Raises
    `NotAdmitted` (the caller rolls back to its savepoint) if any key holds it back."""
    for key in keys:
        row = limits.rows[key]
        if row.held_back(tx.now):
            raise NotAdmitted(key)
        if row.breaker_state == BreakerState.OPEN.value:  # its cool-down is over: one probe
            probe = tx.con.execute(
                "UPDATE limits SET breaker_state = 'half_open', breaker_probe = ?, "
                "breaker_since = ?, updated = ? WHERE key = ? AND breaker_state = 'open' "
                "RETURNING key",
                (step_id, tx.now, tx.now, key),
            ).fetchone()
            if probe is None:
                raise NotAdmitted(key)
            row.breaker_state = BreakerState.HALF_OPEN.value
            tx.note(
                "breaker_half_open",
                job,
                f"{key}: cool-down over, one probe runs",
                key=key,
                probe_step=step_id,
            )
        if row.rate is not None:
            took = tx.con.execute(
                "UPDATE limits SET tokens = (CASE WHEN tokens + (? - refilled) * rate > burst "
                "THEN burst ELSE tokens + (? - refilled) * rate END) - 1, refilled = ? "
                "WHERE key = ? AND (CASE WHEN tokens + (? - refilled) * rate > burst THEN burst "
                "ELSE tokens + (? - refilled) * rate END) >= 1 RETURNING key",
                (tx.now, tx.now, tx.now, key, tx.now, tx.now),
            ).fetchone()
            if took is None:
                limits.full.add(key)
                raise NotAdmitted(key)
        if row.concurrency is not None:
            # A free slot below the cap, and (after a cap was lowered while steps ran in the
            # slots above it) fewer slots held than the cap.
            slot = tx.con.execute(
                "UPDATE limit_slots SET step_id = ?, taken = ? WHERE key = ? AND slot = "
                "(SELECT slot FROM limit_slots WHERE key = ? AND step_id IS NULL AND slot < ? "
                f"ORDER BY slot LIMIT 1{tx.skip_locked}) AND (SELECT count(*) FROM limit_slots "
                "WHERE key = ? AND step_id IS NOT NULL) < ? RETURNING slot",
                (step_id, tx.now, key, key, row.concurrency, key, row.concurrency),
            ).fetchone()
            if slot is None:
                limits.full.add(key)
                raise NotAdmitted(key)


def release(tx: Tx, step_id: int) -> None:
    """Give back the slots a step held (it stopped running, whatever the outcome)."""
    tx.con.execute(
        "UPDATE limit_slots SET step_id = NULL, taken = NULL WHERE step_id = ?", (step_id,)
    )


def release_abandoned(tx: Tx, step_id: int) -> None:
    """A running step lost its worker: free its slots, and if it was a breaker's probe, open
    the breaker again (the probe told us nothing) so another probe follows the cool-down."""
    release(tx, step_id)
    tx.con.execute(
        "UPDATE limits SET breaker_state = 'open', breaker_since = ?, breaker_probe = NULL, "
        "updated = ? WHERE breaker_probe = ? AND breaker_state = 'half_open'",
        (tx.now, tx.now, step_id),
    )


def release_orphans(tx: Tx) -> None:
    """Free slots whose step is not running any more (a safety net; normally every path out of
    `running` releases its own)."""
    tx.con.execute(
        "UPDATE limit_slots SET step_id = NULL, taken = NULL WHERE step_id IS NOT NULL AND "
        "NOT EXISTS (SELECT 1 FROM steps s WHERE s.id = limit_slots.step_id "
        "AND s.status = 'running')"
    )


def record_outcome(
    tx: Tx,
    job: JobHead,
    tool: str,
    step_id: int,
    *,
    error: StepError | None = None,
) -> None:
    """After an attempt of a limited tool (`error` None: it succeeded): move its breaker, and
    pause the key when the tool was told to slow down (HTTP 429 with Retry-After)."""
    key = tool_key(tool)
    row = tx.con.execute(
        "SELECT breaker_failures, breaker_window, breaker_state, breaker_count, breaker_since, "
        f"breaker_probe FROM limits WHERE key = ?{tx.lock}",
        (key,),
    ).fetchone()
    if error is not None and error.asks_to_wait:
        retry_after = float(error.retry_after or 0.0)
        until = tx.now + retry_after
        if row is None:
            _insert_empty(tx, key)
        tx.con.execute(
            "UPDATE limits SET paused_until = CASE WHEN paused_until IS NULL OR paused_until < ? "
            "THEN ? ELSE paused_until END, pause_reason = ?, updated = ? WHERE key = ?",
            (until, until, f"429 from {tool}: retry after {retry_after:g}s", tx.now, key),
        )
        tx.note("limit_paused", job, f"{key} paused {retry_after:g}s after a 429", key=key)
    if row is None or row[0] is None:
        return
    failures, window, state, count, since, probe = row
    if state == BreakerState.HALF_OPEN.value and probe == step_id:
        if error is None:
            _move_breaker(tx, job, key, BreakerState.CLOSED, "the probe succeeded")
        elif counts_for_breaker(error.error_class):
            _move_breaker(tx, job, key, BreakerState.OPEN, "the probe failed")
        else:
            _move_breaker(tx, job, key, BreakerState.CLOSED, "the probe reached the tool")
        return
    if error is None or state != BreakerState.CLOSED.value:
        return
    if not counts_for_breaker(error.error_class) or error.code == "http_429":
        return  # a 429 is what the pause is for; the service is not failing
    if since is None or tx.now - since > (window or 0.0):
        count, since = 0, tx.now
    count += 1
    if count >= failures:
        _move_breaker(tx, job, key, BreakerState.OPEN, f"{count} failures within {window:g}s")
        return
    tx.con.execute(
        "UPDATE limits SET breaker_count = ?, breaker_since = ?, updated = ? WHERE key = ?",
        (count, since, tx.now, key),
    )


def _move_breaker(tx: Tx, job: JobHead, key: str, target: BreakerState, why: str) -> None:
    tx.con.execute(
        "UPDATE limits SET breaker_state = ?, breaker_count = 0, breaker_since = ?, "
        "breaker_probe = NULL, updated = ? WHERE key = ?",
        (target.value, tx.now, tx.now, key),
    )
    tx.note(f"breaker_{target.value}", job, f"{key}: {why}", key=key)


def _insert_empty(tx: Tx, key: str) -> None:
    tx.con.execute(
        "INSERT INTO limits (key, updated) VALUES (?, ?) ON CONFLICT (key) DO NOTHING",
        (key, tx.now),
    )


def configure(tx: Tx, specs: Iterable[LimitSpec]) -> None:
    """Write the limits an app declares (its own keys only); keep live state (tokens, pauses,
    breaker state). Slot rows follow the cap: missing ones are added, free ones above it go."""
    for spec in specs:
        size = spec.bucket_size
        breaker = spec.breaker
        tx.con.execute(
            "INSERT INTO limits (key, concurrency, rate, burst, tokens, refilled, "
            "breaker_failures, breaker_window, breaker_cooldown, updated) "
            "VALUES (?,?,?,?,?,?,?,?,?,?) ON CONFLICT (key) DO UPDATE SET "
            "concurrency = excluded.concurrency, rate = excluded.rate, burst = excluded.burst, "
            "tokens = CASE WHEN limits.rate IS NULL THEN excluded.tokens ELSE limits.tokens END, "
            "breaker_failures = excluded.breaker_failures, "
            "breaker_window = excluded.breaker_window, "
            "breaker_cooldown = excluded.breaker_cooldown, updated = excluded.updated, "
            # A breaker taken away while open must not hold its tool back forever.
            "breaker_state = CASE WHEN excluded.breaker_failures IS NULL THEN 'closed' "
            "ELSE limits.breaker_state END, breaker_probe = CASE WHEN excluded.breaker_failures "
            "IS NULL THEN NULL ELSE limits.breaker_probe END",
            (
                spec.key,
                spec.concurrency,
                spec.rate,
                size,
                size or 0.0,
                tx.now,
                breaker.failures if breaker else None,
                breaker.window if breaker else None,
                breaker.cooldown if breaker else None,
                tx.now,
            ),
        )
        cap = spec.concurrency or 0
        if cap:
            tx.con.executemany(
                "INSERT INTO limit_slots (key, slot) VALUES (?, ?) ON CONFLICT DO NOTHING",
                [(spec.key, n) for n in range(cap)],
            )
        tx.con.execute(
            "DELETE FROM limit_slots WHERE key = ? AND slot >= ? AND step_id IS NULL",
            (spec.key, cap),
        )


def records(rows: list[tuple[Any, ...]], now: float) -> list[LimitRecord]:
    """Operator view of limit rows read with `LIMIT_FIELDS`."""
    out = []
    for r in rows:
        row = LimitRow(*r)
        paused = row.paused_until is not None and row.paused_until > now
        out.append(
            LimitRecord(
                key=row.key,
                concurrency=row.concurrency,
                in_use=row.in_use,
                rate=row.rate,
                burst=row.burst,
                tokens=round(row.available(now), 3) if row.rate is not None else None,
                paused_until=row.paused_until if paused else None,
                pause_reason=row.pause_reason if paused else None,
                breaker_state=row.breaker_state,
                breaker_failures=row.breaker_failures,
                breaker_count=row.breaker_count,
                breaker_since=row.breaker_since,
            )
        )
    return out


class LimitStore(SqlBase):
    """The limits part of `SqlStore`: declared limits written, and every key's state read."""

    async def limits_configure(self, specs: Sequence[LimitSpec]) -> None:
        """Write declared limits, keeping their live state."""
        if not specs:
            return

        def run(tx: Tx) -> None:
            configure(tx, sorted(specs, key=lambda s: s.key))

        await self._write("limits", run)

    async def limit_list(self) -> list[LimitRecord]:
        """Every key with limits or limit state."""
        rows = await self._read(f"SELECT {self.now_sql}, {LIMIT_FIELDS} FROM limits ORDER BY key")
        now = float(rows[0][0]) if rows else 0.0
        return records([r[1:] for r in rows], now)
