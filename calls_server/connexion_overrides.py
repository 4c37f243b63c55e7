"""Every place this server overrides Connexion's internals, each with its reason.

Written against connexion==3.3.0 (pinned in pyproject.toml). Each override relies on
private names of that version; tests/test_connexion_overrides.py records their signatures
and fails when an upgrade renames or changes one, so that no override turns silently into
dead code (or worse, into a wrong one).

1. Security handlers: Connexion decides on every request, with `inspect.signature`, whether
   each security function accepts `required_scopes` and `request` (`_accepts_kwarg`, four
   inspections per Calls request). The answer never changes for a function: it is cached.
2. The JSON body validator (`JSONBodyValidator`):
   - parses bodies strictly (`calls_server.strict_json`): Connexion's `json.loads` takes
     NaN, huge integers, lone surrogates and duplicate keys, and a body that is not UTF-8
     or nested 100,000 levels deep is a 500 there;
   - builds each schema's validator once: Connexion builds a validator class and instance
     for every request, a fifth of a create's time;
   - answers a schema's own error text where the spec gives one (`x-error`), and says
     which values an enum takes when a value matches none of an `anyOf` of enums
     (jsonschema only says it is "not valid under any of the given schemas"), shows
     values as JSON (`null`, not Python's `None`), names the keys a `not` forbids (not
     the schema as a Python dict), and quotes only a short prefix of a long value;
   - sets defaults only on objects (Connexion's set them on any instance: a 500 for a JSON
     array body), and gives an absent optional body replaced by its default the JSON
     content type (Connexion left it without one, so it reached handlers as bytes).
3. Parameter errors name the parameter (Connexion's leave it out), in the words of body
   errors.
4. The URI parser keeps the values of a repeated `form`/`explode` query parameter as they
   were sent: Connexion joins them with commas and splits them again, so `?agent_id=a,b`
   became two agent ids (spec-first/connexion#1905, open).
"""

from __future__ import annotations

import functools
import json
from collections.abc import AsyncGenerator, Callable, Iterator
from typing import Any

import jsonschema
from connexion.datastructures import MediaTypeDict
from connexion.exceptions import BadRequestProblem
from connexion.json_schema import Draft4RequestValidator, format_error_with_path
from connexion.security import ApiKeySecurityHandler, BearerSecurityHandler
from connexion.uri_parsing import OpenAPIURIParser
from connexion.validators import VALIDATOR_MAP, DefaultsJSONRequestBodyValidator, ParameterValidator
from jsonschema import Draft4Validator, ValidationError
from starlette.datastructures import MutableHeaders
from starlette.types import Receive, Scope

from calls_server import strict_json

# -- 1. security: a function's signature is inspected once --------------------------------

_accepts_kwarg: Callable[[Callable[..., Any], str], bool] = functools.cache(
    ApiKeySecurityHandler._accepts_kwarg
)


class ApiKeyHandler(ApiKeySecurityHandler):  # type: ignore[misc]
    """`type: apiKey` schemes, inspecting each security function once."""

    _accepts_kwarg = staticmethod(_accepts_kwarg)


class BearerHandler(BearerSecurityHandler):  # type: ignore[misc]
    """`type: http, scheme: bearer` schemes, inspecting each security function once."""

    _accepts_kwarg = staticmethod(_accepts_kwarg)


SECURITY_MAP = {"apiKey": ApiKeyHandler, "bearer": BearerHandler}


# -- 2. request bodies ----------------------------------------------------------------------


class JSONBodyValidator(DefaultsJSONRequestBodyValidator):  # type: ignore[misc]
    """Validates JSON bodies strictly and fills in the spec's defaults (see the module's
    docstring for what differs from Connexion's own)."""

    async def _parse(self, stream: AsyncGenerator[bytes, None], scope: Scope) -> Any:
        body = b"".join([message async for message in stream])
        if not body:
            return None
        try:
            return strict_json.loads(body)
        except strict_json.InvalidJson as e:
            raise BadRequestProblem(detail=str(e)) from None

    def _validate(self, body: Any) -> dict[str, Any] | None:
        if not self._nullable and body is None:
            raise BadRequestProblem("Request body must not be empty")
        try:
            return self._validator.validate(body)  # type: ignore[no-any-return]
        except ValidationError as error:
            raise BadRequestProblem(detail=describe(error)) from None

    def _insert_body(self, receive: Receive, *, body: Any, scope: Scope) -> tuple[Receive, Scope]:
        receive, scope = super()._insert_body(receive, body=body, scope=scope)
        if body is not None:
            headers = MutableHeaders(scope=scope)
            if "content-type" not in headers:
                headers["content-type"] = "application/json"
        return receive, scope

    @property
    def _validator(self) -> Any:
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
_MESSAGE_LIMIT = 300  # characters of a rule broken, in an error message
# Per spec schema (kept alive by the spec): (schema, its validator).
_VALIDATORS: dict[int, tuple[Any, Any]] = {}


def describe(error: ValidationError) -> str:
    """What is wrong with a value, in words: the rule it breaks, then where (as Connexion).

    Values are shown as JSON (`null`, not `None`) and cut to a short prefix."""
    where = format_error_with_path(exception=error)
    if isinstance(error.schema, dict) and "x-error" in error.schema:
        return f"{error.schema['x-error']}{where}"  # the spec's own words for this rule
    # Messages that list what was sent (unexpected keys) are cut, whatever the body held.
    return f"{strict_json.shortened(_rule_broken(error), _MESSAGE_LIMIT)}{where}"


def _rule_broken(error: ValidationError) -> str:
    rule: Any = error.validator_value
    shown = _show(error.instance)
    if error.validator in ("anyOf", "oneOf") and all("enum" in branch for branch in rule):
        allowed = [v for branch in rule for v in branch["enum"] if v is not None]
        return f"{shown} is not one of {', '.join(map(str, allowed))}"
    if error.validator == "enum":
        return f"{shown} is not one of {', '.join(str(v) for v in rule if v is not None)}"
    if error.validator == "type":
        types = ", ".join(f"'{t}'" for t in ([rule] if isinstance(rule, str) else rule))
        return f"{shown} is not of type {types}"
    if error.validator == "maxLength":
        return f"{shown} is longer than {rule} characters"
    if error.validator == "pattern":
        return f"{shown} does not match {rule!r}"
    if error.validator in ("maxProperties", "maxItems"):
        return f"has more than {rule} {'keys' if error.validator == 'maxProperties' else 'items'}"
    # jsonschema's other messages start with the value's Python repr; show it as JSON.
    prefix = repr(error.instance)
    if error.message.startswith(prefix):
        return shown + error.message[len(prefix) :]
    return error.message


def _show(value: Any) -> str:
    """A value as a client sent it: strings quoted, anything else as JSON, both cut short."""
    if isinstance(value, str):
        return strict_json.quoted(value)
    return strict_json.shortened(json.dumps(value, ensure_ascii=False, default=str))


# -- 3. parameters --------------------------------------------------------------------------


class NamedParameterValidator(ParameterValidator):  # type: ignore[misc]
    """Parameter errors that name the parameter."""

    @staticmethod
    def validate_parameter(
        parameter_type: str, value: Any, param: dict[str, Any], param_name: str | None = None
    ) -> str | None:
        error: str | None = ParameterValidator.validate_parameter(
            parameter_type, value, param, param_name
        )
        if error is None or error.startswith("Missing"):
            return error
        # Connexion returned the error as text; validate again (only on this failing path)
        # for the error itself, to say it in the same words as body errors.
        schema = param.get("schema", param)
        checker = Draft4Validator(schema, format_checker=Draft4Validator.FORMAT_CHECKER)
        failure = next(checker.iter_errors(value), None)
        reason = error.split("\n\n", 1)[0] if failure is None else describe(failure)
        return f"Invalid {parameter_type} parameter '{param['name']}': {reason}"


def validator_map() -> dict[str, Any]:
    """Connexion's validator map with ours in place (the 'body' entry replaces the whole map)."""
    body = MediaTypeDict({**VALIDATOR_MAP["body"], "*/*json": JSONBodyValidator})
    return {"body": body, "parameter": NamedParameterValidator}


# -- 4. query strings -----------------------------------------------------------------------


class ExplodedFormURIParser(OpenAPIURIParser):  # type: ignore[misc]
    """Repeated `form`/`explode` query parameters stay the list of values sent."""

    @staticmethod
    def _resolve_param_duplicates(values: list[str], param_defn: dict[str, Any], _in: str) -> Any:
        if _in == "query" and _exploded_form(param_defn, _in):  # not form bodies: no arrays
            return list(values)
        return OpenAPIURIParser._resolve_param_duplicates(values, param_defn, _in)

    @staticmethod
    def _split(value: Any, param_defn: dict[str, Any], _in: str) -> Any:
        if isinstance(value, list):  # already the values, one per occurrence
            return value
        return OpenAPIURIParser._split(value, param_defn, _in)


def _exploded_form(param_defn: dict[str, Any], _in: str) -> bool:
    style = param_defn.get("style", OpenAPIURIParser.style_defaults[_in])
    return bool(style == "form" and param_defn.get("explode", True))
