"""Swagger UI in a real browser: authorize with both keys, try out a create, get the call;
execute it twice, get two calls (nothing in the page fills in an Idempotency-Key).

Headless Chromium (Debian's package, /usr/bin/chromium) driven by Playwright; skipped with
the reason where no browser is installed (tests/ecosystem/browser.py). A screenshot of the
executed request is kept under test-artifacts/ (or $CALLS_TEST_ARTIFACTS), also when the
test fails.

Selectors are Swagger UI 4.x's (connexion's swagger-ui-bundle ships 4.15.5).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.ecosystem.browser import MARKS, expect, launched, new_page

ARTIFACTS = Path(
    os.environ.get("CALLS_TEST_ARTIFACTS", Path(__file__).parents[2] / "test-artifacts")
)
SEED = {
    "agent_id": "agent-123",
    "call_type": "PHONE_CALL",
    "direction": "OUTBOUND",
    "metadata": {"customer_id": "cust-001"},
}
CREATE_CALL = ".opblock-post#operations-calls-createCall"
UPDATE_CALL = ".opblock-put#operations-calls-updateCall"

pytestmark = MARKS


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    with launched() as browser:
        yield browser


@pytest.fixture
def ui(chromium, server) -> Iterator[Any]:
    """Swagger UI of the module's server in a fresh page; no error thrown in it by the end."""
    page = new_page(chromium, viewport={"width": 1280, "height": 2000})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{server.base_url}/api/ui/")
    yield page
    page.context.close()
    assert errors == []


def authorize(page, scheme: str, value: str) -> None:
    """Fill in one security scheme of the Authorize dialog and wait until it is accepted."""
    name = page.locator("h4 code", has_text=re.compile(rf"^{scheme}$"))
    container = page.locator(".auth-container").filter(has=name)
    container.locator("input").fill(value)
    container.locator("button.authorize").click()
    expect(container.get_by_role("button", name="Logout")).to_be_visible()


def authorize_both(page, key: dict[str, str]) -> None:
    """Give the Authorize dialog the key pair, close it, see the padlock locked."""
    page.click(".auth-wrapper button.authorize")
    authorize(page, "apiKey", key["X-API-KEY"])
    authorize(page, "apiSecret", key["X-API-SECRET"])
    page.locator(".auth-container button.btn-done").first.click()
    expect(page.locator(".dialog-ux")).to_have_count(0)
    expect(page.locator(".auth-wrapper button.authorize")).to_have_class(re.compile(r"\blocked\b"))


def try_out(page, selector: str) -> Any:
    """Open an operation and press "Try it out"; the operation's block."""
    operation = page.locator(selector)
    operation.locator(".opblock-summary-control").click()
    operation.locator("button.try-out__btn").click()
    expect(operation.locator("button.execute")).to_be_visible()
    return operation


def header_input(operation, name: str) -> Any:
    """The text box of one header parameter of an operation that is being tried out."""
    row = operation.locator(f'tr[data-param-name="{name}"][data-param-in="header"]')
    return row.locator("input")


def execute(page, operation) -> tuple[Any, dict[str, Any]]:
    """Press Execute; the network's response and the body the live response shows once it
    shows that response (its headers, which the live response shows too, carry the request
    id: a new one for each Execute)."""
    with page.expect_response(lambda r: r.request.method == "POST") as answered:
        operation.locator("button.execute").click()
    response = answered.value
    live = operation.locator(".live-responses-table tbody tr.response")
    body = live.locator(".highlight-code pre.microlight")
    expect(live.locator(".response-col_status")).to_have_text(str(response.status))
    expect(live).to_contain_text(response.header_value("x-request-id"))
    shown: dict[str, Any] = json.loads(body.inner_text())
    return response, shown


def keep_screenshot(page, operation, name: str) -> Path:
    """Screenshot the operation down to the live response (the documented responses below
    it are left out); the whole page if the request never got that far."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
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


def test_swagger_ui_authorizes_with_both_keys_and_creates_a_call(ui, server):
    key = server.new_key_headers()
    operation = ui.locator(CREATE_CALL)
    try:
        authorize_both(ui, key)
        operation = try_out(ui, CREATE_CALL)
        operation.locator("textarea.body-param__text").fill(json.dumps(SEED))
        response, shown = execute(ui, operation)
        curl = operation.locator(".curl-command").inner_text()
    finally:
        keep_screenshot(ui, operation, "swagger-ui-create-call.png")

    call_id = shown["data"]["call"]["call_id"]
    stored = httpx.get(f"{server.base_url}/api/calls/{call_id}", headers=key)

    # The UI sent both credentials it was given in the Authorize dialog.
    assert f"X-API-KEY: {key['X-API-KEY']}" in curl
    assert f"X-API-SECRET: {key['X-API-SECRET']}" in curl
    assert response.status == 200
    assert shown["status"] == "success"
    assert stored.status_code == 200, stored.text
    call = stored.json()["data"]
    assert call["call_id"] == call_id
    assert call["agent_id"] == SEED["agent_id"]
    assert call["metadata"] == SEED["metadata"]


def test_trying_out_a_create_or_a_change_leaves_the_precondition_headers_empty(ui):
    create = try_out(ui, CREATE_CALL)
    update = try_out(ui, UPDATE_CALL)

    boxes = [header_input(create, "Idempotency-Key"), header_input(update, "If-Match")]
    for box in boxes:
        expect(box).to_be_editable()

    assert [box.input_value() for box in boxes] == ["", ""]


def test_executing_a_create_twice_creates_two_calls(ui, server):
    """The spec once had an example Idempotency-Key, which Swagger UI filled in: the second
    Execute replayed the first call instead of creating another."""
    key = server.new_key_headers()
    operation = ui.locator(CREATE_CALL)
    try:
        authorize_both(ui, key)
        operation = try_out(ui, CREATE_CALL)
        operation.locator("textarea.body-param__text").fill(json.dumps(SEED))
        first, first_shown = execute(ui, operation)
        second, second_shown = execute(ui, operation)
        shown = operation.locator(".live-responses-table tbody tr.response").inner_text()
        curl = operation.locator(".curl-command").inner_text()
    finally:
        keep_screenshot(ui, operation, "swagger-ui-create-call-twice.png")
    listed = httpx.get(f"{server.base_url}/api/calls", headers=key)

    assert (first.status, second.status) == (200, 200)
    ids = [shown["data"]["call"]["call_id"] for shown in (first_shown, second_shown)]
    assert ids[0] != ids[1]
    for response in (first, second):
        assert "idempotent-replayed" not in response.all_headers()
        assert "idempotency-key" not in response.request.all_headers()
    # The live response lists the response's headers: the request id, no replay.
    assert second.header_value("x-request-id") in shown
    assert "idempotent-replayed" not in shown.lower()
    assert "Idempotency-Key" not in curl
    assert listed.status_code == 200, listed.text
    assert sorted(c["call_id"] for c in listed.json()["data"]["calls"]) == sorted(ids)
