"""`/v1/webhooks/{workflow}`: events from other systems become jobs, each event once."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request, Response

from stalwart.api.auth import caller, check, token_of
from stalwart.api.errors import responses
from stalwart.api.schemas import Job
from stalwart.api.state import server
from stalwart.domain.access import Permission
from stalwart.domain.storable import header_key_problem, json_text
from stalwart.domain.webhooks import Webhook, event_id, event_id_headers, verify
from stalwart.errors import (
    AuthenticationError,
    InputValidationError,
    PayloadTooLargeError,
    SignatureError,
    UnknownWorkflowError,
)

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])


@router.post(
    "/{workflow}",
    status_code=201,
    response_model=Job,
    responses={
        200: {"model": Job, "description": "A redelivery: the job this event already made."},
        **responses(400, 401, 403, 404, 413, 422, 429),
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"type": "object"}}},
        }
    },
    summary="Receive a webhook",
)
async def receive(workflow: str, request: Request, response: Response) -> Job:
    """Turn the JSON body into a job of `workflow`. The event's id (`Idempotency-Key`, the
    sender's delivery-id header, or the webhook's `event_id_field`) deduplicates redeliveries:
    the first delivery answers 201, every later one 200 with the same job. A workflow with a
    webhook secret accepts a valid `sha256=` HMAC signature of the body instead of an API key
    (a wrong signature answers 401); any other needs a submitter key."""
    state = server(request)
    flow = state.app.workflows.get(workflow)
    if flow is None:
        raise UnknownWorkflowError(f"no workflow named {workflow!r}", workflow=workflow)
    spec = flow.webhook
    body = await request.body()
    if len(body) > state.settings.max_payload_bytes:
        raise PayloadTooLargeError(
            f"the body is {len(body)} bytes; the limit is {state.settings.max_payload_bytes} "
            "(max_payload_bytes)",
            field="body",
        )
    secret = _secret(state.settings.webhook_secrets.get(workflow), spec)
    if secret is not None and token_of(request) is None:
        header = spec.signature_header if spec else "X-Signature-256"
        if not verify(secret, body, request.headers.get(header)):
            raise SignatureError(
                f"the {header} header must be sha256=<hex HMAC-SHA256 of the raw body> made "
                f"with workflow {workflow!r}'s webhook secret",
                field=header,
            )
        tenant = (spec.tenant if spec else None) or state.settings.default_tenant
        actor = f"webhook:{workflow}"
    else:
        try:
            principal = await caller(request)
        except AuthenticationError:
            if secret is None:
                raise AuthenticationError(
                    f"workflow {workflow!r} has no webhook secret, so its webhook needs a "
                    "submitter key: send `Authorization: Bearer <key>`",
                    field="authorization",
                ) from None
            raise
        check(principal, Permission.SUBMIT)
        tenant, actor = principal.tenant_id, principal.name
    payload = _json(body)
    for name in event_id_headers(spec):
        value = request.headers.get(name, "").strip()
        if value and (problem := header_key_problem(value)) is not None:
            raise InputValidationError(f"the {name} header {problem}", field=name)
    event = event_id(spec, request.headers, payload)
    job_input = spec.transform(payload) if spec and spec.transform else payload
    submitted = await state.client.submit(
        workflow,
        job_input,
        tenant=tenant,
        idempotency_key=f"webhook:{workflow}:{event}" if event else None,
        actor=actor,
    )
    if not submitted.created:
        response.status_code = 200
    response.headers["Location"] = f"/v1/jobs/{submitted.job.id}"
    return Job.of(submitted.job)


def _secret(configured: Any, spec: Webhook | None) -> str | None:
    if configured is not None:
        return str(configured.get_secret_value())
    return spec.secret if spec and spec.secret else None


def _json(body: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputValidationError(
            f"the webhook body must be a JSON object: {exc}", field="body"
        ) from None
    except (ValueError, RecursionError) as exc:
        # Valid JSON that Python will not read: an integer of thousands of digits, or nesting
        # deeper than its parser goes.
        reason = (
            "it is nested too deeply"
            if isinstance(exc, RecursionError)
            else "it holds an integer of thousands of digits"
        )
        raise InputValidationError(
            f"the webhook body cannot be stored: {reason}", field="body"
        ) from None
    if not isinstance(payload, dict):
        raise InputValidationError(
            f"the webhook body must be a JSON object, not {type(payload).__name__}", field="body"
        )
    json_text("body", payload)  # Python reads NaN, Infinity and "\ud800", which JSON has not
    return payload
