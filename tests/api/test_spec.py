"""The contract itself: valid, and in step with the handlers."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re

import yaml
from openapi_schema_validator import OAS30Validator
from openapi_spec_validator import validate
from openapi_spec_validator.readers import read_from_filename

from calls_server import handlers
from calls_server.app import handler_name
from calls_server.contract import SPEC_PATH, load_spec, spec_for
from calls_server.settings import Settings
from tests.conftest import app_client

HTTP_METHODS = {"get", "put", "post", "delete", "patch"}
NOT_OPERATIONS = {"idempotency", "idempotency_keys", "scope", "security"}


def operation_ids() -> set[str]:
    return set(handlers_by_operation())


def handlers_by_operation() -> dict[str, str]:
    """Each operationId and the dotted path of the handler it resolves to."""
    spec = load_spec()
    return {
        operation["operationId"]: handler_name(operation["operationId"], operation["tags"][0])
        for item in spec["paths"].values()
        for method, operation in item.items()
        if method in HTTP_METHODS
    }


def test_spec_passes_openapi_spec_validator():
    spec, base_uri = read_from_filename(str(SPEC_PATH))
    validate(spec, base_uri=base_uri)


def test_the_spec_a_server_taking_http_webhooks_runs_passes_openapi_spec_validator():
    # The app loads it without Connexion's own check (calls_server/app.py): checked here.
    validate(spec_for(Settings(webhook_allow_http=True)))


def test_every_operation_id_resolves_to_a_handler_function():
    for operation_id, path in handlers_by_operation().items():
        module_name, function_name = path.rsplit(".", 1)
        module = importlib.import_module(module_name)
        assert inspect.isfunction(getattr(module, function_name, None)), operation_id


def test_operation_ids_are_short_names_not_module_paths():
    for operation_id in operation_ids():
        assert re.fullmatch("[a-z][A-Za-z]+", operation_id), operation_id


def test_every_public_handler_is_in_the_spec():
    documented = set(handlers_by_operation().values())
    for info in pkgutil.iter_modules(handlers.__path__):
        if info.name in NOT_OPERATIONS:
            continue
        module = importlib.import_module(f"calls_server.handlers.{info.name}")
        for name, function in inspect.getmembers(module, inspect.isfunction):
            if function.__module__ == module.__name__ and not name.startswith("_"):
                assert f"{module.__name__}.{name}" in documented, f"{info.name}.{name}"


def test_every_link_names_an_existing_operation():
    spec = load_spec()
    ids = operation_ids()
    for link in spec["components"]["links"].values():
        assert link["operationId"] in ids


def test_every_error_status_of_every_operation_is_the_envelope():
    spec = load_spec()
    for item in spec["paths"].values():
        for method, operation in item.items():
            if method not in HTTP_METHODS:
                continue
            for status, response in operation["responses"].items():
                if not status.startswith("2"):
                    assert response["$ref"].startswith("#/components/responses/"), status
            assert "500" in operation["responses"]


def test_every_secured_operation_documents_401():
    spec = load_spec()
    for item in spec["paths"].values():
        for method, operation in item.items():
            if method in HTTP_METHODS and operation.get("security", spec["security"]):
                assert "401" in operation["responses"], operation["operationId"]


def test_the_served_spec_is_the_source_as_written_without_internals(client):
    served = client.get("/api/openapi.json")
    as_yaml = client.get("/api/openapi.yaml")

    source = load_spec()
    document = served.json()
    assert served.headers["content-type"] == "application/json"
    assert yaml.safe_load(as_yaml.text) == document
    assert document["paths"] == source["paths"]  # $refs and all
    assert "$ref" in served.text
    assert "x-apikeyInfoFunc" not in served.text
    assert "x-bearerInfoFunc" not in served.text
    assert "calls_server" not in served.text


def test_the_served_spec_says_http_webhook_urls_are_taken_where_the_server_takes_them(store):
    with app_client(store, webhook_allow_http=True) as client:
        relaxed = client.get("/api/openapi.json").json()
    with app_client(store) as client:
        strict = client.get("/api/openapi.json").json()

    def url_rule(spec):
        return spec["components"]["schemas"]["CreateWebhookRequest"]["properties"]["url"]["pattern"]

    assert url_rule(strict) == "^https://[!-~]+$"
    assert url_rule(relaxed) == "^https?://[!-~]+$"


# The shared responses that have no body: 304 to If-None-Match.
BODILESS = {"NotModified"}


def test_only_the_not_modified_response_has_no_body():
    responses = load_spec()["components"]["responses"]

    assert {name for name, response in responses.items() if "content" not in response} == BODILESS


def test_every_error_response_has_an_example_in_the_envelope():
    for name, response in load_spec()["components"]["responses"].items():
        if name in BODILESS:
            continue
        example = response["content"]["application/json"].get("example")
        assert example is not None, name
        assert example["status"] == "error", name
        assert example["data"] is None, name
        assert example["message"], name
        assert example["error"], name


def test_every_operation_says_what_it_does():
    for path, item in load_spec()["paths"].items():
        for method, operation in item.items():
            if method in HTTP_METHODS:
                assert operation.get("summary"), f"{method} {path}"


def test_every_operation_has_a_description():
    for path, item in load_spec()["paths"].items():
        for method, operation in item.items():
            if method in HTTP_METHODS:
                assert operation.get("description", "").strip(), f"{method} {path}"


def resolved(node, spec):
    """`node` with every `$ref` into `spec` replaced by what it points at."""
    if isinstance(node, dict):
        if "$ref" in node:
            target = spec
            for part in node["$ref"].removeprefix("#/").split("/"):
                target = target[part]
            return resolved(target, spec)
        return {key: resolved(value, spec) for key, value in node.items()}
    if isinstance(node, list):
        return [resolved(item, spec) for item in node]
    return node


def test_every_success_response_has_an_example_valid_under_strict_openapi_3_0():
    spec = load_spec()
    checked = 0
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if method not in HTTP_METHODS:
                continue
            media = resolved(operation["responses"]["200"], spec)["content"]
            if "application/json" not in media:
                continue  # a file (the sandbox's recordings): nothing to give an example of
            content = media["application/json"]
            examples = [e["value"] for e in content.get("examples", {}).values()]
            assert examples, f"{method} {path} has no example"
            validator = OAS30Validator(
                content["schema"], format_checker=OAS30Validator.FORMAT_CHECKER
            )
            for example in examples:
                errors = [e.message for e in validator.iter_errors(example)]
                assert errors == [], f"{method} {path}: {errors[:3]}"
                checked += 1
    assert checked >= 21


def test_every_error_example_is_a_valid_error_envelope():
    spec = load_spec()
    envelope = OAS30Validator(resolved(spec["components"]["schemas"]["ErrorEnvelope"], spec))
    for name, response in spec["components"]["responses"].items():
        if name in BODILESS:
            continue
        example = response["content"]["application/json"]["example"]
        assert list(envelope.iter_errors(example)) == [], name
