"""Handlers of the `sandbox_state` tag: an organization's records reset, exported and
loaded, so that a test starts from a known state. Only with the sandbox on."""

from __future__ import annotations

from typing import Any

from calls_server.domain import fixtures
from calls_server.domain.envelope import Envelope, success
from calls_server.domain.errors import BadRequest
from calls_server.domain.webhooks import within_limit
from calls_server.handlers.scope import Services, organization_id, sandbox_off, services

Response = tuple[Envelope, int]


def export_sandbox_state(token_info: dict[str, Any]) -> Response:
    """GET /api/sandbox/state: the organization's records, as a fixture. A plain function
    (a worker thread): an organization of many calls takes a while to copy."""
    running = _sandbox_on()
    state = running.store.export_organization(organization_id(token_info))
    return success("Sandbox state", state), 200


def load_sandbox_state(body: dict[str, Any], token_info: dict[str, Any]) -> Response:
    """POST /api/sandbox/state: the fixture's records added to the organization, all or
    nothing."""
    running = _sandbox_on()
    _check_webhook_urls(running, body)

    adds_webhooks = bool(body.get("webhooks"))

    def within_webhook_limit(held: fixtures.Counts) -> None:
        # As for createPostCallWebhook: the last webhook added must have been allowed (an
        # organization over a lowered cap may still load other records).
        if adds_webhooks:
            within_limit(held["webhooks"] - 1, running.webhook_limit)

    loaded = running.store.load_organization(
        organization_id(token_info), body, within_webhook_limit
    )
    return success("Sandbox state loaded", loaded), 200


def reset_sandbox_state(token_info: dict[str, Any]) -> Response:
    """POST /api/sandbox/reset: every record of the organization removed; the organization
    and its keys stay."""
    running = _sandbox_on()
    org = organization_id(token_info)
    removed = running.store.reset_organization(org)
    if running.faults is not None:
        running.faults.clear(org)
    if running.test_clocks is not None:
        running.test_clocks.forget(org)
    return success("Sandbox state reset", removed), 200


def _sandbox_on() -> Services:
    """The running services; NotFound when the sandbox is off, as every sandbox path."""
    running = services()
    if running.sandbox is None:
        raise sandbox_off()
    return running


def _check_webhook_urls(running: Services, fixture: dict[str, Any]) -> None:
    """Each webhook's URL must be one a webhook may be created with (a private address is
    refused as by createPostCallWebhook), checked before the store's lock or transaction is
    taken: it resolves names. Malformed webhooks are left to the store's checks."""
    for index, hook in enumerate(fixture.get("webhooks") or []):
        if isinstance(hook, dict) and isinstance(hook.get("url"), str):
            try:
                running.egress.check_url(hook["url"])
            except BadRequest as e:
                raise BadRequest(
                    f"webhooks[{index}] '{hook.get('id')}': {e.error}: nothing was loaded",
                    message=e.message,
                ) from None
