"""The LLM gateway's own overhead per call, next to a bare SDK call to the same local server.

A local fake OpenAI-protocol server (tests/fakes/provider_server.py, a thread of this process)
answers every request at once with `{"label": "ok", "score": 0.9}`, so what is left of a call's
time is the client's and the gateway's own work. N sequential structured-output calls per path
(after a warm-up), bare and gateway calls interleaved call by call in a rotating order so that
other work on the machine hits every path alike:

- bare: `OpenAIChatModel.complete` (the official `openai` SDK, `max_retries=0`) with the same
  messages and JSON schema the gateway sends;
- gateway: `Gateway.call` routed to `local:m` (an OpenAI-compatible endpoint of the settings),
  priced by a `ModelPrice` override, with a job budget and a tenant daily budget set, so each
  call (of a fresh job) reserves its worst case on three budget rows (job, tenant day, tenant
  month) and opens its ledger row in one transaction, settles all four rows to the actual cost
  in a second, and validates the answer against a pydantic model. The time spent in the store
  during the calls is measured too. On SQLite, one round per `synchronous` setting (FULL, the
  production default, then NORMAL), each on its own file beside its own bare calls; on
  PostgreSQL, one round;
- gateway, no-op ledger (first round only): the same gateway over a store that does nothing.

Overhead = gateway - bare (mean and p50). Beside it: `llm_reserve` + `llm_settle` alone, back
to back (no HTTP between them), a cache hit (`cacheable=True` repeated: a cache read, the answer
validated, a `cached` ledger row written), the gateway's CPU alone (an in-process model that
answers at once, the no-op ledger) with some of its pieces, and one bare commit (INSERT ~100 B +
UPDATE) on the same kind of database. The target is under 2 ms of overhead per call on SQLite;
the verdict uses the mean with `synchronous=FULL`.

Run from the repository root (it imports tests.fakes.provider_server and, for PostgreSQL,
tests.pgserver):

    PYTHONPATH=. .venv/bin/python bench/gateway_overhead.py [--calls 500] [--warmup 50]
        [--backend sqlite|postgres|both]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

try:
    from bench._harness import (
        backends,
        bare_commit_us,
        load_average,
        percentile,
        pg_describe,
        postgres_server,
        run_main,
        verdict,
    )
    from tests.fakes.provider_server import ProviderServer
except ModuleNotFoundError as exc:  # `python bench/...` without the repository root on the path
    raise SystemExit(f"{exc}: run from the repository root with PYTHONPATH=.") from None
from pydantic import BaseModel

from stalwart.domain.budgets import BudgetRecord, BudgetWarning, CallResult, NewCall
from stalwart.llm.gateway import Gateway, LlmCall, LlmResult, TenantBudget, schema_of
from stalwart.llm.pricing import ModelPrice, Pricing
from stalwart.llm.providers.openai import OpenAIChatModel
from stalwart.llm.routing import ModelRegistry, Router
from stalwart.llm.tokens import estimate_messages
from stalwart.llm.types import Message, ModelRequest, ModelResponse
from stalwart.settings import Settings
from stalwart.store import Store, open_store

TARGET_MS = 2.0
LABEL = 52
"""Width of the labels of the summary lines."""
SYNC = ("FULL", "NORMAL")
"""SQLite's synchronous settings measured; the first (the production default) is judged."""
REF = "local:m"
TENANT = "acme"
PRICES = {REF: ModelPrice(input_per_mtok=1.0, output_per_mtok=2.0)}
MAX_TOKENS = 256
MESSAGES = (
    Message("system", "You classify support tickets. Answer with a label and a score."),
    Message("user", "Ticket #4711: the invoice PDF shows last month's total, please resend."),
)


class Answer(BaseModel):
    """The structured output every call asks for."""

    label: str
    score: float


def answer(_: object) -> dict[str, Any]:
    return {"label": "ok", "score": 0.9}


# -- timing ---------------------------------------------------------------------------------------


@dataclass
class Series:
    """Seconds per call of one path."""

    name: str
    seconds: list[float] = field(default_factory=list)

    def ms(self, q: float | None = None) -> float:
        """The mean (q None) or the q-th percentile, in milliseconds."""
        if q is None:
            return statistics.fmean(self.seconds) * 1000
        return percentile(self.seconds, q) * 1000

    def line(self, label: str, indent: int = 2) -> str:
        """`label`, then p50, p95 and mean, aligned whatever the line's `indent`."""
        return (
            f"{label:<{LABEL + 2 - indent}}p50 {self.ms(50):6.2f} ms   p95 {self.ms(95):6.2f} ms   "
            f"mean {self.ms():6.2f} ms"
        )


# -- the paths ------------------------------------------------------------------------------------


class NullLedger:
    """A store that writes nothing: what the gateway costs without its database."""

    def __init__(self) -> None:
        self._ids = 0

    async def llm_reserve(self, call: NewCall, *, actor: str) -> int:
        self._ids += 1
        return self._ids

    async def llm_settle(
        self, call_id: int, result: CallResult, *, actor: str, warn_ratio: float = 0.8
    ) -> list[BudgetWarning]:
        return []

    async def llm_record(
        self, call: NewCall, result: CallResult, *, actor: str, **options: Any
    ) -> tuple[int, list[BudgetWarning]]:
        self._ids += 1
        return self._ids, []

    async def llm_cache_get(self, tenant_id: str, key: str) -> dict[str, Any] | None:
        return None

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
        return None

    async def budget_list(
        self, *, tenant_id: str | None = None, keys: Sequence[str] | None = None
    ) -> list[BudgetRecord]:
        return []


class TimedLedger:
    """A store's ledger methods, with the time spent in them added to `seconds`: how much of a
    gateway call is its database work (about 1 µs per method of its own)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.seconds = 0.0

    async def llm_reserve(self, call: NewCall, *, actor: str) -> int:
        start = time.perf_counter()
        try:
            return await self.store.llm_reserve(call, actor=actor)
        finally:
            self.seconds += time.perf_counter() - start

    async def llm_settle(
        self, call_id: int, result: CallResult, *, actor: str, warn_ratio: float = 0.8
    ) -> list[BudgetWarning]:
        start = time.perf_counter()
        try:
            return await self.store.llm_settle(call_id, result, actor=actor, warn_ratio=warn_ratio)
        finally:
            self.seconds += time.perf_counter() - start

    async def llm_record(
        self, call: NewCall, result: CallResult, *, actor: str, **options: Any
    ) -> tuple[int, list[BudgetWarning]]:
        start = time.perf_counter()
        try:
            return await self.store.llm_record(call, result, actor=actor, **options)
        finally:
            self.seconds += time.perf_counter() - start

    async def llm_cache_get(self, tenant_id: str, key: str) -> dict[str, Any] | None:
        start = time.perf_counter()
        try:
            return await self.store.llm_cache_get(tenant_id, key)
        finally:
            self.seconds += time.perf_counter() - start

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
        start = time.perf_counter()
        try:
            await self.store.llm_cache_put(
                tenant_id,
                key,
                provider=provider,
                model=model,
                response=response,
                ttl_seconds=ttl_seconds,
                actor=actor,
            )
        finally:
            self.seconds += time.perf_counter() - start

    async def budget_list(
        self, *, tenant_id: str | None = None, keys: Sequence[str] | None = None
    ) -> list[BudgetRecord]:
        return await self.store.budget_list(tenant_id=tenant_id, keys=keys)


def make_gateway(store: Store | TimedLedger | NullLedger, server: ProviderServer) -> Gateway:
    """A gateway routing every tier to `local:m` on the fake server, priced, with budgets."""
    settings = Settings(
        llm_endpoints={"local": {"kind": "openai", "base_url": server.openai_base_url}},
        llm_timeout_seconds=30,
    )
    routes = {tier: [REF] for tier in ("small", "medium", "large")}
    return Gateway(
        store=store,
        router=Router(routes, settings),
        models=ModelRegistry(settings),
        pricing=Pricing(PRICES),
        settings=settings,
        tenant_budgets={TENANT: TenantBudget(daily_usd=1000.0)},
    )


def llm_call(*, cacheable: bool = False) -> LlmCall:
    return LlmCall(
        messages=MESSAGES,
        purpose="classification",
        output=Answer,
        max_tokens=MAX_TOKENS,
        cacheable=cacheable,
    )


def gateway_call(
    gw: Gateway, prefix: str, i: int, *, cacheable: bool = False
) -> Awaitable[LlmResult]:
    """Call `i` of this path: a fresh job (its own job budget row) with a $10 job budget."""
    scope = gw.scope(
        TENANT,
        f"{prefix}-{i}",
        step_key="classify",
        attempt=1,
        purpose="classification",
        job_max_usd=10.0,
    )
    return gw.call(llm_call(cacheable=cacheable), scope)


def bare_request() -> ModelRequest:
    """What the gateway sends for `llm_call()`, built once."""
    return ModelRequest(
        model="m",
        messages=MESSAGES,
        max_tokens=MAX_TOKENS,
        schema=schema_of(Answer),
        schema_name="Answer",
        timeout_seconds=30,
    )


class InstantModel:
    """A model that answers at once, in-process: a gateway call on it is the gateway's CPU."""

    provider = "local"
    model = "m"

    async def complete(self, request: ModelRequest) -> ModelResponse:
        return ModelResponse('{"label": "ok", "score": 0.9}', 60, 12, model="m")

    async def close(self) -> None:
        return None


@dataclass
class Variant:
    """One gateway path: its gateway, its timed store (None: the no-op ledger), the calls'
    times and the time each call spent in the store."""

    name: str
    gateway: Gateway
    ledger: TimedLedger | None
    times: Series = field(default_factory=lambda: Series("gateway"))
    in_store: Series = field(default_factory=lambda: Series("store"))


@dataclass
class Round:
    """Bare SDK calls and gateway calls made side by side."""

    bare: Series
    variants: list[Variant]


async def paired(
    server: ProviderServer, name: str, store: Store, noop: bool, calls: int, warmup: int
) -> Round:
    """Bare SDK calls and gateway calls on `store` (and on the no-op ledger when `noop`),
    interleaved call by call in a rotating order, so that other work on the machine hits every
    path alike."""
    bare = OpenAIChatModel(
        "m", base_url=server.openai_base_url, provider="local", timeout_seconds=30
    )
    request = bare_request()
    timed_store = TimedLedger(store)
    variants = [Variant(name, make_gateway(timed_store, server), timed_store)]
    if noop:
        variants.append(Variant("no-op ledger", make_gateway(NullLedger(), server), None))
    result = Round(Series("bare"), variants)
    order: list[Variant | None] = [None, *variants]  # None: the bare call
    try:
        for i in range(warmup + calls):
            shift = i % len(order)
            for v in order[shift:] + order[:shift]:
                if v is None:
                    start = time.perf_counter()
                    await bare.complete(request)
                    elapsed, series = time.perf_counter() - start, result.bare
                else:
                    if v.ledger is not None:
                        v.ledger.seconds = 0.0
                    start = time.perf_counter()
                    await gateway_call(v.gateway, v.name, i)
                    elapsed, series = time.perf_counter() - start, v.times
                    if v.ledger is not None and i >= warmup:
                        v.in_store.seconds.append(v.ledger.seconds)
                if i >= warmup:
                    series.seconds.append(elapsed)
    finally:
        await bare.close()
        for v in variants:
            await v.gateway.close()
    return result


async def ledger_alone(store: Store, gw: Gateway, calls: int, warmup: int) -> Series:
    """`llm_reserve` + `llm_settle` as the gateway makes them, back to back: no HTTP between
    them, and none of the gateway's own work."""
    times = Series("ledger")
    for i in range(warmup + calls):
        scope = gw.scope(TENANT, f"ledger-{i}", step_key="classify", attempt=1, job_max_usd=10.0)
        new = NewCall(scope, 1, "local", "m", "small", 600_000, 400, 95.0)
        result = CallResult("ok", input_tokens=60, output_tokens=12, cost_nanos=84, model="m")
        start = time.perf_counter()
        call_id = await store.llm_reserve(new, actor="bench")
        await store.llm_settle(call_id, result, actor="bench")
        if i >= warmup:
            times.seconds.append(time.perf_counter() - start)
    return times


async def cache_hits(
    store: Store, server: ProviderServer, calls: int, warmup: int, name: str
) -> Series:
    """A cacheable call made once (a miss that fills the cache), then repeated: every repeat is
    a hit (cache read, validation, a `cached` ledger row) that never reaches the server."""
    gw = make_gateway(store, server)
    times = Series("cache")
    try:
        await gateway_call(gw, f"{name}-fill", 0, cacheable=True)
        sent = server.count()
        for i in range(warmup + calls):
            start = time.perf_counter()
            result = await gateway_call(gw, f"{name}-hit", i, cacheable=True)
            if i >= warmup:
                times.seconds.append(time.perf_counter() - start)
            assert result.cache_hit
        assert server.count() == sent, "a cache hit reached the server"
    finally:
        await gw.close()
    return times


async def gateway_cpu(server: ProviderServer, calls: int, warmup: int) -> Series:
    """Gateway calls on an in-process model that answers at once, over the no-op ledger: the
    gateway's own CPU per call (routing, schema, estimate, pricing, validation, bookkeeping)."""
    gw = make_gateway(NullLedger(), server)
    gw.models.register(REF, InstantModel())
    times = Series("cpu")
    for i in range(warmup + calls):
        start = time.perf_counter()
        await gateway_call(gw, "cpu", i)
        if i >= warmup:
            times.seconds.append(time.perf_counter() - start)
    return times


def cpu_pieces(gw: Gateway, rounds: int = 2000) -> list[tuple[str, float]]:
    """Microseconds per call of pieces of the gateway's own CPU work (in-process)."""
    schema = schema_of(Answer)
    text = '{"label": "ok", "score": 0.9}'
    pricing = gw.pricing

    def scope() -> object:
        return gw.scope(TENANT, "j", step_key="classify", attempt=1, job_max_usd=10.0)

    def price() -> object:
        pricing.worst_case_nanos("local", "m", input_tokens=120, max_output_tokens=MAX_TOKENS)
        return pricing.cost_nanos("local", "m", input_tokens=60, output_tokens=12)

    pieces: list[tuple[str, Callable[[], object]]] = [
        ("JSON schema of the output model", lambda: schema_of(Answer)),
        ("scope (budget keys)", scope),
        ("token estimate", lambda: estimate_messages(MESSAGES, schema)),
        ("worst case + cost", price),
        ("parse + validate the answer", lambda: gw._validate(text, Answer)),
    ]
    out = []
    for label, fn in pieces:
        for _ in range(100):
            fn()
        start = time.perf_counter()
        for _ in range(rounds):
            fn()
        out.append((label, (time.perf_counter() - start) / rounds * 1e6))
    return out


# -- one backend ----------------------------------------------------------------------------------


async def open_migrated(url: str, synchronous: str = "FULL") -> Store:
    store = open_store(url, Settings(database_url=url, sqlite_synchronous=synchronous))
    await store.migrate()
    return store


def short(name: str) -> str:
    """`synchronous=FULL` as `FULL`."""
    return name.removeprefix("synchronous=")


def overhead_line(label: str, gateway: Series, bare: Series, store: Series | None) -> str:
    d_mean, d_p50 = gateway.ms() - bare.ms(), gateway.ms(50) - bare.ms(50)
    detail = ""
    if store is not None:
        share = 100 * store.ms() / d_mean if d_mean > 0 else float("nan")
        detail = f"   (the store {store.ms():.2f} ms of it, {share:.0f}%)"
    return f"{label:<{LABEL - 2}}mean {d_mean:6.2f} ms   p50 {d_p50:6.2f} ms{detail}"


async def run_backend(
    header: str, urls: dict[str, tuple[str, str]], calls: int, warmup: int, targeted: bool
) -> list[str]:
    """Every measurement on the stores at `urls` (name -> (URL, SQLite synchronous setting));
    the first store's overhead is the one judged. Summary lines."""
    stores = {name: await open_migrated(url, sync) for name, (url, sync) in urls.items()}
    try:
        with ProviderServer(answer) as server:
            rounds = {
                name: await paired(server, name, store, i == 0, calls, warmup)
                for i, (name, store) in enumerate(stores.items())
            }
            first = next(iter(rounds.values())).variants[0]
            ledgers = {
                n: await ledger_alone(s, first.gateway, calls, warmup) for n, s in stores.items()
            }
            hits = {n: await cache_hits(s, server, calls, warmup, n) for n, s in stores.items()}
            cpu = await gateway_cpu(server, max(calls, 1000), warmup)
            pieces = cpu_pieces(first.gateway)
    finally:
        for store in stores.values():
            await store.close()
    lines = [
        f"{header}; {os.cpu_count()} cores, load average {load_average()}; {calls} sequential "
        f"structured-output calls per path after {warmup} warm-up, to the fake OpenAI server (a "
        "thread of this process; it answers `Connection: close`, so each call opens a TCP "
        "connection)"
    ]
    for name, r in rounds.items():
        lines.append(f"  {name}, bare and gateway calls interleaved call by call:")
        lines.append("    " + r.bare.line("bare SDK call (OpenAIChatModel.complete):", 4))
        for v in r.variants:
            label = "gateway call:" if v.ledger is not None else f"gateway call, {v.name}:"
            lines.append("    " + v.times.line(label, 4))
            if v.ledger is not None:
                lines.append("    " + v.in_store.line("  of which in the store:", 4))
        for v in r.variants:
            label = "overhead:" if v.ledger is not None else f"overhead, {v.name}:"
            in_store = v.in_store if v.ledger is not None else None
            lines.append("    " + overhead_line(label, v.times, r.bare, in_store))
    for n, series in ledgers.items():
        lines.append("  " + series.line(f"ledger alone (reserve + settle), {short(n)}:"))
    for n, series in hits.items():
        lines.append("  " + series.line(f"cache hit (read + ledger row), {short(n)}:"))
    lines.append(
        f"  {'gateway CPU alone (instant model, no-op ledger):':<{LABEL}}"
        f"p50 {cpu.ms(50) * 1000:4.0f} µs   mean {cpu.ms() * 1000:4.0f} µs"
    )
    lines.append("    of it: " + ", ".join(f"{label} {us:.0f} µs" for label, us in pieces))
    name, r = next(iter(rounds.items()))
    gw = r.variants[0].times
    overhead, p50 = gw.ms() - r.bare.ms(), gw.ms(50) - r.bare.ms(50)
    if targeted:
        lines.append(
            f"  gateway overhead {overhead:.2f} ms per call ({name}, mean; p50 {p50:.2f} ms) "
            f"(target < {TARGET_MS:g} ms): {verdict(overhead < TARGET_MS)}"
        )
    else:
        lines.append(
            f"  gateway overhead {overhead:.2f} ms per call (mean; p50 {p50:.2f} ms) (the "
            f"< {TARGET_MS:g} ms target is SQLite's; none is set for PostgreSQL)"
        )
    return lines


def sqlite_backend(calls: int, warmup: int) -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        full = bare_commit_us(f"sqlite:///{tmp}/bare-full.db", 500, "FULL")
        normal = bare_commit_us(f"sqlite:///{tmp}/bare-normal.db", 500, "NORMAL")
        urls = {f"synchronous={s}": (f"sqlite:///{tmp}/{s.lower()}.db", s) for s in SYNC}
        lines = asyncio.run(
            run_backend(f"sqlite {sqlite3.sqlite_version}, WAL", urls, calls, warmup, True)
        )
    lines.insert(
        1,
        f"  {'bare commit (INSERT ~100 B + UPDATE):':<{LABEL + 2}}{full:.0f} µs with "
        f"synchronous=FULL, {normal:.0f} µs with NORMAL",
    )
    return lines


def postgres_backend(calls: int, warmup: int) -> list[str]:
    with postgres_server() as server:
        bare = bare_commit_us(server.create_database("bare"), 500)
        url = server.create_database("gateway")
        lines = asyncio.run(
            run_backend(
                pg_describe(server.url()), {"postgres": (url, "FULL")}, calls, warmup, False
            )
        )
    lines.insert(1, f"  {'bare commit (INSERT ~100 B + UPDATE):':<{LABEL + 2}}{bare:.0f} µs")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="sqlite")
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--warmup", type=int, default=50)
    args = parser.parse_args()
    summary: list[str] = []
    for backend in backends(args.backend):
        if backend == "sqlite":
            summary += sqlite_backend(args.calls, args.warmup)
        else:
            summary += postgres_backend(args.calls, args.warmup)
        summary.append("")
    print("\n".join(summary).rstrip())


if __name__ == "__main__":
    run_main(main)
