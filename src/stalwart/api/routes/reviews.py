"""`/v1/reviews`: the approval queue, and decisions on it."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request

from stalwart.api.auth import require
from stalwart.api.errors import responses
from stalwart.api.params import ReviewId
from stalwart.api.schemas import Decision, Review, ReviewList
from stalwart.api.state import client
from stalwart.domain.access import Permission, Principal

router = APIRouter(prefix="/v1/reviews", tags=["reviews"])

Viewer = Annotated[Principal, Depends(require(Permission.REVIEW_READ))]
Decider = Annotated[Principal, Depends(require(Permission.REVIEW_DECIDE))]
ReviewStatus = Literal["pending", "escalated", "approved", "rejected"]


@router.get("", response_model=ReviewList, responses=responses(401, 403, 422), summary="Reviews")
async def list_reviews(
    request: Request,
    principal: Viewer,
    status: Annotated[
        list[ReviewStatus] | None,
        Query(description="Filter by status (default: pending and escalated)."),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> ReviewList:
    """The tenant's reviews waiting for a decision (by default), oldest first."""
    found = await client(request).reviews(
        tenant=principal.tenant_id,
        statuses=status or ("pending", "escalated"),
        limit=limit,
    )
    return ReviewList(items=[Review.of(r) for r in found])


@router.get(
    "/{review_id}",
    response_model=Review,
    responses=responses(401, 403, 404, 422),
    summary="A review",
)
async def get_review(review_id: ReviewId, request: Request, principal: Viewer) -> Review:
    """One review, with what the agent was doing, the decision asked and its options."""
    return Review.of(await client(request).review(review_id, tenant=principal.tenant_id))


@router.post(
    "/{review_id}/approve",
    response_model=Review,
    responses=responses(400, 401, 403, 404, 409, 422),
    summary="Approve",
)
async def approve(
    review_id: ReviewId, request: Request, principal: Decider, body: Decision | None = None
) -> Review:
    """Approve: the step runs. The key's name is recorded as the reviewer. A review already
    decided answers 409."""
    review = await client(request).approve(
        review_id,
        reviewer=principal.name,
        comment=body.comment if body else "",
        tenant=principal.tenant_id,
    )
    return Review.of(review)


@router.post(
    "/{review_id}/reject",
    response_model=Review,
    responses=responses(400, 401, 403, 404, 409, 422),
    summary="Reject",
)
async def reject(
    review_id: ReviewId, request: Request, principal: Decider, body: Decision | None = None
) -> Review:
    """Reject: the job fails or replans with the comment as feedback, per its workflow."""
    review = await client(request).reject(
        review_id,
        reviewer=principal.name,
        comment=body.comment if body else "",
        tenant=principal.tenant_id,
    )
    return Review.of(review)
