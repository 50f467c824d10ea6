"""Alerts from real workers: two `stalwart worker` processes evaluate the rules while a burst of
jobs fails; each incident calls its hooks (a command and a webhook) exactly once, closes when
cleared, and a recurrence is a new incident."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from tests.api.server_app import build_app
from tests.observability.conftest import WorkerProcesses, settings_for
from tests.observability.test_alerts import Receiver

from stalwart.client import Client
from stalwart.domain.observability import AlertIncident
from stalwart.store import Store

INTERVAL = 0.3


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    try:
        yield r
    finally:
        r.close()


def _incidents(folder: Path) -> list[dict[str, object]]:
    return [
        json.loads(p.read_text()) for p in sorted(folder.glob("incident-*")) if p.stat().st_size
    ]


async def _wait(predicate: Callable[[], Awaitable[bool]], limit: float, what: str) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.1)
    pytest.fail(f"timed out after {limit}s waiting for {what}")


async def _by_rule(store: Store, rule: str) -> list[AlertIncident]:
    return await store.alert_list(rule=rule)


async def _evaluations(store: Store, count: int) -> None:
    """Wait until the workers took `count` more turns to evaluate the rules (the turn row's
    time moves at each), instead of sleeping for as many intervals: a loaded machine may take
    far fewer turns in that time, and the test would check less than it says."""
    seen: set[float] = set()

    async def turned() -> bool:
        [turn] = await store.alert_list(statuses=("turn",))
        seen.add(turn.updated)
        return len(seen) > count

    await _wait(turned, 60, f"{count} evaluations")


async def test_workers_alert_once_per_incident_for_a_burst_of_failures(
    db_url: str, tmp_path: Path, worker_processes: WorkerProcesses, receiver: Receiver
) -> None:
    folder = tmp_path / "incidents"
    folder.mkdir()
    hooks = [f'command:cat > "$(mktemp {folder}/incident-XXXXXX)"', receiver.url, "log"]
    env = {
        "STALWART_ALERT_HOOKS": json.dumps(hooks),
        "STALWART_ALERT_INTERVAL_SECONDS": str(INTERVAL),
    }
    app = build_app(settings_for(db_url))
    client: Client = app.client()
    store = app.store()
    await store.migrate()
    try:
        for name in ("a", "b"):
            worker_processes.start(db_url, env=env, name=name)
        jobs = [
            (await client.submit("doomed", {"customer": f"c{i}", "amount": 1})).job.id
            for i in range(10)
        ]

        async def all_dead() -> bool:
            statuses = [(await client.get(j)).status for j in jobs]
            return set(statuses) == {"dead_lettered"}

        await _wait(all_dead, 120, "ten dead-lettered jobs")

        async def both_rules() -> bool:
            return len(_incidents(folder)) >= 2

        await _wait(both_rules, 60, "the incidents' hooks")

        async def both_received() -> bool:
            return len(receiver.received) >= 2

        await _wait(both_received, 60, "the incidents' webhooks")
        await _evaluations(store, 8)  # many more, by both workers: none notifies again

        got = _incidents(folder)
        assert sorted((i["rule"], i["scope"]) for i in got) == [
            ("dead_letters_appearing", ""),
            ("success_rate_drop", "doomed"),
        ], worker_processes.logs()
        assert sorted(i["id"] for i in receiver.received) == sorted(i["id"] for i in got)
        [dead] = await _by_rule(store, "dead_letters_appearing")
        assert (dead.status, dead.details["count"]) == ("open", 10)

        # Cleared: the operator cancels the jobs; both incidents close, nobody is called.
        for job_id in jobs:
            await client.cancel(job_id)

        async def closed() -> bool:
            return [i.status for i in await store.alert_list()] == ["closed", "closed"]

        await _wait(closed, 60, "both incidents to close")
        assert len(_incidents(folder)) == 2

        # It recurs: a new incident of the dead-letter rule, its hooks called once more.
        again = (await client.submit("doomed", {"customer": "again", "amount": 1})).job.id

        async def renotified() -> bool:
            return (await client.get(again)).status == "dead_lettered" and len(
                _incidents(folder)
            ) == 3

        await _wait(renotified, 60, "a new incident")

        async def three_received() -> bool:
            return len(receiver.received) >= 3

        await _wait(three_received, 60, "the new incident's webhook")
        await _evaluations(store, 4)
        got = _incidents(folder)
        assert len(got) == 3
        newest, first = await _by_rule(store, "dead_letters_appearing")
        assert (newest.status, first.id) == ("open", dead.id)
        assert {i["id"] for i in got} >= {newest.id, dead.id}
        assert len(receiver.received) == 3
        assert [w.stop() for w in worker_processes.started] == [0, 0], worker_processes.logs()
    finally:
        await store.close()
