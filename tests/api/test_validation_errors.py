"""The words of request errors (calls_server/request_path/validation_errors.py): the spec's
own where it gives them, allowed values listed, values shown as JSON and cut short,
parameters named."""

from __future__ import annotations

from tests.conftest import assert_error


def create_invalid(client, tenant, **body):
    return client.post("/api/calls/create", json=body, headers=tenant.headers)


def test_a_value_matching_no_enum_of_an_any_of_is_told_the_allowed_values(client, tenant):
    response = create_invalid(client, tenant, agent_id="a", call_type="FAX")

    body = assert_error(response, 400)
    assert body["error"] == (
        "'FAX' is not one of phone_call, web_call, PHONE_CALL, WEB_CALL - 'call_type'"
    )


def test_a_null_is_shown_as_json_not_as_python(client, tenant):
    response = create_invalid(client, tenant, agent_id="a", call_id=None)

    body = assert_error(response, 400)
    assert body["error"] == "null is not of type 'string' - 'call_id'"


def test_only_a_short_prefix_of_a_long_value_is_quoted(client, tenant):
    response = create_invalid(client, tenant, agent_id="a", call_type="x" * 5000)

    body = assert_error(response, 400, "'" + "x" * 60 + "…' is not one of")
    assert len(body["error"]) < 200


def test_many_unexpected_keys_make_a_short_message(client, tenant):
    extra = {f"key-{n:03}-" + "k" * 200: 1 for n in range(50)}

    response = create_invalid(client, tenant, agent_id="a", **extra)

    body = assert_error(response, 400, "Additional properties are not allowed")
    assert len(body["error"]) < 400


def test_a_parameter_error_names_the_parameter_and_the_allowed_values(client, tenant):
    response = client.get("/api/calls", params={"sort_by": "colour"}, headers=tenant.headers)

    body = assert_error(response, 400)
    assert body["error"] == (
        "Invalid query parameter 'sort_by': 'colour' is not one of "
        "created_at, updated_at, start_timestamp, end_timestamp, call_duration"
    )


def test_a_long_query_value_is_quoted_short(client, tenant):
    response = client.get("/api/calls", params={"agent_id": "q" * 5000}, headers=tenant.headers)

    body = assert_error(response, 400, "Invalid query parameter 'agent_id': 'qqq")
    assert len(body["error"]) < 200
