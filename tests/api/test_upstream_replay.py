"""The upstream pages' own examples, replayed: each request sent as the page shows it, each
response compared with the page's, field for field (names, JSON types, the case of enum
values, the envelope and its message). Differences made on purpose are listed, with their
reason, in DELIBERATE; anything else is a failure."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import app_client

EXAMPLES = json.loads(
    (Path(__file__).parents[1] / "fixtures" / "upstream_examples.json").read_text()
)
# (example, where): why this server answers otherwise.
DELIBERATE = {
    ("importPhoneNumber", "data.phone_number.phone_number_type"): (
        "upstream writes the type CUSTOM on this page and custom (zudu-twilio) on its "
        "generated pages, which show what its backend returns; both spellings are read"
    ),
}

# Objects whose keys are the caller's own data in the example, not fields of the API.
FREE_FORM = {"data.test_variables"}


@pytest.fixture
def world(store, data_dir, tenant):
    """An upstream-cased server whose (sandbox) dialer accepts calls as upstream's does, with a
    call, a scheduled call, an agent and a webhook assigned to the agent."""
    settings = {"enum_case": "upstream", "sandbox": True, "sandbox_time_scale": 100}
    with app_client(store, data_dir=data_dir, **settings) as client:
        h = tenant.headers
        call = client.post("/api/calls/create", json={"agent_id": "agent-123"}, headers=h)
        scheduled = client.post(
            "/api/calls/create-phone-call",
            json={"from_number": "+14157774444", "to_number": "+12137774445",
                  "override_agent_id": "agent-123", "scheduled_timestamp": 4102444000},
            headers=h,
        )  # fmt: skip
        agent = client.post("/api/agents/create", json={"agent_name": "Support"}, headers=h)
        hook = client.post(
            "/api/post-call-webhooks/create",
            json={"name": "Analytics", "url": "https://crm.example.com/hooks"},
            headers=h,
        )
        ids = {
            "<call_id>": call.json()["data"]["call"]["call_id"],
            "<scheduled_call_id>": scheduled.json()["data"]["call"]["call_id"],
            "<agent_id>": agent.json()["data"]["agent_id"],
            "<webhook_id>": hook.json()["data"]["id"],
        }
        client.post(
            f"/api/agents/{ids['<agent_id>']}/tools/post-call-webhook/assign",
            json={"webhook_id": ids["<webhook_id>"]},
            headers=h,
        )
        yield client, h, ids


@pytest.mark.parametrize("example", EXAMPLES["examples"], ids=lambda e: e["name"])
def test_an_upstream_example_is_answered_as_upstream_answers_it(world, example):
    client, headers, ids = world
    for step in example.get("before", []):
        client.request(step["method"], step["path"], json=step["request"], headers=headers)

    # Sent as upstream's hand-written pages show them: the body without a Content-Type.
    body = example["request"]
    response = client.request(
        example["method"],
        fill(example["path"], ids),
        content=None if body is None else json.dumps(fill(body, ids)),
        headers=headers,
    )

    assert response.status_code == 200, response.text
    ours, upstream = response.json(), example["response"]
    name = example["name"].split(" ")[0]
    found = [
        where
        for where in differences(upstream, ours, "")
        if (name, where.split(":")[0]) not in DELIBERATE
    ]
    assert found == [], found


def differences(upstream: Any, ours: Any, where: str) -> list[str]:
    """Where `ours` has another shape than `upstream`: a missing field, another JSON type,
    an enum value in another case, another message. Values themselves are not compared."""
    if upstream is None or ours is None or where in FREE_FORM:
        return []  # a value not known on one side, or the caller's own data
    if isinstance(upstream, dict):
        if not isinstance(ours, dict):
            return [f"{where}: an object upstream, {type(ours).__name__} here"]
        found = []
        for key, value in upstream.items():
            inner = f"{where}.{key}".lstrip(".")
            if key not in ours:
                found.append(f"{inner}: missing here")
            elif inner == "message" and value != ours[key]:
                found.append(f"message: {value!r} upstream, {ours[key]!r} here")
            else:
                found.extend(differences(value, ours[key], inner))
        return found
    if isinstance(upstream, list):
        if not isinstance(ours, list):
            return [f"{where}: a list upstream, {type(ours).__name__} here"]
        return differences(upstream[0], ours[0], f"{where}[0]") if upstream and ours else []
    if isinstance(upstream, bool) or isinstance(ours, bool):
        same = isinstance(upstream, bool) and isinstance(ours, bool)
        return [] if same else [f"{where}: {upstream!r} upstream, {ours!r} here"]
    if isinstance(upstream, int | float) and isinstance(ours, int | float):
        return []
    if isinstance(upstream, str) and isinstance(ours, str):
        if upstream != ours and upstream.lower() == ours.lower():
            return [f"{where}: {upstream!r} upstream, {ours!r} here (case)"]
        return []
    return [f"{where}: {type(upstream).__name__} upstream, {type(ours).__name__} here"]


def fill(value: Any, ids: dict[str, str]) -> Any:
    """`value` with the placeholders of the examples replaced by the ids the world made."""
    text = json.dumps(value)
    for placeholder, real in ids.items():
        text = text.replace(placeholder, real)
    return json.loads(text)
