"""Swagger UI in a real browser: authorize with both keys, try out a create, get the call.

Headless Chromium (Debian's package, /usr/bin/chromium) driven by Playwright; skipped with
the reason where no browser is installed. A screenshot of the executed request is kept
under test-artifacts/ (or $CALLS_TEST_ARTIFACTS).
"""

from __future__ import annotations

import json
import os
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
    os.environ.get("CALLS_TEST_ARTIFACTS", Path(__file__).parent.parent / "test-artifacts")
)
SEED = {
    "agent_id": "agent-123",
    "call_type": "PHONE_CALL",
    "direction": "OUTBOUND",
    "metadata": {"customer_id": "cust-001"},
}

playwright = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not Path(CHROMIUM).exists(), reason="no Chromium (apt-get install chromium) to drive"
    ),
]


def test_swagger_ui_authorizes_with_both_keys_and_creates_a_call(tmp_path):
    with running_server(tmp_path / "data") as server:
        key = server.new_key_headers()
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 2000})
                page.set_default_timeout(30_000)
                page.goto(f"{server.base_url}/api/ui/")

                page.click("button.btn.authorize")
                for value in (key["X-API-KEY"], key["X-API-SECRET"]):
                    container = (
                        page.locator(".auth-container")
                        .filter(has=page.locator("input:not([disabled])"))
                        .first
                    )
                    container.locator("input").fill(value)
                    container.locator("button.authorize").click()
                page.click("button.btn-done")

                operation = page.locator("#operations-calls-createCall")
                operation.locator(".opblock-summary").click()
                operation.locator("button.try-out__btn").click()
                operation.locator("textarea.body-param__text").fill(json.dumps(SEED))
                operation.locator("button.execute").click()
                status = operation.locator(".live-responses-table tbody .response-col_status").first
                status.wait_for()
                body = operation.locator(".live-responses-table .highlight-code pre").first
                shown = json.loads(body.inner_text())
                ARTIFACTS.mkdir(parents=True, exist_ok=True)
                screenshot = ARTIFACTS / "swagger-ui-create-call.png"
                operation.screenshot(path=str(screenshot))  # the executed request
                print(f"screenshot: {screenshot}")
                status_text = status.inner_text().strip()
            finally:
                browser.close()

        call_id = shown["data"]["call"]["call_id"]
        stored = httpx.get(f"{server.base_url}/api/calls/{call_id}", headers=key).json()

    assert status_text == "200"
    assert stored["data"]["metadata"] == SEED["metadata"]
