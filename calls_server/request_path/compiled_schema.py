"""OpenAPI 3.0 schemas compiled once into Python code, with jsonschema's words on failure.

fastjsonschema turns a schema into a Python function once, at start-up; checking a value
is then several times faster than jsonschema, which interprets the schema on every call.
fastjsonschema's messages are not the ones clients of this API read, so when it refuses a
value, jsonschema (the validator Connexion uses) checks it again and its error is the one
reported: the wording of every error stays what it was, and costs only on the failing path.
When the two disagree, jsonschema's verdict stands.

OpenAPI 3.0 is not JSON Schema: `nullable: true` lets a value be null. Connexion's
validators let null through the `type` and `enum` keywords of a schema marked nullable (and
nothing else); the compiled schema says exactly that, as `type: [<type>, "null"]` and an
enum that includes null. Format names jsonschema's draft-4 checker does not know (`int64`,
`uuid`) are not checked by either.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import fastjsonschema
import jsonschema
from connexion.json_schema import Draft4RequestValidator
from fastjsonschema.draft04 import CodeGeneratorDraft04
from jsonschema import Draft4Validator, ValidationError

DRAFT_4 = "http://json-schema.org/draft-04/schema#"
_FORMATS = Draft4Validator.FORMAT_CHECKER


@dataclass(frozen=True)
class Definitions:
    """A schema as the spec writes it, `$ref`s kept, and the spec's components (both with
    `nullable` said in JSON Schema's terms, see `openapi_components`)."""

    raw: dict[str, Any]
    components: dict[str, Any]


def openapi_components(components: dict[str, Any]) -> dict[str, Any]:
    """The spec's `components`, ready for `Definitions`."""
    return dict(_nullable_as_json_schema(_merged_refs(components, components)))


def openapi_schema(schema: dict[str, Any], components: dict[str, Any]) -> dict[str, Any]:
    """A schema of the spec as written, ready for `Definitions`."""
    return dict(_nullable_as_json_schema(_merged_refs(schema, components)))


def _merged_refs(node: Any, components: dict[str, Any]) -> Any:
    # Connexion merges the keys beside a `$ref` with its target (JSON Schema ignores them):
    # such nodes are inlined, so both read the spec alike.
    if isinstance(node, list):
        return [_merged_refs(item, components) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node and len(node) > 1:
        siblings = {k: v for k, v in node.items() if k != "$ref"}
        return _merged_refs({**siblings, **_target(node, components)}, components)
    merged = {key: _merged_refs(value, components) for key, value in node.items()}
    if isinstance(merged.get("properties"), dict):
        # A property's default is filled in from the property's own schema: say the default
        # of the component it points at beside the `$ref` (which fastjsonschema reads).
        for name, subschema in merged["properties"].items():
            if isinstance(subschema, dict) and set(subschema) == {"$ref"}:
                target = _target(subschema, components)
                if "default" in target:
                    merged["properties"][name] = {**subschema, "default": target["default"]}
    return merged


def _target(node: dict[str, Any], components: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        target: Any = {"components": components}
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


class CompiledSchema:
    """One schema, checked by compiled code, and by `validator_class` (a jsonschema class)
    for the error when the compiled check refuses a value. `nullable` reads OpenAPI's
    `nullable`; `defaults` fills in a valid object's declared defaults."""

    def __init__(
        self,
        schema: dict[str, Any],
        validator_class: Any,
        *,
        definitions: Definitions | None = None,
        nullable: bool = True,
        defaults: bool = False,
    ) -> None:
        """`schema` as Connexion resolved it (every `$ref` replaced by its target); with
        `definitions`, the same schema as written (`definitions.raw`, its `$ref`s kept)
        compiles into code shared by every use of a component, in a fraction of the time."""
        self.schema = schema
        if definitions is None:
            definition = _nullable_as_json_schema(schema) if nullable else dict(schema)
        else:
            # The root only points at the schema: fastjsonschema quotes a failing node's
            # definition in its code, and the root's would hold every component.
            definition = {
                "components": {**definitions.components, "x-compiled": definitions.raw},
                "$ref": "#/components/x-compiled",
            }
        definition["$schema"] = DRAFT_4
        self._definition, self._defaults = definition, defaults
        # Compiled at the first value checked, not at start-up: compiling all of the API's
        # schemas takes a large part of a server's start (docs/architecture.md gives the
        # figure and its command), and a process may use few of them.
        self._check: Callable[[Any], Any] = self._compile_and_check
        self._validator_class = validator_class
        self._validator: Any = None

    def _compile_and_check(self, value: Any) -> Any:
        # Two threads may both compile a schema on its first use: the same code, kept once.
        self._check = fastjsonschema.compile(
            self._definition, formats=_SAME_FORMATS, use_default=self._defaults
        )
        return self._check(value)

    def first_error(self, value: Any) -> ValidationError | None:
        """None when `value` is valid, or the error jsonschema's `validate` raises for it."""
        try:
            self._check(value)
            return None
        except fastjsonschema.JsonSchemaValueException:
            pass
        if self._validator is None:  # built on the failing path only, then kept
            self._validator = self._validator_class(self.schema, format_checker=_FORMATS)
        try:
            self._validator.validate(value)
        except ValidationError as error:
            return error
        return None


def _set_defaults(
    validator: Any, properties: dict[str, Any], instance: Any, schema: Any
) -> Iterator[Any]:
    if isinstance(instance, dict):
        for name, subschema in properties.items():
            if "default" in subschema:
                instance.setdefault(name, subschema["default"])
    yield from _validate_properties(validator, properties, instance, schema)


_validate_properties = Draft4RequestValidator.VALIDATORS["properties"]
# Connexion's request validator, filling in defaults on objects (as fastjsonschema does).
RequestDefaultsValidator: Any = jsonschema.validators.extend(  # type: ignore[no-untyped-call]
    Draft4RequestValidator, {"properties": _set_defaults}
)


def _nullable_as_json_schema(schema: Any) -> Any:
    """A copy of `schema` where `nullable: true` is said in JSON Schema's own terms."""
    if isinstance(schema, list):
        return [_nullable_as_json_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    converted = {key: _nullable_as_json_schema(value) for key, value in schema.items()}
    if schema.get("nullable") is True or schema.get("x-nullable") is True:
        if "type" in converted:
            types = converted["type"]
            converted["type"] = [*(types if isinstance(types, list) else [types]), "null"]
        if "enum" in converted and None not in converted["enum"]:
            converted["enum"] = [*converted["enum"], None]
    return converted


def _format_check(name: str) -> Callable[[Any], bool]:
    if name not in _FORMATS.checkers:
        return lambda value: True
    return lambda value: _FORMATS.conforms(value, name)


# Every format either library knows, checked as jsonschema's draft-4 checker does (or not at
# all, as it does not): fastjsonschema ignores the names it does not know.
_SAME_FORMATS = {
    name: _format_check(name)
    for name in {*_FORMATS.checkers, *CodeGeneratorDraft04.FORMAT_REGEXS, "regex"}
}
