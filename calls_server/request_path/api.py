"""The request path, compiled once from openapi.yaml.

Connexion reads the spec, resolves each `operationId` to its handler (through the app's
resolver) and each security scheme to its `x-apikeyInfoFunc`/`x-bearerInfoFunc` function,
and serves Swagger UI. What it then does per request (a Starlette router, a request object
and validators built for every call, signatures inspected, bodies parsed twice) costs
several times what the checks themselves do. `CompiledApi` takes the place of Connexion's
routing, security, validation and context middlewares and of its app: Connexion registers
the spec on it like on any of its middlewares (`add_api`), and at start-up it compiles
every operation into one `CompiledOperation` (a route, the security requirements, parameter
parsers and a compiled body validator, the handler and how to call it), so a request runs
only the checks.

It checks what Connexion checked, in the same order (route, security, query/path/header
parameters, media type, body) and fails with the same exceptions and words, which
`errors.py` renders as the envelope. Header parameters (`Idempotency-Key`, `If-Match`),
which Connexion validates but does not pass, reach handlers that take them as snake-case
keywords (`idempotency_key`, `if_match`). A spec construct it does not implement stops the
server at start-up (`UnsupportedSpec`), never passes unchecked.
"""

from __future__ import annotations

import copy
import functools
import inspect
import re
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import anyio.to_thread
import orjson
from connexion.datastructures import MediaTypeDict
from connexion.decorators.parameter import sanitized
from connexion.exceptions import (
    BadRequestProblem,
    ExtraParameterProblem,
    NonConformingResponseBody,
    NonConformingResponseHeaders,
    UnsupportedMediaTypeProblem,
)
from connexion.http_facts import METHODS
from connexion.json_schema import Draft4ResponseValidator
from connexion.lifecycle import ConnexionRequest
from connexion.middleware.abstract import SpecMiddleware
from connexion.operations import AbstractOperation
from connexion.resolver import Resolver
from connexion.security import (
    NO_VALUE,
    SECURITY_HANDLERS,
    AbstractSecurityHandler,
)
from connexion.spec import Specification
from connexion.utils import get_function_from_name, inspect_function_arguments
from jsonschema import Draft4Validator
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from calls_server.domain import key_checks
from calls_server.domain.envelope import unpack
from calls_server.domain.errors import (
    ADMIN_HEADER,
    BOTH_HEADERS,
    INVALID_ADMIN_TOKEN,
    StoreUnavailable,
    Unauthorized,
)
from calls_server.domain.keys import INVALID_PAIR
from calls_server.request_path import strict_json
from calls_server.request_path.compiled_schema import (
    CompiledSchema,
    Definitions,
    RequestDefaultsValidator,
    openapi_components,
    openapi_schema,
)
from calls_server.request_path.connexion_private import REQUEST_CONTEXT
from calls_server.request_path.keys import OPERATION, ORGANIZATION_ID
from calls_server.request_path.validation_errors import describe, parameter_error

Handler = Callable[..., Any]


class UnsupportedSpec(ValueError):
    """openapi.yaml uses something the compiled request path does not implement."""


# Whether the reads a request makes wait for I/O (a database): its handler and security
# then run on a worker thread, never on the event loop. Given by the app.
ReadsWait = Callable[[Scope], bool]


@dataclass(frozen=True)
class OperationHooks:
    """What the app does around each operation once who is calling is known (in the scope,
    `ORGANIZATION_ID`). Given by the app (its sandbox: test clocks, fault rules)."""

    # Called in the context the handler runs in, before it runs.
    entered: Callable[[Scope], None]
    # Awaited before the operation runs: the `send` to answer with, or None when the
    # request was answered (or its connection closed) already. May raise the project's
    # errors, answered as any.
    guard: Callable[[Scope, Send], Awaitable[Send | None]]


class CompiledApi(SpecMiddleware):  # type: ignore[misc]
    """ASGI middleware answering every operation of the specs Connexion registers on it."""

    def __init__(
        self,
        app: ASGIApp,
        reads_wait: ReadsWait = lambda scope: False,
        hooks: OperationHooks | None = None,
    ) -> None:
        self.app = app  # lifespan events go on; every HTTP request is answered here
        self.routes = Routes()
        self.reads_wait = reads_wait
        self.hooks = hooks

    def add_api(self, specification: Specification, **options: Any) -> None:
        """Compile every operation of `specification` (called by Connexion at start-up)."""
        for name in (
            "pythonic_params",
            "auth_all_paths",
            "resolver_error",
            "validator_map",
            "uri_parser_class",
        ):
            if options.get(name):
                raise UnsupportedSpec(f"The compiled request path does not support {name}")
        base_path = options.get("base_path") or specification.base_path
        resolver = options.get("resolver") or Resolver()
        security = Security.compiler(options.get("security_map") or {})
        written = WrittenSpec(specification.raw)
        for path, item in specification["paths"].items():
            for method in item:
                if method not in METHODS:
                    continue
                operation = specification.operation_cls.from_spec(
                    specification, path=path, method=method, resolver=resolver
                )
                compiled = CompiledOperation.compile(
                    operation,
                    security(operation),
                    written.operation(path, method),
                    strict=bool(options.get("strict_validation")),
                    validate_responses=bool(options.get("validate_responses")),
                )
                for served in served_at(base_path, path, item):
                    self.routes.add(served, method.upper(), compiled)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        operation, path_values = self.routes.find(scope["method"], scope["path"])
        scope[OPERATION] = operation.operation_id  # for metrics and traces
        await operation(
            scope, receive, send, path_values, off_loop=self.reads_wait(scope), hooks=self.hooks
        )


class WrittenSpec:
    """The spec as written (`$ref`s kept), where the compiled schemas come from: code for a
    component is generated once and shared, where the resolved schemas repeat it inline."""

    def __init__(self, raw: dict[str, Any]) -> None:
        self.raw = raw
        self.components = openapi_components(raw.get("components", {}))

    def operation(self, path: str, method: str) -> WrittenOperation:
        """One operation's parameters, body and responses, as written."""
        item = self.raw["paths"][path]
        written = item[method]
        parameters = [self._target(p) for p in item.get("parameters", [])]
        parameters += [self._target(p) for p in written.get("parameters", [])]
        return WrittenOperation(
            self,
            str(written.get("operationId", "")),
            {(p["in"], p["name"]): p for p in parameters},
            self._target(written.get("requestBody", {})),
            {str(k): self._target(v) for k, v in written.get("responses", {}).items()},
        )

    def definitions(self, schema: dict[str, Any]) -> Definitions:
        """A written schema, ready to compile."""
        return Definitions(openapi_schema(schema, self.raw.get("components", {})), self.components)

    def _target(self, node: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in node:
            target: Any = self.raw
            for part in node["$ref"].removeprefix("#/").split("/"):
                target = target[part]
            node = target
        return node


@dataclass(frozen=True)
class WrittenOperation:
    """An operation's parts as written, by the keys Connexion's resolved ones have."""

    spec: WrittenSpec
    operation_id: str  # as the spec names it (Connexion's is the resolved handler's)
    parameters: dict[tuple[str, str], dict[str, Any]]
    body: dict[str, Any]
    responses: dict[str, dict[str, Any]]

    def parameter(self, location: str, name: str) -> Definitions:
        """The schema of a parameter."""
        return self.spec.definitions(self.parameters[(location, name)].get("schema", {}))

    def body_schema(self, media_type: str) -> Definitions:
        """The schema of the request body of `media_type`."""
        return self.spec.definitions(self.body["content"][media_type].get("schema", {}))

    def response_schema(self, status: str, media_type: str) -> Definitions | None:
        """The schema of a response (of `status`, else the default one), if it has one."""
        response = self.responses.get(status) or self.responses.get("default") or {}
        content = response.get("content", {}).get(media_type)
        return self.spec.definitions(content["schema"]) if content and "schema" in content else None


def served_at(base_path: str, path: str, item: Mapping[str, Any]) -> list[str]:
    """Where the spec's `path` is served: under the API's base path, and first under the
    base of the path's own first server, if it has one (upstream mounts batch calls at
    `/batch-call`, outside `/api`; clients generated against `/api` reach them there too)."""
    servers = item.get("servers")
    if not servers:
        return [base_path + path]
    own = urllib.parse.urlsplit(servers[0]["url"]).path.rstrip("/")
    return [own + path] if own == base_path else [own + path, base_path + path]


class Routes:
    """Paths to operations: literal paths first (`/calls/create` before `/calls/{call_id}`),
    then templates in the spec's order. A 405 carries the path's methods in `Allow`;
    `errors.py` renders the 404 and 405 in the envelope."""

    def __init__(self) -> None:
        self.literal: dict[str, dict[str, CompiledOperation]] = {}
        self.templates: list[tuple[re.Pattern[str], list[str], dict[str, CompiledOperation]]] = []

    def add(self, path: str, method: str, operation: CompiledOperation) -> None:
        """Route `method path` (an OpenAPI path template) to `operation`."""
        names = re.findall(r"{([^}/]+)}", path)
        if not names:
            methods = self.literal.setdefault(path, {})
        else:
            pattern = re.compile(re.sub(r"\\{[^}/]+\\}", "([^/]+)", re.escape(path)))
            same = (m for known, _, m in self.templates if known.pattern == pattern.pattern)
            methods = next(same, {})
            if not methods:
                self.templates.append((pattern, names, methods))
        methods[method] = operation
        if method == "GET":
            methods.setdefault("HEAD", operation)

    def find(self, method: str, path: str) -> tuple[CompiledOperation, dict[str, str]]:
        """The operation answering `method path` and the path's parameter values; 404 when
        no operation has the path, 405 when none has the method."""
        methods = self.literal.get(path)
        values: dict[str, str] = {}
        if methods is None:
            for pattern, names, candidates in self.templates:
                match = pattern.fullmatch(path)
                if match is None:
                    continue
                found = candidates.get(method)
                if found is not None:
                    return found, dict(zip(names, match.groups(), strict=True))
                methods = methods or candidates  # the path exists: 405, not 404
            if methods is None:
                raise HTTPException(status_code=404)
        operation = methods.get(method)
        if operation is None:
            raise HTTPException(status_code=405, headers={"Allow": ", ".join(sorted(methods))})
        return operation, values


# -- security ----------------------------------------------------------------------------

# A scheme's check: the request and its headers (lower-case name → value, as sent) → who is
# calling, or NO_VALUE when its credential is absent. Synchronous: a security function
# that reads the store is marked @reads, and runs on a worker thread when reads wait.
Headers = dict[bytes, bytes]
SchemeCheck = Callable[[ConnexionRequest, Headers], Any]


@dataclass(frozen=True)
class Security:
    """An operation's security requirements: any one of them, each with all its schemes."""

    requirements: list[dict[str, SchemeCheck]]
    reads: bool  # some scheme's function reads the store
    # What a request sending no credential at all is told it must send.
    missing: str

    @staticmethod
    def compiler(
        security_map: Mapping[str, type[AbstractSecurityHandler]],
    ) -> Callable[[AbstractOperation], Security | None]:
        """Compiles operations' security, resolving functions through `security_map`."""
        handlers = {**SECURITY_HANDLERS, **security_map}

        def compile_security(operation: AbstractOperation) -> Security | None:
            if not operation.security:
                return None
            requirements = [
                {
                    name: _scheme_check(operation.security_schemes[name], scopes, handlers)
                    for name, scopes in requirement.items()
                }
                for requirement in operation.security
            ]
            reads = any(
                getattr(check, "reads", False) for r in requirements for check in r.values()
            )
            schemes = [operation.security_schemes[n] for r in operation.security for n in r]
            admin_only = all(scheme["type"] == "http" for scheme in schemes)
            return Security(requirements, reads, ADMIN_HEADER if admin_only else BOTH_HEADERS)

        return compile_security

    def verify(self, request: ConnexionRequest, headers: Headers) -> Any:
        """Who is calling (the token info), as Connexion's `verify_security` decides it."""
        errors: list[Exception] = []
        for requirement in self.requirements:
            try:
                found = _satisfied(requirement, request, headers)
            except key_checks.ReadNeeded:
                raise
            except Exception as error:  # another requirement may still be met
                errors.append(error)
                continue
            if found is not NO_VALUE:
                return found
        if errors:
            raise _most_specific(errors)
        raise Unauthorized(self.missing)


def _most_specific(errors: list[Exception]) -> Exception:
    """Of the refusals of each requirement, the one to answer: a 403 (credentials valid but
    not enough), then a 401 (none valid), else the lowest status."""
    by_status = {getattr(error, "status_code", 600): error for error in errors}
    for status in (403, 401):
        if status in by_status:
            return by_status[status]
    return by_status[min(by_status)]


def _satisfied(
    requirement: dict[str, SchemeCheck], request: ConnexionRequest, headers: Headers
) -> Any:
    if not requirement:
        return {}
    found = {}
    for name, check in requirement.items():
        info = check(request, headers)
        if info is NO_VALUE:
            return NO_VALUE
        found[name] = info
    return found if len(found) > 1 else next(iter(found.values()))


def _scheme_check(
    scheme: dict[str, Any],
    scopes: list[str],
    handlers: Mapping[str, type[AbstractSecurityHandler]],
) -> SchemeCheck:
    kind = scheme["type"]
    if kind == "apiKey" and scheme.get("in") == "header":
        handler, header, invalid = handlers["apiKey"], scheme["name"], INVALID_PAIR
    elif kind == "http" and scheme.get("scheme", "").lower() == "bearer":
        handler, header, invalid = handlers["bearer"], "Authorization", INVALID_ADMIN_TOKEN
    else:
        raise UnsupportedSpec(f"Security scheme {scheme} is not supported")
    name = scheme.get(handler.security_definition_key)
    if not name:
        raise UnsupportedSpec(
            f"Security scheme {scheme} names no {handler.security_definition_key}"
        )
    function = get_function_from_name(name)
    arguments, any_keyword = inspect_function_arguments(function)
    keywords = {
        keyword: any_keyword or keyword in arguments for keyword in ("required_scopes", "request")
    }
    bearer = kind == "http"
    raw_name = header.lower().encode("latin-1")
    if inspect.iscoroutinefunction(function):
        raise UnsupportedSpec(f"Security function {name} is async: the compiled path calls it")

    def check(request: ConnexionRequest, headers: Headers) -> Any:
        raw = headers.get(raw_name)
        if raw is None:
            return NO_VALUE
        credential = raw.decode("latin-1")
        if bearer:
            kind, credential = AbstractSecurityHandler.get_auth_header_value(request)
            if kind != "bearer":
                return NO_VALUE
        options: dict[str, Any] = {}
        if keywords["required_scopes"]:
            options["required_scopes"] = scopes
        if keywords["request"]:
            options["request"] = request
        found = function(credential, **options)
        if found is None:
            raise Unauthorized(invalid)
        return found

    check.reads = getattr(function, "reads", False)  # type: ignore[attr-defined]
    return check


# -- parameters ----------------------------------------------------------------------------

_TYPES: dict[str, Callable[[Any], Any]] = {
    "integer": int,
    "number": float,
    "boolean": lambda text: _boolean(text),
}


def _boolean(text: str) -> bool:
    if text.lower() == "true":
        return True
    if text.lower() == "false":
        return False
    raise ValueError("Invalid boolean value")


def _is_null(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip() in ("null", "None"))


@dataclass(frozen=True)
class Parameter:
    """A path, query or header parameter: how its text becomes a value, and its schema."""

    name: str  # as in the spec
    argument: str  # the handler's keyword for it
    location: str  # "path", "query" or "header"
    definition: dict[str, Any]
    schema: CompiledSchema
    array: bool
    nullable: bool
    convert: Callable[[Any], Any] | None  # text → the schema's type (or of its items)

    @classmethod
    def compile(cls, definition: dict[str, Any], written: WrittenOperation) -> Parameter:
        """Refuses styles other than each location's default (`simple`, `form` exploded)."""
        location, schema = definition["in"], definition.get("schema", {})
        default_style = {"path": "simple", "query": "form", "header": "simple"}.get(location)
        if default_style is None or definition.get("style", default_style) != default_style:
            raise UnsupportedSpec(f"Parameter {definition['name']} ({location}) is not supported")
        array = schema.get("type") == "array"
        if (array and (location != "query" or not definition.get("explode", True))) or (
            schema.get("type") == "object"
        ):
            raise UnsupportedSpec(
                f"Parameter {definition['name']}: arrays and objects only as form"
            )
        kind = schema["items"].get("type") if array else schema.get("type")
        return cls(
            name=definition["name"],
            # Headers as snake case (`Idempotency-Key` -> `idempotency_key`).
            argument=(
                definition["name"].lower().replace("-", "_")
                if location == "header"
                else sanitized(definition["name"])
            ),
            location=location,
            definition=definition,
            schema=CompiledSchema(
                schema, Draft4Validator, definitions=written.parameter(location, definition["name"])
            ),
            array=array,
            nullable=bool(schema.get("nullable") or definition.get("x-nullable")),
            convert=_TYPES.get(kind or ""),
        )

    @functools.cached_property
    def raw_name(self) -> bytes:
        """The name as a header's name arrives in the ASGI scope."""
        return self.name.lower().encode("latin-1")

    def value(self, texts: list[str] | None) -> Any:
        """The value sent (None when absent), checked; converted as Connexion converts it."""
        if texts is None:
            value = None
        elif self.array:
            value = [self._converted(text) for text in texts]
        elif self.nullable and _is_null(texts[-1]):
            return None
        else:
            value = self._converted(texts[-1])
        if value is None:
            if self.definition.get("required"):
                raise BadRequestProblem(detail=f"Missing {self.location} parameter '{self.name}'")
            return None
        if self.schema.first_error(value) is not None:
            error = parameter_error(self.location, value, self.definition)
            if error:
                raise BadRequestProblem(detail=error)
        return value

    def _converted(self, text: str) -> Any:
        if self.convert is None:
            return text
        try:
            return self.convert(text)
        except ValueError:
            return text  # left for validation to refuse, in its words


# -- bodies --------------------------------------------------------------------------------


@dataclass(frozen=True)
class JsonBody:
    """An operation's JSON request body: its media types, schema and default."""

    argument: str
    consumes: list[str]
    media_types: frozenset[str] | MediaTypeDict  # a set when no media type has wildcards
    schema: CompiledSchema
    required: bool
    nullable: bool

    @classmethod
    def compile(cls, operation: AbstractOperation, written: WrittenOperation) -> JsonBody | None:
        """None when the operation takes no body; refuses bodies that are not JSON."""
        consumes = list(operation.consumes)
        if not operation.request_body:
            return None
        for media_type in consumes:
            if not re.fullmatch(r"[^/]+/([^+;]+\+)?json", media_type.lower()):
                raise UnsupportedSpec(
                    f"{operation.method.upper()} {operation.path}: bodies of {media_type}"
                )
        schema = operation.body_schema(consumes[0])
        definition = operation.body_definition(consumes[0])
        return cls(
            argument=sanitized(operation.body_name(consumes[0])),
            consumes=consumes,
            media_types=(
                MediaTypeDict([(c.lower(), None) for c in consumes])
                if any("*" in c for c in consumes)
                else frozenset(c.lower() for c in consumes)
            ),
            schema=CompiledSchema(
                schema,
                RequestDefaultsValidator,
                definitions=written.body_schema(consumes[0]),
                defaults=True,
            ),
            required=bool(operation.request_body.get("required", False)),
            nullable=bool(definition.get("nullable") or definition.get("x-nullable")),
        )

    async def read(self, headers: Headers, receive: Receive) -> Any:
        """The body, parsed strictly and checked, with the schema's defaults filled in."""
        content_type = headers.get(b"content-type")
        mime_type = _mime_type(content_type.decode("latin-1") if content_type else None)
        mime_type = mime_type or self.consumes[0]
        curl_form = mime_type.lower() == CURL_FORM
        if mime_type.lower() not in self.media_types and not curl_form:
            raise UnsupportedMediaTypeProblem(
                detail=f"Invalid Content-type ({mime_type}), expected {self.consumes}"
            )
        raw = await _read_all(receive)
        if curl_form and not _json_object_text(raw):
            raise UnsupportedMediaTypeProblem(
                detail=f"Invalid Content-type ({mime_type}), expected {self.consumes}"
            )
        if raw:
            try:
                body = strict_json.loads(raw)
            except strict_json.InvalidJson as e:
                raise BadRequestProblem(detail=str(e)) from None
        else:
            body = copy.deepcopy(self.schema.schema.get("default"))
            if body is None and self.required:
                raise BadRequestProblem(detail="RequestBody is required")
        if body is None:
            if self.nullable:
                return None
            raise BadRequestProblem(detail="Request body must not be empty")
        error = self.schema.first_error(body)
        if error is not None:
            raise BadRequestProblem(detail=describe(error))
        return body


# What `curl -d '{...}'` labels a body it was given without a Content-Type, as the upstream
# documentation's examples send it: read as JSON when its text is a JSON object.
CURL_FORM = "application/x-www-form-urlencoded"


def _json_object_text(raw: bytes) -> bool:
    """Whether `raw` looks like a JSON object (a form's `a=1&b=2` never starts with `{`);
    the JSON parser and the schema judge the rest."""
    return raw.lstrip(b" \t\r\n").startswith(b"{")


def _mime_type(content_type: str | None) -> str | None:
    if not content_type:
        return None
    return content_type.split(";", 1)[0].strip() or None


async def _read_all(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _settled_first(carried: key_checks.Carrying, handler: Callable[[], Any]) -> Any:
    """`handler`'s result, once the request's key check is settled (on a worker thread)."""
    carried.settle()
    return handler()


def _organization_id(token_info: Any) -> str | None:
    """The organization a token info names (the key pair's scheme's, when several schemes
    were required together), if any: the admin token names none."""
    if "organization_id" in token_info:
        found: str = token_info["organization_id"]
        return found
    for info in token_info.values():
        if isinstance(info, dict) and "organization_id" in info:
            found = info["organization_id"]
            return found
    return None


# -- operations ----------------------------------------------------------------------------


@dataclass(frozen=True)
class CompiledOperation:
    """One operation: its checks, its handler and how its answers are written."""

    operation: AbstractOperation
    operation_id: str  # the spec's, left in the scope for metrics and traces
    handler: Handler
    is_async: bool
    reads: bool  # marked @reads (handlers/scope.py)
    security: Security | None
    query: list[Parameter]
    path: list[Parameter]
    header: list[Parameter]
    body: JsonBody | None
    defaults: dict[str, Any]  # query parameters' defaults, for when they are absent
    arguments: frozenset[str] | None  # the handler's keywords; None when it takes **kwargs
    strict: bool
    responses: ResponseCheck | None

    @classmethod
    def compile(
        cls,
        operation: AbstractOperation,
        security: Security | None,
        written: WrittenOperation,
        *,
        strict: bool,
        validate_responses: bool,
    ) -> CompiledOperation:
        """`operation` compiled, or UnsupportedSpec for what the compiled path cannot check."""
        definitions = [Parameter.compile(p, written) for p in operation.parameters]
        for definition in definitions:
            if definition.location not in ("path", "query", "header"):
                raise UnsupportedSpec(f"{definition.location} parameters are not supported")
        handler = operation.function
        arguments, any_keyword = inspect_function_arguments(handler)
        query = [p for p in definitions if p.location == "query"]
        return cls(
            operation=operation,
            operation_id=written.operation_id or operation.operation_id,
            handler=handler,
            is_async=inspect.iscoroutinefunction(handler),
            reads=getattr(handler, "reads", False),
            security=security,
            query=query,
            path=[p for p in definitions if p.location == "path"],
            header=[p for p in definitions if p.location == "header"],
            body=JsonBody.compile(operation, written),
            defaults={
                p.argument: p.definition["schema"]["default"]
                for p in query
                if "default" in p.definition.get("schema", {})
            },
            arguments=None if any_keyword else frozenset(arguments),
            strict=strict,
            responses=ResponseCheck(operation, written) if validate_responses else None,
        )

    async def __call__(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        path_values: dict[str, str],
        off_loop: bool = False,
        hooks: OperationHooks | None = None,
    ) -> None:
        """Answer the request; `off_loop`: its reads wait for a database (`ReadsWait`)."""
        request = ConnexionRequest(scope, receive)
        headers: Headers = dict(scope["headers"])
        if off_loop and self.is_one_read and hooks is None:
            # Who is calling and the read, on one worker thread: one hop, not two.
            work = functools.partial(self._answer, request, headers, scope, path_values, receive)
            await self._respond(await anyio.to_thread.run_sync(work), send)
            return
        context = {}
        carried: key_checks.Carrying | None = None
        if self.security is not None:
            if off_loop and self.security.reads:
                token_info, carried = await self._verified_off_loop(request, headers, hooks)
            else:
                token_info = self.security.verify(request, headers)
            context = self._context(token_info, scope)
        if hooks is not None:
            guarded = await hooks.guard(scope, send)
            if guarded is None:
                return
            send = guarded
        try:
            kwargs = self._parameters(scope, path_values, headers)
            if self.body is not None:
                kwargs[self.body.argument] = await self.body.read(headers, receive)
        except Exception:
            if carried is not None:  # a refused key is answered first, as it always was
                await anyio.to_thread.run_sync(carried.settle)
            raise
        self._enter(context, kwargs, scope, receive, hooks)
        if self.is_async:
            if carried is None:
                result = await self.handler(**kwargs)
            else:
                result = await self._awaited_carrying(carried, kwargs)
        elif self.reads and not off_loop:
            result = self.handler(**kwargs)  # reads from memory: quicker than a thread hop
        else:
            work = functools.partial(self.handler, **kwargs)
            if carried is not None:
                work = functools.partial(_settled_first, carried, work)
            result = await anyio.to_thread.run_sync(work)
        await self._respond(result, send)

    async def _verified_off_loop(
        self, request: ConnexionRequest, headers: Headers, hooks: OperationHooks | None
    ) -> tuple[Any, key_checks.Carrying | None]:
        """Who is calling, when the security function reads a store whose reads wait: on
        the event loop if the pair verifies against the key's record this process read
        before (its check against the database then owed, settled on the handler's worker
        thread before the handler runs: one hop, not two), else on a worker thread."""
        assert self.security is not None
        if hooks is None:
            with key_checks.carrying(on_loop=True) as carried:
                try:
                    token_info = self.security.verify(request, headers)
                except key_checks.ReadNeeded:
                    token_info = None
            if token_info is not None:
                carried.on_loop = False  # settled by a worker thread from now on
                return token_info, carried
        call = functools.partial(self.security.verify, request, headers)
        return await anyio.to_thread.run_sync(call), None

    async def _awaited_carrying(self, carried: key_checks.Carrying, kwargs: dict[str, Any]) -> Any:
        """An async handler's result, its key check settled by the store before the
        handler's first write (on the worker thread it writes from), or else after it,
        before its answer or its error is given."""
        with key_checks.carrying(slot=carried):
            try:
                result = await self.handler(**kwargs)
            except StoreUnavailable:
                raise  # a 503 says nothing of the key; the check would wait for it again
            except Exception:
                await anyio.to_thread.run_sync(carried.settle)
                raise
        if carried.check is not None:
            await anyio.to_thread.run_sync(carried.settle)
        return result

    @functools.cached_property
    def is_one_read(self) -> bool:
        """A handler that only reads and a request without a body: all of it can run on one
        worker thread."""
        return self.reads and not self.is_async and self.body is None

    def _answer(
        self,
        request: ConnexionRequest,
        headers: Headers,
        scope: Scope,
        path_values: dict[str, str],
        receive: Receive,
    ) -> Any:
        """Verify who is calling and run the handler (on a worker thread). The key pair's
        check against the database may be carried by the handler's read (one round trip,
        not two: domain/key_checks.py); if no read carried it, it is done after the handler,
        before its answer or its error is given (a handler that only reads cannot tell)."""
        with key_checks.carrying() as carried:
            context = (
                {}
                if self.security is None
                else self._context(self.security.verify(request, headers), scope)
            )
            kwargs = self._parameters(scope, path_values, headers)
            self._enter(context, kwargs, scope, receive, None)
            try:
                result = self.handler(**kwargs)
            except StoreUnavailable:
                raise  # a 503 says nothing of the key; the check would wait for it again
            except Exception:
                carried.settle()  # a refused key is answered first, as before the read
                raise
            carried.settle()
        return result

    @staticmethod
    def _context(token_info: Any, scope: Scope) -> dict[str, Any]:
        scope[ORGANIZATION_ID] = _organization_id(token_info)  # for the access line
        return {"user": token_info.get("sub", token_info.get("uid")), "token_info": token_info}

    def _enter(
        self,
        context: dict[str, Any],
        kwargs: dict[str, Any],
        scope: Scope,
        receive: Receive,
        hooks: OperationHooks | None,
    ) -> None:
        """Hand the handler who is calling; set what ContextMiddleware sets, so that
        `connexion.request` and `.context` work in handlers; tell the app's hooks."""
        if hooks is not None:
            hooks.entered(scope)
        if "token_info" in context and self._takes("token_info"):
            kwargs["token_info"] = context["token_info"]
        for variable, value in zip(
            REQUEST_CONTEXT, (context, self.operation, receive, scope), strict=True
        ):
            variable.set(value)

    def _takes(self, argument: str) -> bool:
        return self.arguments is None or argument in self.arguments

    def _parameters(
        self, scope: Scope, path_values: dict[str, str], headers: Headers
    ) -> dict[str, Any]:
        sent: dict[str, list[str]] = {}
        if scope["query_string"]:
            for name, text in parse_qsl(scope["query_string"].decode("latin-1"), True):
                sent.setdefault(name, []).append(text)
        if self.strict and sent:
            extra = [name for name in sent if name not in self._query_names]
            if extra:
                raise ExtraParameterProblem(param_type="query", extra_params=extra)
        kwargs: dict[str, Any] = {}
        for parameter in self.query:
            texts = sent.get(parameter.name)
            value = parameter.value(texts)
            if texts is not None and self._takes(parameter.argument):
                kwargs[parameter.argument] = value
        for parameter in self.path:
            kwargs[parameter.argument] = parameter.value([path_values[parameter.name]])
        for parameter in self.header:
            raw = headers.get(parameter.raw_name)
            value = parameter.value(None if raw is None else [raw.decode("latin-1")])
            if raw is not None and self._takes(parameter.argument):
                kwargs[parameter.argument] = value
        for name, default in self.defaults.items():
            if name not in kwargs and self._takes(name):
                kwargs[name] = copy.deepcopy(default)
        return kwargs

    @functools.cached_property
    def _query_names(self) -> frozenset[str]:
        return frozenset(p.name for p in self.query)

    async def _respond(self, result: Any, send: Send) -> None:
        body, status, headers = unpack(result)
        if isinstance(body, bytes | str):
            content = body.encode() if isinstance(body, str) else body
            content_type = headers.pop("Content-Type", None) or self.operation.produces[0]
        else:
            content = orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS)
            content_type = "application/json"
        if self.responses is not None:
            self.responses.check(status, content_type, body)
        raw_headers = [
            (b"content-type", content_type.encode("latin-1")),
            (b"content-length", str(len(content)).encode()),
            *((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()),
        ]
        await send({"type": "http.response.start", "status": status, "headers": raw_headers})
        await send({"type": "http.response.body", "body": content})


class ResponseCheck:
    """The test switch `validate_responses`: each answer's media type and body against the
    spec, as Connexion's response validation middleware checks them (500 when one breaks)."""

    def __init__(self, operation: AbstractOperation, written: WrittenOperation) -> None:
        self.operation = operation
        self.written = written
        self.produces = MediaTypeDict([(p.lower(), None) for p in operation.produces])
        self.schemas: dict[tuple[int, str], CompiledSchema | None] = {}

    def check(self, status: int, content_type: str, body: Any) -> None:
        """Raises NonConformingResponse* when the answer breaks the spec."""
        mime_type = content_type.split(";", 1)[0]
        if status < 400 and self.produces and mime_type.lower() not in self.produces:
            raise NonConformingResponseHeaders(
                detail=f"Invalid Response Content-type ({mime_type}), "
                f"expected {self.operation.produces}"
            )
        if not re.fullmatch(r"[^/]+/([^+;]+\+)?json", mime_type):
            return
        key = (status, mime_type)
        if key not in self.schemas:
            schema = self.operation.response_schema(str(status), mime_type)
            definitions = self.written.response_schema(str(status), mime_type)
            self.schemas[key] = (
                CompiledSchema(schema, Draft4ResponseValidator, definitions=definitions)
                if schema
                else None
            )
        compiled = self.schemas[key]
        error = compiled.first_error(orjson.loads(orjson.dumps(body))) if compiled else None
        if error is not None:
            raise NonConformingResponseBody(
                detail=f"Response body does not conform to specification. {error.message}"
            )
