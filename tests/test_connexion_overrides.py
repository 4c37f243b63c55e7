"""The overrides of Connexion internals (calls_server/connexion_overrides.py) still fit the
installed Connexion, and still do what they are there for."""

from __future__ import annotations

import inspect

import connexion.security
import pytest
from connexion.json_schema import Draft4RequestValidator, format_error_with_path
from connexion.security import AbstractSecurityHandler
from connexion.uri_parsing import OpenAPIURIParser
from connexion.validators import DefaultsJSONRequestBodyValidator, ParameterValidator
from connexion.validators.abstract import AbstractRequestBodyValidator

from calls_server import connexion_overrides
from tests.conftest import assert_error, create_call

# The private (or protected) names the overrides rely on, with the signatures they were
# written against (connexion 3.3.0). An upgrade that changes one must be looked at.
RELIED_ON = {
    (AbstractSecurityHandler, "_accepts_kwarg"): "(func, keyword)",
    (AbstractSecurityHandler, "_generic_check"): "(self, func, exception_msg)",
    (AbstractRequestBodyValidator, "_parse"): "(self, stream, scope)",
    (AbstractRequestBodyValidator, "_insert_body"): "(self, receive, *, body, scope)",
    (DefaultsJSONRequestBodyValidator, "_validate"): "(self, body)",
    (DefaultsJSONRequestBodyValidator, "_validator"): "property",
    (ParameterValidator, "validate_parameter"): "(parameter_type, value, param, param_name=None)",
    (OpenAPIURIParser, "_resolve_param_duplicates"): "(values, param_defn, _in)",
    (OpenAPIURIParser, "_split"): "(value, param_defn, _in)",
    (OpenAPIURIParser, "style_defaults"): "dict",
    (Draft4RequestValidator, "VALIDATORS"): "dict",
}


def shape(owner: type, name: str) -> str:
    attribute = inspect.getattr_static(owner, name)
    if isinstance(attribute, property):
        return "property"
    if isinstance(attribute, dict):
        return "dict"
    function = attribute.__func__ if isinstance(attribute, staticmethod) else attribute
    # Names, kinds and defaults: what a call site depends on (not the annotations' spelling).
    unannotated = inspect.signature(function).replace(return_annotation=inspect.Signature.empty)
    parameters = [
        p.replace(annotation=inspect.Parameter.empty) for p in unannotated.parameters.values()
    ]
    return str(unannotated.replace(parameters=parameters))


@pytest.mark.parametrize(
    ("owner", "name"), list(RELIED_ON), ids=lambda x: getattr(x, "__name__", x)
)
def test_every_connexion_internal_an_override_relies_on_is_unchanged(owner, name):
    assert shape(owner, name) == RELIED_ON[(owner, name)]


def test_the_call_sites_of_the_overridden_security_check_are_unchanged():
    # The cache only helps while _generic_check asks _accepts_kwarg through `self`.
    source = inspect.getsource(AbstractSecurityHandler._generic_check)

    assert "self._accepts_kwarg(func, self.required_scopes_kw)" in source
    assert "self._accepts_kwarg(func, self.request_kw)" in source


def test_the_error_path_format_the_renderer_keeps_is_unchanged():
    assert inspect.signature(format_error_with_path).parameters.keys() == {"exception"}


def test_the_defaults_validator_extends_connexions_properties_rule():
    assert "properties" in Draft4RequestValidator.VALIDATORS


def test_a_security_function_is_inspected_once_not_per_request(client, tenant, monkeypatch):
    inspected = []
    original = connexion.security.inspect_function_arguments
    monkeypatch.setattr(
        connexion.security,
        "inspect_function_arguments",
        lambda function: inspected.append(function) or original(function),
    )
    connexion_overrides._accepts_kwarg.cache_clear()

    for _ in range(5):
        create_call(client, tenant)

    # Two security functions, each asked about two keywords: at most once each.
    assert 0 < len(inspected) <= 4


def test_a_comma_inside_a_repeated_query_value_is_part_of_the_value(client, tenant):
    create_call(client, tenant, agent_id="a,b")
    create_call(client, tenant, agent_id="a")
    create_call(client, tenant, agent_id="b")

    one = client.get("/api/calls", params={"agent_id": "a,b"}, headers=tenant.headers)
    both = client.get("/api/calls", params=[("agent_id", "a"), ("agent_id", "b")],
                      headers=tenant.headers)  # fmt: skip

    assert [c["agent_id"] for c in one.json()["data"]["calls"]] == ["a,b"]
    assert sorted(c["agent_id"] for c in both.json()["data"]["calls"]) == ["a", "b"]
    assert one.json()["data"]["applied_filters"]["agent_id"] == ["a,b"]


def test_a_body_schema_validator_is_built_once_not_per_request(client, tenant, monkeypatch):
    built = []
    original = connexion_overrides._DefaultsValidator
    monkeypatch.setattr(
        connexion_overrides,
        "_DefaultsValidator",
        lambda *args, **kwargs: built.append(args[0]) or original(*args, **kwargs),
    )
    monkeypatch.setattr(connexion_overrides, "_VALIDATORS", {})

    for _ in range(5):
        create_call(client, tenant)

    assert len(built) == 1


def create_invalid(client, tenant, **body):
    return client.post("/api/calls/create", json=body, headers=tenant.headers)


def test_a_value_matching_no_enum_of_an_any_of_is_told_the_allowed_values(client, tenant):
    response = create_invalid(client, tenant, agent_id="a", call_type="FAX")

    body = assert_error(response, 400)
    assert body["error"] == (
        "'FAX' is not one of phone_call, web_call, PHONE_CALL, WEB_CALL - 'call_type'"
    )


def test_a_null_is_shown_as_json_not_as_python(client, tenant):
    response = create_invalid(client, tenant, agent_id="a", call_id=None)

    body = assert_error(response, 400)
    assert body["error"] == "null is not of type 'string' - 'call_id'"


def test_only_a_short_prefix_of_a_long_value_is_quoted(client, tenant):
    response = create_invalid(client, tenant, agent_id="a", call_type="x" * 5000)

    body = assert_error(response, 400, "'" + "x" * 60 + "…' is not one of")
    assert len(body["error"]) < 200


def test_many_unexpected_keys_make_a_short_message(client, tenant):
    extra = {f"key-{n:03}-" + "k" * 200: 1 for n in range(50)}

    response = create_invalid(client, tenant, agent_id="a", **extra)

    body = assert_error(response, 400, "Additional properties are not allowed")
    assert len(body["error"]) < 400


def test_a_parameter_error_names_the_parameter_and_the_allowed_values(client, tenant):
    response = client.get("/api/calls", params={"sort_by": "colour"}, headers=tenant.headers)

    body = assert_error(response, 400)
    assert body["error"] == (
        "Invalid query parameter 'sort_by': 'colour' is not one of "
        "created_at, updated_at, start_timestamp, end_timestamp, call_duration"
    )


def test_a_long_query_value_is_quoted_short(client, tenant):
    response = client.get("/api/calls", params={"agent_id": "q" * 5000}, headers=tenant.headers)

    body = assert_error(response, 400, "Invalid query parameter 'agent_id': 'qqq")
    assert len(body["error"]) < 200
