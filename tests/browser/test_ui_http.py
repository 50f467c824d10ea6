"""The web UI over plain HTTP (no browser): sessions, CSRF, roles, tenants and escaping."""

from __future__ import annotations

import html
import re
import time

import httpx
import pytest
from starlette.testclient import TestClient
from tests.api.conftest import Live
from tests.api.helpers import open_dead_letter, order, submit, wait_job, waiting_review
from tests.api.server_app import build_app
from tests.browser.conftest import SignIn, browser_client, csrf_of, revoke, sign_in

from stalwart import Settings
from stalwart.api import create_api

PAGES = ("/ui/", "/ui/jobs", "/ui/jobs/job_x", "/ui/reviews", "/ui/reviews/rev_x", "/ui/dlq")


def review_status(live: Live, review_id: str, tenant: str = "acme") -> str:
    """A review's status, read through the API."""
    with live.http(tenant, "admin") as http:
        return str(http.get(f"/v1/reviews/{review_id}").json()["status"])


def letter_status(live: Live, letter_id: str, tenant: str = "acme") -> str:
    """A dead letter's status, read through the API."""
    with live.http(tenant, "admin") as http:
        return str(http.get(f"/v1/dlq/{letter_id}").json()["status"])


def cookie_header(response: httpx.Response, name: str) -> str:
    """The Set-Cookie header that sets `name`."""
    found = [h for h in response.headers.get_list("set-cookie") if h.startswith(f"{name}=")]
    assert found, response.headers
    return found[0]


def test_login_sets_an_httponly_samesite_cookie_scoped_to_ui(live: Live) -> None:
    key = live.keys[("acme", "reviewer")]
    with browser_client(live) as http:
        form = http.get("/ui/login")
        assert form.status_code == 200
        assert 'type="password"' in form.text and 'autocomplete="off"' in form.text
        assert '<label for="key">' in form.text
        assert "stalwart_csrf" in http.cookies

        response = sign_in(http, key)
        assert response.status_code == 303
        assert response.headers["location"] == "/ui/"
        cookie = cookie_header(response, "stalwart_session")
        attributes = {a.strip().lower() for a in cookie.split(";")[1:]}
        assert "httponly" in attributes
        assert "samesite=lax" in attributes
        assert "path=/ui" in attributes
        assert "secure" not in attributes  # plain http here; https adds it
        # The cookie holds the key's id, never the key or its secret.
        secret = key.split("_", 2)[2]
        assert key not in cookie and secret not in cookie

        dashboard = http.get("/ui/")
        assert dashboard.status_code == 200
        assert "acme-reviewer" in dashboard.text and "Dashboard" in dashboard.text


def test_a_bad_key_shows_the_form_again_with_401(live: Live) -> None:
    with browser_client(live) as http:
        for key in ("stw_nope_nope", "not a key", ""):
            response = sign_in(http, key)
            assert response.status_code == 401
            assert "not valid" in response.text
            assert 'type="password"' in response.text
            assert "stalwart_session" not in response.headers.get("set-cookie", "")
        assert http.get("/ui/").status_code == 303


def test_the_login_form_needs_its_csrf_token(live: Live) -> None:
    with browser_client(live) as http:
        http.get("/ui/login")
        data = {"key": live.keys[("acme", "admin")], "csrf": "forged", "next": ""}
        response = http.post("/ui/login", data=data)
        assert response.status_code == 403
        assert "expired" in response.text
        assert "stalwart_session" not in response.headers.get("set-cookie", "")


def test_signed_out_pages_redirect_to_login_and_back(live: Live) -> None:
    with browser_client(live) as http:
        for path in PAGES:
            response = http.get(path)
            assert response.status_code == 303, path
            assert response.headers["location"].startswith("/ui/login"), path
        assert http.get("/ui/jobs?status=failed").headers["location"] == (
            "/ui/login?next=/ui/jobs%3Fstatus%3Dfailed"
        )
        # A forged or tampered cookie is no session either.
        http.cookies.set("stalwart_session", "eyJrIjoia2V5X3gifQ.forged.sig", path="/ui")
        assert http.get("/ui/").status_code == 303

        response = sign_in(http, live.keys[("acme", "admin")], next_path="/ui/jobs?status=failed")
        assert response.headers["location"] == "/ui/jobs?status=failed"
    for target in ("https://evil.example/ui/", "//evil.example/ui", "/v1/jobs", "/ui\\..\\x"):
        with browser_client(live) as http:
            response = sign_in(http, live.keys[("acme", "admin")], next_path=target)
            assert response.headers["location"] == "/ui/", target


def test_a_post_without_the_right_csrf_token_changes_nothing(live: Live, ui: SignIn) -> None:
    review = waiting_review(live)
    http = ui("acme", "reviewer")
    path = f"/ui/reviews/{review['id']}"
    for data in ({"comment": "no token"}, {"comment": "wrong token", "csrf": "0" * 43}):
        response = http.post(f"{path}/approve", data=data)
        assert response.status_code == 403
        assert "nothing was changed" in response.text
    assert review_status(live, review["id"]) == "pending"

    response = http.post(f"{path}/approve", data={"csrf": csrf_of(http.get(path).text)})
    assert response.status_code == 303
    assert response.headers["location"] == f"{path}?done=approved"
    assert review_status(live, review["id"]) == "approved"


def test_logout_needs_the_token_and_ends_the_session(live: Live, ui: SignIn) -> None:
    http = ui("acme", "operator")
    assert http.post("/ui/logout", data={"csrf": "wrong"}).status_code == 403
    assert http.get("/ui/").status_code == 200
    response = http.post("/ui/logout", data={"csrf": csrf_of(http.get("/ui/").text)})
    assert response.status_code == 303
    assert 'stalwart_session=""' in cookie_header(response, "stalwart_session")
    assert http.get("/ui/").status_code == 303


def test_a_revoked_keys_session_stops_working(live: Live, ui: SignIn) -> None:
    http = ui("acme", "operator")
    assert http.get("/ui/jobs").status_code == 200
    revoke(live, "acme-operator")
    response = http.get("/ui/jobs")
    assert response.status_code == 303
    assert response.headers["location"].startswith("/ui/login")
    with browser_client(live) as fresh:
        assert sign_in(fresh, live.keys[("acme", "operator")]).status_code == 401


def test_another_tenants_job_review_and_dead_letter_are_404(live: Live, ui: SignIn) -> None:
    review = waiting_review(live)
    letter = open_dead_letter(live)
    http = ui("globex", "admin")
    for path in (
        f"/ui/jobs/{review['job_id']}",
        f"/ui/reviews/{review['id']}",
        f"/ui/dlq/{letter['id']}",
        f"/ui/dlq/{letter['job_id']}",
        "/ui/jobs/job_doesnotexist",
    ):
        response = http.get(path)
        assert response.status_code == 404, path
        assert "Not found" in response.text
        assert review["job_id"] not in response.text
    token = csrf_of(http.get("/ui/").text)
    assert http.post(f"/ui/reviews/{review['id']}/approve", data={"csrf": token}).status_code == 404
    assert http.post(f"/ui/dlq/{letter['id']}/redrive", data={"csrf": token}).status_code == 404
    assert http.post(f"/ui/jobs/{review['job_id']}/cancel", data={"csrf": token}).status_code == 404
    assert review_status(live, review["id"]) == "pending"
    assert letter_status(live, letter["id"]) == "open"
    assert review["job_id"] not in http.get("/ui/jobs").text


def test_a_reviewer_cannot_see_or_redrive_dead_letters(live: Live, ui: SignIn) -> None:
    letter = open_dead_letter(live)
    http = ui("acme", "reviewer")
    dashboard = http.get("/ui/")
    assert 'href="/ui/reviews"' in dashboard.text
    assert 'href="/ui/dlq"' not in dashboard.text  # the navigation shows what the role can use
    for path in ("/ui/dlq", f"/ui/dlq/{letter['id']}"):
        page = http.get(path)
        assert page.status_code == 403
        assert "operator, admin" in page.text
        assert "Redrive" not in page.text
    job_page = http.get(f"/ui/jobs/{letter['job_id']}")
    assert job_page.status_code == 200 and "/redrive" not in job_page.text
    response = http.post(f"/ui/dlq/{letter['id']}/redrive", data={"csrf": csrf_of(job_page.text)})
    assert response.status_code == 403
    assert letter_status(live, letter["id"]) == "open"


def test_a_submitter_cannot_open_the_review_queue(live: Live, ui: SignIn) -> None:
    review = waiting_review(live)
    http = ui("acme", "submitter")
    assert 'href="/ui/reviews"' not in http.get("/ui/").text
    for path in ("/ui/reviews", f"/ui/reviews/{review['id']}"):
        page = http.get(path)
        assert page.status_code == 403
        assert "reviewer, operator, admin" in page.text
    token = csrf_of(http.get("/ui/").text)
    assert http.post(f"/ui/reviews/{review['id']}/reject", data={"csrf": token}).status_code == 403
    assert review_status(live, review["id"]) == "pending"
    # Nor is the operator a decider: it reads the review, without the forms.
    operator = ui("acme", "operator")
    page = operator.get(f"/ui/reviews/{review['id']}")
    assert page.status_code == 200 and "/approve" not in page.text
    assert "not decide them" in page.text


def test_untrusted_input_and_comments_are_escaped(live: Live, ui: SignIn) -> None:
    evil = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    job_id = submit(live, order(500, customer=evil))
    wait_job(live, job_id, ("waiting_approval",))
    http = ui("acme", "reviewer")
    queue = http.get("/ui/reviews").text
    [review_id] = re.findall(r'href="/ui/reviews/(rev_\w+)"', queue)
    page = http.get(f"/ui/reviews/{review_id}")
    token = csrf_of(page.text)
    http.post(f"/ui/reviews/{review_id}/reject", data={"csrf": token, "comment": evil})
    for path in (f"/ui/jobs/{job_id}", f"/ui/reviews/{review_id}"):
        text = http.get(path).text
        assert "<script>alert" not in text and "<img src=x" not in text, path
        assert "&lt;script&gt;alert(" in text and "&lt;img src=x" in text, path


def test_deciding_twice_answers_409_with_a_clear_message(live: Live, ui: SignIn) -> None:
    review = waiting_review(live)
    http = ui("acme", "reviewer")
    path = f"/ui/reviews/{review['id']}"
    token = csrf_of(http.get(path).text)
    assert http.post(f"{path}/approve", data={"csrf": token}).status_code == 303
    again = http.post(f"{path}/reject", data={"csrf": token, "comment": "too late"})
    assert again.status_code == 409
    assert "already approved by acme-reviewer" in again.text
    assert review_status(live, review["id"]) == "approved"


def test_cancel_from_the_job_page(live: Live, ui: SignIn) -> None:
    review = waiting_review(live)
    job_id = review["job_id"]
    submitter = ui("acme", "submitter")
    page = submitter.get(f"/ui/jobs/{job_id}")
    assert "Cancel job" in page.text
    reviewer = ui("acme", "reviewer")
    assert "Cancel job" not in reviewer.get(f"/ui/jobs/{job_id}").text
    data = {"csrf": csrf_of(page.text), "reason": "customer changed their mind"}
    response = submitter.post(f"/ui/jobs/{job_id}/cancel", data=data)
    assert response.status_code == 303
    wait_job(live, job_id, ("cancelled",))
    page = submitter.get(response.headers["location"])
    assert "Cancel requested" in page.text
    assert "Cancel job" not in page.text
    assert "customer changed their mind" in page.text
    again = submitter.post(f"/ui/jobs/{job_id}/cancel", data=data)
    assert again.status_code == 409
    assert "Could not do that" in again.text


def test_redrive_from_the_dead_letter_page(live: Live, ui: SignIn) -> None:
    letter = open_dead_letter(live)
    http = ui("acme", "operator")
    listing = http.get("/ui/dlq").text
    assert letter["id"] in listing and "the upstream service is down" in listing
    page = http.get(f"/ui/dlq/{letter['id']}")
    assert "Redrive" in page.text and "http_503" in page.text
    data = {"csrf": csrf_of(page.text), "reason": "upstream is back"}
    response = http.post(f"/ui/dlq/{letter['id']}/redrive", data=data)
    assert response.status_code == 303
    assert letter_status(live, letter["id"]) == "redriven"
    page = http.get(response.headers["location"])
    assert "Redriven. The job resumes" in page.text
    assert "acme-operator" in page.text
    timeline = http.get(f"/ui/jobs/{letter['job_id']}").text
    assert "job_redriven" in timeline and "upstream is back" in timeline


def test_the_job_list_filters_and_pages(
    live: Live, ui: SignIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("stalwart.ui.jobs.PAGE_SIZE", 2)
    small = [submit(live, order(5)) for _ in range(3)]
    letter = open_dead_letter(live)
    for job_id in small:
        wait_job(live, job_id, ("completed",))
    http = ui("acme", "submitter")
    first = http.get("/ui/jobs").text
    assert letter["job_id"] in first  # newest first
    older = re.search(r'href="/ui/jobs\?([^"]*before=[^"]+)"', first)
    assert older, "no link to older jobs"
    second = http.get("/ui/jobs?" + html.unescape(older.group(1))).text
    assert small[1] in second and small[2] not in second
    failed = http.get("/ui/jobs?status=dead_lettered").text
    assert letter["job_id"] in failed and small[0] not in failed
    by_workflow = http.get("/ui/jobs?workflow=order").text
    assert letter["job_id"] not in by_workflow
    none = http.get("/ui/jobs?workflow=nothing-like-this")
    assert none.status_code == 200 and "No jobs match these filters." in none.text


def test_the_dashboard_shows_the_figures(live: Live, ui: SignIn) -> None:
    http = ui("acme", "operator")
    assert "No jobs yet." in http.get("/ui/").text
    assert "No reviews are waiting." in http.get("/ui/reviews").text
    assert "No dead letters are open." in http.get("/ui/dlq").text
    waiting_review(live)
    open_dead_letter(live)
    text = http.get("/ui/").text
    for label, link in (("Approvals waiting", "/ui/reviews"), ("Dead letters open", "/ui/dlq")):
        assert re.search(label + r'</p>\s*<p class="stat-value">\s*<a href="' + link + '">1<', text)
    assert "$0.00" in text and "waiting approval" in text
    assert re.search(r'<time datetime="[^"]+" title="\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC"', text)


def test_pages_are_html_with_safe_headers_and_not_in_the_api_schema(live: Live, ui: SignIn) -> None:
    http = ui("acme", "admin")
    page = http.get("/ui/jobs")
    assert page.headers["content-type"].startswith("text/html")
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert page.headers["cache-control"] == "no-store"
    assert http.get("/ui/static/stalwart.css").status_code == 200
    assert http.get("/ui/static/stalwart.js").status_code == 200
    missing = http.get("/ui/no/such/page")
    assert missing.status_code == 404 and "There is no page at this address." in missing.text
    with live.http() as api:
        paths = api.get("/openapi.json").json()["paths"]
    assert not [p for p in paths if p.startswith("/ui")]


def test_the_cookies_are_secure_over_https(live: Live) -> None:
    settings = Settings(database_url=live.database_url)
    api = create_api(build_app(settings), settings=settings, workers=0)
    with TestClient(api, base_url="https://testserver", follow_redirects=False) as http:
        form = http.get("/ui/login")
        assert "secure" in cookie_header(form, "stalwart_csrf").lower()
        response = http.post(
            "/ui/login", data={"key": live.keys[("acme", "admin")], "csrf": csrf_of(form.text)}
        )
        assert response.status_code == 303
        attributes = {
            a.strip().lower() for a in cookie_header(response, "stalwart_session").split(";")
        }
        assert "secure" in attributes and "httponly" in attributes
        assert http.get("/ui/").status_code == 200


def test_the_review_page_recalls_similar_past_cases(live: Live, ui: SignIn) -> None:
    # An earlier order of this customer was rejected with a reason; the workers record its
    # episode. The next order of the same customer shows it to the reviewer.
    job_id = submit(live, order(700, customer="Zephyrine Holdings"))
    past_id = submit(live, order(650, customer="Zephyrine Holdings"))
    wait_job(live, past_id, ("waiting_approval",))
    with live.http("acme", "reviewer") as http:
        [past_review] = [
            r for r in http.get("/v1/reviews").json()["items"] if r["job_id"] == past_id
        ]
        assert (
            http.post(
                f"/v1/reviews/{past_review['id']}/reject",
                json={"comment": "Zephyrine Holdings is under a credit hold"},
            ).status_code
            == 200
        )
    wait_job(live, past_id, ("rejected", "failed"))
    wait_job(live, job_id, ("waiting_approval",))
    http = ui("acme", "reviewer")
    with live.http("acme", "admin") as api:
        [review] = [r for r in api.get("/v1/reviews").json()["items"] if r["job_id"] == job_id]
        deadline = time.monotonic() + 20
        while not api.get(f"/v1/jobs/{job_id}/similar").json()["items"]:
            assert time.monotonic() < deadline, "the past case was never recorded"
            time.sleep(0.2)
    page = http.get(f"/ui/reviews/{review['id']}").text
    section = page[page.index("Similar past cases") :]
    assert past_id in section and "credit hold" in section
    assert "Found by word overlap" in section  # the suite runs without an embedder
    assert job_id not in section.split("</section>")[0]
