"""The request path compiled from openapi.yaml (calls_server/request_path/api.py): its compiled
checks decide as jsonschema (the validator Connexion uses) does, its JSON parser as the
checked one, and what it cannot check stops the server at start-up."""

from __future__ import annotations

import asyncio
import copy
import functools
import importlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from connexion import AsyncApp
from connexion.middleware.exceptions import ExceptionMiddleware
from connexion.middleware.lifespan import LifespanMiddleware
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from calls_server.app import HandlerResolver
from calls_server.contract import load_spec
from calls_server.request_path import strict_json
from calls_server.request_path.api import CompiledApi, UnsupportedSpec, WrittenSpec
from calls_server.request_path.compiled_schema import CompiledSchema, RequestDefaultsValidator
from tests.conftest import assert_error, create_call

SPEC = load_spec()
WRITTEN = WrittenSpec(SPEC)

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**60), 2**60)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
    | st.sampled_from(["PHONE_CALL", "web_call", "ended", "agent-1", "+14155550100", ""]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=12,
)


def body_operations() -> list[tuple[str, str, dict[str, Any]]]:
    """(operationId, media type, written operation) of every operation with a JSON body."""
    found = []
    for path, item in SPEC["paths"].items():
        for method, operation in item.items():
            if isinstance(operation, dict) and "requestBody" in operation:
                for media_type in operation["requestBody"]["content"]:
                    found.append((operation["operationId"], path, method, media_type))
    return found


@functools.cache  # compiled once per operation, not once per generated example
def compiled_and_resolved(path: str, method: str, media_type: str) -> CompiledSchema:
    written = WRITTEN.operation(path, method)
    resolved = resolve(written.body["content"][media_type]["schema"])
    definitions = written.body_schema(media_type)
    return CompiledSchema(
        resolved, RequestDefaultsValidator, definitions=definitions, defaults=True
    )


def resolve(node: Any) -> Any:
    """`node` with every `$ref` replaced by its target (as Connexion resolves the spec)."""
    if isinstance(node, list):
        return [resolve(item) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target: Any = SPEC
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        return resolve({**{k: v for k, v in node.items() if k != "$ref"}, **target})
    return {key: resolve(value) for key, value in node.items()}


def verdicts(schema: CompiledSchema, value: Any) -> tuple[bool, bool, Any, Any]:
    """(compiled says valid, jsonschema says valid, and each one's value with defaults)."""
    fast_value, slow_value = copy.deepcopy(value), copy.deepcopy(value)
    try:
        schema._check(fast_value)
        fast = True
    except Exception:
        fast = False
    validator = RequestDefaultsValidator(schema.schema)
    slow = next(iter(validator.iter_errors(slow_value)), None) is None
    return fast, slow, fast_value, slow_value


BODIES = body_operations()


@pytest.mark.parametrize(("operation_id", "path", "method", "media_type"), BODIES, ids=lambda x: x)
@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(value=JSON)
def test_compiled_body_schemas_decide_as_jsonschema_on_any_json(
    operation_id, path, method, media_type, value
):
    assert_same_verdict(path, method, media_type, value)


def assert_same_verdict(path: str, method: str, media_type: str, value: Any) -> None:
    """The compiled schema and jsonschema agree on `value`, defaults filled in alike."""
    fast, slow, fast_value, slow_value = verdicts(
        compiled_and_resolved(path, method, media_type), value
    )
    assert fast == slow
    if fast:
        assert fast_value == slow_value


def examples_and_their_mutations() -> list[tuple[str, str, str, str, Any]]:
    cases = []
    for operation_id, path, method, media_type in BODIES:
        content = SPEC["paths"][path][method]["requestBody"]["content"][media_type]
        examples = [e.get("value") for e in content.get("examples", {}).values()]
        if "example" in content:
            examples.append(content["example"])
        for example in examples:
            variants = [example]
            if isinstance(example, dict):
                for key in example:
                    variants.append({k: v for k, v in example.items() if k != key})
                    for wrong in (None, 7, "x" * 300, [], {"k": 1}, True):
                        variants.append({**example, key: wrong})
            cases += [(operation_id, path, method, media_type, v) for v in variants]
    return cases


EXAMPLES = examples_and_their_mutations()


def test_the_spec_has_request_examples_to_compare_on():
    assert len({case[0] for case in EXAMPLES}) >= 10


@pytest.mark.parametrize(
    ("operation_id", "path", "method", "media_type", "value"),
    EXAMPLES,
    ids=[f"{c[0]}-{n}" for n, c in enumerate(EXAMPLES)],
)
def test_compiled_body_schemas_decide_as_jsonschema_on_the_examples_and_their_mutations(
    operation_id, path, method, media_type, value
):
    assert_same_verdict(path, method, media_type, value)


TRICKY_BODIES = [
    b'{"a": NaN}',
    b'{"a": Infinity}',
    b'{"a": 1e999}',
    b'{"a": -1e999}',
    b'{"a": 1e20}',
    b'{"a": 9007199254740992}',
    b'{"a": 9007199254740993}',
    b'{"a": -9007199254740993}',
    b'{"a": 123456789012345678901234567890}',
    b'{"a": "\\ud800"}',
    b'{"a": "\\ud83d\\ude00"}',
    b'{"a": 1, "a": 2}',
    b'{"a": {"b": 1, "b": 1}}',
    b'{"k": "say \\"hi\\": now", "b": {"c": [1, 2, {"d": "x:"}]}}',
    b'{"a" : 1 , "b" :{"a":2}}',
    b"\xff\xfe",
    b"[" * 32 + b"]" * 32,
    b"[" * 33 + b"]" * 33,
    b"[" * 5000 + b"]" * 5000,
    b'{"' + b"k" * 257 + b'": 1}',
    b'{"a": "' + b"x" * 262_145 + b'"}',
    b'"unterminated',
    b"",
    b"nul",
    b"[1, 2,]",
    b'{"a": 1} trailing',
]


@pytest.mark.parametrize("body", TRICKY_BODIES, ids=lambda b: b[:30].decode("latin-1"))
def test_fast_json_parsing_answers_as_the_checked_parser(body):
    assert outcome(strict_json.loads, body) == outcome(strict_json._loads_checked, body)


@settings(max_examples=300, deadline=None)
@given(value=JSON, duplicate=st.booleans())
def test_fast_json_parsing_answers_as_the_checked_parser_on_any_json(value, duplicate):
    text = json.dumps(value)
    if duplicate and text.startswith("{") and text != "{}":
        text = text.replace("{", '{"dup": 1, "dup": 2, ', 1)
    body = text.encode()
    assert outcome(strict_json.loads, body) == outcome(strict_json._loads_checked, body)


def outcome(parse: Any, body: bytes) -> tuple[str, Any]:
    try:
        return "value", parse(body)
    except strict_json.InvalidJson as error:
        return "error", str(error)


# -- start-up refuses what the compiled path does not check ----------------------------


def changed_spec(change: Any) -> dict[str, Any]:
    spec = copy.deepcopy(SPEC)
    change(spec)
    return spec


def start(spec: dict[str, Any]) -> None:
    app = AsyncApp(__name__, middlewares=[ExceptionMiddleware, CompiledApi, LifespanMiddleware])
    app.add_api(spec, resolver=HandlerResolver(spec))
    with TestClient(app):
        pass


def add_parameter(spec: dict[str, Any], parameter: dict[str, Any]) -> None:
    spec["paths"]["/calls"]["get"]["parameters"].append(parameter)


UNSUPPORTED = {
    "a cookie parameter": lambda s: add_parameter(
        s, {"name": "c", "in": "cookie", "schema": {"type": "string"}}
    ),
    "an array header parameter": lambda s: add_parameter(
        s, {"name": "X-C", "in": "header", "schema": {"type": "array", "items": {}}}
    ),
    "a deepObject query parameter": lambda s: add_parameter(
        s, {"name": "d", "in": "query", "style": "deepObject", "schema": {"type": "object"}}
    ),
    "an unexploded array": lambda s: add_parameter(
        s,
        {"name": "u", "in": "query", "explode": False, "schema": {"type": "array", "items": {}}},
    ),
    "a form body": lambda s: s["paths"]["/calls/create"]["post"]["requestBody"]["content"].update(
        {"application/x-www-form-urlencoded": {"schema": {"type": "object"}}}
    ),
    "an HTTP basic scheme": lambda s: s["components"]["securitySchemes"].update(
        {"apiKey": {"type": "http", "scheme": "basic"}}
    ),
    "a query API key": lambda s: s["components"]["securitySchemes"]["apiKey"].update(
        {"in": "query"}
    ),
}


@pytest.mark.parametrize("change", list(UNSUPPORTED))
def test_a_spec_construct_the_compiled_path_does_not_check_stops_the_start(change):
    with pytest.raises(UnsupportedSpec):
        start(changed_spec(UNSUPPORTED[change]))


def test_the_shipped_spec_compiles():
    start(SPEC)


def test_every_body_schema_of_the_shipped_spec_compiles(client):
    """Body schemas are compiled at their first use, not at start-up: each one compiles
    (a schema fastjsonschema cannot compile would otherwise be a 500 at its first body)."""
    routes = find_compiled(client.app).routes
    operations = [
        operation
        for methods in [*routes.literal.values(), *(m for _, _, m in routes.templates)]
        for operation in methods.values()
    ]
    bodies = {id(o.body): o.body for o in operations if o.body is not None}

    for body in bodies.values():
        body.schema.first_error(None)  # compiles it (None is refused, not an error)

    assert len(bodies) == len(BODIES)


# -- routing -------------------------------------------------------------------------------


def test_a_literal_path_is_matched_before_a_template(client, tenant):
    response = client.get("/api/calls/create", headers=tenant.headers)
    assert_error(response, 405, "GET is not allowed on /api/calls/create; allowed: POST")
    assert response.headers["Allow"] == "POST"


def test_a_template_path_with_another_method_answers_405_with_the_spec_methods(client, tenant):
    response = client.post("/api/calls/call_x", headers=tenant.headers, json={})
    assert_error(response, 405)
    assert response.headers["Allow"] == "DELETE, GET, HEAD, PUT"


def test_head_is_answered_by_get_without_a_body(client, tenant):
    call = create_call(client, tenant)
    response = client.head(f"/api/calls/{call['call_id']}", headers=tenant.headers)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.content == b""


def test_an_unknown_path_answers_404_in_the_envelope(client, tenant):
    response = client.get("/api/nowhere", headers=tenant.headers)
    assert_error(response, 404, "No route matches GET /api/nowhere")


def test_every_operation_is_routed_to_its_handler(client):
    routes = find_compiled(client.app).routes
    for path, item in SPEC["paths"].items():
        concrete = "/api" + re.sub(r"{[^}]+}", "x1", path)
        for method, operation in item.items():
            if isinstance(operation, dict) and "operationId" in operation:
                found, _ = routes.find(method.upper(), concrete)
                module = importlib.import_module(f"calls_server.handlers.{operation['tags'][0]}")
                assert found.handler is getattr(module, snake_case(operation["operationId"]))


def snake_case(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


def find_compiled(app: Any) -> CompiledApi:
    stack = app.middleware.middleware_stack
    return next(m for m in stack if isinstance(m, CompiledApi))


def test_the_written_spec_is_the_packaged_one():
    packaged = yaml.safe_load(Path(__file__).parents[2].joinpath("openapi.yaml").read_text())
    assert packaged == SPEC


def chunks(*parts: bytes) -> Any:
    yield from parts


def test_a_chunked_body_is_read_and_validated_like_any_other(client, tenant):
    body = chunks(b'{"agent_id": "agent-1", ', b'"call_type": "web_call"}')
    headers = {**tenant.headers, "Content-Type": "application/json"}

    response = client.post("/api/calls/create", content=body, headers=headers)

    assert response.request.headers["transfer-encoding"] == "chunked"
    assert response.status_code == 200
    assert response.json()["data"]["call"]["call_type"] == "web_call"


def test_a_chunked_list_body_keeps_its_filters(client, tenant):
    create_call(client, tenant, agent_id="wanted")
    create_call(client, tenant, agent_id="other")
    body = chunks(b'{"filter_criteria": ', b'{"agent_id": ["wanted"]}}')
    headers = {**tenant.headers, "Content-Type": "application/json"}

    response = client.post("/api/calls", content=body, headers=headers)

    assert [c["agent_id"] for c in response.json()["data"]["calls"]] == ["wanted"]


def test_a_trailing_slash_is_a_404_never_a_redirect_built_from_the_host(client):
    response = client.get(
        "/api/health/", headers={"Host": "evil.example.com"}, follow_redirects=False
    )

    assert_error(response, 404, "No route matches GET /api/health/")
    assert "location" not in response.headers


def test_reads_run_on_the_event_loop_only_when_the_store_answers_from_memory(
    client, tenant, store, monkeypatch
):
    """The embedded store's reads stay on the event loop (no thread hop); PostgreSQL's,
    which wait for the network, key lookup included, go to worker threads."""
    call = create_call(client, tenant)
    on_loop: dict[str, bool] = {}

    def watched(name: str) -> None:
        original = getattr(store, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                asyncio.get_running_loop()
                on_loop[name] = True
            except RuntimeError:  # a worker thread runs no event loop
                on_loop[name] = False
            return original(*args, **kwargs)

        monkeypatch.setattr(store, name, wrapper)

    for name in ("get_call", "find_api_key", "list_calls"):
        watched(name)

    assert client.get(f"/api/calls/{call['call_id']}", headers=tenant.headers).status_code == 200
    assert client.get("/api/calls", headers=tenant.headers).status_code == 200

    expected = not store.reads_wait
    assert on_loop == {"get_call": expected, "find_api_key": expected, "list_calls": expected}
