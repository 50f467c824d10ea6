"""The request parameters the routes share, bounded so that bad input is a 422 naming the
parameter, never a database error: ids of a known shape, 64-bit event ids, printable header
keys and storable text (`stalwart.domain.storable`; docs/reference/api.md, "Input rules")."""

from __future__ import annotations

from typing import Annotated

from fastapi import Header, Path, Query
from pydantic import AfterValidator

from stalwart.domain.storable import (
    HEADER_KEY_PATTERN,
    HEADER_KEY_RULE,
    ID_PATTERN,
    ID_RULE,
    MAX_INT64,
    text_problem,
)


def storable(text: str) -> str:
    """A pydantic validator: `text` when the store can keep it (no NUL, no lone surrogate)."""
    problem = text_problem(text)
    if problem is not None:
        raise ValueError(problem)
    return text


StorableText = Annotated[str, AfterValidator(storable)]

JobId = Annotated[str, Path(pattern=ID_PATTERN, description=f"A job's id: {ID_RULE}.")]
ReviewId = Annotated[str, Path(pattern=ID_PATTERN, description=f"A review's id: {ID_RULE}.")]
DeadLetterId = Annotated[
    str,
    Path(pattern=ID_PATTERN, description=f"A dead letter's id, or its job's id: {ID_RULE}."),
]
Cursor = Annotated[
    str | None,
    Query(pattern=ID_PATTERN, description="`next_cursor` of the previous page."),
]
AfterEvent = Annotated[
    int, Query(ge=0, le=MAX_INT64, description="Only events after this event id.")
]
LastEventId = Annotated[
    int | None,
    Header(
        alias="Last-Event-ID",
        ge=0,
        le=MAX_INT64,
        description="The id of the last event received: the stream resumes after it "
        "(browsers send it when they reconnect).",
    ),
]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=255,
        pattern=HEADER_KEY_PATTERN,
        description=f"1-255 characters of {HEADER_KEY_RULE}. Submitting twice with one key "
        "(within the dedup window) returns the first job.",
    ),
]
