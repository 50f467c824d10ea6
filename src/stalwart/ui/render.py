"""Rendering pages: the Jinja2 templates (autoescaped), the context every page shares, the
checks every page makes (signed in, allowed), and the HTML answers for what goes wrong."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import jinja2
from fastapi import Form, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse
from fastapi.routing import APIRoute
from fastapi.templating import Jinja2Templates

from stalwart.domain.access import Permission, roles_with
from stalwart.errors import InputValidationError, NotFoundError
from stalwart.ui import views
from stalwart.ui.session import Session, csrf_ok, current

log = logging.getLogger("stalwart.ui")

HERE = Path(__file__).parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"

# Pages are private, change often, and must not be framed or run anyone else's script.
HEADERS = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
}
NAV = (
    ("/ui/", "Dashboard", Permission.READ),
    ("/ui/jobs", "Jobs", Permission.READ),
    ("/ui/reviews", "Reviews", Permission.REVIEW_READ),
    ("/ui/dlq", "Dead letters", Permission.DLQ_READ),
)
NOTICES = {
    "approved": "Approved. The step will run.",
    "rejected": "Rejected. Your comment was recorded as feedback.",
    "redriven": "Redriven. The job resumes from its failed step.",
    "cancelled": "Cancel requested. Open steps were cancelled.",
    "signed_in": "Signed in.",
}

templates = Jinja2Templates(
    env=jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
)
templates.env.globals.update(
    when=views.when,
    time_left=views.time_left,
    duration=views.duration,
    span=views.span,
    money=views.money,
    percent=views.percent,
    pretty=views.pretty,
    absolute=views.absolute,
)


class SignedOut(Exception):
    """The request has no valid session: sign in first."""


class Forbidden(Exception):
    """The session's role lacks the permission the page or action needs."""

    def __init__(self, session: Session, permission: Permission) -> None:
        super().__init__(permission.value)
        self.session = session
        self.permission = permission


class BadCsrf(Exception):
    """A form came back without this session's token."""

    def __init__(self, session: Session) -> None:
        super().__init__("csrf")
        self.session = session


def page(
    request: Request,
    name: str,
    session: Session | None,
    status_code: int = 200,
    **context: Any,
) -> Response:
    """Render template `name` with the context every page shares."""
    principal = session.principal if session else None
    path = request.url.path
    nav = [
        (href, label, path == href or (href != "/ui/" and path.startswith(href)))
        for href, label, permission in NAV
        if principal and principal.can(permission)
    ]
    done = request.query_params.get("done", "")
    shared: dict[str, Any] = {
        "session": session,
        "principal": principal,
        "csrf": session.csrf if session else "",
        "nav": nav,
        "now": time.time(),
        "notice": NOTICES.get(done, ""),
        "error": "",
        "Permission": Permission,
    }
    shared.update(context)
    return templates.TemplateResponse(request, name, shared, status_code=status_code)


def error_page(
    request: Request, session: Session | None, status_code: int, title: str, message: str
) -> Response:
    """A page that says what went wrong and where to go next."""
    return page(request, "error.html", session, status_code, title=title, message=message)


def login_redirect(request: Request) -> Response:
    """To the login page, coming back here (a GET) afterwards."""
    target = request.url.path if request.method == "GET" else request.headers.get("referer", "")
    if request.method == "GET" and request.url.query:
        target += "?" + request.url.query
    where = "/ui/login"
    if safe_next(target) and target not in ("/ui/", "/ui"):
        where += "?next=" + quote(safe_next(target), safe="/")
    return RedirectResponse(where, status_code=303)


def safe_next(target: str) -> str:
    """`target` when it is a local UI path, else '' (never send people off-site)."""
    if target.startswith(("http://", "https://")):
        # A Referer: keep only its path, and only when it is ours.
        _, _, rest = target.partition("://")
        target = "/" + rest.partition("/")[2]
    ok = (target == "/ui" or target.startswith("/ui/")) and not any(
        bad in target for bad in ("\\", "..", "//")
    )
    return target if ok else ""


def need(permission: Permission) -> Callable[[Request], Awaitable[Session]]:
    """A dependency for pages: the session, whose role must carry `permission`."""

    async def dependency(request: Request) -> Session:
        session = await current(request)
        if session is None:
            raise SignedOut
        if not session.principal.can(permission):
            raise Forbidden(session, permission)
        return session

    return dependency


def act(permission: Permission) -> Callable[..., Awaitable[Session]]:
    """A dependency for form posts: the session, the form's CSRF token, then `permission`."""

    async def dependency(request: Request, csrf: Annotated[str, Form()] = "") -> Session:
        session = await current(request)
        if session is None:
            raise SignedOut
        if not csrf_ok(session, csrf):
            raise BadCsrf(session)
        if not session.principal.can(permission):
            raise Forbidden(session, permission)
        return session

    return dependency


class UiRoute(APIRoute):
    """A route that answers in HTML: sign-in redirects, 403 and 404 pages, safe headers."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        """The route's handler, wrapped."""
        handler = super().get_route_handler()

        async def run(request: Request) -> Response:
            response = await _answer(handler, request)
            for name, value in HEADERS.items():
                response.headers.setdefault(name, value)
            return response

        return run


async def _answer(
    handler: Callable[[Request], Coroutine[Any, Any, Response]], request: Request
) -> Response:
    try:
        return await handler(request)
    except SignedOut:
        return login_redirect(request)
    except Forbidden as exc:
        who = ", ".join(roles_with(exc.permission))
        message = (
            f"Your role ({exc.session.principal.role}) cannot {exc.permission.value}. "
            f"That needs one of these roles: {who}."
        )
        return error_page(request, exc.session, 403, "Not allowed", message)
    except BadCsrf as exc:
        message = (
            "The form's security token was missing or did not match your session, so nothing "
            "was changed. Go back, reload the page and try again."
        )
        return error_page(request, exc.session, 403, "Form expired", message)
    except NotFoundError:
        session = await current(request)
        message = "There is nothing here, or it belongs to another tenant."
        return error_page(request, session, 404, "Not found", message)
    except RequestValidationError:
        session = await current(request)
        message = "The request was not valid: check the address or the form and try again."
        return error_page(request, session, 400, "Bad request", message)
    except InputValidationError as exc:
        # Text the store cannot keep (a NUL in a comment): say which, change nothing.
        session = await current(request)
        return error_page(request, session, 422, "Not valid", exc.message)
