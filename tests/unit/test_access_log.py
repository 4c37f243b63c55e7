"""The access log: one line per request, with its fields (method, path, status, duration,
request id, organization, client), as `key=value` text or as keys of a JSON line; query
values that are credentials left out; off when the settings say so."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from calls_server.logs import (
    ACCESS_LOGGER,
    TEXT_FORMAT,
    AccessLine,
    JsonFormatter,
    RequestIdFilter,
    log_config,
    logged_target,
)
from calls_server.settings import Settings
from tests.conftest import ADMIN_TOKEN, SEED_REQUEST


class Lines(logging.Handler):
    """The access log's records, formatted as the server formats them (text or JSON)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []
        self.addFilter(RequestIdFilter())

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def text(self) -> list[str]:
        formatter = logging.Formatter(TEXT_FORMAT)
        return [formatter.format(record) for record in self.records]

    def json(self) -> list[dict[str, object]]:
        formatter = JsonFormatter()
        return [json.loads(formatter.format(record)) for record in self.records]


@pytest.fixture
def access() -> Iterator[Lines]:
    logger = logging.getLogger(ACCESS_LOGGER)
    lines, level = Lines(), logger.level
    logger.addHandler(lines)
    logger.setLevel(logging.INFO)
    try:
        yield lines
    finally:
        logger.removeHandler(lines)
        logger.setLevel(level)


def test_each_request_writes_one_text_line_of_key_value_fields(client, tenant, access):
    response = client.get(
        "/api/calls?limit=5", headers={**tenant.headers, "X-Request-ID": "desk-4801"}
    )

    assert response.status_code == 200
    [line] = access.text()
    assert line.startswith("INFO: [desk-4801] method=GET path=/api/calls?limit=5 status=200 ")
    fields = dict(pair.split("=", 1) for pair in line.split("] ", 1)[1].split())
    assert float(fields["duration_ms"]) > 0
    assert fields["organization_id"] == tenant.organization_id
    assert fields["client"] == "testclient:50000"


def test_a_json_line_carries_each_field_as_a_key_of_its_own(client, tenant, access):
    client.post(
        "/api/calls/create",
        json=SEED_REQUEST,
        headers={**tenant.headers, "X-Request-ID": "desk-4802"},
    )

    [line] = access.json()
    assert line["logger"] == ACCESS_LOGGER
    assert line["message"] == "POST /api/calls/create 200"
    assert line["request_id"] == "desk-4802"
    assert (line["method"], line["path"], line["status"]) == ("POST", "/api/calls/create", 200)
    assert isinstance(line["duration_ms"], float)
    assert line["duration_ms"] > 0
    assert line["organization_id"] == tenant.organization_id
    assert line["client"] == "testclient:50000"


def test_a_refused_request_is_logged_with_its_status_and_no_organization(client, access):
    client.get("/api/calls", headers={"X-API-KEY": "sk_nobody", "X-API-SECRET": "s3cr3t_no"})

    [line] = access.json()
    assert line["status"] == 401
    assert line["organization_id"] is None
    assert access.text()[0].endswith("organization_id=- client=testclient:50000")


def test_an_admin_request_names_no_organization(client, tenant, access):
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    client.get(f"/api/organizations/{tenant.organization_id}/api-keys", headers=admin)

    [line] = access.json()
    assert (line["status"], line["organization_id"]) == (200, None)


def test_a_recording_token_in_the_query_is_not_written(client, access):
    client.get("/api/sandbox/recordings/call_1?organization_id=acme&token=rec-secret-1234")

    [line] = access.text()
    assert "rec-secret-1234" not in line
    assert "path=/api/sandbox/recordings/call_1?organization_id=acme&token=REDACTED " in line


def test_credential_like_query_values_are_redacted_and_others_kept():
    assert logged_target(b"/api/calls", b"") == "/api/calls"
    assert logged_target(b"/api/calls", b"limit=5&cursor=abc") == "/api/calls?limit=5&cursor=abc"
    redacted = logged_target(b"/x", b"api_key=sk_1&API%5FSECRET=s&limit=5&access_token=t&flag")
    assert redacted == (
        "/x?api_key=REDACTED&API%5FSECRET=REDACTED&limit=5&access_token=REDACTED&flag"
    )


def test_a_path_is_written_as_sent_so_a_client_cannot_forge_fields_or_lines(client, access):
    client.get("/api/calls/a%20status=200%0Aforged")

    [line] = access.text()
    assert "\n" not in line
    assert " path=/api/calls/a%20status=200%0Aforged status=" in line


def test_values_that_would_run_into_the_next_field_are_quoted():
    line = AccessLine("GET", "/api/calls", 200, 1.5, 'acme corp="x"', None)

    assert str(line) == (
        "method=GET path=/api/calls status=200 duration_ms=1.50 "
        'organization_id="acme corp=\\"x\\"" client=-'
    )


def test_the_access_log_follows_the_log_level_and_can_be_turned_off():
    def level(**options: object) -> str:
        loggers = log_config(**options)["loggers"]  # type: ignore[arg-type]
        found: str = loggers[ACCESS_LOGGER]["level"]
        return found

    assert level(level="info", as_json=False) == "INFO"
    assert level(level="warning", as_json=True) == "WARNING"  # INFO lines: none
    assert level(level="debug", as_json=False, access=False) == "CRITICAL"
    assert Settings.load({}).log_access is True
    assert Settings.load({"CALLS_LOG_ACCESS": "false"}).log_access is False


def test_uvicorn_writes_no_access_line_of_its_own():
    from calls_server.cli import _uvicorn_options

    assert _uvicorn_options(Settings())["access_log"] is False
