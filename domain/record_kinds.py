"""The kinds of record a store holds, each said once for every backend: its name (for
people, and for the marks an Idempotency-Key claim leaves, `Store.UNDER_CLAIM`), the field
of its id, and the errors for an id not found and one already taken."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from calls_server.domain.errors import (
    AgentNotFound,
    ApiKeyNotFound,
    BatchNotFound,
    CallNotFound,
    DuplicateId,
    NotFound,
    OrganizationNotFound,
    PhoneNumberNotFound,
    WebhookNotFound,
)


@dataclass(frozen=True)
class RecordKind:
    """A kind of record found by an id of its own (`key`, the field) in its organization."""

    name: str
    key: str
    not_found: Callable[[str, str], NotFound]  # (organization, id) -> the error
    duplicate: Callable[[str], DuplicateId]  # id -> the error


CALL = RecordKind(
    "call",
    "call_id",
    lambda _, key: CallNotFound(key),
    lambda key: DuplicateId(
        f"A call with ID '{key}' already exists", message="Call already exists"
    ),
)
ORGANIZATION = RecordKind(
    "organization",
    "organization_id",
    lambda _, key: OrganizationNotFound(key),
    lambda key: DuplicateId(
        f"An organization with ID '{key}' already exists", message="Organization already exists"
    ),
)
API_KEY = RecordKind(
    "API key",
    "api_key_id",
    lambda _, key: ApiKeyNotFound(key),
    lambda key: DuplicateId(f"An API key with ID '{key}' already exists"),
)
AGENT = RecordKind(
    "agent",
    "agent_id",
    lambda organization, key: AgentNotFound(key, organization),
    lambda key: DuplicateId(f"An agent with ID '{key}' already exists"),
)
PHONE_NUMBER = RecordKind(
    "phone number",
    "phone_number",
    lambda _, key: PhoneNumberNotFound(key),
    lambda key: DuplicateId(
        f"Phone number '{key}' already exists", message="Phone number already exists"
    ),
)
WEBHOOK = RecordKind(
    "webhook",
    "id",
    lambda _, key: WebhookNotFound(key),
    lambda key: DuplicateId(f"A webhook with ID '{key}' already exists"),
)
BATCH = RecordKind(
    "batch call",
    "batch_call_id",
    lambda _, key: BatchNotFound(key),
    lambda key: DuplicateId(f"A batch call with ID '{key}' already exists"),
)
