"""A real server's access log (uvicorn's own replaced): one line per request, with fields."""

from __future__ import annotations

import json

import httpx

from tests.conftest import running_server


def test_a_real_server_writes_one_json_access_line_per_request_with_its_fields(tmp_path):
    with running_server(tmp_path / "data", CALLS_LOG_LEVEL="info", CALLS_LOG_JSON="true") as server:
        headers = {**server.new_key_headers("acme"), "X-Request-ID": "desk-4901"}
        httpx.get(f"{server.base_url}/api/calls?limit=2", headers=headers)
        log = server.log()

    lines = [json.loads(line) for line in log.splitlines() if "desk-4901" in line]
    assert len(lines) == 1, log  # uvicorn's fieldless line is gone
    [line] = lines
    assert line["logger"] == "calls_server.access"
    assert (line["method"], line["path"], line["status"]) == ("GET", "/api/calls?limit=2", 200)
    assert line["organization_id"] == "acme"
    assert line["client"].startswith("127.0.0.1:")
    assert line["duration_ms"] > 0


def test_a_real_server_writes_readable_key_value_access_lines(tmp_path):
    with running_server(tmp_path / "data", CALLS_LOG_LEVEL="info") as server:
        httpx.get(f"{server.base_url}/api/calls", headers={"X-Request-ID": "desk-4902"})
        log = server.log()

    lines = [line for line in log.splitlines() if "desk-4902" in line]
    assert len(lines) == 1, log
    assert lines[0].startswith("INFO: [desk-4902] method=GET path=/api/calls status=401 ")
    assert " organization_id=- client=127.0.0.1:" in lines[0]


def test_a_real_server_writes_no_access_line_when_they_are_turned_off(tmp_path):
    with running_server(
        tmp_path / "data", CALLS_LOG_LEVEL="info", CALLS_LOG_ACCESS="false"
    ) as server:
        httpx.get(f"{server.base_url}/api/calls", headers={"X-Request-ID": "desk-4903"})
        log = server.log()

    assert "desk-4903" not in log
    assert "Calls API on http://" in log  # the other lines still come
