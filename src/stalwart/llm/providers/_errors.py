"""What both provider adapters share: turning an SDK failure into a `ProviderError`.

Both official SDKs (openai 3.x, anthropic 2.x) raise the same family of exceptions under the same
names, so the adapters catch their own classes and call the builders here.
"""

from __future__ import annotations

import email.utils
import math
import time
from collections.abc import Mapping
from typing import Any

from stalwart.errors import ErrorClass
from stalwart.llm.types import ProviderError, class_for_status

_MAX_SERVER_MESSAGE = 300


def parse_retry_after(
    headers: Mapping[str, str] | None, *, now: float | None = None
) -> float | None:
    """Seconds to wait from a `Retry-After` header: a number of seconds, or an HTTP date (seconds
    from `now`, never negative). Falls back to OpenAI's `retry-after-ms`. None when absent or
    unparsable."""
    if headers is None:
        return None
    value = headers.get("retry-after")
    if value is not None:
        value = value.strip()
        seconds: float | None
        try:
            seconds = float(value)
        except ValueError:
            seconds = _seconds_until_http_date(value, now)
        if seconds is not None and math.isfinite(seconds):
            return max(seconds, 0.0)
    millis = headers.get("retry-after-ms")
    if millis is not None:
        try:
            millis_seconds = float(millis) / 1000
        except ValueError:
            return None
        if math.isfinite(millis_seconds):
            return max(millis_seconds, 0.0)
    return None


def _seconds_until_http_date(value: str, now: float | None) -> float | None:
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return parsed.timestamp() - (time.time() if now is None else now)


def server_message(body: object) -> str | None:
    """The error message a provider sent: `{"error": {"message": ...}}`, `{"message": ...}`,
    `{"error": "..."}` (Ollama) or a short plain-text body; None when there is none."""
    text: object = None
    if isinstance(body, Mapping):
        inner = body.get("error", body)
        if isinstance(inner, Mapping):
            text = inner.get("message")
        elif isinstance(inner, str):
            text = inner
        if text is None:
            text = body.get("message")
    elif isinstance(body, str):
        text = body
    if not isinstance(text, str) or not text.strip():
        return None
    text = " ".join(text.split())
    if len(text) > _MAX_SERVER_MESSAGE:
        text = text[: _MAX_SERVER_MESSAGE - 1] + "…"
    return text


def status_error(
    provider: str,
    model: str,
    status: int,
    *,
    headers: Mapping[str, str] | None,
    body: object,
) -> ProviderError:
    """A `ProviderError` for an HTTP error status: classed by `class_for_status`, code
    `http_<status>`, `retry_after` from the headers, the server's message in the text."""
    detail = server_message(body)
    message = f"{provider} model {model!r} answered HTTP {status}"
    if detail:
        message += f": {detail}"
    return ProviderError(
        message,
        error_class=class_for_status(status),
        provider=provider,
        model=model,
        status=status,
        retry_after=parse_retry_after(headers),
        code=f"http_{status}",
    )


def failure(
    provider: str,
    model: str,
    code: str,
    what: str,
    *,
    error_class: ErrorClass = ErrorClass.TRANSIENT,
    status: int | None = None,
) -> ProviderError:
    """A `ProviderError` for a failure without an error status (timeout, connection, a body
    that cannot be read, ...)."""
    return ProviderError(
        f"{provider} model {model!r}: {what}",
        error_class=error_class,
        provider=provider,
        model=model,
        status=status,
        code=code,
    )


def as_count(value: Any) -> int:
    """A token count from a usage field: a non-negative int, or 0 for anything else."""
    if isinstance(value, bool) or not isinstance(value, int):
        return 0
    return max(value, 0)


def sdk_failure(
    sdk: Any, base: type[Exception], exc: Exception, provider: str, model: str, timeout: float
) -> ProviderError:
    """The `ProviderError` for anything the official `openai` or `anthropic` SDK (`sdk`, the
    module: both name their exceptions alike; `base`, its root error) raised while calling:
    an error status by
    `class_for_status`; timeouts, connection failures and unreadable bodies transient; other
    SDK errors and anything unexpected non-retriable."""
    if isinstance(exc, sdk.APIStatusError):
        return status_error(
            provider, model, exc.status_code, headers=exc.response.headers, body=exc.body
        )
    if isinstance(exc, sdk.APITimeoutError):
        return failure(provider, model, "timeout", f"no answer within {timeout:g}s")
    if isinstance(exc, sdk.APIConnectionError):
        return failure(provider, model, "connection", f"connection failed ({_cause(exc)})")
    if isinstance(exc, (sdk.APIResponseValidationError, ValueError)):
        # A body that is not JSON raises json.JSONDecodeError (a ValueError) from the SDK.
        return failure(provider, model, "malformed_response", f"unreadable answer ({exc!r:.200})")
    if isinstance(exc, base):
        return failure(
            provider,
            model,
            "provider_error",
            f"SDK error: {exc}",
            error_class=ErrorClass.NON_RETRIABLE,
        )
    return failure(
        provider,
        model,
        "unexpected_error",
        f"unexpected {exc!r:.200}",
        error_class=ErrorClass.NON_RETRIABLE,
    )


def _cause(exc: BaseException) -> str:
    cause = exc.__cause__ or exc.__context__
    return type(cause).__name__ if cause is not None else "no detail"
