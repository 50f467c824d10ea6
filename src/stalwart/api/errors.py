"""One JSON shape for every error, and the table from Stalwart's errors to HTTP statuses.

Every error answers `{"code": ..., "message": ..., "field": ..., "fix": ..., "details": {...}}`.
`code` is stable (clients branch on it); `message` and `fix` are for people and may change. A
Stalwart error's body is `stalwart.errors.error_body`, the same the CLI prints with `--json`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException

from stalwart.errors import (
    AuthenticationError,
    ConfigurationError,
    CorruptStateError,
    InputValidationError,
    InvalidTransitionError,
    NotFoundError,
    NotRedrivableError,
    PayloadTooLargeError,
    PermissionDeniedError,
    PlanValidationError,
    QueueFull,
    ReviewAlreadyDecidedError,
    SignatureError,
    StalwartError,
    StoreUnavailableError,
    UnknownWorkflowError,
    UsageError,
    error_body,
)

log = logging.getLogger("stalwart.api")

# Most specific first: the first class an error is an instance of decides. Any other is a 500.
# The code (and fix) of each error is not here but in `stalwart.errors.ERROR_CODES`.
ERROR_TABLE: list[tuple[type[StalwartError], int]] = [
    (AuthenticationError, 401),
    (SignatureError, 401),
    (PermissionDeniedError, 403),
    (UnknownWorkflowError, 404),
    (NotFoundError, 404),
    (ReviewAlreadyDecidedError, 409),
    (NotRedrivableError, 409),
    (InvalidTransitionError, 409),
    (PayloadTooLargeError, 413),
    (InputValidationError, 422),
    (PlanValidationError, 422),
    (QueueFull, 429),
    (UsageError, 400),
    (StoreUnavailableError, 503),
    (CorruptStateError, 500),
    (ConfigurationError, 500),
]
HTTP_CODES = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "too_many_requests",
}
# What to do about the errors FastAPI and Starlette raise before a route runs.
HTTP_FIXES = {
    404: "check the path against the API reference (/docs)",
    405: "use a method the route answers (see /docs)",
    406: "accept application/json",
    413: "send a smaller body",
    415: "send the body as JSON with Content-Type: application/json",
    422: "correct the fields listed in `details.errors`",
}
# Validation error types that mean the body as a whole is not a JSON object.
NOT_AN_OBJECT = frozenset({"model_attributes_type", "dict_type", "json_invalid", "missing"})


class ErrorBody(BaseModel):
    """Every error's body."""

    code: str = Field(description="Stable machine-readable code, e.g. not_found, queue_full.")
    message: str = Field(description="What went wrong and how to fix it, for people.")
    field: str | None = Field(None, description="The request field at fault, if one is.")
    fix: str | None = Field(None, description="What to do about it, for people.")
    details: dict[str, Any] = Field(default_factory=dict)


def error_response(
    status: int,
    code: str,
    message: str,
    *,
    field: str | None = None,
    fix: str | None = None,
    details: dict[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """A JSON error in the one shape."""
    body = ErrorBody(code=code, message=message, field=field, fix=fix, details=details or {})
    return JSONResponse(
        body.model_dump(mode="json"), status_code=status, headers=dict(headers or {})
    )


def status_of(exc: StalwartError) -> int:
    """The HTTP status of a Stalwart error."""
    for cls, status in ERROR_TABLE:
        if isinstance(exc, cls):
            return status
    return 500


def from_stalwart(exc: StalwartError) -> JSONResponse:
    """The response for a Stalwart error: its `error_body`, the CLI's `--json` error too."""
    status = status_of(exc)
    headers: dict[str, str] = {}
    retry_after = exc.fields.get("retry_after")
    if status in (429, 503):
        headers["Retry-After"] = str(max(1, round(float(retry_after or 1))))
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="stalwart"'
    if status >= 500:
        log.error("request failed: %s", exc.message, exc_info=exc)
    body = ErrorBody.model_validate(error_body(exc))
    return JSONResponse(body.model_dump(mode="json"), status_code=status, headers=headers)


def install(api: FastAPI) -> None:
    """Answer every error of `api` in the one shape."""

    @api.exception_handler(StalwartError)
    async def stalwart_error(request: Request, exc: StalwartError) -> JSONResponse:
        return from_stalwart(exc)

    @api.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for err in exc.errors():
            loc = [str(p) for p in err.get("loc", ()) if p not in ("body",)]
            if err.get("type") == "json_invalid":
                loc = []  # its loc ends with a character offset, not a field
            message = err.get("msg", "invalid")
            if not loc and err.get("type") in NOT_AN_OBJECT:
                message = "the body must be a JSON object, sent as Content-Type: application/json"
            problems.append({"field": ".".join(loc), "message": message})
        first = problems[0] if problems else {"field": "", "message": "invalid request"}
        text = "; ".join(f"{p['field'] or 'body'}: {p['message']}" for p in problems)
        return error_response(
            422,
            "invalid_request",
            f"the request is not valid: {text}",
            field=first["field"] or None,
            fix=HTTP_FIXES[422],
            details={"errors": problems},
        )

    @api.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        code = HTTP_CODES.get(exc.status_code, "error")
        message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
        return error_response(
            exc.status_code,
            code,
            message,
            fix=HTTP_FIXES.get(exc.status_code),
            headers=exc.headers,
        )

    @api.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(
            500,
            "internal",
            "internal error; the server log has the details",
            fix="report it as a bug, with the server log's traceback",
        )


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error statuses a route may answer."""
    return {s: {"model": ErrorBody, "description": HTTP_CODES.get(s, "error")} for s in statuses}


def json_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """As `responses`, for a route whose success is not JSON (the event stream): its errors
    are JSON all the same, which `model=` would document as the route's own media type."""
    schema = {"$ref": "#/components/schemas/ErrorBody"}
    return {
        s: {
            "description": HTTP_CODES.get(s, "error"),
            "content": {"application/json": {"schema": schema}},
        }
        for s in statuses
    }
