"""The app factory: openapi.yaml wired to the handlers, a store and the settings."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import yaml
from connexion import AsyncApp
from connexion.middleware import MiddlewarePosition
from connexion.options import SwaggerUIOptions
from connexion.resolver import RelativeResolver

from calls_server import errors
from calls_server.connexion_overrides import SECURITY_MAP, ExplodedFormURIParser, validator_map
from calls_server.handlers.scope import Services
from calls_server.integrations.clock import Clock, wall_clock
from calls_server.integrations.scheduler import Scheduler
from calls_server.integrations.webhooks import WebhookDeliverer
from calls_server.middleware import BodySizeLimit, LiteralPathMethods
from calls_server.settings import Settings
from calls_server.storage import Store

# The contract travels inside the package (in the repository, a link to ../openapi.yaml).
SPEC_PATH = Path(__file__).resolve().parent / "openapi.yaml"


def load_spec() -> dict[str, Any]:
    """openapi.yaml, parsed."""
    with open(SPEC_PATH, encoding="utf-8") as f:
        spec: dict[str, Any] = yaml.safe_load(f)
    return spec


def create_app(settings: Settings, store: Store, clock: Clock = wall_clock) -> AsyncApp:
    """An ASGI app serving the Calls API from `store`. The caller opens and closes the store.

    The dialer, LiveKit and the other services handlers use are built here, once, from
    `settings`, and reach handlers through the lifespan state; `clock` is the time they all
    read (tests pass one they can move).

    Swagger UI is served at /api/ui/ and the spec at /api/openapi.json (and .yaml). With a
    dialer configured, the scheduler runs for as long as the app does.
    """
    spec = load_spec()
    base_path = spec["servers"][0]["url"]

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[dict[str, Any]]:
        services = Services(
            store=store,
            clock=clock,
            dialer=settings.dialer(),
            rooms=settings.livekit_rooms(),
            webhook_allow_http=settings.webhook_allow_http,
            admin_token=settings.admin_token,
        )
        scheduler = (
            Scheduler(store, services.dialer, settings.scheduler_interval, clock)
            if services.dialer
            else None
        )
        deliverer = WebhookDeliverer(store, clock=clock) if settings.webhook_delivery else None
        for service in (deliverer, scheduler):
            if service:
                service.start()
        try:
            # Starlette copies this state into every request's scope (request.state).
            yield {"services": services}
        finally:
            for service in (scheduler, deliverer):
                if service:
                    service.stop()

    app = AsyncApp(__name__, lifespan=lifespan)
    app.add_api(
        spec,
        resolver=RelativeResolver("calls_server.handlers"),
        strict_validation=True,
        validate_responses=settings.validate_responses,
        validator_map=validator_map(),
        uri_parser_class=ExplodedFormURIParser,
        security_map=SECURITY_MAP,
        swagger_ui_options=SwaggerUIOptions(swagger_ui=True, serve_spec=True),
    )
    errors.install(app, spec, base_path)
    app.add_middleware(
        BodySizeLimit,
        position=MiddlewarePosition.BEFORE_SWAGGER,
        max_bytes=settings.max_body_bytes,
    )
    app.add_middleware(
        LiteralPathMethods,
        position=MiddlewarePosition.BEFORE_SWAGGER,
        allowed=errors.AllowedMethods(spec, base_path),
    )
    return app
