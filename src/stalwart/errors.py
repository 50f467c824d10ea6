"""Every error Stalwart raises, in three families kept apart.

```
StalwartError                      base: `message` plus typed fields; the docstring is the default
├── ConfigurationError             a developer mistake found at definition or start-up time
│   ├── ToolDefinitionError        a tool registered wrongly (missing annotations, no idempotency)
│   ├── WorkflowDefinitionError    a workflow registered wrongly
│   ├── TemplateError              a plan template that cannot be parsed (names the file and field)
│   └── AppImportError             `--app module:attr` could not be imported
├── UsageError                     a caller asked for something that cannot be done; nothing stored
│   ├── InputValidationError       the job input does not match the workflow's schema
│   ├── UnknownWorkflowError       no workflow of that name
│   ├── PayloadTooLargeError       an input or output over the configured size limit
│   ├── PlanValidationError        a plan with problems; `problems` lists each with its step id
│   ├── QueueFull                  the tenant's queue is over its cap; `retry_after` seconds
│   ├── NotFoundError              a job, review or dead letter not found (for this tenant)
│   ├── InvalidTransitionError     a state change the state machine does not allow
│   ├── ReviewAlreadyDecidedError  a review that was already approved or rejected
│   └── NotRedrivableError         redrive asked for a job that is not dead-lettered or escalated
├── StoreError                     the database failed or holds something it should not
│   ├── StoreUnavailableError      the database cannot be reached right now; workers wait and retry
│   ├── EffectFailedError          a tool's on_commit write failed; its completion rolled back
│   ├── MigrationError             migrations could not be applied
│   │   └── SchemaTooNewError      a newer Stalwart wrote the database; refused before any write
│   └── CorruptStateError          malformed or tampered stored state; we fail closed
└── ToolError                      raised by tools (or by Stalwart on their behalf); has an
    │                              `error_class` that decides what the engine does next
    ├── TransientError             timeout, 429, 5xx, connection reset: durable retry with backoff
    │   └── RetryStep              a signal: retry this step, optionally after `after` seconds
    ├── NonRetriableError          permission denied, not found, policy violation: no retry
    │   └── AuthorizationError     always escalated to a human
    ├── InvalidArgumentsError      arguments failed the tool schema: replan, bounded
    ├── SemanticError              output failed its schema or success criteria: replan, bounded
    └── CriticalError              an invariant broke: halt the job and escalate
```

Driver errors are kept as `__cause__`. Error classes are the lowercase strings of
`ErrorClass`, the same word in the database, the API and the log line.

`error_body(exc)` is the one shape the CLI (`--json`) and the HTTP API report an error in:
`{"code", "message", "field", "fix", "details"}`, its `code` and `fix` read from `ERROR_CODES`.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class ErrorClass(StrEnum):
    """What kind of failure a step had; decides retry, replan, escalate or halt."""

    TRANSIENT = "transient"
    NON_RETRIABLE = "non_retriable"
    AUTHORIZATION = "authorization"
    INVALID_ARGUMENTS = "invalid_arguments"
    SEMANTIC = "semantic"
    BUDGET = "budget"
    CRITICAL = "critical"
    CANCELLED = "cancelled"


class StalwartError(Exception):
    """Stalwart failed."""

    def __init__(self, message: str | None = None, **fields: Any) -> None:
        self.message = message or (self.__doc__ or type(self).__name__).strip().splitlines()[0]
        self.fields = fields
        for key, value in fields.items():
            setattr(self, key, value)
        super().__init__(self.message)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description: the error type, message and fields."""
        out: dict[str, Any] = {"error": type(self).__name__, "message": self.message}
        for key, value in self.fields.items():
            out[key] = value
        return out


# -- developer mistakes ---------------------------------------------------------------------------


class ConfigurationError(StalwartError):
    """Stalwart is configured wrongly."""


class ToolDefinitionError(ConfigurationError):
    """A tool is defined wrongly."""


class WorkflowDefinitionError(ConfigurationError):
    """A workflow is defined wrongly."""


class TemplateError(ConfigurationError):
    """A plan template cannot be read."""


class AppImportError(ConfigurationError):
    """The Stalwart app could not be imported."""


# -- caller mistakes ------------------------------------------------------------------------------


class UsageError(StalwartError):
    """The request cannot be carried out."""


class InputValidationError(UsageError):
    """The job input does not match the workflow's input schema."""


class UnknownWorkflowError(UsageError):
    """No workflow has that name."""


class PayloadTooLargeError(UsageError):
    """A payload is larger than the configured limit."""


class PlanValidationError(UsageError):
    """The plan is not valid."""

    problems: list[dict[str, str]]

    def __init__(self, problems: list[dict[str, str]], message: str | None = None) -> None:
        lines = [f"{p['step'] or '<plan>'}: {p['problem']}" for p in problems]
        text = message or f"plan has {len(problems)} problem(s): " + "; ".join(lines)
        super().__init__(text, problems=problems)


class QueueFull(UsageError):
    """The tenant's queue is full; try again later."""

    retry_after: float


class NotFoundError(UsageError):
    """Not found."""


class InvalidTransitionError(UsageError):
    """That state change is not allowed."""


class ReviewAlreadyDecidedError(UsageError):
    """The review was already decided."""


class NotRedrivableError(UsageError):
    """Only dead-lettered or escalated jobs can be redriven."""


class AuthenticationError(UsageError):
    """No valid API key: missing, malformed, unknown or revoked."""


class PermissionDeniedError(UsageError):
    """The caller's role does not allow this."""


class SignatureError(UsageError):
    """A webhook's signature is missing or does not match its body."""


# -- run-time failures of the database ------------------------------------------------------------


class StoreError(StalwartError):
    """The database failed."""


class StoreUnavailableError(StoreError):
    """The database cannot be reached (down, restarting, or the network failed); try again."""


class EffectFailedError(StoreError):
    """A tool's on_commit write failed inside its completion; nothing of the step was recorded."""


class MigrationError(StoreError):
    """The database schema could not be migrated."""


class SchemaTooNewError(MigrationError):
    """The database was migrated by a newer Stalwart than this one; refusing to use it.

    Raised when a store is opened, before anything is written: this code does not know what the
    newer migrations changed, so neither reading nor writing is safe. Fields `database_version`
    (the newest migration the database has) and `code_version` (the newest this Stalwart ships).
    """

    database_version: int
    code_version: int


class CorruptStateError(StoreError):
    """Stored state is malformed; refusing to use it."""


# -- failures of tools ----------------------------------------------------------------------------


class ToolError(StalwartError):
    """A tool failed."""

    error_class: ErrorClass = ErrorClass.NON_RETRIABLE

    def __init__(
        self,
        message: str | None = None,
        *,
        code: str | None = None,
        retry_after: float | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message, code=code, retry_after=retry_after, details=details or {})
        self.code = code
        self.retry_after = retry_after
        self.details = details or {}


class TransientError(ToolError):
    """A transient failure; the step will be retried with backoff."""

    error_class = ErrorClass.TRANSIENT


class RetryStep(TransientError):
    """Retry this step."""

    def __init__(self, message: str | None = None, *, after: float | None = None) -> None:
        super().__init__(message, code="retry_requested", retry_after=after)


class NonRetriableError(ToolError):
    """A failure that retrying cannot fix."""

    error_class = ErrorClass.NON_RETRIABLE


class AuthorizationError(NonRetriableError):
    """The tool was not allowed to do this; a human must look."""

    error_class = ErrorClass.AUTHORIZATION


class InvalidArgumentsError(ToolError):
    """The tool's arguments are not valid."""

    error_class = ErrorClass.INVALID_ARGUMENTS


class SemanticError(ToolError):
    """The tool's output is not acceptable."""

    error_class = ErrorClass.SEMANTIC


class CriticalError(ToolError):
    """An invariant broke; the job must halt."""

    error_class = ErrorClass.CRITICAL


class BudgetExceeded(ToolError):
    """A model call was refused before it reached the provider: it would have taken a budget
    (`budget`, e.g. `tenant:acme:day:2026-11-22`) past its limit. The workflow's fallback runs:
    a cheaper tier, a partial result, or a human."""

    error_class = ErrorClass.BUDGET

    def __init__(
        self,
        message: str,
        *,
        budget: str,
        limit: float | int | None = None,
        spent: float | int | None = None,
        asked: float | int | None = None,
        unit: str = "usd",
    ) -> None:
        super().__init__(
            message,
            code="budget_exceeded",
            details={
                "budget": budget,
                "limit": limit,
                "spent": spent,
                "asked": asked,
                "unit": unit,
            },
        )
        self.budget = budget


def error_for_status(
    status: int, message: str | None = None, *, retry_after: float | None = None
) -> ToolError:
    """Map an HTTP status from an external API to the right tool error.

    429 and 5xx are transient (a 429's `retry_after` is kept), 401/403 are authorization
    failures, 400/422 invalid arguments, any other 4xx non-retriable.
    """
    text = message or f"HTTP {status}"
    code = f"http_{status}"
    if status == 429 or status >= 500 or status == 408:
        return TransientError(text, code=code, retry_after=retry_after)
    if status in (401, 403):
        return AuthorizationError(text, code=code)
    if status in (400, 422):
        return InvalidArgumentsError(text, code=code)
    return NonRetriableError(text, code=code)


# -- one shape for every reported error -----------------------------------------------------------

# The stable `code` and the default `fix` of each error, most specific class first: the first
# class an error is an instance of decides. The CLI's `--json` and the HTTP API both read this
# table (through `error_body`), so they never disagree; the HTTP status lives in the API.
ERROR_CODES: tuple[tuple[type[StalwartError], str, str], ...] = (
    (
        AuthenticationError,
        "unauthenticated",
        "send a valid API key as `Authorization: Bearer <key>` (create one with "
        "`stalwart keys create`)",
    ),
    (
        SignatureError,
        "bad_signature",
        "sign the exact request body with the webhook's secret and send that signature",
    ),
    (PermissionDeniedError, "forbidden", "use a key whose role has this permission"),
    (UnknownWorkflowError, "unknown_workflow", "use one of the workflows the message lists"),
    (NotFoundError, "not_found", "check the id, and that it belongs to your tenant"),
    (
        ReviewAlreadyDecidedError,
        "already_decided",
        "nothing to do: the review was decided already (`details.status` says how)",
    ),
    (NotRedrivableError, "not_redrivable", "redrive only a dead-lettered or escalated job"),
    (
        InvalidTransitionError,
        "invalid_transition",
        "read the current status first: the state machine does not allow this change from it",
    ),
    (
        PayloadTooLargeError,
        "payload_too_large",
        "send less (the limit is `details.limit` bytes), or raise max_payload_bytes",
    ),
    (
        InputValidationError,
        "invalid_input",
        "correct the input where `field` says, to match the workflow's input schema",
    ),
    (PlanValidationError, "invalid_plan", "fix each problem in `details.problems`, at its step"),
    (
        QueueFull,
        "queue_full",
        "retry after `details.retry_after` seconds, or raise max_queue_depth",
    ),
    (UsageError, "bad_request", "correct the request as the message says"),
    (
        SchemaTooNewError,
        "schema_too_new",
        "upgrade Stalwart to a release that knows the database's schema, or use another database",
    ),
    (
        StoreUnavailableError,
        "unavailable",
        "check that the database is running and reachable from here, then try again",
    ),
    (
        MigrationError,
        "migration_failed",
        "fix what the message names, then run `stalwart db migrate` again",
    ),
    (
        CorruptStateError,
        "corrupt_state",
        "restore the row from a backup, and find out what wrote it",
    ),
    (
        EffectFailedError,
        "effect_failed",
        "fix the failing on_commit statement or its table, then redrive the job",
    ),
    (StoreError, "store_error", "try again; if it persists, read the database's own log"),
    (AppImportError, "app_import_error", "pass --app as module:attribute naming your App"),
    (
        ConfigurationError,
        "configuration_error",
        "correct the setting or definition the message names",
    ),
)
INTERNAL_CODE = "internal"
INTERNAL_FIX = "report it as a bug, with the log's traceback"


def error_code(exc: StalwartError) -> tuple[str, str]:
    """The stable `code` of `exc` and the default fix for its class."""
    for cls, code, fix in ERROR_CODES:
        if isinstance(exc, cls):
            return code, fix
    return INTERNAL_CODE, INTERNAL_FIX


def error_body(exc: StalwartError) -> dict[str, Any]:
    """`exc` in the one shape the CLI and the HTTP API report errors in: `code` (stable: branch
    on it), `message` (for people), `field` (the input at fault, or None), `fix` (what to do:
    the error's own `fix` field if it has one, else its class's) and `details` (every other
    field, as plain JSON values)."""
    code, default_fix = error_code(exc)
    details = dict(exc.fields)
    field = details.pop("field", None)
    fix = details.pop("fix", None) or default_fix
    return {
        "code": code,
        "message": exc.message,
        "field": None if field is None else str(field),
        "fix": str(fix),
        "details": _plain(details),
    }


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


__all__ = [
    "AppImportError",
    "AuthenticationError",
    "AuthorizationError",
    "BudgetExceeded",
    "ConfigurationError",
    "CorruptStateError",
    "CriticalError",
    "EffectFailedError",
    "ErrorClass",
    "InputValidationError",
    "InvalidArgumentsError",
    "InvalidTransitionError",
    "MigrationError",
    "NonRetriableError",
    "NotFoundError",
    "NotRedrivableError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "PlanValidationError",
    "QueueFull",
    "RetryStep",
    "ReviewAlreadyDecidedError",
    "SchemaTooNewError",
    "SemanticError",
    "SignatureError",
    "StalwartError",
    "StoreError",
    "StoreUnavailableError",
    "TemplateError",
    "ToolDefinitionError",
    "ToolError",
    "TransientError",
    "UnknownWorkflowError",
    "UsageError",
    "WorkflowDefinitionError",
    "error_body",
    "error_code",
    "error_for_status",
]
