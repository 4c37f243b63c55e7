"""Metrics on a port of their own, on a real server."""

from __future__ import annotations

import socket

import httpx
import pytest

from tests.api.test_metrics import ADMIN, value
from tests.conftest import (
    SEED_REQUEST,
    assert_error,
    free_port,
    running_server,
)


def test_with_a_metrics_port_a_real_server_serves_them_there_without_auth_and_not_on_the_api(
    tmp_path,
):
    port = free_port()
    with running_server(tmp_path / "data", CALLS_METRICS_PORT=str(port)) as server:
        headers = server.new_key_headers()
        httpx.post(f"{server.base_url}/api/calls/create", json=SEED_REQUEST, headers=headers)
        own = httpx.get(f"http://127.0.0.1:{port}/metrics")
        on_api = httpx.get(f"{server.base_url}/metrics", headers=ADMIN)

    assert own.status_code == 200
    assert value(own.text, "calls_http_requests_total", operation="createCall", status="200") == 1
    assert value(own.text, "calls_store_calls", backend="embedded") == 1
    assert_error(on_api, 404, "No route matches GET /metrics")


def test_a_metrics_port_already_taken_stops_the_server_at_start_saying_so(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with (
            pytest.raises(RuntimeError, match=rf"cannot listen on 127\.0\.0\.1:{port}") as stopped,
            running_server(tmp_path / "data", CALLS_METRICS_PORT=str(port)),
        ):
            pass

    assert "CALLS_METRICS_PORT" in str(stopped.value)
