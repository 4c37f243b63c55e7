"""The Connexion internals the compiled request path (calls_server/request_path/) relies
on still fit the installed Connexion, and the path still does its work once, at start-up."""

from __future__ import annotations

import inspect

import connexion.context
import fastjsonschema
import jsonschema
import pytest
from connexion.exceptions import InvalidSpecification
from connexion.json_schema import Draft4RequestValidator, format_error_with_path
from connexion.spec import OpenAPISpecification, Specification

from calls_server.contract import spec_for
from calls_server.request_path import connexion_private
from calls_server.settings import Settings
from tests.conftest import create_call

# The private (or protected) names relied on, with the shapes they were written against:
# the request path's, listed in its own module, and the app's own one. An upgrade that
# changes one must be looked at.
RELIED_ON = {
    **connexion_private.RELIED_ON,
    # Left out while the app loads the packaged spec (calls_server/app.py), checked below.
    (Specification, "_validate_spec"): "(cls, spec)",
}


def shape(owner: type, name: str) -> str:
    if name in getattr(owner, "__annotations__", {}) and not hasattr(owner, name):
        return "annotation"
    attribute = inspect.getattr_static(owner, name)
    if isinstance(attribute, property):
        return "property"
    if isinstance(attribute, dict):
        return "dict"
    function = (
        attribute.__func__ if isinstance(attribute, staticmethod | classmethod) else attribute
    )
    # Names, kinds and defaults: what a call site depends on (not the annotations' spelling).
    unannotated = inspect.signature(function).replace(return_annotation=inspect.Signature.empty)
    parameters = [
        p.replace(annotation=inspect.Parameter.empty) for p in unannotated.parameters.values()
    ]
    return str(unannotated.replace(parameters=parameters))


@pytest.mark.parametrize(
    ("owner", "name"), list(RELIED_ON), ids=lambda x: getattr(x, "__name__", x)
)
def test_every_connexion_internal_the_compiled_path_relies_on_is_unchanged(owner, name):
    assert shape(owner, name) == RELIED_ON[(owner, name)]


def test_connexions_request_context_is_still_the_four_variables_it_sets():
    # Handlers may use `connexion.request` and `connexion.context`; the compiled path sets
    # the variables Connexion's ContextMiddleware would.
    for name in ("_context", "_operation", "_receive", "_scope"):
        assert isinstance(getattr(connexion.context, name), connexion.context.ContextVar)


def test_the_error_path_format_the_messages_keep_is_unchanged():
    assert inspect.signature(format_error_with_path).parameters.keys() == {"exception"}


def test_valid_requests_compile_and_build_no_validator(client, tenant, monkeypatch):
    create_call(client, tenant)  # the app has started: everything is compiled
    built = []
    monkeypatch.setattr(
        fastjsonschema, "compile", lambda *args, **kwargs: built.append(args) or None
    )
    original = jsonschema.validators.create
    monkeypatch.setattr(
        jsonschema.validators,
        "create",
        lambda *args, **kwargs: built.append(args) or original(*args, **kwargs),
    )
    monkeypatch.setattr(Draft4RequestValidator, "__init__", lambda *a, **k: built.append(a) or None)

    for _ in range(5):
        create_call(client, tenant)

    assert built == []


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


@pytest.mark.parametrize("webhook_allow_http", [False, True])
def test_connexion_finds_the_spec_the_app_loads_valid(webhook_allow_http):
    """The app skips Connexion's check of its packaged spec at every start: it is made here."""
    spec = spec_for(Settings(webhook_allow_http=webhook_allow_http))
    OpenAPISpecification._validate_spec(spec)  # raises InvalidSpecification otherwise


def test_connexion_still_validates_specs_outside_the_apps_loading():
    broken = spec_for(Settings())
    broken["paths"]["/calls/create"]["post"]["responses"] = "not a mapping"
    with pytest.raises(InvalidSpecification):
        Specification.from_dict(broken)
