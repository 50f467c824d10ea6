"""Alert rules the engine evaluates, and the hooks an incident calls.

Rules (thresholds in `Settings`, `alert_*`):

- `success_rate_drop` (per workflow): of the jobs that reached an outcome in the last
  `alert_window_seconds` (at least `alert_min_jobs` of them), the share that completed is more
  than `alert_success_drop` below the share over the `alert_baseline_seconds` before the window
  (taken as 100% when the baseline has fewer than `alert_min_jobs` jobs);
- `cost_per_job_spike` (per workflow): the model spend per job of the window is above
  `alert_cost_factor` times the baseline's (which needs `alert_min_jobs` jobs and some spend);
- `approvals_past_sla`: some review waits past its SLA deadline;
- `dead_letters_appearing`: some dead letter is open.

A rule that fires opens an incident (one per rule and scope) and its hooks are called once; while
it keeps firing the incident stays open (its details refreshed), and when it stops the incident
closes: a later recurrence is a new incident, notified again. The database decides who opens and
who notifies (a unique index on the open incident, a conditional update of `notified`), so any
number of processes may evaluate at once and each incident still notifies exactly once.

Hooks (`alert_hooks`): `log` (a WARNING line, action `alert_fired`), `command:<shell command>`
(the incident as JSON on stdin), an http(s) URL (the incident POSTed as JSON), and the app's
Python `on_alert` callback. A hook that fails is logged; it never stops the others or the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import os
import signal
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from stalwart.domain.budgets import NANOS_PER_USD
from stalwart.domain.observability import AlertIncident
from stalwart.errors import ConfigurationError, StoreError
from stalwart.settings import Settings
from stalwart.store.base import Store

log = logging.getLogger("stalwart.alerts")

RULES = ("success_rate_drop", "cost_per_job_spike", "approvals_past_sla", "dead_letters_appearing")
HOOK_TIMEOUT_SECONDS = 10.0

AlertCallback = Callable[[dict[str, Any]], Any]


# -- hooks ----------------------------------------------------------------------------------------


class Hook(ABC):
    """Somewhere an incident goes."""

    name: str

    @abstractmethod
    async def notify(self, incident: dict[str, Any]) -> None:
        """Deliver one incident; may raise (the evaluator logs it)."""


class LogHook(Hook):
    """A WARNING log line (action `alert_fired`) with the incident."""

    name = "log"

    async def notify(self, incident: dict[str, Any]) -> None:
        log.warning(
            "alert %s%s: %s",
            incident["rule"],
            f" ({incident['scope']})" if incident.get("scope") else "",
            incident["summary"],
            extra={"action": "alert_fired", "incident": incident},
        )


@dataclass
class CommandHook(Hook):
    """Runs a shell command with the incident as JSON on stdin (and `STALWART_ALERT_RULE`,
    `STALWART_ALERT_SCOPE`, `STALWART_ALERT_SUMMARY` in its environment), killed after
    `timeout` seconds. A non-zero exit is logged."""

    command: str
    timeout: float = HOOK_TIMEOUT_SECONDS
    name: str = field(default="command", init=False)

    async def notify(self, incident: dict[str, Any]) -> None:
        env = {
            **os.environ,
            "STALWART_ALERT_RULE": str(incident["rule"]),
            "STALWART_ALERT_SCOPE": str(incident.get("scope") or ""),
            "STALWART_ALERT_SUMMARY": str(incident["summary"]),
        }
        proc = await asyncio.create_subprocess_shell(
            self.command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            start_new_session=True,  # its own process group: a timeout kills its children too
        )
        try:
            _, err = await asyncio.wait_for(
                proc.communicate(json.dumps(incident).encode()), self.timeout
            )
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            raise RuntimeError(f"alert command timed out after {self.timeout:g}s") from None
        if proc.returncode != 0:
            tail = err.decode(errors="replace").strip()[-500:]
            raise RuntimeError(f"alert command exited with {proc.returncode}: {tail}")


@dataclass
class WebhookHook(Hook):
    """POSTs the incident as JSON to a URL (on your network); a non-2xx answer is logged."""

    url: str
    timeout: float = HOOK_TIMEOUT_SECONDS
    name: str = field(default="webhook", init=False)

    async def notify(self, incident: dict[str, Any]) -> None:
        async with httpx.AsyncClient(timeout=self.timeout) as client:
            response = await client.post(self.url, json=incident)
        if response.status_code >= 300:
            raise RuntimeError(f"alert webhook answered {response.status_code}")


@dataclass
class CallbackHook(Hook):
    """The app's Python callback (`App(on_alert=...)`), sync or async. It also receives budget
    warnings (`kind` `budget_warning`); incidents come with `kind` `alert`."""

    callback: AlertCallback
    name: str = field(default="on_alert", init=False)

    async def notify(self, incident: dict[str, Any]) -> None:
        outcome = self.callback(incident)
        if inspect.isawaitable(outcome):
            await outcome


def parse_hook(spec: str) -> Hook:
    """One `alert_hooks` entry as a hook: `log`, `command:<cmd>`, or an http(s) URL."""
    text = spec.strip()
    if text == "log":
        return LogHook()
    if text.startswith("command:") and text[len("command:") :].strip():
        return CommandHook(text[len("command:") :].strip())
    if text.startswith(("http://", "https://")):
        return WebhookHook(text)
    raise ConfigurationError(
        f"alert hook {spec!r} is not 'log', 'command:<shell command>' or an http(s) URL",
        field="alert_hooks",
    )


def hooks_from_settings(settings: Settings, *, on_alert: AlertCallback | None = None) -> list[Hook]:
    """The hooks `alert_hooks` names, then `on_alert` when given."""
    hooks = [parse_hook(spec) for spec in settings.alert_hooks]
    if on_alert is not None:
        hooks.append(CallbackHook(on_alert))
    return hooks


# -- rules ----------------------------------------------------------------------------------------


@dataclass(slots=True)
class Firing:
    """A rule that fires now, for one scope."""

    rule: str
    scope: str
    summary: str
    details: dict[str, Any]


@dataclass(slots=True)
class Evaluation:
    """What one evaluation did."""

    firing: list[Firing] = field(default_factory=list)
    opened: list[AlertIncident] = field(default_factory=list)
    closed: list[AlertIncident] = field(default_factory=list)
    notified: list[AlertIncident] = field(default_factory=list)


class AlertEvaluator:
    """Evaluates the rules against the store, opens and closes incidents, calls the hooks."""

    def __init__(
        self,
        store: Store,
        settings: Settings,
        hooks: Sequence[Hook] | None = None,
        *,
        on_alert: AlertCallback | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.hooks = (
            list(hooks) if hooks is not None else hooks_from_settings(settings, on_alert=on_alert)
        )

    async def tick(self) -> Evaluation | None:
        """Evaluate if it is this process's turn (one evaluation per `alert_interval_seconds`
        among all processes). Never raises: alerting must not stop the work it watches."""
        try:
            if not await self.store.alert_turn(self.settings.alert_interval_seconds * 0.8):
                return None
            return await self.evaluate()
        except StoreError as exc:
            log.warning(
                "alert rules not evaluated: %s", exc, extra={"action": "alerts_unavailable"}
            )
        except Exception:
            log.exception("alert evaluation failed", extra={"action": "alerts_failed"})
        return None

    async def evaluate(self) -> Evaluation:
        """Check every rule now: open (or refresh) the incidents of rules that fire, close those
        of rules that stopped, and notify each incident not notified yet."""
        result = Evaluation(firing=await self.check())
        was_open = await self.store.alert_list(statuses=("open",), limit=10_000)
        for f in result.firing:
            incident, opened = await self.store.alert_open(f.rule, f.scope, f.summary, f.details)
            if opened:
                result.opened.append(incident)
        firing = {(f.rule, f.scope) for f in result.firing}
        for incident in was_open:
            if incident.rule in RULES and (incident.rule, incident.scope) not in firing:
                closed = await self.store.alert_close(incident.rule, incident.scope)
                if closed is not None:
                    result.closed.append(closed)
                    log.info(
                        "alert %s cleared",
                        closed.rule,
                        extra={"action": "alert_cleared", "incident": closed.to_dict()},
                    )
        for incident in await self.store.alert_claim_unnotified():
            await self.notify(incident)
            result.notified.append(incident)
        return result

    async def notify(self, incident: AlertIncident) -> None:
        """Call every hook with the incident; a failing hook is logged and skipped."""
        payload = incident.to_dict()
        for hook in self.hooks:
            try:
                await hook.notify(payload)
            except Exception as exc:
                log.warning(
                    "alert hook %s failed: %s",
                    hook.name,
                    exc,
                    extra={"action": "alert_hook_failed", "incident_id": incident.id},
                )

    async def check(self) -> list[Firing]:
        """The rules that fire now."""
        s = self.settings
        firing: list[Firing] = []
        for w in await self.store.workflow_outcomes(
            window_seconds=s.alert_window_seconds, baseline_seconds=s.alert_baseline_seconds
        ):
            if w.window_jobs < s.alert_min_jobs:
                continue
            rate = w.window_completed / w.window_jobs
            judged = w.baseline_jobs >= s.alert_min_jobs
            baseline = w.baseline_completed / w.baseline_jobs if judged else 1.0
            if rate < baseline - s.alert_success_drop:
                firing.append(
                    Firing(
                        "success_rate_drop",
                        w.workflow,
                        f"workflow {w.workflow}: {rate:.0%} of the last {w.window_jobs} jobs "
                        f"succeeded, against {baseline:.0%} before",
                        {
                            "workflow": w.workflow,
                            "window_seconds": s.alert_window_seconds,
                            "window_jobs": w.window_jobs,
                            "window_completed": w.window_completed,
                            "success_rate": round(rate, 4),
                            "baseline_jobs": w.baseline_jobs,
                            "baseline_success_rate": round(baseline, 4) if judged else None,
                            "threshold": round(baseline - s.alert_success_drop, 4),
                        },
                    )
                )
            if judged and w.baseline_cost_nanos > 0:
                recent = w.window_cost_nanos / w.window_jobs / NANOS_PER_USD
                usual = w.baseline_cost_nanos / w.baseline_jobs / NANOS_PER_USD
                if recent > s.alert_cost_factor * usual:
                    firing.append(
                        Firing(
                            "cost_per_job_spike",
                            w.workflow,
                            f"workflow {w.workflow}: ${recent:.4f} per job over the last "
                            f"{w.window_jobs} jobs, {recent / usual:.1f}x the usual "
                            f"${usual:.4f}",
                            {
                                "workflow": w.workflow,
                                "window_jobs": w.window_jobs,
                                "cost_per_job_usd": recent,
                                "baseline_cost_per_job_usd": usual,
                                "factor": s.alert_cost_factor,
                            },
                        )
                    )
        snap = await self.store.metrics_snapshot(live_seconds=s.lease_seconds)
        overdue = [a for a in snap.approvals if a.past_sla]
        if overdue:
            count = sum(a.past_sla for a in overdue)
            earliest = min(a.earliest_deadline for a in overdue)
            firing.append(
                Firing(
                    "approvals_past_sla",
                    "",
                    f"{count} approval(s) waiting past their SLA, the oldest by "
                    f"{_duration(snap.now - earliest)}",
                    {
                        "count": count,
                        "by_workflow": _by_workflow((a.workflow, a.past_sla) for a in overdue),
                        "most_overdue_seconds": round(snap.now - earliest, 3),
                    },
                )
            )
        if snap.dead_letters:
            count = sum(d.count for d in snap.dead_letters)
            firing.append(
                Firing(
                    "dead_letters_appearing",
                    "",
                    f"{count} open dead letter(s): stalwart dlq list",
                    {
                        "count": count,
                        "by_workflow": _by_workflow(
                            (d.workflow, d.count) for d in snap.dead_letters
                        ),
                        "newest": max(d.newest for d in snap.dead_letters),
                    },
                )
            )
        return firing


def _by_workflow(rows: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for workflow, count in rows:
        out[workflow] = out.get(workflow, 0) + int(count)
    return dict(sorted(out.items()))


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
