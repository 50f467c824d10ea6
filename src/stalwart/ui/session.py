"""Signing in to the web UI: a signed session cookie and the CSRF token that every form carries.

The cookie holds the API key's id and a random CSRF token, signed with the server's session
secret (itsdangerous, timestamped): never the key itself. Every request loads the key again,
so a revoked key signs its sessions out on the next click. Forms post the CSRF token back in a
hidden field, compared in constant time. The login form, having no session yet, uses a
double-submit cookie instead.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from typing import Any

from fastapi import Request, Response
from itsdangerous import BadSignature, URLSafeTimedSerializer

from stalwart.api.state import SESSION_SECRET, client, server
from stalwart.domain.access import Principal
from stalwart.errors import StoreError

COOKIE = "stalwart_session"
LOGIN_COOKIE = "stalwart_csrf"
PATH = "/ui"
SALT = "stalwart-ui"


@dataclass(frozen=True, slots=True)
class Session:
    """A signed-in person: who they are (from their key) and their form token."""

    principal: Principal
    csrf: str


async def session_secret(request: Request) -> str:
    """The key that signs sessions, shared through the database; read on first use when the
    server started before its database was migrated ("" while it still cannot be read)."""
    state = server(request)
    if not state.session_secret:
        try:
            state.session_secret = await state.client.secret(SESSION_SECRET)
        except StoreError:
            return ""
    return state.session_secret


def _serializer(request: Request) -> URLSafeTimedSerializer:
    secret = server(request).session_secret
    if not secret:  # never sign with an empty key
        raise StoreError("the session secret is not loaded; is the database migrated?")
    return URLSafeTimedSerializer(secret, salt=SALT)


def _max_age(request: Request) -> int:
    return int(server(request).settings.session_hours * 3600)


def _cookie(request: Request, response: Response, name: str, value: str, max_age: int) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path=PATH,
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
    )


async def current(request: Request) -> Session | None:
    """The session of this request, or None: no cookie, a bad or expired signature, or a key
    that is missing or revoked now."""
    raw = request.cookies.get(COOKIE)
    if not raw or not await session_secret(request):
        return None
    try:
        payload: Any = _serializer(request).loads(raw, max_age=_max_age(request))
    except BadSignature:  # SignatureExpired is one
        return None
    if not isinstance(payload, dict):
        return None
    key_id, csrf = payload.get("k"), payload.get("c")
    if not isinstance(key_id, str) or not isinstance(csrf, str) or not csrf:
        return None
    record = await client(request).key(key_id)
    if record is None or record.revoked is not None:
        return None
    return Session(Principal(record.id, record.tenant_id, record.role, record.name), csrf)


def sign_in(request: Request, response: Response, principal: Principal) -> None:
    """Start a session for `principal` on `response`, with a fresh CSRF token."""
    payload = {"k": principal.key_id, "c": secrets.token_urlsafe(32)}
    token = _serializer(request).dumps(payload)
    _cookie(request, response, COOKIE, token, _max_age(request))
    response.delete_cookie(LOGIN_COOKIE, path=PATH)


def sign_out(response: Response) -> None:
    """End the session on `response`."""
    response.delete_cookie(COOKIE, path=PATH, httponly=True, samesite="lax")


def login_token(request: Request) -> str:
    """The login form's CSRF token: the one its cookie holds already, or a new one."""
    return request.cookies.get(LOGIN_COOKIE) or secrets.token_urlsafe(32)


def remember_login_token(request: Request, response: Response, token: str) -> None:
    """Set the login form's token in its cookie on `response` (the double submit's half)."""
    _cookie(request, response, LOGIN_COOKIE, token, 3600)


def login_token_ok(request: Request, submitted: str) -> bool:
    """The login form posted back the token its cookie holds (double submit)."""
    expected = request.cookies.get(LOGIN_COOKIE) or ""
    return bool(expected) and hmac.compare_digest(expected.encode(), submitted.encode())


def csrf_ok(session: Session, submitted: str) -> bool:
    """The form posted back this session's token."""
    return bool(submitted) and hmac.compare_digest(session.csrf.encode(), submitted.encode())
