"""The `phone_numbers` handlers, and the agent a phone call takes from its `from_number`."""

from __future__ import annotations

import pytest

from calls_server.domain.listing import CallQuery
from tests.conftest import assert_error

NUMBER = "+14157774444"
EVERYTHING = CallQuery(page=0, limit=100, sort_by="created_at", sort_order="ascending", filters={})


def new_agent(client, tenant, name: str = "Support") -> str:
    response = client.post("/api/agents/create", json={"agent_name": name}, headers=tenant.headers)
    agent_id: str = response.json()["data"]["agent_id"]
    return agent_id


def register(client, tenant, **body) -> dict:
    response = client.post(
        "/api/phone-numbers/create", json={"phone_number": NUMBER, **body}, headers=tenant.headers
    )
    assert response.status_code == 200, response.text
    number: dict = response.json()["data"]
    return number


def test_create_records_the_number_with_upstreams_derived_fields(client, tenant, store):
    agent = new_agent(client, tenant)

    number = register(client, tenant, nickname="Support line", outbound_agent_id=agent)

    assert number["phone_number_pretty"] == "+1 (415) 777-4444"
    assert number["area_code"] == 415
    assert (number["phone_number_type"], number["number_provider"]) == ("zudu-twilio", "twilio")
    assert (number["outbound_agent_id"], number["inbound_agent_id"]) == (agent, None)
    assert number["outbound_agent_version"] == 1
    assert store.get_phone_number(tenant.organization_id, NUMBER) == number


def test_a_number_the_organization_has_already_is_409(client, tenant):
    register(client, tenant)

    response = client.post(
        "/api/phone-numbers/create", json={"phone_number": NUMBER}, headers=tenant.headers
    )

    body = assert_error(response, 409, f"Phone number '{NUMBER}' already exists")
    assert body["message"] == "Phone number already exists"


def test_binding_an_agent_the_organization_does_not_have_is_400(client, tenant, other_tenant):
    elsewhere = new_agent(client, other_tenant)

    response = client.post(
        "/api/phone-numbers/create",
        json={"phone_number": NUMBER, "inbound_agent_id": elsewhere},
        headers=tenant.headers,
    )

    assert_error(response, 400, f"inbound_agent_id '{elsewhere}' is not an agent")


@pytest.mark.parametrize("segment", ["%2B14157774444", "+14157774444", "%2014157774444"])
def test_the_number_in_the_path_may_be_encoded_raw_or_form_decoded(client, tenant, segment):
    register(client, tenant)

    response = client.get(f"/api/phone-numbers/{segment}", headers=tenant.headers)

    assert response.status_code == 200, response.text
    assert response.json()["data"]["phone_number"] == NUMBER


def test_another_organizations_number_is_404(client, tenant, other_tenant):
    register(client, tenant)

    response = client.get("/api/phone-numbers/%2B14157774444", headers=other_tenant.headers)

    body = assert_error(response, 404, f"Phone number '{NUMBER}' does not exist")
    assert body["message"] == "Phone number not found"


def test_patch_binds_and_null_unbinds_an_agent(client, tenant):
    agent = new_agent(client, tenant)
    register(client, tenant, inbound_agent_id=agent)
    url = "/api/phone-numbers/%2B14157774444"

    bound = client.patch(
        url, json={"label": "Sales", "outbound_agent_id": agent}, headers=tenant.headers
    )
    unbound = client.patch(url, json={"inbound_agent_id": None}, headers=tenant.headers)

    assert bound.json()["data"]["nickname"] == "Sales"
    assert bound.json()["data"]["outbound_agent_id"] == agent
    assert unbound.json()["data"]["inbound_agent_id"] is None
    assert unbound.json()["data"]["outbound_agent_id"] == agent


def test_import_records_the_number_as_custom_and_says_it_was_not_validated(client, tenant, store):
    body = {"phone_number": NUMBER, "provider": "twilio", "account_sid": "AC1", "auth_token": "tok"}

    response = client.post("/api/phone-numbers/import", json=body, headers=tenant.headers)

    data = response.json()["data"]
    assert data["phone_number"]["phone_number_type"] == "custom"
    assert data["validation_result"]["status"] == "not_validated"
    assert "no carrier access" in data["validation_result"]["message"]
    assert "tok" not in str(store.get_phone_number(tenant.organization_id, NUMBER))


def test_available_lists_the_numbers_bound_to_no_agent(client, tenant):
    agent = new_agent(client, tenant)
    register(client, tenant, outbound_agent_id=agent)
    client.post(
        "/api/phone-numbers/create", json={"phone_number": "+14155550100"}, headers=tenant.headers
    )

    data = client.get("/api/phone-numbers/available", headers=tenant.headers).json()["data"]

    assert data["available_count"] == 1
    assert [n["phone_number"] for n in data["phone_numbers"]] == ["+14155550100"]


def test_lists_filter_by_agent_area_code_and_nickname(client, tenant):
    agent = new_agent(client, tenant)
    register(client, tenant, nickname="Customer care", inbound_agent_id=agent)
    client.post(
        "/api/phone-numbers/create",
        json={"phone_number": "+12125550100", "nickname": "Customer sales"},
        headers=tenant.headers,
    )

    by_agent = client.get("/api/phone-numbers", params={"agent_id": agent}, headers=tenant.headers)
    searched = client.post(
        "/api/phone-numbers/list",
        json={"filter_criteria": {"nickname": "CUSTOMER", "area_code": 212}},
        headers=tenant.headers,
    )

    assert [n["phone_number"] for n in by_agent.json()["data"]["phone_numbers"]] == [NUMBER]
    data = searched.json()["data"]
    assert [n["phone_number"] for n in data["phone_numbers"]] == ["+12125550100"]
    assert data["applied_filters"] == {"nickname": "CUSTOMER", "area_code": 212}
    assert data["pagination"]["has_next"] is data["pagination"]["has_next_page"] is False


def test_delete_removes_the_number_and_reports_each_cleanup(client, tenant, store):
    register(client, tenant)

    response = client.delete("/api/phone-numbers/%2B14157774444", headers=tenant.headers)

    assert response.json()["data"]["cleanup_results"] == {
        "dispatch_rule": True,
        "inbound_trunk": True,
        "outbound_trunk": True,
    }
    assert store.list_phone_numbers(tenant.organization_id) == []


# -- the agent of a phone call ------------------------------------------------------------------


def place(client, tenant, **body):
    phone = {"from_number": NUMBER, "to_number": "+12137774445", **body}
    return client.post("/api/calls/create-phone-call", json=phone, headers=tenant.headers)


def test_a_phone_call_without_an_agent_speaks_with_the_numbers_outbound_agent(client, tenant):
    agent = new_agent(client, tenant)
    register(client, tenant, outbound_agent_id=agent)

    response = place(client, tenant)

    assert response.status_code == 200, response.text
    assert response.json()["data"]["call"]["agent_id"] == agent


def test_an_override_wins_over_the_numbers_agent(client, tenant):
    register(client, tenant, outbound_agent_id=new_agent(client, tenant))

    response = place(client, tenant, override_agent_id="agent-from-elsewhere")

    assert response.json()["data"]["call"]["agent_id"] == "agent-from-elsewhere"


@pytest.mark.parametrize("registered", [False, True])
def test_no_agent_and_no_outbound_agent_for_the_number_is_a_400_naming_it(
    client, tenant, store, registered
):
    if registered:
        register(client, tenant)  # without an outbound agent

    response = place(client, tenant)

    body = assert_error(
        response, 400, f"No agent specified and phone number '{NUMBER}' has no outbound agent"
    )
    assert body["message"] == "Validation error"
    assert store.list_calls(tenant.organization_id, EVERYTHING)[1] == 0


def test_a_bound_agent_deleted_since_is_a_400_naming_it(client, tenant):
    agent = new_agent(client, tenant)
    register(client, tenant, outbound_agent_id=agent)
    client.delete(f"/api/agents/{agent}", headers=tenant.headers)

    response = place(client, tenant)

    assert_error(response, 400, f"The outbound agent '{agent}' of phone number '{NUMBER}'")
