"""What is wrong with a request's value, in the words clients read in `error`.

jsonschema's own messages show values as Python reprs (`None`, not `null`), dump whole
schemas, and for an `anyOf` of enums only say a value "is not valid under any of the given
schemas". Here: a schema's own text where the spec gives one (`x-error`), the values an
enum takes, values as JSON and cut short, and where in the body the value was.
"""

from __future__ import annotations

import json
from typing import Any

from connexion.json_schema import format_error_with_path
from connexion.validators import ParameterValidator
from jsonschema import Draft4Validator, ValidationError

from calls_server.request_path import strict_json

_MESSAGE_LIMIT = 300  # characters of a rule broken, in an error message


def describe(error: ValidationError) -> str:
    """What is wrong with a value, in words: the rule it breaks, then where (as Connexion)."""
    if isinstance(error.schema, dict) and "x-error" in error.schema:
        # The spec's own words for this rule: upstream's, which name no path.
        return str(error.schema["x-error"])
    where = format_error_with_path(exception=error)
    # Messages that list what was sent (unexpected keys) are cut, whatever the body held.
    return f"{strict_json.shortened(_rule_broken(error), _MESSAGE_LIMIT)}{where}"


def parameter_error(location: str, value: Any, definition: dict[str, Any]) -> str | None:
    """What is wrong with a path or query parameter's value, naming the parameter; None when
    nothing is. Connexion's check decides (and says when one is missing); a broken rule is
    then said in the words of body errors."""
    error: str | None = ParameterValidator.validate_parameter(location, value, definition)
    if error is None or error.startswith("Missing"):
        return error
    schema = definition.get("schema", definition)
    validator = Draft4Validator(schema, format_checker=Draft4Validator.FORMAT_CHECKER)
    failure = next(validator.iter_errors(value), None)
    reason = error.split("\n\n", 1)[0] if failure is None else describe(failure)
    return f"Invalid {location} parameter '{definition['name']}': {reason}"


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
