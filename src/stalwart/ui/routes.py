"""The UI's router: signing in and out, the dashboard, and the pages of each concept (jobs,
reviews, dead letters) from their own modules. Not part of the API's OpenAPI schema."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request, Response
from fastapi.responses import RedirectResponse

from stalwart.api.state import client
from stalwart.domain.access import Permission
from stalwart.errors import AuthenticationError
from stalwart.ui import dlq, jobs, reviews
from stalwart.ui.render import UiRoute, act, need, page, safe_next
from stalwart.ui.session import (
    Session,
    current,
    login_token,
    login_token_ok,
    remember_login_token,
    session_secret,
    sign_in,
    sign_out,
)

router = APIRouter(prefix="/ui", include_in_schema=False, route_class=UiRoute)
for module in (jobs, reviews, dlq):
    router.include_router(module.router)

Reader = Annotated[Session, Depends(need(Permission.READ))]


def _login_page(
    request: Request, *, next_path: str = "", error: str = "", status_code: int = 200
) -> Response:
    token = login_token(request)
    response = page(
        request,
        "login.html",
        None,
        status_code,
        login_csrf=token,
        next_path=safe_next(next_path),
        error=error,
    )
    remember_login_token(request, response, token)
    return response


@router.get("/login")
async def login_form(request: Request, next: str = "") -> Response:
    """The sign-in form (an API key); signed-in people go straight on."""
    if await current(request) is not None:
        return RedirectResponse(safe_next(next) or "/ui/", status_code=303)
    return _login_page(request, next_path=next)


@router.post("/login")
async def login(
    request: Request,
    key: Annotated[str, Form(max_length=512)] = "",
    csrf: Annotated[str, Form(max_length=256)] = "",
    next: Annotated[str, Form(max_length=2048)] = "",
) -> Response:
    """Check the key and start a session; a bad key shows the form again (401)."""
    if not login_token_ok(request, csrf):
        error = "The sign-in form expired. It has been reloaded: please try again."
        return _login_page(request, next_path=next, error=error, status_code=403)
    try:
        principal = await client(request).authenticate(key.strip())
    except AuthenticationError:
        error = "That API key is not valid: it may be mistyped, or it was revoked."
        return _login_page(request, next_path=next, error=error, status_code=401)
    response = RedirectResponse(safe_next(next) or "/ui/", status_code=303)
    await session_secret(request)
    sign_in(request, response, principal)
    return response


@router.post("/logout")
async def logout(session: Annotated[Session, Depends(act(Permission.READ))]) -> Response:
    """End the session."""
    response = RedirectResponse("/ui/login", status_code=303)
    sign_out(response)
    return response


@router.get("/")
async def dashboard(request: Request, session: Reader) -> Response:
    """What an operator looks at first."""
    board = await client(request).dashboard(tenant=session.principal.tenant_id)
    by_status = sorted(board.jobs_by_status.items(), key=lambda kv: (-kv[1], kv[0]))
    return page(
        request,
        "dashboard.html",
        session,
        board=board,
        by_status=by_status,
        total_jobs=sum(board.jobs_by_status.values()),
        cost_today=board.cost_today_nanos / 1e9,
    )


@router.get("")
async def root() -> Response:
    """`/ui` is `/ui/`."""
    return RedirectResponse("/ui/", status_code=307)


@router.get("/{path:path}")
async def not_found(request: Request, path: str) -> Response:
    """Any other address under `/ui`."""
    session = await current(request)
    message = "There is no page at this address."
    return page(request, "error.html", session, 404, title="Not found", message=message)
