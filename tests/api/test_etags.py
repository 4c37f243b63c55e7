"""ETag and If-Match: every read and write of a call says its version, and a write sent
with an outdated version is refused (412) instead of overwriting someone else's change."""

from __future__ import annotations

import re

import pytest

from tests.conftest import assert_error, create_call


def test_a_read_carries_the_version_the_create_answered(client, tenant):
    created = client.post("/api/calls/create", json={"agent_id": "agent-1"}, headers=tenant.headers)
    call_id = created.json()["data"]["call"]["call_id"]

    read = client.get(f"/api/calls/{call_id}", headers=tenant.headers)

    assert read.headers["etag"] == created.headers["etag"]
    assert re.fullmatch(r'"[0-9a-f]{16}"', read.headers["etag"])


def test_every_change_gives_a_new_version(client, tenant):
    call = create_call(client, tenant)
    before = client.get(f"/api/calls/{call['call_id']}", headers=tenant.headers)

    updated = client.put(
        f"/api/calls/{call['call_id']}", json={"metadata": {"a": 1}}, headers=tenant.headers
    )

    assert updated.headers["etag"] != before.headers["etag"]
    after = client.get(f"/api/calls/{call['call_id']}", headers=tenant.headers)
    assert after.headers["etag"] == updated.headers["etag"]


def test_an_update_with_the_current_version_is_made(client, tenant):
    call = create_call(client, tenant)
    etag = client.get(f"/api/calls/{call['call_id']}", headers=tenant.headers).headers["etag"]

    response = client.put(
        f"/api/calls/{call['call_id']}",
        json={"call_status": "ongoing"},
        headers={**tenant.headers, "If-Match": etag},
    )

    assert response.status_code == 200
    assert response.json()["data"]["call"]["call_status"] == "ongoing"


def test_an_update_with_a_stale_version_is_412_with_the_current_one(client, tenant, store):
    call = create_call(client, tenant)
    stale = client.get(f"/api/calls/{call['call_id']}", headers=tenant.headers).headers["etag"]
    changed = client.put(
        f"/api/calls/{call['call_id']}", json={"metadata": {"by": "a"}}, headers=tenant.headers
    )

    response = client.put(
        f"/api/calls/{call['call_id']}",
        json={"metadata": {"by": "b"}},
        headers={**tenant.headers, "If-Match": stale},
    )

    assert_error(response, 412, "does not match the current version")
    assert response.headers["etag"] == changed.headers["etag"]
    assert store.get_call(tenant.organization_id, call["call_id"])["metadata"]["by"] == "a"


def test_of_two_writers_holding_the_same_version_only_the_first_wins(client, tenant, store):
    call = create_call(client, tenant)
    etag = client.get(f"/api/calls/{call['call_id']}", headers=tenant.headers).headers["etag"]
    headers = {**tenant.headers, "If-Match": etag}

    first = client.put(
        f"/api/calls/{call['call_id']}", json={"metadata": {"w": 1}}, headers=headers
    )
    second = client.put(
        f"/api/calls/{call['call_id']}", json={"metadata": {"w": 2}}, headers=headers
    )

    assert (first.status_code, second.status_code) == (200, 412)
    assert store.get_call(tenant.organization_id, call["call_id"])["metadata"]["w"] == 1


@pytest.mark.parametrize("if_match", ["*", 'W/"x", {etag}', '"other", {etag}'])
def test_if_match_accepts_a_star_or_a_list_holding_the_version(client, tenant, if_match):
    call = create_call(client, tenant)
    etag = client.get(f"/api/calls/{call['call_id']}", headers=tenant.headers).headers["etag"]

    response = client.put(
        f"/api/calls/{call['call_id']}",
        json={"metadata": {"a": 1}},
        headers={**tenant.headers, "If-Match": if_match.format(etag=etag)},
    )

    assert response.status_code == 200


def test_a_weak_tag_never_matches(client, tenant):
    call = create_call(client, tenant)
    etag = client.get(f"/api/calls/{call['call_id']}", headers=tenant.headers).headers["etag"]

    response = client.put(
        f"/api/calls/{call['call_id']}",
        json={"metadata": {"a": 1}},
        headers={**tenant.headers, "If-Match": f"W/{etag}"},
    )

    assert_error(response, 412)


def test_a_delete_with_a_stale_version_keeps_the_call(client, tenant, store):
    call = create_call(client, tenant)
    stale = client.get(f"/api/calls/{call['call_id']}", headers=tenant.headers).headers["etag"]
    client.put(f"/api/calls/{call['call_id']}", json={"metadata": {"a": 1}}, headers=tenant.headers)

    response = client.delete(
        f"/api/calls/{call['call_id']}", headers={**tenant.headers, "If-Match": stale}
    )

    assert_error(response, 412)
    assert store.get_call(tenant.organization_id, call["call_id"])["call_id"] == call["call_id"]


def test_a_delete_with_the_current_version_deletes(client, tenant):
    call = create_call(client, tenant)
    etag = client.get(f"/api/calls/{call['call_id']}", headers=tenant.headers).headers["etag"]

    response = client.delete(
        f"/api/calls/{call['call_id']}", headers={**tenant.headers, "If-Match": etag}
    )

    assert response.status_code == 200
    assert client.get(f"/api/calls/{call['call_id']}", headers=tenant.headers).status_code == 404


def test_writes_without_if_match_behave_as_before(client, tenant):
    call = create_call(client, tenant)

    response = client.put(
        f"/api/calls/{call['call_id']}", json={"metadata": {"a": 1}}, headers=tenant.headers
    )

    assert response.status_code == 200


def schedule(client, tenant):
    body = {
        "from_number": "+14155550100",
        "to_number": "+14155550101",
        "override_agent_id": "agent-1",
        "scheduled_timestamp": 4102444800,
    }
    response = client.post("/api/calls/create-phone-call", json=body, headers=tenant.headers)
    assert response.status_code == 200, response.text
    return response.json()["data"]["call"]["call_id"], response.headers["etag"]


def test_a_reschedule_with_a_stale_version_is_412(client, tenant, store):
    call_id, stale = schedule(client, tenant)
    moved = client.put(
        f"/api/calls/{call_id}/schedule",
        json={"scheduled_timestamp": 4102448400},
        headers={**tenant.headers, "If-Match": stale},
    )

    again = client.put(
        f"/api/calls/{call_id}/schedule",
        json={"scheduled_timestamp": 4102452000},
        headers={**tenant.headers, "If-Match": stale},
    )

    assert moved.status_code == 200
    assert_error(again, 412)
    assert again.headers["etag"] == moved.headers["etag"]
    assert store.get_call(tenant.organization_id, call_id)["scheduled_timestamp"] == 4102448400


def test_a_cancel_with_a_stale_version_keeps_the_schedule(client, tenant, store):
    call_id, etag = schedule(client, tenant)
    client.put(f"/api/calls/{call_id}", json={"metadata": {"a": 1}}, headers=tenant.headers)

    response = client.delete(
        f"/api/calls/{call_id}/schedule", headers={**tenant.headers, "If-Match": etag}
    )

    assert_error(response, 412)
    assert store.get_call(tenant.organization_id, call_id)["call_status"] == "scheduled"


def a_webhook(client, tenant):
    body = {"name": "CRM", "url": "https://crm.example.com/hook"}
    response = client.post("/api/post-call-webhooks/create", json=body, headers=tenant.headers)
    assert response.status_code == 200, response.text
    return response.json()["data"]["id"], response.headers["etag"]


def test_a_webhook_read_carries_the_version_its_create_answered(client, tenant):
    hook_id, created = a_webhook(client, tenant)

    read = client.get(f"/api/post-call-webhooks/{hook_id}", headers=tenant.headers)

    assert read.headers["etag"] == created


def test_a_webhook_change_with_a_stale_version_is_412(client, tenant, store):
    hook_id, stale = a_webhook(client, tenant)
    renamed = client.patch(
        f"/api/post-call-webhooks/{hook_id}", json={"name": "first"}, headers=tenant.headers
    )

    response = client.patch(
        f"/api/post-call-webhooks/{hook_id}",
        json={"name": "second"},
        headers={**tenant.headers, "If-Match": stale},
    )

    assert_error(response, 412, "the webhook changed since it was read")
    assert response.headers["etag"] == renamed.headers["etag"]
    assert store.get_webhook(tenant.organization_id, hook_id)["name"] == "first"


def test_a_webhook_toggle_with_the_current_version_is_made(client, tenant):
    hook_id, etag = a_webhook(client, tenant)

    response = client.post(
        f"/api/post-call-webhooks/{hook_id}/toggle", headers={**tenant.headers, "If-Match": etag}
    )

    assert response.status_code == 200
    assert response.headers["etag"] != etag


def test_a_webhook_delete_with_a_stale_version_keeps_it(client, tenant, store):
    hook_id, stale = a_webhook(client, tenant)
    client.post(f"/api/post-call-webhooks/{hook_id}/toggle", headers=tenant.headers)

    response = client.delete(
        f"/api/post-call-webhooks/{hook_id}", headers={**tenant.headers, "If-Match": stale}
    )

    assert_error(response, 412)
    assert store.get_webhook(tenant.organization_id, hook_id)["id"] == hook_id


# -- If-None-Match: polling without transfer ---------------------------------------------------


def test_a_call_unchanged_since_its_etag_is_answered_304_without_a_body(client, tenant):
    call_id = create_call(client, tenant)["call_id"]
    first = client.get(f"/api/calls/{call_id}", headers=tenant.headers)

    again = client.get(
        f"/api/calls/{call_id}", headers={**tenant.headers, "If-None-Match": first.headers["ETag"]}
    )

    assert again.status_code == 304
    assert again.content == b""
    assert again.headers["ETag"] == first.headers["ETag"]


def test_a_changed_call_is_answered_in_full_despite_an_old_etag(client, tenant):
    call_id = create_call(client, tenant)["call_id"]
    old = client.get(f"/api/calls/{call_id}", headers=tenant.headers).headers["ETag"]
    client.put(f"/api/calls/{call_id}", json={"metadata": {"n": 1}}, headers=tenant.headers)

    again = client.get(f"/api/calls/{call_id}", headers={**tenant.headers, "If-None-Match": old})

    assert again.status_code == 200
    assert again.json()["data"]["metadata"]["n"] == 1  # merged into the seed metadata
    assert again.headers["ETag"] != old


def test_a_weak_or_listed_etag_matches_as_if_none_match_compares(client, tenant):
    call_id = create_call(client, tenant)["call_id"]
    tag = client.get(f"/api/calls/{call_id}", headers=tenant.headers).headers["ETag"]

    for sent in (f"W/{tag}", f'"other", {tag}', "*"):
        headers = {**tenant.headers, "If-None-Match": sent}
        assert client.get(f"/api/calls/{call_id}", headers=headers).status_code == 304, sent


def test_a_page_of_calls_has_an_etag_and_is_304_until_something_on_it_changes(client, tenant):
    call_id = create_call(client, tenant)["call_id"]
    page = client.get("/api/calls", headers=tenant.headers)
    polled = {**tenant.headers, "If-None-Match": page.headers["ETag"]}

    unchanged = client.get("/api/calls", headers=polled)
    client.put(f"/api/calls/{call_id}", json={"call_status": "ongoing"}, headers=tenant.headers)
    changed = client.get("/api/calls", headers=polled)

    assert unchanged.status_code == 304
    assert unchanged.content == b""
    assert changed.status_code == 200
    assert changed.headers["ETag"] != page.headers["ETag"]
