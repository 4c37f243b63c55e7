"""Every private (or protected) name of Connexion the request path relies on, in one place.

Connexion is pinned (pyproject.toml); `tests/unit/test_connexion_internals.py` checks each
entry of `RELIED_ON` against the installed Connexion, so an upgrade that changes one fails
there, naming it, instead of misbehaving at run time.
"""

from __future__ import annotations

from connexion.context import _context, _operation, _receive, _scope
from connexion.json_schema import Draft4RequestValidator
from connexion.middleware.abstract import SpecMiddleware
from connexion.security import AbstractSecurityHandler
from connexion.spec import Specification
from connexion.validators import ParameterValidator

# The context variables Connexion's context middleware sets for each request, which
# `connexion.request` and `connexion.context` read in handlers: the compiled path sets them.
# handlers/scope.py reads `_scope` too (`services()`; handlers may not import this module).
REQUEST_CONTEXT = (_context, _operation, _receive, _scope)

# (owner, name) -> the shape the request path was written against (connexion 3.3.0): a
# signature, or `property`, `dict`, `annotation`.
RELIED_ON = {
    (AbstractSecurityHandler, "get_auth_header_value"): "(request)",
    (AbstractSecurityHandler, "security_definition_key"): "annotation",
    (SpecMiddleware, "add_api"): "(self, specification, **kwargs)",
    (Specification, "raw"): "property",
    (ParameterValidator, "validate_parameter"): "(parameter_type, value, param, param_name=None)",
    (Draft4RequestValidator, "VALIDATORS"): "dict",
}
