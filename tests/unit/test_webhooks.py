"""Webhook signatures (HMAC-SHA256 of the raw body, compared in constant time) and the event id
that deduplicates redeliveries, in its order of precedence."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import pytest
from starlette.datastructures import Headers

from stalwart.domain import webhooks
from stalwart.domain.webhooks import DELIVERY_ID_HEADERS, Webhook, event_id, sign, verify

SECRET = "whsec-unit"
BODY = b'{"id": "evt-1", "type": "paid"}'


def test_sign_is_the_prefixed_hex_hmac_sha256_of_the_body() -> None:
    expected = hmac.new(SECRET.encode(), BODY, hashlib.sha256).hexdigest()
    assert sign(SECRET, BODY) == f"sha256={expected}"
    assert sign(SECRET, BODY) != sign(SECRET, BODY + b" ")
    assert sign(SECRET, BODY) != sign("other", BODY)


@pytest.mark.parametrize(
    "presented",
    [
        sign(SECRET, BODY),
        sign(SECRET, BODY).removeprefix("sha256="),
        f"  {sign(SECRET, BODY)}  ",
    ],
)
def test_verify_accepts_the_signature_with_or_without_its_prefix(presented: str) -> None:
    assert verify(SECRET, BODY, presented)


@pytest.mark.parametrize(
    ("body", "presented"),
    [
        (BODY + b"\n", sign(SECRET, BODY)),  # tampered body
        (BODY.replace(b"paid", b"void"), sign(SECRET, BODY)),
        (BODY, sign("another secret", BODY)),
        (BODY, "sha256="),
        (BODY, "sha256=" + "0" * 64),
        (BODY, sign(SECRET, BODY)[:-1]),
        (BODY, sign(SECRET, BODY) + "0"),
        (BODY, "sha1=" + sign(SECRET, BODY).removeprefix("sha256=")),
        (BODY, None),
        (BODY, ""),
    ],
)
def test_verify_refuses_anything_else(body: bytes, presented: str | None) -> None:
    assert not verify(SECRET, body, presented)


def test_verify_compares_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []

    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(webhooks.hmac, "compare_digest", spy)

    assert verify(SECRET, BODY, sign(SECRET, BODY))
    assert not verify(SECRET, BODY, "sha256=abc")
    assert len(calls) == 2
    assert not verify(SECRET, BODY, None)
    assert len(calls) == 2, "nothing to compare without a signature"


SPEC = Webhook(event_id_header="X-Shop-Event", event_id_field="data.event.id")
ALL_HEADERS = {
    "Idempotency-Key": "from-idempotency-key",
    "X-Shop-Event": "from-custom-header",
    "Webhook-Id": "from-webhook-id",
    "X-GitHub-Delivery": "from-github",
    "X-Event-Id": "from-x-event-id",
    "X-Webhook-Id": "from-x-webhook-id",
}
BODY_WITH_ID: dict[str, Any] = {"data": {"event": {"id": "from-body"}}}


def _without(*names: str) -> Headers:
    return Headers({k: v for k, v in ALL_HEADERS.items() if k not in names})


def test_event_id_precedence() -> None:
    order = list(ALL_HEADERS)
    expected = [v for v in ALL_HEADERS.values()] + ["from-body"]
    for dropped, value in enumerate(expected):
        assert event_id(SPEC, _without(*order[:dropped]), BODY_WITH_ID) == value


def test_the_delivery_headers_are_the_common_ones_in_order() -> None:
    assert DELIVERY_ID_HEADERS == ("webhook-id", "x-github-delivery", "x-event-id", "x-webhook-id")


def test_headers_match_whatever_their_case_and_blank_ones_are_skipped() -> None:
    headers = Headers({"IDEMPOTENCY-KEY": "  ", "x-shop-event": " abc "})
    assert event_id(SPEC, headers, BODY_WITH_ID) == "abc"


def test_without_a_spec_only_headers_count() -> None:
    assert event_id(None, Headers({"X-Shop-Event": "custom"}), BODY_WITH_ID) is None
    assert event_id(None, Headers({"Webhook-Id": "w-1"}), BODY_WITH_ID) == "w-1"
    assert event_id(None, Headers({}), {"id": "x"}) is None


@pytest.mark.parametrize(
    ("field", "body", "expected"),
    [
        ("id", {"id": "evt_1"}, "evt_1"),
        ("id", {"id": 42}, "42"),
        ("id", {"id": "  padded "}, "padded"),
        ("data.event.id", BODY_WITH_ID, "from-body"),
        ("data.event.id", {"data": {"event": "flat"}}, None),
        ("data.event.id", {"data": None}, None),
        ("id", {"id": ""}, None),
        ("id", {"id": "   "}, None),
        ("id", {"id": None}, None),
        ("id", {"id": {"nested": 1}}, None),
        ("id", {"id": [1]}, None),
        ("id", {}, None),
        ("id", ["id"], None),
    ],
)
def test_the_body_field_is_a_dotted_path(field: str, body: Any, expected: str | None) -> None:
    assert event_id(Webhook(event_id_field=field), Headers({}), body) == expected


def test_a_webhook_defaults_to_no_secret_and_the_github_style_header() -> None:
    spec = Webhook()
    assert (spec.secret, spec.tenant, spec.signature_header) == (None, None, "X-Signature-256")
    assert spec.transform is None
