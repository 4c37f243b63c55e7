"""Connexion's validators, adjusted where they would answer badly, and the body-size limit."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterator
from typing import Any

import jsonschema
from connexion.datastructures import MediaTypeDict
from connexion.exceptions import BadRequestProblem
from connexion.json_schema import Draft4RequestValidator
from connexion.validators import VALIDATOR_MAP, DefaultsJSONRequestBodyValidator, ParameterValidator
from jsonschema import Draft4Validator
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from calls_server.domain.errors import PayloadTooLarge
from calls_server.errors import AllowedMethods


class JSONBodyValidator(DefaultsJSONRequestBodyValidator):  # type: ignore[misc]
    """Validates JSON bodies and fills in the spec's defaults, so handlers need not repeat them.

    Fixes four things in Connexion's version: a body that is not UTF-8 was a 500; a
    default was set on any instance, not only on objects (a 500 for a JSON array body);
    an absent optional body, replaced by the schema's default, reached the handler as
    bytes for want of a Content-Type; and the validator was rebuilt on every request.
    """

    def _insert_body(self, receive: Receive, *, body: Any, scope: Scope) -> tuple[Receive, Scope]:
        receive, scope = super()._insert_body(receive, body=body, scope=scope)
        if body is not None:
            headers = MutableHeaders(scope=scope)
            if "content-type" not in headers:
                headers["content-type"] = "application/json"
        return receive, scope

    async def _parse(self, stream: AsyncGenerator[bytes, None], scope: Scope) -> Any:
        try:
            return await super()._parse(stream, scope)
        except UnicodeDecodeError:
            raise BadRequestProblem(detail="Request body is not valid UTF-8") from None

    @property
    def _validator(self) -> Any:
        # Connexion builds a new validator class (attrs, compile) and instance for every
        # request, a fifth of a create's time; build each schema's validator once.
        cached = _VALIDATORS.get(id(self._schema))
        if cached is None or cached[0] is not self._schema:
            validator = _DefaultsValidator(
                self._schema, format_checker=Draft4Validator.FORMAT_CHECKER
            )
            cached = _VALIDATORS[id(self._schema)] = (self._schema, validator)
        return cached[1]


def _set_defaults(
    validator: Any, properties: dict[str, Any], instance: Any, schema: Any
) -> Iterator[Any]:
    if isinstance(instance, dict):
        for name, subschema in properties.items():
            if "default" in subschema:
                instance.setdefault(name, subschema["default"])
    yield from _validate_properties(validator, properties, instance, schema)


_validate_properties = Draft4RequestValidator.VALIDATORS["properties"]
_DefaultsValidator = jsonschema.validators.extend(  # type: ignore[no-untyped-call]
    Draft4RequestValidator, {"properties": _set_defaults}
)
# Per spec schema (kept alive by the spec): (schema, its validator).
_VALIDATORS: dict[int, tuple[Any, Any]] = {}


class NamedParameterValidator(ParameterValidator):  # type: ignore[misc]
    """Parameter errors that name the parameter (Connexion's leave it out)."""

    @staticmethod
    def validate_parameter(
        parameter_type: str, value: Any, param: dict[str, Any], param_name: str | None = None
    ) -> str | None:
        error: str | None = ParameterValidator.validate_parameter(
            parameter_type, value, param, param_name
        )
        if error is None or error.startswith("Missing"):
            return error
        reason = error.split("\n\n", 1)[0]
        return f"Invalid {parameter_type} parameter '{param['name']}': {reason}"


def validator_map() -> dict[str, Any]:
    """Connexion's validator map with ours in place (the 'body' entry replaces the whole map)."""
    body = MediaTypeDict({**VALIDATOR_MAP["body"], "*/*json": JSONBodyValidator})
    return {"body": body, "parameter": NamedParameterValidator}


class BodySizeLimit:
    """ASGI middleware answering 413 for bodies over `max_bytes`, declared or streamed."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            raise self._too_large()
        await self.app(scope, self._counting(receive), send)

    def _counting(self, receive: Receive) -> Receive:
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise self._too_large()
            return message

        return counted

    def _too_large(self) -> PayloadTooLarge:
        return PayloadTooLarge(f"Request body is larger than the limit of {self.max_bytes} bytes")


class LiteralPathMethods:
    """ASGI middleware answering 405 for a method a literal path of the spec does not have.

    Starlette prefers any route that matches both path and method, so without this
    `PATCH /api/post-call-webhooks/create` would reach the `{webhook_id}` route and
    `GET /api/calls/create` the `{call_id}` one, instead of being refused as the spec says.
    """

    def __init__(self, app: ASGIApp, allowed: AllowedMethods) -> None:
        self.app = app
        self.allowed = allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        literal = scope["type"] == "http" and path in self.allowed.literal_paths
        if literal and scope["method"] not in self.allowed.for_path(path):
            raise HTTPException(status_code=405)
        await self.app(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    headers: list[tuple[bytes, bytes]] = scope["headers"]
    for name, value in headers:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
