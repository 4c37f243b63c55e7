"""LiveKit access tokens for web calls: the browser joins the room named after the call.

Tokens are LiveKit JWTs signed with the configured API secret, made by LiveKit's own
server SDK (`livekit-api`), not by hand.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass


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
