"""Memory beyond the current job: episodes (what happened when we did X before) and knowledge
(what we know about X), and the ranking that merges them with the job's working memory.

Pure data and rules, no I/O. The store keeps the rows (`store/sql/memory.py`), embedders turn text
into vectors (`llm/embeddings.py`), and `engine/recall.py` queries the tiers and ranks them here.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from stalwart.errors import UsageError

Tier = Literal["working", "episodic", "semantic"]
TIERS: tuple[Tier, ...] = ("working", "episodic", "semantic")

# Defaults of the issue: episodes k=3 at similarity >= 0.75, knowledge k=5 at >= 0.70.
EPISODE_K = 3
EPISODE_MIN_SIMILARITY = 0.75
KNOWLEDGE_K = 5
KNOWLEDGE_MIN_SIMILARITY = 0.70

# Outcomes that end a job and make an episode.
EPISODE_OUTCOMES = frozenset({"completed", "failed", "rejected", "escalated", "dead_lettered"})

_COLLECTION = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")


def check_collection(name: str) -> str:
    """A collection name: 1-64 of lowercase letters, digits, `_`, `.`, `-`."""
    if not _COLLECTION.match(name or ""):
        raise UsageError(
            f"collection name {name!r} is not valid: use 1-64 lowercase letters, digits, "
            "'_', '.' or '-', starting with a letter or digit",
            field="collection",
        )
    return name


@dataclass(frozen=True, slots=True)
class Vector:
    """An embedding as stored: float32 bytes, with the embedder that made it and its size."""

    embedder: str
    dimension: int
    data: bytes

    def __post_init__(self) -> None:
        if len(self.data) != 4 * self.dimension:
            raise ValueError(
                f"vector of {len(self.data)} bytes does not hold {self.dimension} float32 values"
            )


@dataclass(frozen=True, slots=True)
class NewEpisode:
    """What a finished job leaves behind."""

    tenant_id: str
    job_id: str
    workflow: str
    outcome: str
    summary: str  # the text that is embedded and searched: input, plan, outcome, feedback
    details: dict[str, Any]  # input summary, plan, errors, reviewer feedback, cost
    cost_usd: float
    importance: float  # 0..1: failures and human feedback weigh more than routine successes
    finished: float
    vector: Vector | None = None
    # The text the vector is made from: the job as `job_query` writes it, so that a new job
    # finds the past jobs most like it (the summary adds how it ended, for people to read).
    key_text: str = ""


@dataclass(frozen=True, slots=True)
class EpisodeRecord:
    """A stored episode."""

    id: int
    tenant_id: str
    job_id: str
    workflow: str
    outcome: str
    summary: str
    details: dict[str, Any]
    cost_usd: float
    importance: float
    finished: float
    embedder: str | None


@dataclass(frozen=True, slots=True)
class CollectionRecord:
    """A tenant's knowledge collection."""

    tenant_id: str
    name: str
    embedder: str | None
    dimension: int | None
    retention_days: float | None
    created: float
    documents: int = 0
    chunks: int = 0


@dataclass(frozen=True, slots=True)
class NewChunk:
    """One piece of a document, as stored."""

    seq: int
    text: str
    tokens: int
    vector: Vector | None = None


@dataclass(frozen=True, slots=True)
class NewDocument:
    """A document added to a collection, already split into chunks."""

    tenant_id: str
    collection: str
    source: str  # the file name or URI it came from
    digest: str  # sha256 of the extracted text: adding the same text again replaces it
    chunks: Sequence[NewChunk]
    importance: float = 0.5


@dataclass(frozen=True, slots=True)
class DocumentRecord:
    """A stored document."""

    id: int
    tenant_id: str
    collection: str
    source: str
    digest: str
    chunks: int
    created: float


@dataclass(frozen=True, slots=True)
class MemoryRow:
    """A stored episode or chunk as a search reads it: its text, its vector and what ranks it."""

    id: int
    tier: Tier
    ref: str  # "episode:<job id>", "chunk:<collection>/<source>#<seq>"
    text: str
    tokens: int
    created: float
    importance: float
    embedder: str | None
    vector: bytes | None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class MemoryHit:
    """One recalled item, with how it was found and ranked."""

    tier: Tier
    ref: str
    text: str
    relevance: float  # cosine similarity (vectors) or normalized BM25 (lexical), 0..1
    recency: float  # 0..1, halving every `half_life_days`
    importance: float  # 0..1
    score: float
    tokens: int
    method: str  # "vector", "bm25" or "context"
    meta: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "tier": self.tier,
            "ref": self.ref,
            "text": self.text,
            "score": round(self.score, 4),
            "relevance": round(self.relevance, 4),
            "recency": round(self.recency, 4),
            "importance": round(self.importance, 4),
            "tokens": self.tokens,
            "method": self.method,
            **({"meta": self.meta} if self.meta else {}),
        }


@dataclass(frozen=True, slots=True)
class Weights:
    """How relevance, recency and importance add up to a hit's score."""

    relevance: float = 0.7
    recency: float = 0.15
    importance: float = 0.15
    half_life_days: float = 30.0


def recency(created: float, now: float, half_life_days: float) -> float:
    """1 for now, 0.5 one half-life ago, towards 0 for the distant past."""
    age_days = max(0.0, now - created) / 86400.0
    return math.pow(0.5, age_days / half_life_days) if half_life_days > 0 else 1.0


def score(relevance: float, rec: float, importance: float, weights: Weights) -> float:
    """The weighted sum that orders merged hits."""
    return (
        weights.relevance * relevance
        + weights.recency * rec
        + weights.importance * max(0.0, min(1.0, importance))
    )


def within_budget(hits: Sequence[MemoryHit], budget_tokens: int) -> list[MemoryHit]:
    """The best-scored hits, in score order, whose tokens fit `budget_tokens` (a hit that does
    not fit is skipped; smaller ones after it may still fit)."""
    out: list[MemoryHit] = []
    used = 0
    for hit in sorted(hits, key=lambda h: (-h.score, h.ref)):
        if used + hit.tokens > budget_tokens:
            continue
        out.append(hit)
        used += hit.tokens
    return out


def flatten(value: Any, *, limit: int = 600) -> str:
    """A JSON value as short `key: value` text for a summary (nested keys dotted), cut at
    `limit` characters."""
    parts: list[str] = []

    def walk(prefix: str, v: Any) -> None:
        if isinstance(v, dict):
            for key, item in v.items():
                walk(f"{prefix}.{key}" if prefix else str(key), item)
        elif isinstance(v, list):
            if all(not isinstance(i, dict | list) for i in v):
                parts.append(f"{prefix}: {', '.join(str(i) for i in v)}")
            else:
                for n, item in enumerate(v):
                    walk(f"{prefix}[{n}]", item)
        elif v is not None and v != "":
            parts.append(f"{prefix}: {v}" if prefix else str(v))

    walk("", value)
    text = "; ".join(parts)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def job_query(workflow: str, job_input: Any, outputs: Mapping[str, Any] | None = None) -> str:
    """The text a job is looked up by: its workflow, its input and the short facts its steps
    found so far (`outputs` by step key: numbers, flags and strings up to 80 characters, so an
    invoice is known by its vendor and amount, not by its whole text)."""
    text = f"{workflow} job: {flatten(job_input)}"
    facts = {key: _facts(value) for key, value in (outputs or {}).items()}
    found = flatten({k: v for k, v in facts.items() if v not in (None, {}, [])})
    return f"{text}; {found}" if found else text


def _facts(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: f for k, v in value.items() if (f := _facts(v)) not in (None, {}, [])}
    if isinstance(value, list):
        return [f for v in value[:10] if (f := _facts(v)) not in (None, {}, [])]
    if isinstance(value, str):
        return value if len(value) <= 80 else None
    return value


def episode_summary(
    workflow: str,
    job_input: Any,
    *,
    outcome: str,
    steps: Sequence[str],
    decisions: Sequence[tuple[str, str, str]],
    error: str | None,
    outputs: Mapping[str, Any] | None = None,
) -> str:
    """What an episode says (and what lexical search reads): the job and its facts (as
    `job_query`), its plan, how it ended, each review decision `(decision, reviewer, comment)`
    and the error."""
    lines = [job_query(workflow, job_input, outputs) + "."]
    if steps:
        lines.append(f"Plan: {', '.join(steps)}.")
    lines.append(f"Outcome: {outcome}.")
    for decision, reviewer, comment in decisions:
        said = f": {comment}" if comment else ""
        lines.append(f"Reviewer {reviewer} {decision}{said}.")
    if error:
        lines.append(f"Error: {error}.")
    return " ".join(lines)


def episode_importance(outcome: str, decisions: Sequence[tuple[str, str, str]]) -> float:
    """Failures and human feedback are worth more than a routine success."""
    base = 0.4 if outcome == "completed" else 0.8
    if any(comment for _, _, comment in decisions):
        base += 0.15
    return min(1.0, base)


PAST_OUTCOMES = ("completed", "failed", "rejected", "escalated", "dead_lettered")


def past_context(hits: Sequence[MemoryHit]) -> dict[str, Any]:
    """What a template's `when` may test about the most similar past jobs (`past.similar`,
    `past.rejected`, ...: counts by outcome, and their job ids)."""
    out: dict[str, Any] = dict.fromkeys(PAST_OUTCOMES, 0)
    for hit in hits:
        outcome = str(hit.meta.get("outcome") or "")
        if outcome in out:
            out[outcome] += 1
    out["similar"] = len(hits)
    out["jobs"] = [str(h.meta.get("job")) for h in hits]
    return out


def uses_past(conditions: Sequence[Mapping[str, Any] | None]) -> bool:
    """True when any of these conditions tests `past.*` (only then is memory asked)."""
    return any(path == "past" or path.startswith("past.") for c in conditions if c for path in c)
