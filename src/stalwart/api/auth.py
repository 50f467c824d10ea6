"""Who is calling: an API key in `Authorization: Bearer <key>` (or `X-API-Key`), checked on
every request, and the permission a route needs.

Every route acts within the caller's tenant, and the store filters by it: another tenant's job,
review or dead letter answers 404 exactly as a missing one does. A role that lacks a route's
permission answers 403 before anything is looked up, so it reveals nothing either.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import Request

from stalwart.api.state import client
from stalwart.domain.access import Permission, Principal, roles_with
from stalwart.errors import AuthenticationError, PermissionDeniedError


def token_of(request: Request) -> str | None:
    """The API key a request presents, if any."""
    header = request.headers.get("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        raise AuthenticationError(
            "the Authorization header must be `Bearer <key>`", field="authorization"
        )
    key = request.headers.get("x-api-key")
    return key.strip() if key and key.strip() else None


async def caller(request: Request) -> Principal:
    """The authenticated caller; `AuthenticationError` (401) without a valid key."""
    cached = getattr(request.state, "principal", None)
    if isinstance(cached, Principal):
        return cached
    principal = await client(request).authenticate(token_of(request) or "")
    request.state.principal = principal
    return principal


def check(principal: Principal, permission: Permission) -> None:
    """`PermissionDeniedError` (403) unless the caller's role carries `permission`."""
    if not principal.can(permission):
        raise PermissionDeniedError(
            f"role {principal.role!r} cannot {permission.value}; that needs one of: "
            + ", ".join(roles_with(permission)),
            role=principal.role,
            permission=permission.value,
        )


def require(permission: Permission) -> Callable[[Request], Awaitable[Principal]]:
    """A dependency: the caller, who must hold `permission`."""

    async def dependency(request: Request) -> Principal:
        principal = await caller(request)
        check(principal, permission)
        return principal

    return dependency
