"""What the pages show, computed in Python so templates stay plain: relative times, durations,
money, pretty JSON, and the plan's DAG laid out for inline SVG. Pure functions, no I/O."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from markupsafe import Markup, escape

from stalwart.domain.records import StepRecord
from stalwart.observability.timeline import format_duration

NODE_WIDTH = 176
NODE_HEIGHT = 46
GAP_X = 56
GAP_Y = 18
PAD = 12
LABEL_CHARS = 18


def absolute(epoch: float) -> str:
    """`2025-01-31 14:05:09 UTC`."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def span(seconds: float) -> str:
    """A rough length of time for people: `40 s`, `3 min`, `2 h`, `5 days`."""
    seconds = abs(seconds)
    if seconds < 60:
        return f"{int(seconds)} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min"
    if seconds < 86400:
        return f"{int(seconds // 3600)} h"
    days = int(seconds // 86400)
    return f"{days} day" if days == 1 else f"{days} days"


def ago(epoch: float, now: float) -> str:
    """`3 min ago`, `just now`, or `in 5 min` for a time still to come."""
    delta = now - epoch
    if abs(delta) < 10:
        return "just now"
    return f"{span(delta)} ago" if delta > 0 else f"in {span(delta)}"


def when(epoch: float | None, now: float) -> Markup:
    """A `<time>` element: relative text, the absolute time on hover, refreshed by the script."""
    if epoch is None:
        return Markup('<span class="muted">—</span>')
    iso = datetime.fromtimestamp(epoch, UTC).isoformat()
    return Markup(
        f'<time datetime="{escape(iso)}" title="{escape(absolute(epoch))}" data-rel>'
        f"{escape(ago(epoch, now))}</time>"
    )


def time_left(deadline: float, now: float) -> Markup:
    """Time left until `deadline` (an SLA), or how long it is overdue, as a `<time>` element."""
    iso = datetime.fromtimestamp(deadline, UTC).isoformat()
    left = deadline - now
    text = f"{span(left)} left" if left >= 0 else f"overdue by {span(left)}"
    css = "left" if left >= 0 else "left overdue"
    return Markup(
        f'<time class="{css}" datetime="{escape(iso)}" title="due {escape(absolute(deadline))}"'
        f" data-left>{escape(text)}</time>"
    )


def duration(seconds: float | None) -> str:
    """A measured duration: `850 ms`, `12.3 s`, `4 min 5 s`, `2 h 3 min`."""
    return format_duration(seconds, decimals=1, missing="—")


def money(usd: float) -> str:
    """USD for display, with enough digits for the fractions of a cent that model calls cost."""
    if usd == 0:
        return "$0.00"
    if abs(usd) < 0.01:
        return f"${usd:.6f}"
    if abs(usd) < 100:
        return f"${usd:,.4f}"
    return f"${usd:,.2f}"


def percent(ratio: float | None) -> str:
    """`97.5%`, or `—` when there is nothing to divide."""
    return "—" if ratio is None else f"{ratio * 100:.1f}%"


def pretty(value: Any) -> str:
    """Indented JSON (to show in a `<pre>`, escaped by the template)."""
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


@dataclass(slots=True)
class Node:
    """One step's box in the drawing."""

    key: str
    label: str
    status: str
    x: int
    y: int


@dataclass(slots=True)
class Edge:
    """An arrow from a dependency's box to the step that needs it, as SVG path data."""

    source: str
    target: str
    path: str


@dataclass(slots=True)
class Dag:
    """A plan laid out left to right, one column per dependency depth."""

    width: int
    height: int
    nodes: list[Node] = field(default_factory=list)
    edges: list[Edge] = field(default_factory=list)
    statuses: list[str] = field(default_factory=list)


def depths(steps: list[StepRecord]) -> dict[str, int]:
    """Each step's dependency depth: 0 with no dependencies, else one more than its deepest."""
    deps = {s.key: [d for d in s.spec.get("depends_on") or [] if isinstance(d, str)] for s in steps}
    found: dict[str, int] = {}

    def depth(key: str, seen: frozenset[str]) -> int:
        if key in found:
            return found[key]
        inner = [d for d in deps.get(key, []) if d in deps and d not in seen]
        found[key] = 1 + max((depth(d, seen | {key}) for d in inner), default=-1)
        return found[key]

    for key in deps:
        depth(key, frozenset())
    return found


def dag(steps: list[StepRecord]) -> Dag:
    """Lay out `steps` for SVG: a column per dependency depth, each column ordered by where its
    dependencies sit (fewer crossings), an arrow per dependency."""
    if not steps:
        return Dag(0, 0)
    level = depths(steps)
    columns: dict[int, list[StepRecord]] = {}
    for step in steps:
        columns.setdefault(level[step.key], []).append(step)
    rows = max(len(c) for c in columns.values())
    width = PAD * 2 + len(columns) * NODE_WIDTH + (len(columns) - 1) * GAP_X
    height = PAD * 2 + rows * NODE_HEIGHT + (rows - 1) * GAP_Y
    out = Dag(width, height)
    place: dict[str, Node] = {}
    for col, members in sorted(columns.items()):
        members.sort(key=lambda s: _mean_y(s, place))
        # Centre a short column against the tallest one.
        offset = math.floor((rows - len(members)) * (NODE_HEIGHT + GAP_Y) / 2)
        for row, step in enumerate(members):
            key = step.key
            node = Node(
                key=key,
                label=key if len(key) <= LABEL_CHARS else key[: LABEL_CHARS - 1] + "…",
                status=step.status,
                x=PAD + col * (NODE_WIDTH + GAP_X),
                y=PAD + offset + row * (NODE_HEIGHT + GAP_Y),
            )
            place[key] = node
            out.nodes.append(node)
    for step in steps:
        for dep in step.spec.get("depends_on") or []:
            if dep in place:
                path = _arrow(place[dep], place[step.key], out.nodes)
                out.edges.append(Edge(dep, step.key, path))
    out.statuses = sorted({s.status for s in steps})
    return out


def _mean_y(step: StepRecord, place: dict[str, Node]) -> float:
    ys = [place[d].y for d in step.spec.get("depends_on") or [] if d in place]
    return sum(ys) / len(ys) if ys else 0.0


def _arrow(a: Node, b: Node, nodes: list[Node]) -> str:
    """A curve from `a`'s right side to `b`'s left; one that skips columns runs along a lane
    above or below the boxes between them, so it never passes behind one."""
    x1, y1 = a.x + NODE_WIDTH, a.y + NODE_HEIGHT // 2
    x2, y2 = b.x - 2, b.y + NODE_HEIGHT // 2
    between = [n for n in nodes if a.x < n.x < b.x]
    if not between:
        mid = (x1 + x2) // 2
        return f"M{x1},{y1} C{mid},{y1} {mid},{y2} {x2},{y2}"
    above = min(n.y for n in between) - GAP_Y // 2
    below = max(n.y for n in between) + NODE_HEIGHT + GAP_Y // 2
    target = (y1 + y2) / 2
    lane = above if abs(above - target) <= abs(below - target) else below
    xa, xb = x1 + GAP_X, x2 - GAP_X + 2
    bend = GAP_X // 2
    return (
        f"M{x1},{y1} C{x1 + bend},{y1} {xa - bend},{lane} {xa},{lane} L{xb},{lane} "
        f"C{xb + bend},{lane} {x2 - bend},{y2} {x2},{y2}"
    )
