"""`calls-server copy-to-postgres`: an embedded data directory moved into a PostgreSQL
database whole (every kind of record, pending webhook deliveries included), the counts
verified, a server on the database answering as the old one did; a database that holds
records is refused unless told to replace them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from calls_server.domain import keys
from calls_server.domain.errors import OrganizationNotFound
from calls_server.storage import EmbeddedStore
from calls_server.storage.postgres import PostgresStore
from tests.conftest import SEED_REQUEST, cli, free_port, running_server

WEBHOOKS = {"CALLS_WEBHOOK_ALLOW_HTTP": "true", "CALLS_WEBHOOK_ALLOW_NETWORKS": "127.0.0.0/8"}


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A data directory a real server filled: calls with events, an agent, a number, a
    webhook whose deliveries are pending (its receiver is down), a kept idempotent answer,
    a draft batch call; what that server answered for them."""
    data = tmp_path_factory.mktemp("embedded") / "data"
    with running_server(data, **WEBHOOKS) as server:
        headers = server.new_key_headers("acme")
        api = httpx.Client(base_url=server.base_url + "/api", headers=headers)
        down = f"http://127.0.0.1:{free_port()}/hook"
        api.post(
            "/post-call-webhooks/create",
            json={"name": "hook", "url": down, "status_events": True},
        )
        agent = api.post("/agents/create", json={"agent_name": "Front desk"}).json()["data"]
        draft = {
            "from_number": "+14155550100",
            "agent_id": agent["agent_id"],
            "status": "draft",
            "tasks": [{"to_number": f"+1415555020{n}"} for n in range(3)],
        }
        batch = httpx.post(f"{server.base_url}/batch-call", json=draft, headers=headers).json()
        batch_id = batch["data"]["batch_call_id"]
        api.post("/phone-numbers/create", json={"phone_number": "+14155550100"})
        made = [
            api.post("/calls/create", json=SEED_REQUEST, headers={"Idempotency-Key": f"k{n}"})
            for n in range(5)
        ]
        call_ids = [m.json()["data"]["call"]["call_id"] for m in made]
        api.put(f"/calls/{call_ids[0]}", json={"call_status": "ongoing"})
        answered = {
            "calls": [api.get(f"/calls/{c}").json() for c in call_ids],
            "listing": api.get("/calls").json()["data"]["calls"],
            "agents": api.get("/agents").json(),
            "numbers": api.get("/phone-numbers").json(),
            "webhooks": api.get("/post-call-webhooks").json()["data"]["webhooks"],
            "batch": api.get(f"/batch-call/{batch_id}").json(),
            "tasks": api.get(f"/batch-call/{batch_id}/tasks").json(),
        }
        api.close()
    store = EmbeddedStore(data)
    exported = store.export()
    store.close()
    return {
        "data": data,
        "headers": headers,
        "answered": answered,
        "counts": {kind: len(records) for kind, records in exported.items()},
        "call_ids": call_ids,
        "batch_id": batch_id,
    }


def copy(embedded: dict[str, Any], url: str, *more: str) -> Any:
    data = str(embedded["data"])
    return cli("--data-dir", data, "copy-to-postgres", "--database-url", url, *more)


def test_every_record_is_copied_and_the_counts_verified(embedded, database_url):
    done = copy(embedded, database_url)

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["copied"] == embedded["counts"]
    assert embedded["counts"]["webhook_events"] > 0
    assert embedded["counts"]["idempotency_keys"] == 5
    assert (embedded["counts"]["batches"], embedded["counts"]["batch_tasks"]) == (1, 3)
    store = PostgresStore(database_url)
    try:
        assert store.record_counts() == embedded["counts"]
        pending = store.pending_webhook_events()
        assert len(pending) == embedded["counts"]["webhook_events"]  # none delivered yet
        assert store.counts() == {"calls": 5, "organizations": 1}  # usage rebuilt
    finally:
        store.close()


def test_a_server_on_the_copy_answers_as_the_embedded_one_did(embedded, database_url, tmp_path):
    assert copy(embedded, database_url).returncode == 0

    with running_server(tmp_path / "unused", CALLS_DATABASE_URL=database_url) as server:
        api = httpx.Client(base_url=server.base_url + "/api", headers=embedded["headers"])
        answered = {
            "calls": [api.get(f"/calls/{c}").json() for c in embedded["call_ids"]],
            "listing": api.get("/calls").json()["data"]["calls"],
            "agents": api.get("/agents").json(),
            "numbers": api.get("/phone-numbers").json(),
            "webhooks": api.get("/post-call-webhooks").json()["data"]["webhooks"],
            "batch": api.get(f"/batch-call/{embedded['batch_id']}").json(),
            "tasks": api.get(f"/batch-call/{embedded['batch_id']}/tasks").json(),
        }
        replayed = api.post("/calls/create", json=SEED_REQUEST, headers={"Idempotency-Key": "k0"})
        api.close()

    for kind in ("calls", "listing", "agents", "numbers", "webhooks", "batch", "tasks"):
        assert drop_request_ids(answered[kind]) == drop_request_ids(embedded["answered"][kind])
    assert replayed.headers["Idempotent-Replayed"] == "true"
    assert replayed.json()["data"]["call"]["call_id"] == embedded["call_ids"][0]


def drop_request_ids(value: Any) -> Any:
    """`value` without the request ids of its envelopes (new on every request)."""
    if isinstance(value, dict):
        return {k: drop_request_ids(v) for k, v in value.items() if k != "request_id"}
    if isinstance(value, list):
        return [drop_request_ids(v) for v in value]
    return value


def test_a_database_that_holds_records_is_refused_unless_replace_is_given(embedded, database_url):
    store = PostgresStore(database_url)
    try:
        store.add_organization(keys.new_organization(1, "already-here"))
    finally:
        store.close()

    refused = copy(embedded, database_url)
    replaced = copy(embedded, database_url, "--replace")

    assert refused.returncode == 2
    assert "holds records already (1 organizations)" in refused.stderr
    assert "--replace" in refused.stderr
    assert replaced.returncode == 0, replaced.stderr
    store = PostgresStore(database_url)
    try:
        assert store.record_counts() == embedded["counts"]
        assert [o for o in ("already-here", "acme") if _exists(store, o)] == ["acme"]
    finally:
        store.close()


def _exists(store: PostgresStore, organization_id: str) -> bool:
    try:
        store.get_organization(organization_id)
    except OrganizationNotFound:
        return False
    return True


def test_a_copy_without_a_database_says_what_it_needs(tmp_path: Path):
    done = cli("--data-dir", str(tmp_path / "data"), "copy-to-postgres")

    assert done.returncode == 2
    assert "--database-url or CALLS_DATABASE_URL" in done.stderr
