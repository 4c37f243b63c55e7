"""The one interface every storage backend implements, and the only one handlers use.

Every method is atomic and safe to call from many threads at once. Records go in and come
out as plain dicts that the caller owns (a backend never hands out its own copy). Changes
are expressed as pure functions of the stored record (see `domain.calls`), which the
backend applies under its own lock or transaction: if the function raises, nothing is
written.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from calls_server.domain.calls import Call
from calls_server.domain.keys import ApiKey, Organization
from calls_server.domain.listing import CallQuery
from calls_server.domain.webhooks import Webhook

# Called with (before, after) for every committed change of a call (None: absent), in
# commit order, under the store's lock: it must only take note (queue), never block.
CallListener = Callable[[Call | None, Call | None], None]


class Store(Protocol):
    """Calls, organizations and API keys, each call scoped to its organization."""

    # -- calls -----------------------------------------------------------------------------
    def add_call(self, call: Call) -> None:
        """Store a new call. Raises DuplicateId if its call_id exists in its organization."""

    def get_call(self, organization_id: str, call_id: str) -> Call:
        """The call. Raises CallNotFound, also when it belongs to another organization."""

    def change_call(
        self, organization_id: str, call_id: str, change: Callable[[Call], Call]
    ) -> Call:
        """Replace the call by `change(call)` atomically and return the new record."""

    def delete_call(self, organization_id: str, call_id: str) -> Call:
        """Remove the call for good and return it. Raises CallNotFound."""

    def list_calls(self, organization_id: str, query: CallQuery) -> tuple[list[Call], int]:
        """One page of the organization's calls that match `query`, and how many match."""

    def scheduled_calls(self, due_by: int) -> list[Call]:
        """Every organization's `scheduled` calls due at or before `due_by` (Unix seconds)."""

    # -- organizations and API keys --------------------------------------------------------
    def add_organization(self, organization: Organization) -> None:
        """Store a new organization. Raises DuplicateId if its id exists."""

    def get_organization(self, organization_id: str) -> Organization:
        """The organization. Raises OrganizationNotFound."""

    def add_api_key(self, key: ApiKey) -> None:
        """Store a new key of an existing organization. Raises OrganizationNotFound."""

    def find_api_key(self, api_key: str) -> ApiKey | None:
        """The key record whose public part is `api_key`, active or not, if any."""

    def list_api_keys(self, organization_id: str) -> list[ApiKey]:
        """The organization's keys, oldest first. Raises OrganizationNotFound."""

    def change_api_key(
        self, organization_id: str, api_key_id: str, change: Callable[[ApiKey], ApiKey]
    ) -> ApiKey:
        """Replace the key by `change(key)` atomically. Raises ApiKeyNotFound."""

    # -- webhooks ----------------------------------------------------------------------------
    def add_webhook(self, webhook: Webhook) -> None:
        """Store a new webhook of an existing organization. Raises OrganizationNotFound."""

    def webhooks(self, organization_id: str) -> list[Webhook]:
        """The organization's webhooks, oldest first."""

    def get_webhook(self, organization_id: str, webhook_id: str) -> Webhook:
        """The webhook. Raises WebhookNotFound, also for another organization's."""

    def change_webhook(
        self, organization_id: str, webhook_id: str, change: Callable[[Webhook], Webhook]
    ) -> Webhook:
        """Replace the webhook by `change(webhook)` atomically. Raises WebhookNotFound."""

    def delete_webhook(self, organization_id: str, webhook_id: str) -> Webhook:
        """Remove the webhook and return it. Raises WebhookNotFound."""

    # -- listening ---------------------------------------------------------------------------
    def on_call_change(self, listener: CallListener) -> None:
        """Call `listener` for every committed change of a call from now on."""

    def wait_durable(self) -> None:
        """Return once every change made so far is on disk."""

    def close(self) -> None:
        """Flush what needs flushing and release the data (the lock, connections)."""
