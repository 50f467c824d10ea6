"""Tests for the flaky demo service in ``examples/service.py``."""

from __future__ import annotations

import json
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from examples.service import FlakyService


def call(
    url: str,
    method: str = "GET",
    body: Any = None,
    key: str | None = None,
    timeout: float = 5.0,
    raw: bytes | None = None,
) -> tuple[int, dict[str, Any], dict[str, str]]:
    """Send one request; return (status, JSON body, headers) even for error statuses."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if key is not None:
        req.add_header("Idempotency-Key", key)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read()), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), dict(exc.headers)


@pytest.fixture
def service() -> Iterator[FlakyService]:
    with FlakyService(seed=1) as svc:
        yield svc


def test_profile_fetch_is_deterministic(service: FlakyService) -> None:
    status, body, _ = call(f"{service.url}/profiles/u-42")
    assert status == 200
    assert set(body) == {"user_id", "name", "email", "country", "plan"}
    assert body["user_id"] == "u-42"
    assert call(f"{service.url}/profiles/u-42")[1] == body
    assert call(f"{service.url}/profiles/u-7-blocked")[1]["country"] == "XX"


def test_unknown_ids_are_404(service: FlakyService) -> None:
    assert call(f"{service.url}/profiles/nobody")[:2] == (404, {"error": "not found"})
    assert call(f"{service.url}/invoices/XYZ")[:2] == (404, {"error": "not found"})
    assert call(f"{service.url}/no/such/route")[0] == 404


def test_policy_check(service: FlakyService) -> None:
    ok = {"user_id": "u-1", "country": "FR", "plan": "pro"}
    assert call(f"{service.url}/policy/check", "POST", ok)[1] == {"allowed": True, "reasons": []}
    status, body, _ = call(f"{service.url}/policy/check", "POST", {**ok, "country": "XX"})
    assert status == 200 and body["allowed"] is False and body["reasons"]
    assert call(f"{service.url}/policy/check", "POST", {"user_id": "u-1"})[0] == 400
    assert call(f"{service.url}/policy/check", "POST", raw=b"{nope")[0] == 400


def test_invoice_amount_from_id_and_vendor_param(service: FlakyService) -> None:
    status, body, _ = call(f"{service.url}/invoices/INV-7-250.00?vendor=acme")
    assert status == 200
    assert body["vendor"] == "acme" and body["currency"] == "EUR"
    assert "250.00 EUR" in body["text"] and "acme" in body["text"]
    assert call(f"{service.url}/invoices/INV-3")[1] == call(f"{service.url}/invoices/INV-3")[1]


def test_idempotent_replay_creates_one_effect(service: FlakyService) -> None:
    body = {"invoice_id": "INV-1-10.00", "amount": 10.0, "vendor": "acme"}
    status, first, _ = call(f"{service.url}/payments", "POST", body, key="pay-1")
    assert status == 201 and first["replayed"] is False and first["payment_id"].startswith("P-")
    status, again, _ = call(f"{service.url}/payments", "POST", body, key="pay-1")
    assert status == 200
    assert again == {**first, "replayed": True}
    effects = service.effects()
    assert [e["kind"] for e in effects] == ["payment"]
    assert effects[0]["id"] == first["payment_id"] and effects[0]["idempotency_key"] == "pay-1"
    assert call(f"{service.url}/effects")[1]["replays"] == 1


def test_same_key_different_body_is_422(service: FlakyService) -> None:
    url = f"{service.url}/tickets"
    assert call(url, "POST", {"user_id": "u-1", "subject": "a"}, key="k")[0] == 201
    status, body, _ = call(url, "POST", {"user_id": "u-1", "subject": "b"}, key="k")
    assert status == 422
    assert body == {"error": "idempotency key reused with a different body"}
    assert len(service.effects()) == 1


def test_missing_idempotency_key_is_400(service: FlakyService) -> None:
    status, body, _ = call(f"{service.url}/notifications", "POST", {"user_id": "u", "message": "m"})
    assert status == 400 and "error" in body
    assert service.effects() == []


def test_outage_answers_503_with_retry_after(service: FlakyService) -> None:
    service.configure(outages=["vendor:acme"])
    status, body, headers = call(f"{service.url}/invoices/INV-1?vendor=acme")
    assert status == 503 and body == {"error": "unavailable"}
    assert headers.get("Retry-After") == "0"
    assert call(f"{service.url}/invoices/INV-1?vendor=globex")[0] == 200
    status, cfg, _ = call(f"{service.url}/admin/config", "POST", {"outages": []})
    assert status == 200 and cfg["outages"] == []
    assert call(f"{service.url}/invoices/INV-1?vendor=acme")[0] == 200


def test_failure_rate_one_always_fails_but_admin_is_stable() -> None:
    with FlakyService(failure_rate=1.0, seed=3) as svc:
        status, body, headers = call(f"{svc.url}/profiles/u-1")
        assert (status, body, headers.get("Retry-After")) == (503, {"error": "unavailable"}, "0")
        assert call(f"{svc.url}/healthz")[:2] == (200, {"ok": True})
        assert call(f"{svc.url}/effects")[0] == 200
        call(f"{svc.url}/admin/config", "POST", {"failure_rate": 0.0})
        assert call(f"{svc.url}/profiles/u-1")[0] == 200


def test_timeout_rate_makes_short_client_timeout() -> None:
    # 1.8 s between the client's timeout and the answer: more than a loaded machine's stall.
    with FlakyService(timeout_rate=1.0, slow_seconds=2.0, seed=1) as svc:
        with pytest.raises((TimeoutError, socket.timeout, urllib.error.URLError)):
            call(f"{svc.url}/profiles/u-1", timeout=0.2)
        assert call(f"{svc.url}/profiles/u-1", timeout=30)[0] == 200


def test_concurrent_same_key_creates_exactly_one_effect(service: FlakyService) -> None:
    body = {"invoice_id": "INV-9-99.99", "amount": 99.99, "vendor": "hooli"}
    results: list[tuple[int, dict[str, Any]]] = []
    barrier = threading.Barrier(20)

    def worker() -> None:
        barrier.wait()
        status, resp, _ = call(f"{service.url}/payments", "POST", body, key="same")
        results.append((status, resp))

    threads = [threading.Thread(target=worker) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 20
    assert sorted(status for status, _ in results) == [200] * 19 + [201]
    assert len({r["payment_id"] for _, r in results}) == 1
    assert len(service.effects()) == 1
    assert call(f"{service.url}/effects")[1]["replays"] == 19


def test_effects_path_gets_one_json_line_per_effect(tmp_path: Path) -> None:
    path = tmp_path / "effects.jsonl"
    with FlakyService(effects_path=path) as svc:
        call(f"{svc.url}/tickets", "POST", {"user_id": "u-1", "subject": "s"}, key="t1")
        call(f"{svc.url}/tickets", "POST", {"user_id": "u-1", "subject": "s"}, key="t1")
        call(f"{svc.url}/notifications", "POST", {"user_id": "u-1", "message": "m"}, key="n1")
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(e["kind"], e["idempotency_key"]) for e in lines] == [
        ("ticket", "t1"),
        ("notification", "n1"),
    ]
    assert lines == svc.effects()


def test_orders_are_deterministic_and_some_were_charged_twice(service: FlakyService) -> None:
    status, body, _ = call(f"{service.url}/orders/ORD-2033-59.90")
    assert status == 200
    assert set(body) == {"order_id", "customer", "item", "amount", "currency", "charges"}
    assert body["amount"] == 59.9 and body["currency"] == "EUR"
    # The demo's support story: this order's card was charged twice, for the same amount.
    assert [c["amount"] for c in body["charges"]] == [59.9, 59.9]
    assert len({c["charge_id"] for c in body["charges"]}) == 2
    assert call(f"{service.url}/orders/ORD-2033-59.90")[1] == body
    assert len(call(f"{service.url}/orders/ORD-2030-59.90")[1]["charges"]) == 1
    assert call(f"{service.url}/orders/2033")[:2] == (404, {"error": "not found"})


def test_a_refund_is_an_effect_made_once_per_key(service: FlakyService) -> None:
    body = {"order_id": "ORD-2033-59.90", "amount": 59.9, "reason": "duplicate_charge"}
    status, first, _ = call(f"{service.url}/refunds", "POST", body, key="refund-1")
    assert status == 201 and first["refund_id"].startswith("R-")
    assert call(f"{service.url}/refunds", "POST", body, key="refund-1")[1] == {
        **first,
        "replayed": True,
    }
    assert call(f"{service.url}/refunds", "POST", {"order_id": "ORD-1"}, key="refund-2")[0] == 400
    service.configure(outages=["order:ORD-2033-59.90"])
    assert call(f"{service.url}/refunds", "POST", body, key="refund-3")[0] == 503
    assert call(f"{service.url}/orders/ORD-2033-59.90")[0] == 503
    assert [(e["kind"], e["id"]) for e in service.effects()] == [("refund", first["refund_id"])]
