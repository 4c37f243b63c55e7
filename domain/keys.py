"""Organizations and their API key pairs.

A key pair is `sk_` + 32 and `s3cr3t_` + 40 random letters/digits. Only a SHA-256 hash of
the secret is stored: the secret carries about 238 bits of randomness, so a slow password
hash would add nothing but latency on every request. Comparison is constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import string
import uuid
from collections.abc import Callable
from typing import Any

from calls_server.domain import iso8601
from calls_server.domain.errors import Conflict, Unauthorized

KEY_PREFIX = "sk_"
SECRET_PREFIX = "s3cr3t_"
_ALPHABET = string.ascii_letters + string.digits

Organization = dict[str, Any]
ApiKey = dict[str, Any]

SECRET_WARNING = "Store the API secret now: it is shown only once and cannot be retrieved later."
INVALID_PAIR = "Invalid API key or secret"
_NO_KEY: ApiKey = {"secret_sha256": "0" * 64}  # what an unknown key's secret is compared to


def new_organization(
    now: int, organization_id: str | None = None, name: str | None = None
) -> Organization:
    """An organization record; its id is `org_<hex>` unless one is given."""
    return {
        "organization_id": organization_id or f"org_{uuid.uuid4().hex}",
        "name": name,
        "created_at": now,
    }


def new_api_key(
    organization_id: str, now: int, name: str | None = None, description: str | None = None
) -> tuple[ApiKey, str]:
    """A new ACTIVE key record (with the secret's hash) and the secret itself."""
    secret = SECRET_PREFIX + _random(40)
    record = {
        "api_key_id": f"apikey_{uuid.uuid4().hex}",
        "api_key": KEY_PREFIX + _random(32),
        "secret_sha256": hash_secret(secret),
        "organization_id": organization_id,
        "name": name,
        "description": description,
        "status": "ACTIVE",
        "created_at": iso8601.utc(now),
        "revoked_at": None,
    }
    return record, secret


def revoked(key: ApiKey, now: int) -> ApiKey:
    """`key` with status REVOKED. Raises Conflict if it is revoked already (its revocation
    time stays the first one)."""
    if key["status"] == "REVOKED":
        raise Conflict(
            f"API key '{key['api_key_id']}' is already revoked", message="Already revoked"
        )
    return {**key, "status": "REVOKED", "revoked_at": iso8601.utc(now)}


def authenticated(api_key: str, secret: str, find: Callable[[str], ApiKey | None]) -> ApiKey:
    """The key record of the pair `api_key`/`secret`, looked up with `find`. Raises
    Unauthorized unless the pair is well formed, the secret is the key's, and the key is
    ACTIVE."""
    if not (api_key.startswith(KEY_PREFIX) and secret.startswith(SECRET_PREFIX)):
        raise Unauthorized(INVALID_PAIR)
    key = find(api_key)
    # Hash and compare even for an unknown key, so that it takes as long as a wrong secret.
    matches = secret_matches(key or _NO_KEY, secret)
    if key is None or not matches:
        raise Unauthorized(INVALID_PAIR)
    if key["status"] != "ACTIVE":
        raise Unauthorized("API key has been revoked")
    return key


def public_view(key: ApiKey) -> ApiKey:
    """A key as it may be listed: its public part cut to the prefix and the last four
    characters (enough to tell keys apart, not to use one), without the secret's hash."""
    shown = created_view(key)
    shown["api_key"] = f"{KEY_PREFIX}…{key['api_key'][-4:]}"
    return shown


def created_view(key: ApiKey) -> ApiKey:
    """A key as shown once, when it is created: everything but the secret's hash, its times
    as upstream writes them (keys stored by earlier versions hold Unix milliseconds)."""
    shown = {k: v for k, v in key.items() if k != "secret_sha256"}
    for field in ("created_at", "revoked_at"):
        if isinstance(shown[field], int):
            shown[field] = iso8601.utc(shown[field])
    return shown


def hash_secret(secret: str) -> str:
    """The stored form of a secret."""
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()


def secret_matches(key: ApiKey, secret: str) -> bool:
    """Whether `secret` is the secret of `key`, compared in constant time."""
    return hmac.compare_digest(key["secret_sha256"], hash_secret(secret))


def _random(length: int) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))
