"""The contract: openapi.yaml as this server runs it and as it publishes it.

The spec travels inside the package (in the repository, a link to ../openapi.yaml). What a
server runs and serves follows its settings where they change the rules (plain-HTTP
webhook URLs), so that the spec a client sees always says what this server does. It is
published as written, with its `$ref`s (generators name types after them), without the
extensions that only tell Connexion where the security functions live.
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from calls_server.settings import Settings

SPEC_PATH = Path(__file__).resolve().parent / "openapi.yaml"
# Extensions for Connexion only: Python paths of this server's internals.
_INTERNAL = ("x-apikeyInfoFunc", "x-bearerInfoFunc")
_HTTPS_ONLY = "^https://[!-~]+$"
_HTTP_TOO = "^https?://[!-~]+$"


# libyaml's parser and emitter where PyYAML was built with them (the wheels are): about
# 25 times faster than the pure-Python ones on a spec of this size.
_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_Dumper: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


@functools.cache
def _parsed() -> dict[str, Any]:
    with open(SPEC_PATH, encoding="utf-8") as f:
        spec: dict[str, Any] = yaml.load(f, Loader=_Loader)
    return spec


def load_spec() -> dict[str, Any]:
    """openapi.yaml, parsed, as written: parsed once per process, a fresh copy each call
    (callers change theirs: Connexion fills in defaults, `spec_for` adapts rules)."""
    return copy.deepcopy(_parsed())


def spec_for(settings: Settings) -> dict[str, Any]:
    """The spec a server with `settings` runs: webhook URLs may be http:// where allowed."""
    spec = load_spec()
    if settings.webhook_allow_http:
        schemas = spec["components"]["schemas"]
        for name in ("CreateWebhookRequest", "UpdateWebhookRequest"):
            url = schemas[name]["properties"]["url"]
            assert url["pattern"] == _HTTPS_ONLY, "the webhook URL rule changed in openapi.yaml"
            url["pattern"] = _HTTP_TOO
            url["description"] = "HTTPS, or plain HTTP (this server allows it)"
    return spec


def public(spec: dict[str, Any]) -> dict[str, Any]:
    """`spec` as others may see it: as written, minus the extensions naming internals."""
    shown = copy.deepcopy(spec)
    for scheme in shown["components"]["securitySchemes"].values():
        for name in _INTERNAL:
            scheme.pop(name, None)
    return shown


def published(spec: dict[str, Any]) -> tuple[bytes, Callable[[], bytes]]:
    """`spec` as served at openapi.json, and a function making it as served at openapi.yaml
    (as written, minus internals). The YAML is made when first asked for: a tenth of a
    second of every start otherwise, for a document most servers are never asked for."""
    public_spec = public(spec)
    as_json = json.dumps(public_spec, indent=2).encode()

    @functools.cache
    def as_yaml() -> bytes:
        text = yaml.dump(public_spec, Dumper=_Dumper, sort_keys=False, allow_unicode=True)
        return text.encode()

    return as_json, as_yaml


def cors_headers(spec: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """(what a browser on an allowed origin may send, what its scripts may read): the
    credentials' headers, every header parameter and `Content-Type`, and every response
    header the spec declares; both with `X-Request-ID`, which every request and answer may
    carry. Derived from the spec, so a header an operation gains reaches browsers too."""
    sent = {"Authorization", "Content-Type", "X-Request-ID"}
    read = {"X-Request-ID"}
    components = spec["components"]
    for scheme in components["securitySchemes"].values():
        if scheme.get("in") == "header":
            sent.add(scheme["name"])
    for item in spec["paths"].values():
        for operation in item.values():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            for parameter in operation.get("parameters", []):
                parameter = _target(spec, parameter)
                if parameter.get("in") == "header":
                    sent.add(parameter["name"])
            for response in operation["responses"].values():
                read.update(_target(spec, response).get("headers", {}))
    return sorted(sent), sorted(read)


def _target(spec: Mapping[str, Any], node: Mapping[str, Any]) -> Mapping[str, Any]:
    """`node`, or what its `$ref` points at."""
    while "$ref" in node:
        found: Any = spec
        for part in node["$ref"].removeprefix("#/").split("/"):
            found = found[part]
        node = found
    return node
