"""The calls console (/console/) in a real browser against a real sandbox server: sign-in and
sign-out, the call log's filters and cursor pages, a call's page with its recording playing
and the transcript following it, a webhook redelivery, a batch's live progress, a test call
placed and played out, bad input, and axe-core's accessibility check; then its files as the
server serves them, and the committed build as the build makes it.

Headless Chromium (Debian's package) driven by Playwright (tests/ecosystem/browser.py).
Screenshots of the main pages are kept under test-artifacts/console/ (or
$CALLS_TEST_ARTIFACTS/console); docs/images/console-*.png are copies of them.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from calls_server.app import create_app
from calls_server.console import ASSETS
from calls_server.settings import Settings
from calls_server.storage import EmbeddedStore
from tests.conftest import ADMIN_TOKEN, Receiver, RunningServer, running_server, wait_for
from tests.ecosystem.browser import MARKS, expect, launched, new_page

ROOT = Path(__file__).parents[2]
CONSOLE_SOURCES = ROOT / "console"
ARTIFACTS = Path(os.environ.get("CALLS_TEST_ARTIFACTS", ROOT / "test-artifacts")) / "console"
FROM_NUMBER = "+14157774444"
# Every sandbox wait at a tenth: a call scripted to last 60 s plays for 6 s and records 6 s.
TIME_SCALE = "0.1"

pytestmark = MARKS


@dataclass(frozen=True)
class World:
    """A sandbox server and an organization set up through the API, as a person would
    find it: two agents, a number, a failing webhook, calls placed and played out."""

    server: RunningServer
    key: dict[str, str]
    organization_id: str
    support_agent: str
    sales_agent: str
    webhook_id: str
    receiver: Receiver
    played_call: str  # a completed call of the support agent, with recording and transcript

    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        """The API's `data` for a request with the organization's key (it must succeed)."""
        response = httpx.request(
            method, f"{self.server.base_url}/api{path}", headers=self.key, timeout=10, **kwargs
        )
        assert response.status_code < 300, response.text
        return response.json()["data"]

    def call(self, call_id: str) -> dict[str, Any]:
        data: dict[str, Any] = self.api("GET", f"/calls/{call_id}")
        return data


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    receiver = Receiver()
    receiver.reply_to = lambda received: (500, 0.0)  # every delivery fails, until told
    with running_server(
        tmp_path_factory.mktemp("console") / "data",
        CALLS_SANDBOX="true",
        CALLS_SANDBOX_TIME_SCALE=TIME_SCALE,
        CALLS_SCHEDULER_INTERVAL="0.1",
        CALLS_WEBHOOK_ALLOW_HTTP="true",
        CALLS_WEBHOOK_ALLOW_NETWORKS="127.0.0.0/8",
    ) as server:
        key = server.new_key_headers()
        world = World(server, key, "", "", "", "", receiver, "")
        organization = world.api("GET", "/calls", params={"limit": 1})["organization_id"]
        support = world.api("POST", "/agents/create", json={"agent_name": "Support"})["agent_id"]
        sales = world.api("POST", "/agents/create", json={"agent_name": "Sales"})["agent_id"]
        world.api(
            "POST",
            "/phone-numbers/create",
            json={"phone_number": FROM_NUMBER, "nickname": "Main", "outbound_agent_id": support},
        )
        webhook = world.api(
            "POST", "/post-call-webhooks/create", json={"name": "CRM", "url": receiver.url}
        )["id"]
        world.api(
            "POST",
            f"/agents/{support}/tools/post-call-webhook/assign",
            json={"webhook_id": webhook},
        )
        # 25 registered calls of Sales (more than a page), then one played call of Support.
        for i in range(25):
            world.api(
                "POST",
                "/calls/create",
                json={"agent_id": sales, "call_type": "PHONE_CALL", "metadata": {"n": i}},
            )
        played = world.api(
            "POST",
            "/calls/create-phone-call",
            json={
                "from_number": FROM_NUMBER,
                "to_number": "+12137774445",
                "override_agent_id": support,
                "metadata": {"sandbox_outcome": "completed", "sandbox_duration_ms": 60_000},
            },
        )["call"]["call_id"]
        wait_for(lambda: world.call(played)["call_status"].lower() == "ended", timeout=60)
        yield World(server, key, organization, support, sales, webhook, receiver, played)
    receiver.close()


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    with launched() as browser:
        yield browser


@contextmanager
def console_tab(chromium: Any, world: World, **options: Any) -> Iterator[Any]:
    """The console of the world's server in a fresh tab; no script error in it by the end."""
    tab = new_page(chromium, viewport={"width": 1360, "height": 900}, **options)
    errors: list[str] = []
    tab.on("pageerror", lambda error: errors.append(str(error)))
    tab.goto(f"{world.server.base_url}/console/")
    yield tab
    tab.context.close()
    assert errors == []


@pytest.fixture
def page(chromium: Any, world: World) -> Iterator[Any]:
    with console_tab(chromium, world) as tab:
        yield tab


@pytest.fixture
def page_for_axe(chromium: Any, world: World) -> Iterator[Any]:
    """A console tab whose Content-Security-Policy lets axe-core's script in."""
    with console_tab(chromium, world, bypass_csp=True) as tab:
        yield tab


def sign_in(page: Any, key: dict[str, str], admin_token: str = "") -> None:
    page.get_by_label("API key", exact=True).fill(key["X-API-KEY"])
    page.get_by_label("API secret", exact=True).fill(key["X-API-SECRET"])
    if admin_token:
        page.locator("input[name=admin-token]").fill(admin_token)
    page.get_by_role("button", name="Sign in").click()


def signed_in(page: Any, world: World) -> Any:
    sign_in(page, world.key)
    expect(page.get_by_role("heading", name="Calls")).to_be_visible()
    return page


def screenshot(page: Any, name: str, showing: Any = None) -> None:
    """Keep what the tab shows (scrolled to `showing`, if given) as console-<name>.png."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    if showing is not None:
        showing.scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / f"console-{name}.png"), full_page=False)


def call_rows(page: Any) -> Any:
    return page.locator("table.calls tbody tr")


# -- sign-in and sign-out ------------------------------------------------------------------


def test_sign_in_shows_the_first_page_of_calls(page, world):
    screenshot(page, "sign-in")
    signed_in(page, world)
    expect(call_rows(page)).to_have_count(20)
    expect(page.get_by_text("26 calls match")).to_be_visible()
    screenshot(page, "calls")


def test_credentials_are_kept_in_the_tab_session_only(page, world):
    signed_in(page, world)
    stored = page.evaluate("JSON.stringify(sessionStorage)")
    assert world.key["X-API-SECRET"] in stored
    assert page.evaluate("localStorage.length") == 0
    assert page.context.cookies() == []
    assert world.key["X-API-KEY"] not in page.url


def test_sign_out_forgets_the_credentials(page, world):
    signed_in(page, world)
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("button", name="Sign in")).to_be_visible()
    expect(page.get_by_text("You signed out.")).to_be_visible()
    assert page.evaluate("sessionStorage.length") == 0
    page.reload()
    expect(page.get_by_role("button", name="Sign in")).to_be_visible()


def test_a_wrong_secret_shows_the_apis_message_and_keeps_nothing(page, world):
    sign_in(page, {**world.key, "X-API-SECRET": "s3cr3t_wrong0000000000000000"})
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text("Sign-in failed")
    expect(alert).to_contain_text("HTTP 401")
    assert page.evaluate("sessionStorage.length") == 0


def test_a_key_revoked_mid_session_returns_to_sign_in_saying_why(page, world):
    key = world.server.new_key_headers()
    signed_in(page, replace(world, key=key))
    organization = httpx.get(
        f"{world.server.base_url}/api/calls", params={"limit": 1}, headers=key
    ).json()["data"]["organization_id"]
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    keys = httpx.get(
        f"{world.server.base_url}/api/organizations/{organization}/api-keys", headers=admin
    ).json()["data"]["api_keys"]
    httpx.delete(
        f"{world.server.base_url}/api/organizations/{organization}/api-keys/"
        f"{keys[0]['api_key_id']}",
        headers=admin,
    )
    page.get_by_role("link", name="Agents").click()
    expect(page.get_by_text("You were signed out")).to_be_visible()
    expect(page.get_by_role("button", name="Sign in")).to_be_visible()
    assert page.evaluate("sessionStorage.length") == 0


# -- the call log ----------------------------------------------------------------------------


def test_filtering_by_agent_and_status_lists_only_those_calls(page, world):
    signed_in(page, world)
    page.locator("select[name=agent_id]").select_option(label=f"Support ({world.support_agent})")
    page.get_by_label("ended", exact=True).check()
    page.get_by_role("button", name="Apply filters").click()
    expect(call_rows(page)).to_have_count(1)
    expect(call_rows(page).first).to_contain_text(world.played_call)
    expect(page.get_by_text("1 calls match")).to_be_visible()
    assert "agent_id=" in page.url
    assert "call_status=ended" in page.url


def test_transcript_search_finds_the_call_that_said_it(page, world):
    said = world.call(world.played_call)["transcript_object"][0]["content"].split()[0]
    signed_in(page, world)
    page.get_by_label("Transcript contains", exact=True).fill(said)
    page.get_by_role("button", name="Apply filters").click()
    expect(call_rows(page)).to_have_count(1)


def test_cursor_pages_go_forward_and_back(page, world):
    signed_in(page, world)
    first = call_rows(page).first.locator("a").inner_text()
    page.get_by_role("button", name="Next page").click()
    expect(call_rows(page)).to_have_count(6)
    assert "cursor=" in page.url
    expect(page.get_by_role("button", name="Next page")).to_be_disabled()
    page.get_by_role("button", name="Previous page").click()
    expect(call_rows(page)).to_have_count(20)
    expect(call_rows(page).first.locator("a")).to_have_text(first)


def is_poll(response: Any, path: str, status: int) -> bool:
    """Whether `response` answers a conditional read (If-None-Match) of `path` with `status`."""
    return (
        response.url.split("?")[0].endswith(path)
        and response.status == status
        and bool(response.request.header_value("if-none-match"))
    )


def test_the_list_follows_a_new_call_without_a_reload(page, world):
    signed_in(page, world)
    # The first page is polled with the page's ETag: unchanged, it is answered 304 (no
    # body) and the page stays as it is.
    with page.expect_response(lambda r: is_poll(r, "/api/calls", 304), timeout=10_000) as unchanged:
        pass
    assert unchanged.value.headers["etag"] == unchanged.value.request.header_value("if-none-match")
    assert "limit=20" in unchanged.value.url
    expect(call_rows(page)).to_have_count(20)
    # A new call changes the page: the next poll is answered 200 and the call shows up.
    with page.expect_response(lambda r: is_poll(r, "/api/calls", 200), timeout=10_000) as changed:
        call = world.api("POST", "/calls/create", json={"agent_id": world.sales_agent})["call"]
    assert changed.value.headers["etag"] != changed.value.request.header_value("if-none-match")
    expect(call_rows(page).first).to_contain_text(call["call_id"])
    world.api("DELETE", f"/calls/{call['call_id']}")


# -- a call's page ---------------------------------------------------------------------------


def test_a_calls_page_shows_its_header_analysis_events_and_metadata(page, world):
    signed_in(page, world)
    page.get_by_role("link", name=world.played_call).click()
    expect(page.get_by_role("heading", name=re.compile("Call"))).to_contain_text(world.played_call)
    fields = page.locator("dl.fields").first
    expect(fields).to_contain_text("phone call")
    expect(fields).to_contain_text(FROM_NUMBER)
    expect(fields).to_contain_text("user hangup")
    expect(page.get_by_role("heading", name="Analysis and cost")).to_be_visible()
    expect(page.locator("ol.timeline li").first).to_be_visible()
    expect(page.get_by_label("Metadata", exact=True)).to_contain_text("sandbox_outcome")
    screenshot(page, "call")


def test_the_recording_plays_and_the_transcript_follows_it(page, world):
    recording: list[tuple[int, str | None]] = []
    page.on(
        "response",
        lambda r: (
            recording.append((r.status, r.headers.get("content-range")))
            if "/sandbox/recordings/" in r.url
            else None
        ),
    )
    signed_in(page, world)
    page.goto(f"{world.server.base_url}/console/#/calls/{world.played_call}")
    # The player streams the recording from its URL (no copy in memory).
    audio_src = page.locator("audio").get_attribute("src")
    assert audio_src == world.call(world.played_call)["recording_url"]
    lines = page.locator("ol.transcript > li")
    expect(lines.first).to_be_visible()
    assert lines.count() >= 2
    # Click-to-seek: the second line's time button plays the recording from there.
    second_starts = world.call(world.played_call)["transcript_object"][1]["words"][0]["start"]
    second = lines.nth(1)
    second.get_by_role("button").click()
    expect(second).to_have_attribute("aria-current", "true")
    expect(page.locator(".word.spoken")).to_have_count(1, timeout=10_000)
    started = page.evaluate("document.querySelector('audio').currentTime")
    assert started >= second_starts / 1000 - 0.05
    # Playing: the audio's clock moves on, the highlighted word with it.
    first_word = page.locator(".word.spoken").inner_text()
    wait_for(lambda: page.evaluate("document.querySelector('audio').currentTime") > started + 0.8)
    assert page.evaluate("document.querySelector('audio').paused") is False
    assert page.locator(".word.spoken").inner_text() != first_word
    screenshot(page, "call-playing")
    # Moved back by the player's own controls, the highlight goes back with it.
    page.evaluate("document.querySelector('audio').currentTime = 0.05")
    expect(lines.first).to_have_attribute("aria-current", "true")
    # The browser asked for ranges of bytes and was answered 206 with them.
    assert recording, "the player did not ask for the recording"
    assert all(status == 206 for status, _ in recording), recording
    assert all(span and span.startswith("bytes ") for _, span in recording), recording


def test_a_call_under_way_is_polled_with_its_etag_and_its_change_shows(page, world):
    call_id = world.api("POST", "/calls/create", json={"agent_id": world.sales_agent})["call"][
        "call_id"
    ]
    try:
        signed_in(page, world)
        path = f"/api/calls/{call_id}"
        page.goto(f"{world.server.base_url}/console/#/calls/{call_id}")
        expect(page.locator(".call-header .badge")).to_have_text("registered")
        with page.expect_response(lambda r: is_poll(r, path, 304), timeout=10_000):
            pass
        expect(page.get_by_label("Metadata", exact=True)).not_to_contain_text("callback")
        with page.expect_response(lambda r: is_poll(r, path, 200), timeout=10_000):
            world.api("PUT", f"/calls/{call_id}", json={"metadata": {"callback": "tomorrow"}})
        expect(page.get_by_label("Metadata", exact=True)).to_contain_text("tomorrow")
        # Still under way, still polled: the new version is the one named now.
        with page.expect_response(lambda r: is_poll(r, path, 304), timeout=10_000) as again:
            pass
        assert again.value.request.header_value("if-none-match") == again.value.headers["etag"]
    finally:
        world.api("DELETE", f"/calls/{call_id}")


def test_an_unknown_call_shows_not_found(page, world):
    signed_in(page, world)
    page.goto(f"{world.server.base_url}/console/#/calls/call_doesnotexist")
    expect(page.get_by_role("heading", name="Call not found")).to_be_visible()
    expect(page.get_by_role("alert")).to_contain_text("HTTP 404")


def test_a_failed_delivery_is_redelivered_from_the_calls_page(page, world):
    signed_in(page, world)
    page.goto(f"{world.server.base_url}/console/#/calls/{world.played_call}")
    deliveries = page.locator("table.deliveries tbody tr")
    expect(deliveries.first).to_contain_text("call_ended")
    expect(deliveries.first).to_contain_text("HTTP 500")
    screenshot(page, "deliveries", showing=page.get_by_role("heading", name="Webhook deliveries"))
    world.receiver.reply_to = lambda received: (204, 0.0)
    try:
        deliveries.first.get_by_role("button", name="Redeliver").click()
        expect(page.get_by_role("status").filter(has_text="queued for redelivery")).to_be_visible()
        expect(deliveries.first).to_contain_text("delivered", timeout=15_000)
        expect(deliveries.first).to_contain_text("HTTP 204")
    finally:
        world.receiver.reply_to = lambda received: (500, 0.0)


# -- around the calls ----------------------------------------------------------------------


def test_agents_numbers_and_webhooks_are_listed(page, world):
    signed_in(page, world)
    page.get_by_role("link", name="Agents").click()
    expect(page.get_by_role("cell", name="Support", exact=True)).to_be_visible()
    page.get_by_role("link", name="Phone numbers").click()
    expect(page.get_by_role("cell", name="Main")).to_be_visible()
    page.get_by_role("link", name="Webhooks").click()
    expect(page.get_by_role("link", name="CRM")).to_be_visible()
    screenshot(page, "webhooks")


def test_a_webhook_is_switched_off_and_on(page, world):
    signed_in(page, world)
    page.get_by_role("link", name="Webhooks").click()
    page.get_by_role("button", name="Switch off CRM").click()
    expect(page.get_by_role("status")).to_contain_text("deactivated")
    assert world.api("GET", f"/post-call-webhooks/{world.webhook_id}")["is_active"] is False
    page.get_by_role("button", name="Switch on CRM").click()
    expect(page.get_by_role("status")).to_contain_text("activated")
    assert world.api("GET", f"/post-call-webhooks/{world.webhook_id}")["is_active"] is True


def quiet_hours_away_from_now() -> tuple[str, str]:
    """An hour of quiet hours (UTC) twelve hours from now: kept, and in no test's way."""
    hour = (datetime.now(UTC).hour + 12) % 24
    return f"{hour:02d}:00", f"{(hour + 1) % 24:02d}:00"


def test_a_batch_is_created_from_the_form_and_followed_live(page, world):
    signed_in(page, world)
    page.get_by_role("link", name="Batch calls").click()
    page.get_by_role("link", name="New batch call").click()
    expect(page.get_by_role("heading", name="New batch call")).to_be_visible()
    page.get_by_label("Name", exact=True).fill("Renewals")
    page.locator("select[name=agent_id]").select_option(label="Sales")
    page.get_by_label("Recipients", exact=True).fill(
        "+12135550001 name=Ada sandbox_outcome=completed sandbox_duration_ms=20000\n"
        "+12135550002 sandbox_outcome=busy\n"
        "\n"
        "+12135550003 name=Lin plan=0123 sandbox_outcome=voicemail sandbox_duration_ms=10000\n"
        "+12135550004 sandbox_outcome=completed sandbox_duration_ms=30000\n"
    )
    page.get_by_label("Time zone (of quiet hours and retries)").fill("UTC")
    quiet_from, quiet_to = quiet_hours_away_from_now()
    page.get_by_label("Keep quiet hours").check()
    page.get_by_label("From (local time)").fill(quiet_from)
    page.get_by_label("To (local time)").fill(quiet_to)
    expect(page.get_by_label("Send now")).to_be_checked()
    screenshot(page, "batch-new")
    page.get_by_role("button", name="Create the batch").click()
    # The batch's page opens; nothing reloaded by hand, it follows the batch to its end.
    expect(page.get_by_role("heading", name="Batch Renewals")).to_be_visible()
    batch_id = page.url.split("#/batches/")[1]
    expect(page.locator("[data-count='total'] dd")).to_have_text("4")
    expect(page.locator("table.tasks tbody tr")).to_have_count(4)
    expect(page.get_by_text("4 of 4 settled")).to_be_visible(timeout=90_000)
    expect(page.locator("dl.fields")).to_contain_text(f"{quiet_from} to {quiet_to}")
    screenshot(page, "batch")
    batch = world.api("GET", f"/batch-call/{batch_id}")
    assert batch["agent_id"] == world.sales_agent
    assert batch["from_number"] == FROM_NUMBER
    assert batch["timezone"] == "UTC"
    assert batch["quiet_hours"] == {"enabled": True, "start_time": quiet_from, "end_time": quiet_to}
    assert (batch["pending"], batch["completed"], batch["failed"]) == (0, 3, 1)
    tasks = world.api("GET", f"/batch-call/{batch_id}/tasks")["tasks"]
    assert [task["to_number"] for task in tasks] == [f"+1213555000{i}" for i in range(1, 5)]
    assert tasks[0]["dynamic_variables"] == {
        "name": "Ada",
        "sandbox_outcome": "completed",
        "sandbox_duration_ms": 20000,
    }
    assert tasks[2]["dynamic_variables"]["plan"] == "0123"
    # Settled, nothing is left to pause, resume or cancel.
    expect(page.get_by_role("group", name="Batch controls").get_by_role("button")).to_have_count(0)


def test_the_apis_refusal_of_a_batch_is_shown_on_the_form(page, world):
    signed_in(page, world)
    page.goto(f"{world.server.base_url}/console/#/batches/new")
    recipients = page.get_by_label("Recipients", exact=True)
    # A line the form cannot read is refused before anything is sent.
    recipients.fill("+12135550011 name")
    page.get_by_role("button", name="Create the batch").click()
    expect(page.get_by_role("alert")).to_contain_text("Line 1: “name” is not key=value")
    # The API checks the batch whole and names every task it refuses.
    recipients.fill("+12135550011\n12345\n+12135550011")
    page.get_by_role("button", name="Create the batch").click()
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text("The batch was not created")
    expect(alert).to_contain_text("tasks[1].to_number")
    expect(alert).to_contain_text("tasks[2].to_number")
    expect(alert).to_contain_text("HTTP 400")
    expect(page.get_by_role("heading", name="New batch call")).to_be_visible()


def test_a_running_batchs_page_polls_it_answered_304_while_nothing_moves(page, world):
    batch_id = world.api(
        "POST",
        "/batch-call",
        json={
            "name": "Long calls",
            "from_number": FROM_NUMBER,
            "agent_id": world.sales_agent,
            "concurrency_limit": 1,
            "send_now": True,
            "tasks": [
                {
                    "to_number": "+12135550031",
                    "dynamic_variables": {
                        "sandbox_outcome": "completed",
                        "sandbox_duration_ms": 600_000,
                    },
                }
            ],
        },
    )["batch_call_id"]
    signed_in(page, world)
    path = f"/batch-call/{batch_id}"

    with page.expect_response(lambda r: is_poll(r, path, 304), timeout=15_000) as unchanged:
        page.goto(f"{world.server.base_url}/console/#/batches/{batch_id}")

    assert unchanged.value.headers["etag"] == unchanged.value.request.header_value("if-none-match")
    expect(page.locator("[data-count='total'] dd")).to_have_text("1")
    world.api("POST", f"/batch-call/{batch_id}/cancel")


def test_a_batch_is_paused_resumed_and_cancelled_from_its_page(page, world):
    # One call at a time, each 6 s (scaled): the batch runs long enough to be handled.
    batch_id = world.api(
        "POST",
        "/batch-call",
        json={
            "name": "Reminders",
            "from_number": FROM_NUMBER,
            "agent_id": world.sales_agent,
            "concurrency_limit": 1,
            "send_now": True,
            "tasks": [
                {
                    "to_number": f"+1213555002{i}",
                    "dynamic_variables": {
                        "sandbox_outcome": "completed",
                        "sandbox_duration_ms": 60_000,
                    },
                }
                for i in range(5)
            ],
        },
    )["batch_call_id"]
    signed_in(page, world)
    page.goto(f"{world.server.base_url}/console/#/batches/{batch_id}")
    controls = page.get_by_role("group", name="Batch controls")
    badge = page.locator("#batch-title ~ p .badge")
    expect(badge).to_have_text("sent")

    controls.get_by_role("button", name="Pause").click()
    expect(controls.get_by_role("status")).to_contain_text("Paused")
    expect(badge).to_have_text("paused")
    assert world.api("GET", f"/batch-call/{batch_id}")["status"] == "paused"
    expect(controls.get_by_role("button", name="Pause")).to_have_count(0)
    screenshot(page, "batch-paused")

    controls.get_by_role("button", name="Resume").click()
    expect(controls.get_by_role("status")).to_contain_text("Resumed")
    expect(badge).to_have_text("sent")
    assert world.api("GET", f"/batch-call/{batch_id}")["status"] == "sent"

    # Cancelling is for good: the page asks first, and "Keep it" keeps it.
    controls.get_by_role("button", name="Cancel batch").click()
    question = controls.get_by_role("alertdialog")
    expect(question).to_contain_text("Cancel this batch for good?")
    question.get_by_role("button", name="Keep it").click()
    expect(controls.get_by_role("alertdialog")).to_have_count(0)
    assert world.api("GET", f"/batch-call/{batch_id}")["status"] == "sent"
    controls.get_by_role("button", name="Cancel batch").click()
    controls.get_by_role("button", name="Yes, cancel it").click()
    expect(controls.get_by_role("status")).to_contain_text("Cancelled")
    expect(badge).to_have_text("cancelled")
    expect(page.locator("[data-count='pending'] dd")).to_have_text("0")
    # The tasks are read again as the batch moves: the last one will never be called.
    expect(page.locator("table.tasks tbody tr").nth(4)).to_contain_text("cancelled")
    batch = world.api("GET", f"/batch-call/{batch_id}")
    assert batch["status"] == "cancelled"
    assert batch["cancelled"] >= 3
    expect(controls.get_by_role("button")).to_have_count(0)


def test_a_refused_batch_action_is_shown_at_the_controls(page, world):
    batch_id = world.api(
        "POST",
        "/batch-call",
        json={
            "name": "Draft",
            "from_number": FROM_NUMBER,
            "agent_id": world.sales_agent,
            "status": "draft",
            "tasks": [
                {
                    "to_number": "+12135550031",
                    "dynamic_variables": {"sandbox_outcome": "busy", "sandbox_duration_ms": 1000},
                }
            ],
        },
    )["batch_call_id"]
    signed_in(page, world)
    page.goto(f"{world.server.base_url}/console/#/batches/{batch_id}")
    controls = page.get_by_role("group", name="Batch controls")
    expect(controls.get_by_role("button", name="Start now")).to_be_visible()
    expect(controls.get_by_role("button", name="Pause")).to_have_count(0)
    # Started elsewhere while the page shows the draft (a draft is not polled): the API
    # refuses to start it again, and says so at the controls; the page then shows it sent.
    world.api("POST", f"/batch-call/{batch_id}/execute")
    controls.get_by_role("button", name="Start now").click()
    alert = controls.get_by_role("alert")
    expect(alert).to_contain_text("The batch was not changed")
    expect(alert).to_contain_text("Cannot execute batch call")
    expect(alert).to_contain_text("HTTP 400")
    expect(page.locator("#batch-title ~ p .badge")).not_to_have_text("draft")


def test_a_test_call_is_placed_and_watched_as_it_plays_out(page, world):
    signed_in(page, world)
    page.get_by_role("link", name="Test call").click()
    page.get_by_label("To", exact=True).fill("+12137770001")
    page.locator("select[name=outcome]").select_option("voicemail")
    page.get_by_label("Length once answered (s)", exact=True).fill("20")
    page.get_by_role("button", name="Place the call").click()
    header = page.locator(".call-header")
    expect(header).to_contain_text(re.compile("registered|ongoing"))
    expect(header.locator(".badge")).to_have_text("ended", timeout=60_000)
    expect(page.locator("dl.fields").first).to_contain_text("voicemail reached")


def test_an_api_error_is_shown_where_the_call_was_placed(page, world):
    signed_in(page, world)
    page.get_by_role("link", name="Test call").click()
    # Past the form's own check, a number that is not E.164: the API answers 400.
    page.evaluate("document.querySelector('input[name=to_number]').removeAttribute('pattern')")
    page.get_by_label("To", exact=True).fill("12345")
    page.get_by_role("button", name="Place the call").click()
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text("The call was not placed")
    expect(alert).to_contain_text("HTTP 400")
    expect(page.get_by_role("heading", name="Place a test call")).to_be_visible()


def test_admin_token_shows_the_organizations_keys(page, world):
    sign_in(page, world.key, ADMIN_TOKEN)
    page.get_by_role("link", name="API keys").click()
    expect(page.get_by_role("heading", name=f"API keys of {world.organization_id}")).to_be_visible()
    row = page.locator("table tbody tr").first
    expect(row).to_contain_text("active")
    expect(row.get_by_role("button", name="Revoke")).to_be_visible()


# -- accessibility ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def axe_source(console_toolchain: Path) -> str:
    return (console_toolchain / "node_modules" / "axe-core" / "axe.min.js").read_text()


def serious_violations(page: Any, axe_source: str) -> list[str]:
    page.add_script_tag(content=axe_source)
    found = page.evaluate("axe.run(document).then(r => r.violations)")
    return [
        f"{v['id']} ({v['impact']}): {[n['target'] for n in v['nodes']]}"
        for v in found
        if v["impact"] in ("serious", "critical")
    ]


@pytest.mark.parametrize(
    "where",
    [
        "sign-in",
        "#/calls",
        "call",
        "#/webhooks",
        "#/batches",
        "batch",
        "cancel-batch",
        "#/batches/new",
        "#/test-call",
        "#/agents",
    ],
)
def test_no_serious_accessibility_violations(page_for_axe, world, axe_source, where):
    page = page_for_axe
    if where != "sign-in":
        signed_in(page, world)
        target = where
        if where == "call":
            target = f"#/calls/{world.played_call}"
        elif where in ("batch", "cancel-batch"):  # a batch due tomorrow: its controls
            scheduled = world.api(
                "POST",
                "/batch-call",
                json={
                    "name": "Checked",
                    "from_number": FROM_NUMBER,
                    "trigger_timestamp": int(time.time() * 1000) + 86_400_000,
                    "tasks": [{"to_number": "+12135550041", "dynamic_variables": {"n": 1}}],
                },
            )
            target = f"#/batches/{scheduled['batch_call_id']}"
        page.goto(f"{world.server.base_url}/console/{target}")
        expect(page.locator("main h1").first).to_be_visible()
        page.wait_for_load_state("networkidle")
        if where == "cancel-batch":  # the question cancelling asks
            page.get_by_role("button", name="Cancel batch").click()
            expect(page.get_by_role("alertdialog")).to_be_visible()
        if where == "#/batches/new":  # the form with every part shown
            page.get_by_label("Keep quiet hours").check()
            page.get_by_label("At a time").check()
    assert serious_violations(page, axe_source) == []


# -- the files as served ---------------------------------------------------------------------


def test_the_console_is_served_with_types_and_cache_headers(world):
    base = f"{world.server.base_url}/console/"
    page = httpx.get(base)
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert page.headers["cache-control"] == "no-cache"
    assert "default-src 'self'" in page.headers["content-security-policy"]
    script = re.search(r'src="(console-[A-Z0-9]+\.js)"', page.text)
    style = re.search(r'href="(console-[A-Z0-9]+\.css)"', page.text)
    assert script
    assert style
    js = httpx.get(base + script[1], headers={"accept-encoding": "gzip"})
    assert js.headers["content-type"] == "text/javascript; charset=utf-8"
    assert js.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert js.headers["content-encoding"] == "gzip"
    css = httpx.get(base + style[1])
    assert css.headers["content-type"] == "text/css; charset=utf-8"


def test_an_unchanged_file_is_answered_304(world):
    base = f"{world.server.base_url}/console/"
    etag = httpx.get(base).headers["etag"]
    again = httpx.get(base, headers={"if-none-match": etag})
    assert again.status_code == 304
    assert again.content == b""


def test_console_without_slash_redirects_and_unknown_files_are_404(world):
    base = world.server.base_url
    assert httpx.get(f"{base}/console").headers["location"] == "/console/"
    assert httpx.get(f"{base}/console/nothing.js").status_code == 404
    assert httpx.post(f"{base}/console/").status_code == 405


def test_the_console_needs_no_credentials_but_the_api_still_does(world):
    assert httpx.get(f"{world.server.base_url}/console/").status_code == 200
    assert httpx.get(f"{world.server.base_url}/api/calls").status_code == 401


def test_switched_off_the_console_is_404(tmp_path):
    store = EmbeddedStore(tmp_path / "data")
    try:
        with TestClient(create_app(Settings(console=False), store)) as client:
            assert client.get("/console/").status_code == 404
    finally:
        store.close()


# -- the build -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def console_toolchain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of console/ (without node_modules) and openapi.yaml, its toolchain installed
    by `npm ci` exactly as package-lock.json pins it."""
    if shutil.which("npm") is None:
        pytest.skip("Node.js (npm) is not installed")
    root = tmp_path_factory.mktemp("console-build")
    shutil.copytree(
        CONSOLE_SOURCES, root / "console", ignore=shutil.ignore_patterns("node_modules", "*.d.ts")
    )
    shutil.copy(ROOT / "openapi.yaml", root / "openapi.yaml")
    subprocess.run(
        ["npm", "ci", "--no-audit", "--no-fund"],
        cwd=root / "console",
        check=True,
        capture_output=True,
        timeout=600,
    )
    return root / "console"


def test_the_committed_assets_are_what_the_build_makes(console_toolchain):
    """A spec change the console does not follow fails its type check here; any other
    change of the sources, the spec or the toolchain must be rebuilt and committed."""
    out = console_toolchain.parent / "built"
    built = subprocess.run(
        ["node", "build.mjs", "--out", str(out)],
        cwd=console_toolchain,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    committed = {p.name: p.read_bytes() for p in ASSETS.iterdir()}
    rebuilt = {p.name: p.read_bytes() for p in out.iterdir()}
    assert sorted(rebuilt) == sorted(committed), "rebuild: cd console && npm ci && npm run build"
    assert rebuilt == committed, "rebuild: cd console && npm ci && npm run build"


def test_assets_stay_small():
    sizes = {p.name: p.stat().st_size for p in ASSETS.iterdir()}
    assert sum(sizes.values()) < 150_000, sizes
