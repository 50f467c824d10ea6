"""A dead worker's model-call reservations come back when its leases are taken back, on both
backends: at a restart under the same worker id, or by another worker's reaper; not after the
ledger row's own expiry (`llm_timeout_seconds` + 65 s, over three minutes here).

The provider (a local fake) holds the first calls without answering; the worker holding them is
killed with SIGKILL. The calls' requests had left, so each is charged its reserved worst case
(`cancelled`), in the transaction that takes its step back (decision 0020), and the steps run
again with nothing held for the dead calls.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
from tests.fakes.provider_server import Hang, ProviderServer
from tests.integration.apps import llm_app
from tests.integration.conftest import Worker, Workers, query, wait_until

from stalwart.client import Client
from stalwart.store import open_store

PRICE = {"input_per_mtok": 100.0, "output_per_mtok": 100.0}
DONE = ("completed", "failed", "escalated", "dead_lettered", "rejected", "cancelled")
HELD = 2  # calls the provider holds when the worker is killed


@pytest.fixture
def server() -> Iterator[ProviderServer]:
    with ProviderServer(lambda request: {"label": "spam", "score": 0.9}) as running:
        for _ in range(HELD):
            running.push(Hang(600))
        yield running


def _env(server: ProviderServer) -> dict[str, str]:
    return {
        "STALWART_LLM_ENDPOINTS": json.dumps(
            {"local": {"kind": "openai", "base_url": server.openai_base_url}}
        ),
        "STALWART_LLM_PRICES": json.dumps({"local:cheap": PRICE}),
        # A row's own expiry is 185 s away: anything sooner is the lease's doing.
        "STALWART_LLM_TIMEOUT_SECONDS": "120",
    }


async def _submit(db_url: str, count: int) -> list[str]:
    store = open_store(db_url)
    try:
        await store.migrate()
        client = Client(store, app=llm_app.app)
        return [
            (await client.submit("classify", {"n": n}, tenant="acme")).job.id for n in range(count)
        ]
    finally:
        await store.close()


def _held(db_url: str) -> list[tuple[str, int]]:
    """Every budget's key and what it holds for calls in flight."""
    return [(k, int(n)) for k, n in query(db_url, "SELECT key, reserved_nanos FROM budgets")]


def _calls(db_url: str, outcome: str) -> list[tuple[int, int]]:
    return query(
        db_url,
        "SELECT reserved_nanos, cost_nanos FROM llm_calls WHERE outcome = ? ORDER BY id",
        (outcome,),
    )


def _open_ids(db_url: str) -> list[int]:
    return [i for (i,) in query(db_url, "SELECT id FROM llm_calls WHERE outcome = 'reserved'")]


def _hold_calls(db_url: str, workers: Workers, server: ProviderServer, **start: Any) -> Worker:
    """Start a worker and wait until the provider holds `HELD` of its calls, reserved."""
    worker = workers.start(db_url, "llm_app", env=_env(server), **start)
    server.wait_for_requests(HELD, timeout=120)
    wait_until(lambda: len(_calls(db_url, "reserved")) == HELD, 60, what="the reserved rows")
    return worker


def _kill(worker: Worker, db_url: str) -> list[int]:
    """Kill the worker; the ids of the ledger rows it left reserved."""
    worker.kill()
    assert sum(n for _, n in _held(db_url)) > 0
    dead = _open_ids(db_url)
    assert len(dead) == HELD
    return dead


def _assert_charged_and_released(db_url: str, dead: list[int]) -> None:
    marks = ",".join("?" * len(dead))
    charged = query(
        db_url,
        f"SELECT reserved_nanos, cost_nanos, outcome FROM llm_calls WHERE id IN ({marks})",
        tuple(dead),
    )
    assert [outcome for _, _, outcome in charged] == ["cancelled"] * HELD
    assert all(cost == reserved > 0 for reserved, cost, _ in charged)
    # Only calls of the steps' new attempts may be open now (the taker runs them at once), and
    # the budgets hold exactly those: nothing is left held for the dead calls.
    [(held, open_now)] = query(
        db_url,
        "SELECT (SELECT reserved_nanos FROM budgets WHERE scope = 'tenant_day'), "
        "(SELECT coalesce(sum(reserved_nanos), 0) FROM llm_calls WHERE outcome = 'reserved')",
    )
    assert held == open_now
    assert not set(dead) & set(_open_ids(db_url))
    # The worst case is spent: the tenant's day budget carries it.
    [(spent,)] = query(db_url, "SELECT spent_nanos FROM budgets WHERE scope = 'tenant_day'")
    assert spent >= sum(cost for _, cost, _ in charged)


def _finish(db_url: str, workers: Workers, ids: list[str]) -> None:
    """The steps run again, later jobs run too, and nothing is refused or left held."""
    ids = ids + asyncio.run(_submit(db_url, 3))

    def statuses() -> list[str]:
        marks = ",".join("?" * len(ids))
        return [
            s
            for (s,) in query(db_url, f"SELECT status FROM jobs WHERE id IN ({marks})", tuple(ids))
        ]

    wait_until(lambda: all(s in DONE for s in statuses()), 120, 0.2, f"every job\n{workers.logs()}")
    assert statuses() == ["completed"] * len(ids), workers.logs()
    assert _calls(db_url, "refused") == []
    assert all(n == 0 for _, n in _held(db_url))
    [(spent, total)] = query(
        db_url,
        "SELECT (SELECT spent_nanos FROM budgets WHERE scope = 'tenant_day'), "
        "(SELECT sum(cost_nanos) FROM llm_calls)",
    )
    assert spent == total


def test_a_restart_under_the_same_id_releases_the_dead_calls_reservations_at_once(
    workers: Workers, db_url: str, server: ProviderServer
) -> None:
    ids = asyncio.run(_submit(db_url, HELD))
    dead = _kill(_hold_calls(db_url, workers, server, args=("--worker-id", "w-llm")), db_url)

    again = workers.start(db_url, "llm_app", env=_env(server), args=("--worker-id", "w-llm"))
    # The restart takes the leases back before it says it started: the reservations with them.
    assert again.wait_for_output("worker started", 60), workers.logs()
    assert "leases_reclaimed" in again.output()
    _assert_charged_and_released(db_url, dead)
    _finish(db_url, workers, ids)


def test_the_reaper_of_another_worker_releases_the_dead_calls_reservations(
    workers: Workers, db_url: str, server: ProviderServer
) -> None:
    ids = asyncio.run(_submit(db_url, HELD))
    doomed = _hold_calls(db_url, workers, server, name="doomed")
    # The other worker starts while the doomed one lives, so it does not take its leases back
    # at start: only its reaper can, after the 2 s lease.
    other = workers.start(db_url, "llm_app", env=_env(server), name="reaper")
    assert other.wait_for_output("worker started", 60), workers.logs()
    dead = _kill(doomed, db_url)

    wait_until(
        lambda: not set(dead) & set(_open_ids(db_url)),
        60,
        0.2,
        f"the reaper to charge the dead calls\n{workers.logs()}",
    )
    _assert_charged_and_released(db_url, dead)
    _finish(db_url, workers, ids)
