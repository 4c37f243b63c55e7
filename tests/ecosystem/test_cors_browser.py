"""CORS as a browser enforces it: a page served from another origin calls the API with
`fetch()` in headless Chromium, which preflights, and lets the page's script read only the
response headers the server exposes.

The API runs as a real server process on 127.0.0.1 with CALLS_CORS_ORIGINS naming one
origin: a small HTTP server on another port of 127.0.0.1, which serves the page. A second
one, on yet another port, is an origin the API does not allow. Nothing between the browser
and the API is intercepted: the preflights and the refusals are Chromium's own.
"""

from __future__ import annotations

import re
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from tests.conftest import ADMIN_TOKEN, RunningServer, running_server
from tests.ecosystem.browser import MARKS, launched, new_page

pytestmark = MARKS

SEED = {
    "agent_id": "agent-123",
    "call_type": "PHONE_CALL",
    "direction": "OUTBOUND",
    "metadata": {"customer_id": "cust-001"},
}
RATE_LIMIT = 40  # requests a minute per key: enough for each test but the one that hits it
PAGE = b"<!doctype html><html><head><title>An app on another origin</title></head></html>"

# Runs in the page: one fetch(), answered with what the page's script can see of the
# response: its status, the headers it may read (CORS hides the others), its body; or how
# the browser refused it.
FETCH = """async ({url, method, headers, body}) => {
    const init = {method, headers};
    if (body !== null) init.body = JSON.stringify(body);
    let response;
    try {
        response = await fetch(url, init);
    } catch (error) {
        return {refused: `${error.name}: ${error.message}`};
    }
    const readable = {};
    response.headers.forEach((value, name) => { readable[name] = value; });
    return {status: response.status, headers: readable, body: await response.json()};
}"""
# Runs in the page: one fetch() that the browser is expected to refuse; the error's text.
REFUSED = """async ({url, method, headers}) => {
    try {
        const response = await fetch(url, {method, headers});
        return `not refused: ${response.status}`;
    } catch (error) {
        return `${error.name}: ${error.message}`;
    }
}"""


class PageServer:
    """An HTTP server on 127.0.0.1 that answers every GET with an empty page: an origin."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(PAGE)))
                self.end_headers()
                self.wfile.write(PAGE)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.origin = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def app_origin() -> Iterator[PageServer]:
    origin = PageServer()
    yield origin
    origin.close()


@pytest.fixture(scope="module")
def other_origin() -> Iterator[PageServer]:
    origin = PageServer()
    yield origin
    origin.close()


@pytest.fixture(scope="module")
def api(
    tmp_path_factory: pytest.TempPathFactory, app_origin: PageServer
) -> Iterator[RunningServer]:
    """The API, allowing the app's origin (and one more, as operators list them)."""
    data = tmp_path_factory.mktemp("cors") / "data"
    with running_server(
        data,
        CALLS_CORS_ORIGINS=f"{app_origin.origin}, https://app.example.com",
        CALLS_RATE_LIMIT_PER_KEY=str(RATE_LIMIT),
    ) as server:
        yield server


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    with launched() as browser:
        yield browser


def page_on(chromium: Any, origin: PageServer) -> Iterator[Any]:
    page = new_page(chromium)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{origin.origin}/")
    yield page
    page.context.close()
    assert errors == []


@pytest.fixture
def app_page(chromium: Any, app_origin: PageServer) -> Iterator[Any]:
    """A page of the allowed origin, in a browser context of its own (no preflight cached)."""
    yield from page_on(chromium, app_origin)


@pytest.fixture
def other_page(chromium: Any, other_origin: PageServer) -> Iterator[Any]:
    """A page of an origin the API does not allow."""
    yield from page_on(chromium, other_origin)


def fetch(
    page: Any,
    url: str,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    body: Any = None,
) -> dict[str, Any]:
    """fetch() from the page's script: status, readable headers (lower case), JSON body;
    the test fails if the browser refuses it (as it refuses what CORS does not allow)."""
    answer: dict[str, Any] = page.evaluate(
        FETCH, {"url": url, "method": method, "headers": headers or {}, "body": body}
    )
    assert "refused" not in answer, f"the browser refused {method} {url}: {answer['refused']}"
    return answer


def preflights_answered(api: RunningServer) -> float:
    """CORS preflights the API answered 200 (counted among the requests of no operation)."""
    scraped = httpx.get(
        f"{api.base_url}/metrics", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    )
    assert scraped.status_code == 200, scraped.text
    pattern = re.compile(r"^calls_http_requests_total\{(?P<labels>[^}]*)\} (?P<value>\S+)$")
    for line in scraped.text.splitlines():
        found = pattern.match(line)
        if found and {'operation="unmatched"', 'status="200"'} <= set(found["labels"].split(",")):
            return float(found["value"])
    return 0.0


def listed_calls(api: RunningServer, key: dict[str, str]) -> list[str]:
    listed = httpx.get(f"{api.base_url}/api/calls", headers=key)
    assert listed.status_code == 200, listed.text
    return [call["call_id"] for call in listed.json()["data"]["calls"]]


def test_a_page_on_an_allowed_origin_creates_reads_changes_and_replays(app_page, api):
    key = api.new_key_headers()
    idempotency_key = str(uuid.uuid4())
    create = {
        "url": f"{api.base_url}/api/calls/create",
        "method": "POST",
        "headers": {**key, "Content-Type": "application/json", "Idempotency-Key": idempotency_key},
        "body": SEED,
    }
    before = preflights_answered(api)

    created = fetch(app_page, **create)
    preflighted = preflights_answered(api) - before
    call_id = created["body"]["data"]["call"]["call_id"]
    read = fetch(app_page, f"{api.base_url}/api/calls/{call_id}", headers=key)
    change = {
        "url": f"{api.base_url}/api/calls/{call_id}",
        "method": "PUT",
        "headers": {**key, "Content-Type": "application/json", "If-Match": read["headers"]["etag"]},
        "body": {"metadata": {"seen_in": "browser"}},
    }
    changed = fetch(app_page, **change)
    stale = fetch(app_page, **change)
    replayed = fetch(app_page, **create)

    # The create (credentials, JSON, Idempotency-Key: not a simple request) was preflighted.
    assert preflighted >= 1
    assert created["status"] == 200, created
    assert created["headers"]["etag"]
    assert "idempotent-replayed" not in created["headers"]
    assert read["status"] == 200, read
    assert read["headers"]["etag"] == created["headers"]["etag"]
    # A change sent with the ETag the script read makes a new version, which it reads too.
    assert changed["status"] == 200, changed
    assert changed["body"]["data"]["call"]["metadata"]["seen_in"] == "browser"
    assert changed["headers"]["etag"] not in ("", read["headers"]["etag"])
    # The same change again names the version just replaced: 412, with the current ETag.
    assert stale["status"] == 412, stale
    assert stale["headers"]["etag"] == changed["headers"]["etag"]
    # The create again with its key: the first answer, and the script can tell.
    assert replayed["status"] == 200, replayed
    assert replayed["headers"]["idempotent-replayed"] == "true"
    assert replayed["body"]["data"]["call"]["call_id"] == call_id
    assert listed_calls(api, key) == [call_id]
    for answer in (created, read, changed, replayed):
        readable = answer["headers"]
        assert readable["x-request-id"]
        assert readable["ratelimit-limit"] == str(RATE_LIMIT)
        assert int(readable["ratelimit-remaining"]) < RATE_LIMIT
        assert int(readable["ratelimit-reset"]) >= 0


def test_a_page_sends_a_request_id_and_reads_it_back(app_page, api):
    key = api.new_key_headers()
    request_id = f"browser-{uuid.uuid4()}"

    answer = fetch(
        app_page, f"{api.base_url}/api/calls", headers={**key, "X-Request-ID": request_id}
    )

    assert answer["status"] == 200, answer
    assert answer["headers"]["x-request-id"] == request_id


def test_a_page_reads_when_to_try_again_once_rate_limited(app_page, api):
    key = api.new_key_headers()
    url = f"{api.base_url}/api/calls"

    # Until refused (the bucket refills as the requests go: on a slow machine a few more).
    answers = []
    while len(answers) < 2 * RATE_LIMIT and (not answers or answers[-1]["status"] == 200):
        answers.append(fetch(app_page, url, headers=key))

    refused = answers[-1]
    assert refused["status"] == 429, refused
    assert len(answers) > RATE_LIMIT
    assert int(refused["headers"]["retry-after"]) > 0
    assert refused["headers"]["ratelimit-remaining"] == "0"
    assert refused["headers"]["x-request-id"] == refused["body"]["request_id"]


def test_a_page_on_another_origin_is_refused_by_the_browser(other_page, api):
    key = api.new_key_headers()
    before = preflights_answered(api)

    create = other_page.evaluate(
        REFUSED,
        {
            "url": f"{api.base_url}/api/calls/create",
            "method": "POST",
            "headers": {**key, "Content-Type": "application/json"},
        },
    )
    # A simple request (no credentials, no preflight) reaches the API, but its answer has no
    # Access-Control-Allow-Origin for this origin: the browser keeps it from the script.
    health = other_page.evaluate(
        REFUSED, {"url": f"{api.base_url}/api/health", "method": "GET", "headers": {}}
    )

    assert create.startswith("TypeError"), create
    assert health.startswith("TypeError"), health
    # The preflight was refused, so the create itself was never sent.
    assert preflights_answered(api) == before
    assert listed_calls(api, key) == []
