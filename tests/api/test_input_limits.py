"""Bodies that JSON clients could not read back, or that would break a call later, are
refused whole with a 400 naming the problem, and nothing is stored."""

from __future__ import annotations

import time

import pytest

from tests.conftest import assert_error

JSON = {"Content-Type": "application/json"}


def post_raw(client, tenant, body: bytes):
    return client.post("/api/calls/create", content=body, headers={**tenant.headers, **JSON})


def stored_calls(client, tenant) -> list:
    listed: list = client.get("/api/calls", headers=tenant.headers).json()["data"]["calls"]
    return listed


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"agent_id": "a", "metadata": {"x": NaN}}', "NaN is not a JSON number"),
        (b'{"agent_id": "a", "metadata": {"x": Infinity}}', "Infinity is not a JSON number"),
        (b'{"agent_id": "a", "metadata": {"x": -Infinity}}', "-Infinity is not a JSON number"),
        (b'{"agent_id": "a", "metadata": {"x": 9007199254740993}}', "too large"),
        (b'{"agent_id": "a", "metadata": {"x": 1e5000}}', "too large"),
        (b'{"agent_id": "a", "metadata": {"x": 1' + b"0" * 5000 + b"}}", "too large"),
        (b'{"agent_id": "a", "metadata": {"x": "\\ud800"}}', "not valid Unicode"),
        (b'{"agent_id": "a", "metadata": {"\\udfff": 1}}', "not valid Unicode"),
        (b'{"agent_id": "a", "agent_id": "b"}', "'agent_id' appears more than once"),
        (b'{"agent_id": "a", "metadata": {"' + b"k" * 257 + b'": 1}}', "longer than 256"),
        (b'{"agent_id": "a", "metadata": {"x": "' + b"v" * 262_145 + b'"}}', "longer than 262144"),
        (b'{"agent_id": "\xff"}', "not valid UTF-8"),
    ],
    ids=[
        "nan", "infinity", "minus-infinity", "integer-beyond-2^53", "float-overflow",
        "5000-digits", "lone-surrogate-value", "lone-surrogate-key", "duplicate-key",
        "long-key", "long-string", "not-utf8",
    ],
)  # fmt: skip
def test_a_body_clients_cannot_read_back_is_refused(client, tenant, body, reason):
    response = post_raw(client, tenant, body)

    assert_error(response, 400, reason)
    assert stored_calls(client, tenant) == []


def test_a_body_nested_deeper_than_the_limit_is_refused(client, tenant):
    body = b'{"agent_id": "a", "metadata": {"x": ' + b"[" * 40 + b"]" * 40 + b"}}"

    assert_error(post_raw(client, tenant, body), 400, "nested too deeply")
    assert stored_calls(client, tenant) == []


def test_a_body_nested_a_hundred_thousand_levels_is_a_400_not_a_crash(client, tenant):
    body = b'{"agent_id": "a", "metadata": {"x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}}"

    assert_error(post_raw(client, tenant, body), 400, "nested too deeply")


def test_an_unterminated_string_of_escaped_quotes_is_refused_at_once(client, tenant):
    # Each escaped quote could start a string; scanning again from each took minutes.
    body = b'{"agent_id": "a", "metadata": {"x": "' + b'\\"' * 400_000

    started = time.monotonic()
    response = post_raw(client, tenant, body)

    assert_error(response, 400, "not valid JSON")
    assert time.monotonic() - started < 5


def test_brackets_inside_strings_do_not_count_as_nesting(client, tenant):
    text = "[{" * 100
    body = b'{"agent_id": "a", "metadata": {"x": "' + text.encode() + b'"}}'

    response = post_raw(client, tenant, body)

    assert response.status_code == 200, response.text
    assert response.json()["data"]["call"]["metadata"]["x"] == text


def test_the_largest_exact_integer_is_accepted(client, tenant):
    body = b'{"agent_id": "a", "metadata": {"x": 9007199254740992, "y": -9007199254740992}}'

    response = post_raw(client, tenant, body)

    assert response.status_code == 200, response.text
    assert response.json()["data"]["call"]["metadata"] == {"x": 2**53, "y": -(2**53)}


def test_an_update_with_a_bad_body_changes_nothing(client, tenant):
    created = post_raw(client, tenant, b'{"agent_id": "a", "metadata": {"k": 1}}').json()
    call_id = created["data"]["call"]["call_id"]

    response = client.put(
        f"/api/calls/{call_id}",
        content=b'{"metadata": {"k": NaN}}',
        headers={**tenant.headers, **JSON},
    )

    assert_error(response, 400, "NaN")
    got = client.get(f"/api/calls/{call_id}", headers=tenant.headers).json()["data"]
    assert got["metadata"] == {"k": 1}
    assert len(got["events"]) == 1
