"""Dialing a recorded phone call and recording what the dialer said."""

from __future__ import annotations

from calls_server.domain import calls
from calls_server.integrations.dialer import Dialer, job_for
from calls_server.storage import Store


def dispatch(store: Store, dialer: Dialer, organization_id: str, call_id: str) -> calls.Call:
    """Hand the call to `dialer` and store the outcome: `ongoing`, or `error` with the reason."""
    outcome = dialer.dial(job_for(store.get_call(organization_id, call_id)))
    return store.change_call(
        organization_id,
        call_id,
        lambda call: calls.dispatched(
            call, outcome.accepted, outcome.reason, outcome.attempts, calls.now_ms()
        ),
    )
