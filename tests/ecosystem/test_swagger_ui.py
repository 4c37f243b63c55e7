"""Swagger UI in a real browser: authorize with both keys, try out a create, get the call.

Headless Chromium (Debian's package, /usr/bin/chromium) driven by Playwright; skipped with
the reason where no browser is installed. A screenshot of the executed request is kept
under test-artifacts/ (or $CALLS_TEST_ARTIFACTS), also when the test fails.

Selectors are Swagger UI 4.x's (connexion's swagger-ui-bundle ships 4.15.5).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import httpx
import pytest

from tests.conftest import running_server

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Without the background-networking flags Chromium keeps calling out to the internet,
# which a closed network refuses many times over.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(
    os.environ.get("CALLS_TEST_ARTIFACTS", Path(__file__).parents[2] / "test-artifacts")
)
SEED = {
    "agent_id": "agent-123",
    "call_type": "PHONE_CALL",
    "direction": "OUTBOUND",
    "metadata": {"customer_id": "cust-001"},
}
TIMEOUT_MS = 30_000

playwright = pytest.importorskip(
    "playwright.sync_api", reason="Playwright is not installed (pip install -e '.[test]')"
)
expect = playwright.expect
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not Path(CHROMIUM).exists(), reason="no Chromium to drive (apt-get install chromium)"
    ),
]


def authorize(page, scheme: str, value: str) -> None:
    """Fill in one security scheme of the Authorize dialog and wait until it is accepted."""
    name = page.locator("h4 code", has_text=re.compile(rf"^{scheme}$"))
    container = page.locator(".auth-container").filter(has=name)
    container.locator("input").fill(value)
    container.locator("button.authorize").click()
    expect(container.get_by_role("button", name="Logout")).to_be_visible()


def keep_screenshot(page, operation) -> Path:
    """Screenshot the operation down to the live response (the documented responses below
    it are left out); the whole page if the request never got that far."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / "swagger-ui-create-call.png"
    live = operation.locator(".live-responses-table")
    if live.count():
        top = operation.evaluate("e => e.getBoundingClientRect().top + window.scrollY")
        box = live.first.evaluate(
            "e => { const r = e.getBoundingClientRect();"
            " return {left: r.left, width: r.width, bottom: r.bottom + window.scrollY}; }"
        )
        clip = {"x": 0, "y": top, "width": box["left"] * 2 + box["width"]}
        clip["height"] = box["bottom"] - top + 10
        page.screenshot(path=str(path), full_page=True, clip=clip)
    else:
        page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")
    return path


def test_swagger_ui_authorizes_with_both_keys_and_creates_a_call(tmp_path):
    with running_server(tmp_path / "data") as server:
        key = server.new_key_headers()
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 2000})
                page.set_default_timeout(TIMEOUT_MS)
                expect.set_options(timeout=TIMEOUT_MS)
                page_errors: list[str] = []
                page.on("pageerror", lambda error: page_errors.append(str(error)))
                page.goto(f"{server.base_url}/api/ui/")
                operation = page.locator(".opblock-post#operations-calls-createCall")
                try:
                    page.click(".auth-wrapper button.authorize")
                    authorize(page, "apiKey", key["X-API-KEY"])
                    authorize(page, "apiSecret", key["X-API-SECRET"])
                    page.locator(".auth-container button.btn-done").first.click()
                    expect(page.locator(".dialog-ux")).to_have_count(0)
                    expect(page.locator(".auth-wrapper button.authorize")).to_have_class(
                        re.compile(r"\blocked\b")
                    )

                    operation.locator(".opblock-summary-control").click()
                    operation.locator("button.try-out__btn").click()
                    operation.locator("textarea.body-param__text").fill(json.dumps(SEED))
                    operation.locator("button.execute").click()

                    live = operation.locator(".live-responses-table tbody tr.response")
                    status = live.locator(".response-col_status")
                    expect(status).to_have_text("200")
                    body = live.locator(".highlight-code pre.microlight")
                    expect(body).to_contain_text('"call_id"')
                    shown = json.loads(body.inner_text())
                    curl = operation.locator(".curl-command").inner_text()
                finally:
                    keep_screenshot(page, operation)
            finally:
                browser.close()

        call_id = shown["data"]["call"]["call_id"]
        stored = httpx.get(f"{server.base_url}/api/calls/{call_id}", headers=key)

    # The UI sent both credentials it was given in the Authorize dialog.
    assert f"X-API-KEY: {key['X-API-KEY']}" in curl
    assert f"X-API-SECRET: {key['X-API-SECRET']}" in curl
    assert shown["status"] == "success"
    assert stored.status_code == 200, stored.text
    call = stored.json()["data"]
    assert call["call_id"] == call_id
    assert call["agent_id"] == SEED["agent_id"]
    assert call["metadata"] == SEED["metadata"]
    assert page_errors == []
