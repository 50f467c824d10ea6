"""The web UI in a real Chromium (Debian's `chromium`, driven by Playwright's sync API): sign in,
decide reviews, redrive a dead letter, use the keyboard, read an agent step's transcript; a
full-page screenshot of every page lands in the test's artifacts (`$STALWART_TEST_ARTIFACTS` or
`.artifacts/`, under `browser/<test>/<page>.png`).

With `CI=true` a missing browser fails the run instead of skipping it.
"""

from __future__ import annotations

import asyncio
import functools
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright
from tests.api.conftest import Live, start_live
from tests.api.helpers import open_dead_letter, waiting_review
from tests.browser.conftest import off_loop
from tests.integration.transcripts import seed_database

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1280, "height": 800}
WAIT_MS = 10_000


def chromium_path() -> str:
    """The browser to drive; skips (fails on CI) when it is not installed."""
    path = os.environ.get("STALWART_CHROMIUM", "/usr/bin/chromium")
    if not Path(path).exists():
        reason = f"no Chromium at {path} (install Debian's chromium or set STALWART_CHROMIUM)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return path


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One headless Chromium for the module."""
    executable = chromium_path()
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Browser, live: Live) -> Iterator[Page]:
    """A fresh browser context (no cookies) on the live server, at 1280 by 800."""
    context = browser.new_context(viewport=VIEWPORT, base_url=live.url)
    context.set_default_timeout(WAIT_MS)
    opened = context.new_page()
    # Script errors and CSP violations show in the console: a clean page logs none.
    problems: list[str] = []
    opened.on("pageerror", lambda error: problems.append(str(error)))
    opened.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    try:
        yield opened
    finally:
        context.close()
    assert not problems, problems


@pytest.fixture
def shoot(page: Page, request: pytest.FixtureRequest) -> Iterator[Shots]:
    """`shoot("dashboard")`: a full-page screenshot into this test's artifacts folder."""
    root = Path(os.environ.get("STALWART_TEST_ARTIFACTS") or ROOT / ".artifacts")
    shots = Shots(page, root / "browser" / request.node.name)
    yield shots
    for path in shots.taken:
        assert path.is_file() and path.stat().st_size > 0, path


class Shots:
    """Screenshots of one test."""

    def __init__(self, page: Page, folder: Path) -> None:
        self.page = page
        self.folder = folder
        self.taken: list[Path] = []

    def __call__(self, name: str) -> Path:
        """Capture the whole page as `<name>.png`."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        assert path.is_file() and path.stat().st_size > 0
        self.taken.append(path)
        return path


def sign_in(page: Page, key: str) -> None:
    """Sign in through the form, with the mouse."""
    page.goto("/ui/login")
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()


def reload_until(page: Page, text: str, timeout: float = 60.0) -> None:
    """Reload until `text` shows on the page (the worker moves the job on its own time)."""
    deadline = time.monotonic() + timeout
    while text not in page.content():
        assert time.monotonic() < deadline, f"{text!r} did not appear on {page.url}"
        time.sleep(0.2)
        page.reload()


def test_approve_the_waiting_review_and_see_the_job_complete(
    live: Live, page: Page, shoot: Shots
) -> None:
    review = waiting_review(live, amount=500)
    page.goto("/ui/")
    expect(page).to_have_url(re.compile(r"/ui/login"))
    shoot("login")
    sign_in(page, live.keys[("acme", "reviewer")])
    expect(page.locator(".stat", has_text="Approvals waiting")).to_contain_text("1")
    shoot("dashboard")

    page.get_by_role("navigation", name="Main").get_by_role("link", name="Jobs").click()
    expect(page.get_by_role("heading", name="Jobs")).to_be_visible()
    expect(page.get_by_role("link", name=review["job_id"])).to_be_visible()
    shoot("jobs")

    page.get_by_role("link", name="Reviews").click()
    row = page.locator("tr", has_text=review["job_id"])
    expect(row).to_contain_text("left")  # the time left on the SLA
    shoot("reviews")
    row.get_by_role("link", name="Pay for this order?").click()
    expect(page.get_by_role("heading", name="The decision needed")).to_be_visible()
    expect(page.get_by_text("the customer is charged once")).to_be_visible()
    expect(page.get_by_text("Orders over 100 need a reviewer.").first).to_be_visible()
    shoot("review")

    page.locator("#approve-comment").fill("Customer verified by phone.")
    page.get_by_role("button", name="Approve").click()
    expect(page.get_by_role("status")).to_contain_text("Approved")
    expect(page.locator(".comment")).to_have_text("Customer verified by phone.")
    shoot("review_decided")

    page.get_by_role("link", name="See the job").click()
    reload_until(page, 'class="badge s-completed"')
    expect(page.locator("h1 .badge")).to_have_text("completed")
    expect(page.locator("svg.dag .node")).to_have_count(2)
    expect(page.locator("#step-pay")).to_contain_text("pay-acme:")  # the step's output
    expect(page.get_by_text("No model calls.")).to_be_visible()
    shoot("job")


def test_reject_a_review_and_see_the_feedback_in_the_timeline(
    live: Live, page: Page, shoot: Shots
) -> None:
    review = waiting_review(live, amount=750)
    sign_in(page, live.keys[("acme", "reviewer")])
    page.goto("/ui/reviews")
    page.locator("tr", has_text=review["job_id"]).get_by_role("link").first.click()
    feedback = "Amount looks wrong: confirm with the customer first."
    page.locator("#reject-comment").fill(feedback)
    page.get_by_role("button", name="Reject").click()
    expect(page.get_by_role("status")).to_contain_text("Rejected")
    shoot("review")

    page.get_by_role("link", name="See the job").click()
    timeline = page.locator("table.timeline")
    expect(timeline.locator("tr", has_text="review_rejected")).to_contain_text(feedback)
    reload_until(page, 'class="badge s-rejected"')
    shoot("job")


def test_redrive_a_dead_letter(live: Live, page: Page, shoot: Shots) -> None:
    letter = open_dead_letter(live)
    sign_in(page, live.keys[("acme", "operator")])
    page.get_by_role("link", name="Dead letters").click()
    expect(page.get_by_role("heading", name="Dead letters")).to_be_visible()
    shoot("dead_letters")
    page.locator("tr", has_text=letter["job_id"]).get_by_role("link").first.click()
    expect(page.get_by_role("heading", name="Error")).to_be_visible()
    expect(page.locator("pre.json").first).to_contain_text("http_503")
    shoot("dead_letter")

    page.get_by_label("Reason for redriving").fill("upstream is back")
    page.get_by_role("button", name="Redrive").click()
    expect(page.get_by_role("status")).to_contain_text("Redriven")
    expect(page.locator(".page-head .badge").first).to_have_text("redriven")
    expect(page.get_by_role("button", name="Redrive")).to_have_count(0)
    shoot("dead_letter_redriven")

    page.get_by_role("link", name="Follow the job").click()
    expect(page.locator("table.timeline tr", has_text="job_redriven")).to_contain_text(
        "upstream is back"
    )
    shoot("job")


def test_sign_in_with_the_keyboard_only(live: Live, page: Page, shoot: Shots) -> None:
    page.clock.install()  # to move time on below, and see the relative times follow
    page.goto("/ui/login")
    shoot("login")
    key_field = page.get_by_label("API key")
    for _ in range(5):  # the field has autofocus; Tab reaches it otherwise
        if key_field.evaluate("el => el === document.activeElement"):
            break
        page.keyboard.press("Tab")
    expect(key_field).to_be_focused()
    page.keyboard.type(live.keys[("acme", "operator")])
    page.keyboard.press("Tab")
    expect(page.get_by_role("button", name="Sign in")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()
    # The first Tab stop skips to the content; the navigation follows, in order.
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    nav = page.get_by_role("navigation", name="Main")
    expect(nav.get_by_role("link", name="Dashboard")).to_be_focused()
    shoot("dashboard")
    as_of = page.locator(".page-head time[data-rel]")
    expect(as_of).to_have_text("just now")
    page.clock.fast_forward("05:00")
    expect(as_of).to_have_text("5 min ago")


@pytest.fixture
def idle(tmp_path: Path) -> Iterator[Live]:
    """A server without workers (nothing moves its jobs but the test), on a fresh database."""
    url = f"sqlite:///{tmp_path / 'idle.db'}"
    server, background = off_loop(functools.partial(start_live, url, workers=0))
    try:
        yield server
    finally:
        background.stop()


def test_read_an_agent_steps_transcript_on_the_job_page(
    browser: Browser, idle: Live, request: pytest.FixtureRequest
) -> None:
    seeded = off_loop(asyncio.run, seed_database(idle.database_url))
    context = browser.new_context(viewport=VIEWPORT, base_url=idle.url)
    context.set_default_timeout(WAIT_MS)
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    try:
        sign_in(page, idle.keys[("acme", "reviewer")])
        page.goto(f"/ui/jobs/{seeded.job_id}")
        page.locator("#step-research").get_by_role("link", name="transcript").click()
        transcript = page.locator("#transcript-research")
        expect(transcript).to_be_in_viewport()
        expect(transcript.locator(".turn")).to_have_count(2)
        # The model's text is shown as it wrote it: its markup is text, not elements.
        expect(transcript.locator(".turn-text")).to_have_text(
            "Looking up <b>ACME</b> [bold red]now[/] & then"
        )
        expect(transcript.locator(".turn-text b")).to_have_count(0)
        waiting = transcript.locator("tr.s-awaiting_approval")
        expect(waiting).to_contain_text("send_payment")
        expect(waiting.locator(".badge")).to_have_text("awaiting approval")
        root = Path(os.environ.get("STALWART_TEST_ARTIFACTS") or ROOT / ".artifacts")
        Shots(page, root / "browser" / request.node.name)("job")
        waiting.get_by_role("link", name="waits for review").click()
        expect(page).to_have_url(re.compile(f"/ui/reviews/{seeded.review_id}$"))
    finally:
        context.close()
    assert not problems, problems
