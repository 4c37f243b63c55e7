"""JSON request bodies parsed strictly: what is accepted can be stored, answered and read
back by any JSON client, and changed again later.

Python's json module accepts NaN and Infinity (which JavaScript clients cannot parse back),
integers of any size (beyond what a double, and so most clients, hold exactly), lone
surrogates (not Unicode, so not encodable as UTF-8), duplicate keys (silently keeping the
last), and nesting deep enough to exhaust the stack. Each is refused here, with the reason.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

# Limits of any JSON body, documented in openapi.yaml's description ("Limits").
MAX_DEPTH = 32  # nested objects and arrays
MAX_KEY_LENGTH = 256  # characters of an object key
MAX_STRING_LENGTH = 262_144  # characters of a string value
MAX_SAFE_INTEGER = 2**53  # larger integers lose precision in JSON clients that use doubles
_QUOTE = 60  # characters of offending input quoted in an error

# A string or a bracket. Possessive quantifiers and an optional closing quote make the scan
# linear: an unterminated string is consumed once instead of retried from every later quote
# (which took a minute for a 160 kB body of escaped quotes).
_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+"(\s*+:)?', re.DOTALL)
_STRING_OR_BRACKET = re.compile(rb'"(?:[^"\\]++|\\.)*+"?|[\[\]{}]', re.DOTALL)


class InvalidJson(ValueError):
    """The body is not JSON this server accepts; the message says why, in plain words."""


def loads(body: bytes) -> Any:
    """The JSON value `body` holds. Raises InvalidJson when it breaks a rule of this module.

    orjson parses, several times faster than the json module; the rules are then checked on
    the value (and duplicate keys by counting the keys written). orjson refuses some of what
    breaks them itself (NaN, lone surrogates, invalid UTF-8) and turns integers beyond 64
    bits into floats: whenever anything is in doubt, the body is parsed again by the json
    module with a hook per rule, whose error says what is wrong."""
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        return _loads_checked(body)
    if not _within_rules(value, _keys_written(body)):
        return _loads_checked(body)
    return value


def _keys_written(body: bytes) -> int:
    # Every string of a valid JSON text, in order (a quote outside strings starts one);
    # those followed by a colon are keys.
    return sum(1 for colon in _STRING.findall(body) if colon)


def _within_rules(value: Any, keys_written: int) -> bool:
    """Whether `value` keeps every rule, and holds as many keys as were written (fewer: a
    key appeared twice in an object)."""
    keys = 0
    pending: list[tuple[Any, int]] = [(value, 0)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, str):
            if len(item) > MAX_STRING_LENGTH:
                return False
        elif isinstance(item, dict):
            if depth >= MAX_DEPTH:
                return False
            keys += len(item)
            for key, inner in item.items():
                if len(key) > MAX_KEY_LENGTH:
                    return False
                pending.append((inner, depth + 1))
        elif isinstance(item, list):
            if depth >= MAX_DEPTH:
                return False
            pending.extend((inner, depth + 1) for inner in item)
        elif isinstance(item, bool) or item is None:
            pass
        elif isinstance(item, int):
            if abs(item) > MAX_SAFE_INTEGER:
                return False
        elif not abs(item) < MAX_SAFE_INTEGER:  # may have been a huge integer; or inf
            return False
    return keys == keys_written


def _loads_checked(body: bytes) -> Any:
    _check_depth(body)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidJson("Request body is not valid UTF-8") from None
    try:
        value = json.loads(
            text,
            parse_constant=_refuse_constant,
            parse_int=_integer,
            parse_float=_float,
            object_pairs_hook=_object,
        )
    except json.JSONDecodeError as e:
        raise InvalidJson(f"Request body is not valid JSON: {e}") from None
    _check_strings(value)
    return value


def quoted(value: str) -> str:
    """`value` in quotes, cut to a short prefix if it is long."""
    return repr(shortened(value))


def shortened(text: str, limit: int = _QUOTE) -> str:
    """`text`, or its first `limit` characters and an ellipsis if it is longer."""
    return text if len(text) <= limit else text[:limit] + "…"


def _check_depth(body: bytes) -> None:
    # Counted on the raw bytes, before parsing, so that no deep value ever reaches the
    # recursive parser (a 100,000-level body would exhaust its stack).
    depth = 0
    for token in _STRING_OR_BRACKET.findall(body):
        if token in (b"[", b"{"):
            depth += 1
        elif token in (b"]", b"}"):
            depth -= 1
        if depth > MAX_DEPTH:
            raise InvalidJson(f"Request body is nested too deeply (more than {MAX_DEPTH} levels)")


def _refuse_constant(name: str) -> Any:
    raise InvalidJson(f"{name} is not a JSON number; JSON clients cannot read it back")


def _integer(digits: str) -> int:
    if len(digits.lstrip("-")) > 16:  # cheap test before converting huge digit strings
        raise InvalidJson(f"The integer {quoted(digits)} is too large (at most ±2^53)")
    value = int(digits)
    if abs(value) > MAX_SAFE_INTEGER:
        raise InvalidJson(f"The integer {digits} is too large (at most ±2^53)")
    return value


def _float(literal: str) -> float:
    value = float(literal)
    if value in (float("inf"), float("-inf")):
        raise InvalidJson(f"The number {quoted(literal)} is too large for a JSON client")
    return value


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for key, item in pairs:
        if key in value:
            raise InvalidJson(f"The key {quoted(key)} appears more than once in an object")
        value[key] = item
    return value


def _check_strings(value: Any) -> None:
    """Every key and string of `value` is valid Unicode and within its length limit."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            for key, inner in item.items():
                _check_text(key, MAX_KEY_LENGTH, "key")
                pending.append(inner)
        elif isinstance(item, list):
            pending.extend(item)
        elif isinstance(item, str):
            _check_text(item, MAX_STRING_LENGTH, "string")


def _check_text(text: str, limit: int, kind: str) -> None:
    if len(text) > limit:
        raise InvalidJson(f"A {kind} is longer than {limit} characters: {quoted(text)}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidJson(
            f"A {kind} is not valid Unicode (a lone surrogate escape): {quoted(text)}"
        ) from None
