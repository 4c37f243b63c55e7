"""LiveKit access tokens for web calls: the browser joins the room named after the call.

Tokens are LiveKit JWTs signed with the configured API secret, made by LiveKit's own
server SDK (`livekit-api`), not by hand.

The sandbox (CALLS_SANDBOX) stands in for LiveKit when none is configured: web calls get
tokens signed with its key pair (`sandbox_rooms`), public like a test key, so that clients
take the branch they take upstream (and may check the token); a LiveKit server started with
that pair (`livekit-server --dev --keys "sandbox: <SANDBOX_API_SECRET>"`, which listens on
SANDBOX_SERVER_URL) even lets a browser join the room.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

SANDBOX_SERVER_URL = "ws://localhost:7880"  # where `livekit-server --dev` listens
SANDBOX_API_KEY = "sandbox"
SANDBOX_API_SECRET = "sandbox-livekit-secret-for-offline-testing"  # public: not a secret


@dataclass(frozen=True)
class LiveKitRooms:
    """Issues room-join tokens for one LiveKit server."""

    server_url: str
    api_key: str
    api_secret: str
    ttl_seconds: int
    identity_template: str  # e.g. "web-user-{call_id}"

    def join_token(self, call_id: str, agent_id: str) -> str:
        """A token that lets one participant join (publish and subscribe in) room `call_id`."""
        # Imported at first use: the SDK brings aiohttp (0.2 s), which every `calls-server`
        # command would otherwise pay for at start.
        from livekit import api

        return (
            api.AccessToken(self.api_key, self.api_secret)
            .with_identity(self.identity_template.format(call_id=call_id))
            .with_ttl(datetime.timedelta(seconds=self.ttl_seconds))
            .with_grants(
                api.VideoGrants(room_join=True, room=call_id, can_publish=True, can_subscribe=True)
            )
            .with_attributes({"call_id": call_id, "agent_id": agent_id})
            .to_jwt()
        )


def sandbox_rooms(ttl_seconds: int, identity_template: str) -> LiveKitRooms:
    """The rooms the sandbox stands in for: tokens signed with the sandbox's key pair."""
    return LiveKitRooms(
        SANDBOX_SERVER_URL, SANDBOX_API_KEY, SANDBOX_API_SECRET, ttl_seconds, identity_template
    )
