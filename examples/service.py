"""A deliberately flaky local HTTP service that stands in for the external APIs of the examples.

It simulates a handful of JSON APIs that example tools call:

* a profile directory (``GET /profiles/{user_id}``) and a policy engine (``POST /policy/check``);
* a ticketing system (``POST /tickets``) and a notification gateway (``POST /notifications``);
* an invoice store (``GET /invoices/{invoice_id}``) and a payment processor (``POST /payments``);
* an order system (``GET /orders/{order_id}``) and a refund desk (``POST /refunds``). About one
  order in four was charged twice (the card processor's glitch a support agent cleans up after).

Creating endpoints require an ``Idempotency-Key`` header: a repeated key replays the original
response (``"replayed": true``) instead of creating a second side effect. Every new effect is
recorded in a side-effect log (``GET /effects``, optionally mirrored to a JSON-lines file) so that
tests can assert "exactly one payment happened" even after crashes, retries and timeouts.

Flakiness is configurable and reproducible (seeded): a fraction of requests answer ``503`` with
``Retry-After: 0``, a fraction are answered only after ``slow_seconds`` (so short client timeouts
fire while the effect still happens), and *outages* (``"vendor:acme"``, ``"invoice:INV-3"``,
``"user:u-1"``, ``"order:ORD-1"``, ``"service:payments"``) answer ``503`` for as long as they are
configured.
Only the standard library is used. Run it with ``python -m examples.service --port 8765``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import threading
import time
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

COUNTRIES = ("FR", "DE", "US", "GB", "ES", "IT", "NL", "JP")
PLANS = ("free", "pro", "enterprise")
NAMES = ("Ada", "Grace", "Alan", "Edsger", "Barbara", "Ken", "Margaret", "Linus")
VENDORS = ("acme", "globex", "initech", "umbrella", "hooli")
ITEMS = ("espresso machine", "desk lamp", "rain jacket", "headphones", "backpack", "kettle")
_AMOUNT_RE = re.compile(r"^INV-.+-(\d+(?:\.\d{1,2})?)$")
_ORDER_AMOUNT_RE = re.compile(r"^ORD-.+-(\d+(?:\.\d{1,2})?)$")
_EFFECT_PATHS = {
    "/tickets": ("ticket", "T"),
    "/notifications": ("notification", "N"),
    "/payments": ("payment", "P"),
    "/refunds": ("refund", "R"),
}
_REQUIRED = {
    "/tickets": ("user_id", "subject"),
    "/notifications": ("user_id", "message"),
    "/payments": ("invoice_id", "amount", "vendor"),
    "/refunds": ("order_id", "amount", "reason"),
    "/policy/check": ("user_id", "country", "plan"),
}


class HTTPError(Exception):
    """An error answer: HTTP status plus the ``error`` message of the JSON body."""

    def __init__(self, status: int, error: str) -> None:
        super().__init__(error)
        self.status = status
        self.error = error


def _hash(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def _pick(options: tuple[str, ...], key: str) -> str:
    return options[_hash(key) % len(options)]


def _rate(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"{name} must be a number between 0 and 1")
    return float(value)


class FlakyService:
    """In-process flaky HTTP service; thread-safe, reproducible when ``seed`` is given."""

    def __init__(
        self,
        *,
        failure_rate: float = 0.0,
        timeout_rate: float = 0.0,
        slow_seconds: float = 3.0,
        seed: int | None = None,
        effects_path: str | Path | None = None,
    ) -> None:
        self.failure_rate = _rate(failure_rate, "failure_rate")
        self.timeout_rate = _rate(timeout_rate, "timeout_rate")
        self.slow_seconds = float(slow_seconds)
        self.outages: set[str] = set()
        self.effects_path = Path(effects_path) if effects_path is not None else None
        self.replays = 0
        self._rng = random.Random(seed)
        self._rng_lock = threading.Lock()
        self._lock = threading.RLock()
        self._effects: list[dict[str, Any]] = []
        self._idem: dict[tuple[str, str], tuple[str, dict[str, Any]]] = {}
        self._counters: dict[str, int] = {}
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Start serving on a daemon thread and return the base URL (``http://host:port``)."""
        if self._server is not None:
            raise RuntimeError("service already started")
        self._server = _Server((host, port), _Handler, self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="flaky-service", daemon=True
        )
        self._thread.start()
        return self.url

    @property
    def url(self) -> str:
        """Base URL of the running service."""
        if self._server is None:
            raise RuntimeError("service not started")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def stop(self) -> None:
        """Stop serving and close the socket (idempotent)."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FlakyService:
        if self._server is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- configuration and inspection --------------------------------------------------------
    def configure(self, **kwargs: Any) -> None:
        """Change ``failure_rate``, ``timeout_rate``, ``slow_seconds`` or ``outages`` live."""
        unknown = set(kwargs) - {"failure_rate", "timeout_rate", "slow_seconds", "outages"}
        if unknown:
            raise TypeError(f"unknown settings: {sorted(unknown)}")
        with self._lock:
            for name in ("failure_rate", "timeout_rate"):
                if name in kwargs:
                    setattr(self, name, _rate(kwargs[name], name))
            if "slow_seconds" in kwargs:
                self.slow_seconds = float(kwargs["slow_seconds"])
            if "outages" in kwargs:
                outages = kwargs["outages"]
                if isinstance(outages, str) or not isinstance(outages, Iterable):
                    raise ValueError("outages must be a list of strings")
                self.outages = {str(o) for o in outages}

    def config(self) -> dict[str, Any]:
        """Return the current configuration as a JSON-compatible dict."""
        with self._lock:
            return {
                "failure_rate": self.failure_rate,
                "timeout_rate": self.timeout_rate,
                "slow_seconds": self.slow_seconds,
                "outages": sorted(self.outages),
            }

    def effects(self) -> list[dict[str, Any]]:
        """Return a copy of the side-effect log (new effects only, never replays)."""
        with self._lock:
            return cast("list[dict[str, Any]]", json.loads(json.dumps(self._effects)))

    # -- request handling (called from handler threads) --------------------------------------
    def _chaos(self, resources: list[str]) -> None:
        with self._lock:
            failure, timeout, slow = self.failure_rate, self.timeout_rate, self.slow_seconds
            down = any(r in self.outages for r in resources)
        if down:
            raise HTTPError(503, "unavailable")
        with self._rng_lock:
            roll = self._rng.random()
        if roll < failure:
            raise HTTPError(503, "unavailable")
        if roll < failure + timeout:
            time.sleep(slow)

    def _next_id(self, prefix: str) -> str:
        self._counters[prefix] = self._counters.get(prefix, 0) + 1
        return f"{prefix}-{self._counters[prefix]:05d}"

    def _create(self, path: str, key: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        kind, prefix = _EFFECT_PATHS[path]
        fingerprint = json.dumps(body, sort_keys=True)
        with self._lock:  # decide and record atomically: one effect per key, even if concurrent
            previous = self._idem.get((path, key))
            if previous is not None:
                if previous[0] != fingerprint:
                    raise HTTPError(422, "idempotency key reused with a different body")
                self.replays += 1
                return 200, {**previous[1], "replayed": True}
            effect_id = self._next_id(prefix)
            effect = {
                "kind": kind,
                "id": effect_id,
                "idempotency_key": key,
                "body": body,
                "at": time.time(),
            }
            self._effects.append(effect)
            if self.effects_path is not None:
                with open(self.effects_path, "a", encoding="utf-8") as fh:
                    fh.write(json.dumps(effect, sort_keys=True) + "\n")
                    fh.flush()
                    os.fsync(fh.fileno())
            response = {f"{kind}_id": effect_id, "replayed": False}
            self._idem[(path, key)] = (fingerprint, response)
            return 201, dict(response)

    def _route(
        self, method: str, raw_path: str, headers: Any, raw_body: bytes
    ) -> tuple[int, dict[str, Any]]:
        parts = urlsplit(raw_path)
        path, query = parts.path.rstrip("/") or "/", parse_qs(parts.query)
        if method == "GET" and path == "/healthz":
            return 200, {"ok": True}
        if method == "GET" and path == "/effects":
            with self._lock:
                return 200, {"effects": self.effects(), "replays": self.replays}
        if path == "/admin/config" and method in ("GET", "POST"):
            if method == "POST":
                try:
                    self.configure(**_json_object(raw_body))
                except (TypeError, ValueError) as exc:
                    raise HTTPError(400, str(exc)) from exc
            return 200, self.config()
        if method == "GET" and path.startswith("/profiles/"):
            user_id = path.removeprefix("/profiles/")
            self._chaos(["service:profiles", f"user:{user_id}"])
            if not user_id.startswith("u-"):
                raise HTTPError(404, "not found")
            country = "XX" if user_id.endswith("-blocked") else _pick(COUNTRIES, user_id)
            name = _pick(NAMES, "name:" + user_id)
            return 200, {
                "user_id": user_id,
                "name": name,
                "plan": _pick(PLANS, "plan:" + user_id),
                "email": f"{name.lower()}.{user_id}@example.com",
                "country": country,
            }
        if method == "GET" and path.startswith("/invoices/"):
            invoice_id = path.removeprefix("/invoices/")
            vendor = query.get("vendor", [_pick(VENDORS, invoice_id)])[0]
            self._chaos(["service:invoices", f"invoice:{invoice_id}", f"vendor:{vendor}"])
            if not invoice_id.startswith("INV-"):
                raise HTTPError(404, "not found")
            match = _AMOUNT_RE.match(invoice_id)
            amount = float(match.group(1)) if match else 10 + (_hash(invoice_id) % 500000) / 100
            due = f"2026-12-{1 + _hash('due:' + invoice_id) % 28:02d}"
            text = (
                f"Invoice {invoice_id} from {vendor}. Total due: {amount:.2f} EUR. "
                f"Due date: {due}. Thank you for your business."
            )
            return 200, {
                "invoice_id": invoice_id,
                "vendor": vendor,
                "currency": "EUR",
                "text": text,
            }
        if method == "GET" and path.startswith("/orders/"):
            order_id = path.removeprefix("/orders/")
            self._chaos(["service:orders", f"order:{order_id}"])
            if not order_id.startswith("ORD-"):
                raise HTTPError(404, "not found")
            match = _ORDER_AMOUNT_RE.match(order_id)
            amount = float(match.group(1)) if match else 5 + (_hash(order_id) % 20000) / 100
            charged = 2 if _hash("charges:" + order_id) % 4 == 0 else 1
            return 200, {
                "order_id": order_id,
                "customer": _pick(NAMES, "customer:" + order_id),
                "item": _pick(ITEMS, "item:" + order_id),
                "amount": amount,
                "currency": "EUR",
                "charges": [
                    {"charge_id": f"ch-{_hash(f'{order_id}:{n}') % 10**6:06d}", "amount": amount}
                    for n in range(1, charged + 1)
                ],
            }
        if method == "POST" and path in _REQUIRED:
            body = _json_object(raw_body)
            missing = [f for f in _REQUIRED[path] if body.get(f) in (None, "")]
            if missing:
                raise HTTPError(400, f"missing fields: {', '.join(missing)}")
            resources = [
                f"service:{path.strip('/').split('/')[0]}",
                f"user:{body.get('user_id')}",
                f"invoice:{body.get('invoice_id')}",
                f"vendor:{body.get('vendor')}",
                f"order:{body.get('order_id')}",
            ]
            if path == "/policy/check":
                self._chaos(resources)
                blocked = body["country"] == "XX"
                return 200, {
                    "allowed": not blocked,
                    "reasons": ["country XX is embargoed"] if blocked else [],
                }
            key = headers.get("Idempotency-Key")
            if not key:
                raise HTTPError(400, "missing Idempotency-Key header")
            self._chaos(resources)
            return self._create(path, key, body)
        raise HTTPError(404, "not found")


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        data = json.loads(raw or b"{}")
    except (ValueError, UnicodeDecodeError) as exc:
        raise HTTPError(400, f"malformed JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise HTTPError(400, "body must be a JSON object")
    return data


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # bursts of concurrent clients must not be refused

    def __init__(
        self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], service: FlakyService
    ) -> None:
        self.service = service
        super().__init__(address, handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Stay quiet: clients that time out and hang up are part of the simulation."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length > 0 else b""
        service = cast(_Server, self.server).service
        headers: dict[str, str] = {}
        try:
            status, payload = service._route(self.command, self.path, self.headers, raw)
        except HTTPError as exc:
            status, payload = exc.status, {"error": exc.error}
            if exc.status == 503:
                headers["Retry-After"] = "0"
        data = json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    do_GET = do_POST = do_PUT = do_DELETE = _handle

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the default per-request logging."""


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point: serve a :class:`FlakyService` until interrupted (Ctrl-C)."""
    parser = argparse.ArgumentParser(description="Flaky local API service for Stalwart demos.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--failure-rate", type=float, default=0.0)
    parser.add_argument("--timeout-rate", type=float, default=0.0)
    parser.add_argument("--slow-seconds", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--effects-path", default=None)
    args = parser.parse_args(argv)
    service = FlakyService(
        failure_rate=args.failure_rate,
        timeout_rate=args.timeout_rate,
        slow_seconds=args.slow_seconds,
        seed=args.seed,
        effects_path=args.effects_path,
    )
    print(f"flaky service listening on {service.start(args.host, args.port)}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        service.stop()


if __name__ == "__main__":
    main()
