"""The upstream pages' own examples, replayed: each request sent as the page shows it (a
hand-written page's `curl -d` without a Content-Type as application/x-www-form-urlencoded, a
generated page's with application/json), each response compared with the page's, field for
field: names, JSON types, the case of enum values, the envelope's message and error text,
the values that are the API's words rather than data (an event's name, an operation, a
sort), and an object the page shows empty. Differences made on purpose are listed, with
their reason, in DELIBERATE; anything else is a failure."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ADMIN_TOKEN, app_client

EXAMPLES = json.loads(
    (Path(__file__).parents[1] / "fixtures" / "upstream_examples.json").read_text()
)
CONTENT_TYPES = {"json": "application/json", "form": "application/x-www-form-urlencoded"}

# (example, where): why this server answers otherwise.
DELIBERATE = {
    ("importPhoneNumber", "data.phone_number.phone_number_type"): (
        "upstream writes the type CUSTOM on this page and custom (zudu-twilio) on its "
        "generated pages, which show what its backend returns; both spellings are read"
    ),
    ("listCalls", "data.sort_by"): (
        "the generated page's answer to a GET without parameters says start_timestamp; "
        "calls-api.md section 7 decides the default sort is created_at descending (every "
        "call has one, and the list pages' own requests sort by created_at); the page's "
        "order is one parameter away (?sort_by=start_timestamp)"
    ),
    ("createBatchCall.newest", "batch_call_id"): (
        "this page alone answers the batch unwrapped, without the envelope; every other "
        "batch page wraps it in {message, status, error, data}, and platform-api.md section 0 "
        "decides to always answer the envelope (the batch is at data.batch_call_id)"
    ),
    ("createBatchCall.newest", "name"): "unwrapped on this page only: see batch_call_id",
    ("createBatchCall.newest", "from_number"): "unwrapped on this page only: see batch_call_id",
    ("createBatchCall", "data.status"): (
        "batch status: hand-written pages write it UPPER, the generated pages (what the "
        "backend returns) lower; platform-api.md section 1.9 decides lower by default, "
        "CALLS_ENUM_CASE=upper answers UPPER"
    ),
    ("updateBatchCall", "data.status"): "batch status lower: see createBatchCall",
    ("executeBatchCall", "data.status"): "batch status lower: see createBatchCall",
    ("listPhoneNumbers", "data.applied_filters.area_code"): (
        "the generated page's answer shows {area_code: 415} applied for a GET whose curl sends "
        "no parameter; this server echoes the filters a request applies (with "
        "?area_code=415 it answers the page's, see listPhoneNumbers.filtered)"
    ),
    ("listBatchCalls.generated", "message"): (
        "one endpoint, two pages, two messages: the hand-written page's 'Batch calls "
        "retrieved successfully' is answered (platform-api.md 1.1 lists both); the "
        "generated one adds 'with real-time metrics'"
    ),
}

# Objects whose keys are the caller's own data in the example, not fields of the API: compared
# only where the page shows them empty.
FREE_FORM = {"metadata", "test_variables", "access_info", "widget_config", "dynamic_variables"}
# Keys whose values are the API's own words, compared as they are (an error's quoted ids and
# UPPER enum names aside).
WORDS = {
    "message",
    "error",
    "event",
    "operation",
    "endpoint_used",
    "sort_by",
    "sort_order",
    "trigger",
}
# A quoted id or an UPPER enum name inside an error text: data, not words.
DATA_IN_TEXT = re.compile(r"'[^']*'|\b[A-Z][A-Z_]{2,}\b")


def world(client, headers: dict[str, str], organization_id: str, text: str) -> dict[str, str]:
    """What the examples' placeholders in `text` name, made in an organization whose (sandbox)
    dialer accepts calls as upstream's does: calls, agents, webhooks, batches."""
    ids: dict[str, str] = {"<organization_id>": organization_id}

    def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = client.post(path, json=body, headers=headers)
        assert response.status_code == 200, response.text
        return response.json()["data"]  # type: ignore[no-any-return]

    agent = post("/api/agents/create", {"agent_name": "Customer Support Agent"})["agent_id"]
    ids["<agent_id>"] = agent
    if "<call_id>" in text:
        ids["<call_id>"] = post("/api/calls/create", {"agent_id": "agent-123"})["call"]["call_id"]
    if "<ended_call_id>" in text or "/api/calls" in text:
        ended = post("/api/calls/create", {
            "agent_id": "agent_1234567890", "call_type": "PHONE_CALL", "direction": "OUTBOUND",
            "metadata": {"k": "v"}})  # fmt: skip
        ids["<ended_call_id>"] = ended["call"]["call_id"]
        client.put(f"/api/calls/{ids['<ended_call_id>']}", json={
            "call_status": "ended", "from_number": "+14157774444", "to_number": "+12137774445",
            "start_timestamp": 1705320010000, "end_timestamp": 1705320100000,
        }, headers=headers)  # fmt: skip
    if "<scheduled_call_id>" in text:
        scheduled = post("/api/calls/create-phone-call", {
            "from_number": "+14157774444", "to_number": "+12137774445",
            "override_agent_id": agent, "scheduled_timestamp": 4102444000})  # fmt: skip
        ids["<scheduled_call_id>"] = scheduled["call"]["call_id"]
    if "webhook" in text:
        hook = post("/api/post-call-webhooks/create", {
            "name": "Call Analytics Webhook", "url": "https://your-server.com/webhooks/call-complete",
            "description": "Receives call data after completion"})  # fmt: skip
        ids["<webhook_id>"] = hook["id"]
        post(f"/api/agents/{agent}/tools/post-call-webhook/assign", {"webhook_id": hook["id"]})
    batch = {"from_number": "+14157774444", "agent_id": agent, "name": "Q1 Sales Campaign",
             "tasks": [{"to_number": "+12137774445"}]}  # fmt: skip
    if "<batch_id>" in text:
        ids["<batch_id>"] = post("/batch-call", {**batch, "status": "draft"})["batch_call_id"]
    if "<scheduled_batch_id>" in text:
        later = {**batch, "trigger_timestamp": 4102444800}
        ids["<scheduled_batch_id>"] = post("/batch-call", later)["batch_call_id"]
    if "<cancelled_batch_id>" in text:
        cancelled = post("/batch-call", {**batch, "trigger_timestamp": 4102444800})["batch_call_id"]
        post(f"/batch-call/{cancelled}/cancel", {})
        ids["<cancelled_batch_id>"] = cancelled
    return ids


@pytest.mark.parametrize("example", EXAMPLES["examples"], ids=lambda e: e["name"])
def test_an_upstream_example_is_answered_as_upstream_answers_it(store, tenant, request, example):
    # On each backend (data_dir, asked for by name, would keep it to the embedded store).
    data_dir = request.getfixturevalue("data_dir")
    settings = {"enum_case": "upstream", "sandbox": True, "sandbox_time_scale": 100}
    with app_client(store, data_dir=data_dir, admin_token=ADMIN_TOKEN, **settings) as client:
        ids = world(client, tenant.headers, tenant.organization_id, json.dumps(example))
        for step in example.get("before", []):
            client.request(step["method"], fill(step["path"], ids), json=fill(step["request"], ids),
                           headers=tenant.headers)  # fmt: skip

        headers = dict(tenant.headers)
        if example.get("auth") == "admin":
            headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        body = example["request"]
        if example["content_type"] is not None:
            headers["Content-Type"] = CONTENT_TYPES[example["content_type"]]
        response = client.request(
            example["method"],
            fill(example["path"], ids),
            content=None if body is None else json.dumps(fill(body, ids)),
            headers=headers,
        )

    assert response.status_code == example["status"], response.text
    every = [w.split(":")[0] for w in differences(example["response"], response.json(), "")]
    found = [w for w in every if (example["name"], w) not in DELIBERATE]
    assert found == [], found
    listed = [where for name, where in DELIBERATE if name == example["name"]]
    assert set(listed) <= set(every), "a listed difference no longer occurs: remove it"


def test_every_deliberate_difference_is_of_an_example_replayed():
    names = {e["name"] for e in EXAMPLES["examples"]}
    assert {name for name, _ in DELIBERATE} <= names


def differences(upstream: Any, ours: Any, where: str) -> list[str]:
    """Where `ours` has another shape than `upstream`: a missing field, another JSON type, an
    enum value in another case, other words (WORDS), an object the page shows empty that is
    not. Other values (ids, times, the example's data) are not compared."""
    if upstream is None or ours is None:
        return []  # a value not known on one side
    if isinstance(upstream, dict):
        if not isinstance(ours, dict):
            return [f"{where}: an object upstream, {type(ours).__name__} here"]
        if not upstream and ours and where != "data":
            return [f"{where}: empty upstream, {sorted(ours)} here"]
        if where.rsplit(".", 1)[-1] in FREE_FORM:
            return []  # the caller's own data
        found = []
        for key, value in upstream.items():
            inner = f"{where}.{key}".lstrip(".")
            if key not in ours:
                found.append(f"{inner}: missing here")
            elif key in WORDS and isinstance(value, str) and not _same_words(value, ours[key]):
                found.append(f"{inner}: {value!r} upstream, {ours[key]!r} here")
            else:
                found.extend(differences(value, ours[key], inner))
        return found
    if isinstance(upstream, list):
        if not isinstance(ours, list):
            return [f"{where}: a list upstream, {type(ours).__name__} here"]
        # The last item: a page shows a call's latest event, a list's one item.
        return differences(upstream[-1], ours[-1], f"{where}[-1]") if upstream and ours else []
    if isinstance(upstream, bool) or isinstance(ours, bool):
        same = isinstance(upstream, bool) and isinstance(ours, bool)
        return [] if same else [f"{where}: {upstream!r} upstream, {ours!r} here"]
    if isinstance(upstream, int | float) and isinstance(ours, int | float):
        return []
    if isinstance(upstream, str) and isinstance(ours, str):
        if upstream != ours and upstream.lower() == ours.lower():
            return [f"{where}: {upstream!r} upstream, {ours!r} here (case)"]
        if _iso(upstream) and _iso(ours) and _iso(upstream)[1] != _iso(ours)[1]:
            return [f"{where}: {upstream!r} upstream, {ours!r} here (fraction of a second)"]
        return []
    return [f"{where}: {type(upstream).__name__} upstream, {type(ours).__name__} here"]


def _same_words(upstream: str, ours: Any) -> bool:
    if upstream.startswith("<"):  # a generated page's placeholder ("<string>")
        return True
    return isinstance(ours, str) and DATA_IN_TEXT.sub("_", upstream) == DATA_IN_TEXT.sub("_", ours)


_ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)?$")


def _iso(text: str) -> tuple[str, bool] | None:
    """Whether `text` is an ISO 8601 time, and whether it has a fraction of a second."""
    match = _ISO.match(text)
    return (text, match.group(1) is not None) if match else None


def fill(value: Any, ids: dict[str, str]) -> Any:
    """`value` with the placeholders of the examples replaced by the ids the world made."""
    text = json.dumps(value)
    for placeholder, real in ids.items():
        text = text.replace(placeholder, real)
    return json.loads(text)
