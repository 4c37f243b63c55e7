"""What a handler needs from the request beyond its arguments: the store, the settings and
the caller's organization. The app puts the first two in the lifespan state, which the
ASGI server copies into every request."""

from __future__ import annotations

from typing import Any

from connexion import request

from calls_server.settings import Settings
from calls_server.storage import Store


def store() -> Store:
    """The store of the running app."""
    found: Store = request.state.store
    return found


def settings() -> Settings:
    """The settings of the running app."""
    found: Settings = request.state.settings
    return found


def organization_id(token_info: dict[str, Any]) -> str:
    """The organization of the API key that authenticated this request."""
    found: str = token_info["apiKey"]["organization_id"]
    return found
