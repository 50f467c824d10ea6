"""The UI's pure parts, without a server: relative times, figures, the plan's layout, and the
job template's model-call table rendered from records."""

from __future__ import annotations

import time
from typing import Any

from stalwart.domain.budgets import LlmCallRecord, ledger_totals
from stalwart.domain.records import JobRecord, StepRecord
from stalwart.ui import views
from stalwart.ui.render import safe_next, templates

NOW = 1_750_000_000.0


def step(key: str, status: str = "pending", depends_on: tuple[str, ...] = ()) -> StepRecord:
    """A step of plan version 1 with `depends_on`."""
    return StepRecord(
        id=abs(hash(key)) % 10_000, job_id="job_1", tenant_id="acme", plan_version=1, key=key,
        kind="tool", tool="lookup", status=status, priority=0, attempt=1, max_attempts=3,
        critical=True, idempotent=True, approved=False, reconcile_pending=False, lease_owner=None,
        lease_token=0, due=NOW, lease_expires=None,
        spec={"id": key, "args": {"key": key}, "depends_on": list(depends_on)},
        output=None, error=None, started=None, finished=None,
    )  # fmt: skip


def test_relative_times_read_like_a_person_would_say_them() -> None:
    assert views.ago(NOW - 3, NOW) == "just now"
    assert views.ago(NOW - 42, NOW) == "42 s ago"
    assert views.ago(NOW - 180, NOW) == "3 min ago"
    assert views.ago(NOW - 7200, NOW) == "2 h ago"
    assert views.ago(NOW - 86400, NOW) == "1 day ago"
    assert views.ago(NOW - 5 * 86400, NOW) == "5 days ago"
    assert views.ago(NOW + 300, NOW) == "in 5 min"
    tag = str(views.when(NOW - 180, NOW))
    assert tag.startswith('<time datetime="2025-06-15T15:03:40+00:00"')
    assert 'title="2025-06-15 15:03:40 UTC"' in tag and ">3 min ago</time>" in tag
    assert "overdue by 2 min" in str(views.time_left(NOW - 120, NOW))
    assert "1 h left" in str(views.time_left(NOW + 3700, NOW))


def test_figures_for_people() -> None:
    assert views.duration(0.25) == "250 ms"
    assert views.duration(12.34) == "12.3 s"
    assert views.duration(245) == "4 min 5 s"
    assert views.duration(None) == "—"
    assert views.money(0) == "$0.00"
    assert views.money(0.000123) == "$0.000123"
    assert views.money(1.5) == "$1.5000"
    assert views.percent(0.975) == "97.5%" and views.percent(None) == "—"


def test_the_plan_is_laid_out_by_dependency_depth() -> None:
    steps = [
        step("fetch", "succeeded"),
        step("a", "running", ("fetch",)),
        step("b", "ready", ("fetch",)),
        step("merge", "pending", ("a", "b")),
    ]
    assert views.depths(steps) == {"fetch": 0, "a": 1, "b": 1, "merge": 2}
    dag = views.dag(steps)
    column = {n.key: n.x for n in dag.nodes}
    assert column["fetch"] < column["a"] == column["b"] < column["merge"]
    assert len(dag.edges) == 4
    assert {(e.source, e.target) for e in dag.edges} == {
        ("fetch", "a"),
        ("fetch", "b"),
        ("a", "merge"),
        ("b", "merge"),
    }
    assert all(e.path.startswith("M") for e in dag.edges)
    assert dag.statuses == ["pending", "ready", "running", "succeeded"]
    assert dag.width > column["merge"] and dag.height > max(n.y for n in dag.nodes)
    # A cycle (never valid in a stored plan) does not hang the page.
    assert views.depths([step("x", depends_on=("y",)), step("y", depends_on=("x",))])


def test_next_goes_only_to_local_ui_paths() -> None:
    assert safe_next("/ui/jobs?status=failed") == "/ui/jobs?status=failed"
    assert safe_next("http://localhost:8000/ui/reviews") == "/ui/reviews"
    for target in ("https://evil.example", "//evil.example/ui/", "/v1/jobs", "/uix", "/ui\\x"):
        assert safe_next(target) == "", target


def call(**overrides: Any) -> LlmCallRecord:
    """A ledger row."""
    row: dict[str, Any] = dict(
        id=1, tenant_id="acme", job_id="job_1", step_key="draft", attempt=1, seq=1,
        purpose="step", provider="openai", model="openai:gpt-4o-mini", tier="small",
        outcome="ok", reserved_nanos=0, input_tokens=1200, output_tokens=340, cached_tokens=0,
        cost_nanos=1_230_000, priced=True, cache_hit=False, latency_ms=850.0,
        context_tokens=None, context_limit=None, error_class=None, error=None, created=NOW,
    )  # fmt: skip
    row.update(overrides)
    return LlmCallRecord(**row)


def test_the_job_page_lists_model_calls_with_tokens_and_cost() -> None:
    job = JobRecord(
        id="job_1", tenant_id="acme", workflow="draft", status="completed", priority=0,
        input={"topic": "<b>x</b>"}, idempotency_key=None, plan_version=1, template_name=None,
        template_hash=None, tool_schema_hashes={}, replans=0, max_replans=0, max_steps=None,
        steps_executed=1, degraded=False, cancel_requested=False, error=None, result=None,
        created=NOW, updated=NOW, deadline=None, finished=NOW,
    )  # fmt: skip
    calls = [call(), call(id=2, seq=2, cache_hit=True, cost_nanos=0, latency_ms=3.0)]
    steps = [step("draft", "succeeded")]
    html = templates.env.get_template("job.html").render(
        session=None, principal=None, csrf="", nav=[], now=time.time(), notice="", error="",
        Permission=None, job=job, steps=steps, dag=views.dag(steps),
        node_width=views.NODE_WIDTH, node_height=views.NODE_HEIGHT, events=[], calls=calls,
        totals=ledger_totals(calls), review_of={}, finished=True, can_cancel=False,
    )  # fmt: skip
    assert "openai:gpt-4o-mini" in html and "small" in html
    assert "1,200" in html and "2,400" in html  # one call's input tokens, and the total
    assert "$0.001230" in html and "850 ms" in html
    assert "Total: 2 calls, 1 from cache" in html
    assert "&lt;b&gt;x&lt;/b&gt;" in html and "<b>x</b>" not in html
    assert "No model calls." not in html
