"""The contract itself: valid, and in step with the handlers."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

from openapi_spec_validator import validate
from openapi_spec_validator.readers import read_from_filename

from calls_server import handlers
from calls_server.app import SPEC_PATH, load_spec

HTTP_METHODS = {"get", "put", "post", "delete", "patch"}
NOT_OPERATIONS = {"envelope", "scope", "security"}


def operation_ids() -> set[str]:
    spec = load_spec()
    return {
        operation["operationId"]
        for item in spec["paths"].values()
        for method, operation in item.items()
        if method in HTTP_METHODS
    }


def test_spec_passes_openapi_spec_validator():
    spec, base_uri = read_from_filename(str(SPEC_PATH))
    validate(spec, base_uri=base_uri)


def test_every_operation_id_resolves_to_a_handler_function():
    for operation_id in operation_ids():
        module_name, function_name = operation_id.rsplit(".", 1)
        module = importlib.import_module(f"calls_server.handlers.{module_name}")
        assert inspect.isfunction(getattr(module, function_name, None)), operation_id


def test_every_public_handler_is_in_the_spec():
    documented = operation_ids()
    for info in pkgutil.iter_modules(handlers.__path__):
        if info.name in NOT_OPERATIONS:
            continue
        module = importlib.import_module(f"calls_server.handlers.{info.name}")
        for name, function in inspect.getmembers(module, inspect.isfunction):
            if function.__module__ == module.__name__ and not name.startswith("_"):
                assert f"{info.name}.{name}" in documented, f"{info.name}.{name}"


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
