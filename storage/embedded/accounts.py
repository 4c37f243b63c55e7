"""Organizations and their API keys (indexed by key and per organization)."""

from __future__ import annotations

from collections.abc import Callable

from calls_server.domain import record_kinds
from calls_server.domain.errors import ApiKeyNotFound
from calls_server.domain.keys import ApiKey, Organization
from calls_server.storage.embedded.documents import _copy
from calls_server.storage.embedded.idempotency import IdempotencyMixin
from calls_server.storage.tinydb_table import JournaledTable, raw_documents


class AccountsMixin(IdempotencyMixin):
    """`Accounts`: the tables organizations and api_keys."""

    _organizations: JournaledTable
    _keys: JournaledTable
    _key_ids: dict[str, int]
    _org_keys: dict[str, dict[str, int]]

    def add_organization(self, organization: Organization) -> None:
        with self._writing():
            organization_id = organization["organization_id"]
            if organization_id in self._org_ids:
                raise record_kinds.ORGANIZATION.duplicate(organization_id)
            with self._journal.transaction():
                doc_id = self._organizations.insert(_copy(organization))
                marked = self._mark_claim(record_kinds.ORGANIZATION.name, organization_id)
            self._org_ids[organization_id] = doc_id
            self._index_mark(marked)

    def get_organization(self, organization_id: str) -> Organization:
        with self._reading():
            doc_id = self._org_doc_id(organization_id)
            return _copy(raw_documents(self._organizations)[str(doc_id)])

    def add_api_key(self, key: ApiKey) -> None:
        with self._writing():
            self._org_doc_id(key["organization_id"])
            mine = self._org_keys.get(key["organization_id"], {})
            if key["api_key"] in self._key_ids or key["api_key_id"] in mine:
                raise record_kinds.API_KEY.duplicate(key["api_key_id"])
            with self._journal.transaction():
                doc_id = self._keys.insert(_copy(key))
                marked = self._mark_claim(record_kinds.API_KEY.name, key["api_key_id"])
            self._key_ids[key["api_key"]] = doc_id
            self._org_keys.setdefault(key["organization_id"], {})[key["api_key_id"]] = doc_id
            self._index_mark(marked)

    def find_api_key(self, api_key: str) -> ApiKey | None:
        # Called on the event loop for every request, so it takes no lock (a writer may
        # hold it through an fsync): dict reads are atomic, and a stored document is
        # replaced, never mutated, so this sees the old or the new key, whole.
        self._check_usable()
        doc_id = self._key_ids.get(api_key)
        if doc_id is None:
            return None
        return dict(raw_documents(self._keys)[str(doc_id)])

    def list_api_keys(self, organization_id: str) -> list[ApiKey]:
        with self._reading():
            self._org_doc_id(organization_id)
            table = raw_documents(self._keys)
            ids = self._org_keys.get(organization_id, {}).values()
            return [_copy(table[str(doc_id)]) for doc_id in sorted(ids)]

    def change_api_key(
        self, organization_id: str, api_key_id: str, change: Callable[[ApiKey], ApiKey]
    ) -> ApiKey:
        with self._writing():
            self._org_doc_id(organization_id)
            doc_id = self._org_keys.get(organization_id, {}).get(api_key_id)
            if doc_id is None:
                raise ApiKeyNotFound(api_key_id)
            changed = change(_copy(raw_documents(self._keys)[str(doc_id)]))
            self._keys.replace(doc_id, _copy(changed))
            return changed
