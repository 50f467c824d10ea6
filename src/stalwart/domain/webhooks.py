"""Webhooks: how a workflow accepts events from another system, and how their signatures are
checked. Pure; the API route applies it.

A signed delivery carries `<signature_header>: sha256=<hex HMAC-SHA256 of the raw body>` (the
form GitHub and many others use); the bare hex digest is accepted too. The event's id, which
deduplicates redeliveries, comes from the `Idempotency-Key` header, the webhook's own header,
the common delivery-id headers, or a field of the body, in that order.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

# Delivery ids that common senders put in a header (Standard Webhooks, GitHub, generic).
DELIVERY_ID_HEADERS = ("webhook-id", "x-github-delivery", "x-event-id", "x-webhook-id")


@dataclass(frozen=True, slots=True)
class Webhook:
    """How `POST /v1/webhooks/{workflow}` accepts events for one workflow.

    - `secret`: HMAC key; a delivery with a valid signature needs no API key and runs as
      `tenant` (settings' `webhook_secrets` may supply the secret instead, keyed by workflow).
      Without a secret, a submitter key is required, as for `POST /v1/jobs`.
    - `event_id_header` / `event_id_field`: where the sender puts its event id (a dotted path
      such as `"id"` or `"data.event_id"` for the body).
    - `transform`: turns the event body into the workflow's input (default: the body itself).
    """

    tenant: str | None = None
    secret: str | None = None
    signature_header: str = "X-Signature-256"
    event_id_header: str | None = None
    event_id_field: str | None = None
    transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None


def sign(secret: str, body: bytes) -> str:
    """The signature header value for `body`: `sha256=<hex>`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, presented: str | None) -> bool:
    """True when `presented` is the HMAC-SHA256 of `body` (compared in constant time)."""
    if not presented:
        return False
    expected = sign(secret, body).removeprefix("sha256=")
    given = presented.strip().removeprefix("sha256=")
    return hmac.compare_digest(expected.encode(), given.encode())


def event_id_headers(spec: Webhook | None) -> list[str]:
    """The headers that may carry a delivery's event id, lowercase, first one first."""
    names = ["idempotency-key"]
    if spec is not None and spec.event_id_header:
        names.append(spec.event_id_header.lower())
    names.extend(DELIVERY_ID_HEADERS)
    return names


def event_id(spec: Webhook | None, headers: Mapping[str, str], body: Any) -> str | None:
    """The delivery's event id, or None when the sender gave none."""
    for name in event_id_headers(spec):
        value = headers.get(name)
        if value and value.strip():
            return value.strip()
    if spec is not None and spec.event_id_field and isinstance(body, dict):
        found: Any = body
        for part in spec.event_id_field.split("."):
            found = found.get(part) if isinstance(found, dict) else None
        if isinstance(found, str | int) and str(found).strip():
            return str(found).strip()
    return None
