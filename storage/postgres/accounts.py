"""Organizations and their API keys."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from calls_server.domain import record_kinds
from calls_server.domain.errors import ApiKeyNotFound, OrganizationNotFound
from calls_server.domain.keys import ApiKey, Organization
from calls_server.storage.postgres.documents import _json
from calls_server.storage.postgres.idempotency import _mark_claim
from calls_server.storage.postgres.pool import Connection, Connections

# How many keys' records a process keeps (`known_api_key`); past it, it starts again.
_KEYS_KEPT = 10_000


class AccountsMixin(Connections):
    """`Accounts`: the tables organizations and api_keys."""

    _known_keys: dict[str, ApiKey]  # by public part: each key's record as last read here

    def add_organization(self, organization: Organization) -> None:
        """Store a new organization. Raises DuplicateId if its id exists."""
        organization_id = organization["organization_id"]
        with self._transaction() as conn:
            inserted = conn.execute(
                "INSERT INTO organizations (organization_id, doc) VALUES (%s, %s::jsonb)"
                " ON CONFLICT (organization_id) DO NOTHING RETURNING 1",
                (organization_id, _json(organization)),
            ).fetchone()
            if inserted is None:
                raise record_kinds.ORGANIZATION.duplicate(organization_id)
            _mark_claim(conn, record_kinds.ORGANIZATION.name, organization_id)

    def get_organization(self, organization_id: str) -> Organization:
        """The organization. Raises OrganizationNotFound."""
        with self._reading() as conn:
            row = conn.execute(
                "SELECT doc FROM organizations WHERE organization_id = %s", (organization_id,)
            ).fetchone()
        if row is None:
            raise OrganizationNotFound(organization_id)
        return cast(Organization, row[0])

    def add_api_key(self, key: ApiKey) -> None:
        """Store a new key of an existing organization. Raises OrganizationNotFound."""
        with self._transaction() as conn:
            _require_organization(conn, key["organization_id"])
            inserted = conn.execute(
                "INSERT INTO api_keys (organization_id, api_key_id, api_key, doc)"
                " VALUES (%s, %s, %s, %s::jsonb) ON CONFLICT DO NOTHING RETURNING 1",
                (key["organization_id"], key["api_key_id"], key["api_key"], _json(key)),
            ).fetchone()
            if inserted is None:
                raise record_kinds.API_KEY.duplicate(key["api_key_id"])
            _mark_claim(conn, record_kinds.API_KEY.name, key["api_key_id"])

    def find_api_key(self, api_key: str) -> ApiKey | None:
        """The key record whose public part is `api_key`, active or not, if any. Read from
        the database every time: a revocation holds at once in every process."""
        with self._reading() as conn:
            row = conn.execute("SELECT doc FROM api_keys WHERE api_key = %s", (api_key,)).fetchone()
        return _remember_key(self._known_keys, api_key, None if row is None else row[0])

    def known_api_key(self, api_key: str) -> ApiKey | None:
        """The key's record as last read by this process (no round trip), if it was: to be
        checked against the database by the request's read (domain/key_checks.py)."""
        return self._known_keys.get(api_key)

    def list_api_keys(self, organization_id: str) -> list[ApiKey]:
        """The organization's keys, oldest first. Raises OrganizationNotFound."""
        with self._transaction(snapshot=True) as conn:  # a read: its COMMIT decides nothing
            _require_organization(conn, organization_id)
            rows = conn.execute(
                "SELECT doc FROM api_keys WHERE organization_id = %s ORDER BY seq",
                (organization_id,),
            ).fetchall()
        return [cast(ApiKey, row[0]) for row in rows]

    def change_api_key(
        self, organization_id: str, api_key_id: str, change: Callable[[ApiKey], ApiKey]
    ) -> ApiKey:
        """Replace the key by `change(key)` atomically. Raises ApiKeyNotFound."""
        with self._transaction() as conn:
            _require_organization(conn, organization_id)
            row = conn.execute(
                "SELECT doc FROM api_keys WHERE organization_id = %s AND api_key_id = %s"
                " FOR UPDATE",
                (organization_id, api_key_id),
            ).fetchone()
            if row is None:
                raise ApiKeyNotFound(api_key_id)
            changed = change(cast(ApiKey, row[0]))
            conn.execute(
                "UPDATE api_keys SET doc = %s::jsonb, api_key = %s"
                " WHERE organization_id = %s AND api_key_id = %s",
                (_json(changed), changed["api_key"], organization_id, api_key_id),
            )
        return changed


def _remember_key(known: dict[str, ApiKey], api_key: str, found: Any) -> ApiKey | None:
    """`found`, the record of `api_key` just read (None: there is none), kept in `known` for
    `known_api_key`."""
    if found is None:
        known.pop(api_key, None)
        return None
    if len(known) >= _KEYS_KEPT:
        known.clear()
    known[api_key] = found
    return cast(ApiKey, found)


def _require_organization(conn: Connection, organization_id: str) -> None:
    found = conn.execute(
        "SELECT 1 FROM organizations WHERE organization_id = %s", (organization_id,)
    ).fetchone()
    if found is None:
        raise OrganizationNotFound(organization_id)
