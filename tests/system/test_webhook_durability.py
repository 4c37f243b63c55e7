"""The webhook outbox of a real server process: kill -9 with a backlog loses no event."""

from __future__ import annotations

import json
from collections import defaultdict

import httpx

from tests.conftest import Receiver, free_port, running_server, wait_for

OUTBOX_ENV = {
    "CALLS_WEBHOOK_ALLOW_HTTP": "true",
    "CALLS_WEBHOOK_ALLOW_NETWORKS": "127.0.0.0/8",
    "CALLS_WEBHOOK_RETRY_FIRST_DELAY": "0.2",
    "CALLS_WEBHOOK_RETRY_MAX_DELAY": "0.5",
}
CALLS = 60


def test_every_event_owed_before_kill_9_arrives_once_per_event_id_in_order(tmp_path):
    port = free_port()  # the receiver's, down until after the crash
    data_dir = tmp_path / "data"
    with running_server(data_dir, **OUTBOX_ENV) as server:
        headers = server.new_key_headers("acme")
        hooks = []
        for path in ("/a", "/b"):
            created = httpx.post(
                f"{server.base_url}/api/post-call-webhooks/create",
                json={"name": path, "url": f"http://127.0.0.1:{port}{path}", "status_events": True},
                headers=headers,
            )
            hooks.append(created.json()["data"]["id"])
        call_ids = []
        for _ in range(CALLS):
            body = {"agent_id": "agent-1", "call_type": "web_call"}
            created = httpx.post(f"{server.base_url}/api/calls/create", json=body, headers=headers)
            call_ids.append(created.json()["data"]["call"]["call_id"])
        for call_id in call_ids[: CALLS // 2]:
            changed = httpx.put(
                f"{server.base_url}/api/calls/{call_id}",
                json={"call_status": "ongoing"},
                headers=headers,
            )
            assert changed.status_code == 200
        server.process.kill()  # SIGKILL with every delivery still owed
        server.process.wait()

    receiver = Receiver(port)
    try:
        with running_server(data_dir, **OUTBOX_ENV) as server:
            owed = CALLS + CALLS // 2
            wait_for(lambda: len(unique(receiver)) == owed * len(hooks), timeout=60)
            listed = {
                hook: httpx.get(
                    f"{server.base_url}/api/post-call-webhooks/{hook}/events",
                    params={"limit": 100, "status": "delivered"},
                    headers=headers,
                ).json()["data"]
                for hook in hooks
            }
    finally:
        receiver.close()

    arrived = unique(receiver)
    for hook in hooks:
        assert listed[hook]["pagination"]["total_count"] == owed
        assert {e["event_id"] for e in listed[hook]["events"]} == {
            event_id for webhook_id, event_id in arrived if webhook_id == hook
        }
    # In order: per webhook, each call's events arrived in the order they happened.
    seen: dict[tuple[str, str], list[str]] = defaultdict(list)
    for payload in arrived.values():
        seen[(payload["webhook_id"], payload["call"]["call_id"])].append(payload["event"])
    for (_, call_id), names in seen.items():
        started = call_ids.index(call_id) < CALLS // 2
        assert names == (["call_registered", "call_started"] if started else ["call_registered"])


def unique(receiver: Receiver) -> dict[tuple[str, str], dict]:
    """What a deduplicating receiver keeps: the first arrival of each (webhook, event_id)."""
    kept: dict[tuple[str, str], dict] = {}
    for request in list(receiver.received):
        payload = json.loads(request.body)
        kept.setdefault((payload["webhook_id"], payload["event_id"]), payload)
    return kept
