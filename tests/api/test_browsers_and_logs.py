"""What browsers and support desks need: CORS when configured, a request id on every
request and response and in every log line, JSON log lines on request, and a first run
that leads straight to a working key."""

from __future__ import annotations

import json
import logging
import logging.config

from calls_server.logs import log_config
from tests.conftest import SEED_REQUEST, app_client, assert_error

ORIGIN = "https://app.example.com"


def test_a_request_id_is_generated_and_returned(client, tenant):
    response = client.get("/api/calls", headers=tenant.headers)

    assert len(response.headers["x-request-id"]) == 32


def test_a_request_id_sent_by_the_client_is_returned(client, tenant):
    response = client.get("/api/calls", headers={**tenant.headers, "X-Request-ID": "desk-4711"})

    assert response.headers["x-request-id"] == "desk-4711"


def test_an_unusable_request_id_is_replaced(client, tenant):
    response = client.get("/api/calls", headers={**tenant.headers, "X-Request-ID": "a b\tc"})

    assert response.headers["x-request-id"] != "a b\tc"


def test_error_responses_carry_the_request_id_too(client):
    response = client.get("/api/calls", headers={"X-Request-ID": "desk-4712"})

    assert_error(response, 401)
    assert response.headers["x-request-id"] == "desk-4712"


def test_cors_is_off_by_default(client, tenant):
    preflight = client.options(
        "/api/calls",
        headers={"Origin": ORIGIN, "Access-Control-Request-Method": "GET"},
    )

    assert "access-control-allow-origin" not in preflight.headers


def test_an_allowed_origin_gets_its_preflight_answered_with_the_credential_headers(store, tenant):
    with app_client(store, cors_origins=f"{ORIGIN}, https://other.example.com") as client:
        preflight = client.options(
            "/api/calls/create",
            headers={
                "Origin": ORIGIN,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "x-api-key, x-api-secret, content-type",
            },
        )
        created = client.post(
            "/api/calls/create", json=SEED_REQUEST, headers={**tenant.headers, "Origin": ORIGIN}
        )

    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == ORIGIN
    allowed = preflight.headers["access-control-allow-headers"].lower()
    assert {"x-api-key", "x-api-secret", "content-type"} <= set(allowed.replace(" ", "").split(","))
    assert created.status_code == 200
    assert created.headers["access-control-allow-origin"] == ORIGIN
    assert "x-request-id" in created.headers["access-control-expose-headers"].lower()


def test_a_browser_may_send_the_headers_the_apis_features_use(store):
    wanted = {"idempotency-key", "if-match", "x-request-id", "authorization"}
    with app_client(store, cors_origins=ORIGIN) as client:
        preflight = client.options(
            "/api/calls/call_1",
            headers={
                "Origin": ORIGIN,
                "Access-Control-Request-Method": "PUT",
                "Access-Control-Request-Headers": ", ".join(sorted(wanted)),
            },
        )

    assert preflight.status_code == 200
    allowed = preflight.headers["access-control-allow-headers"].lower()
    assert wanted <= set(allowed.replace(" ", "").split(","))


def test_a_browser_may_read_the_headers_the_apis_features_answer(store, tenant):
    with app_client(store, cors_origins=ORIGIN, rate_limit_per_key=100) as client:
        created = client.post(
            "/api/calls/create",
            json=SEED_REQUEST,
            headers={**tenant.headers, "Origin": ORIGIN, "Idempotency-Key": "k-1"},
        )

    exposed = set(created.headers["access-control-expose-headers"].lower().split(", "))
    assert {
        "etag",
        "idempotent-replayed",
        "ratelimit-limit",
        "ratelimit-remaining",
        "ratelimit-reset",
        "ratelimit-policy",
        "retry-after",
        "x-request-id",
    } <= exposed
    assert created.headers["etag"]  # and the answer carries them


def test_another_origin_is_not_allowed(store):
    with app_client(store, cors_origins=ORIGIN) as client:
        preflight = client.options(
            "/api/calls",
            headers={"Origin": "https://evil.example.com", "Access-Control-Request-Method": "GET"},
        )

    assert preflight.status_code == 400
    assert "access-control-allow-origin" not in preflight.headers


def test_json_log_lines_carry_the_request_id(capsys):
    logging.config.dictConfig(log_config("info", as_json=True))
    try:
        from calls_server.logs import current_request_id

        token = current_request_id.set("desk-4713")
        logging.getLogger("calls_server.test").warning("hello %s", "desk")
        current_request_id.reset(token)
    finally:
        logging.config.dictConfig({"version": 1, "disable_existing_loggers": False})

    line = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert line["message"] == "hello desk"
    assert line["request_id"] == "desk-4713"
    assert line["level"] == "warning"
