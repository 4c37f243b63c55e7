"""Clients generated from the contract, with the generators' default settings, work.

People generate SDKs from openapi.yaml (or from the spec the server serves) and expect
them to build without warnings and to parse every response strictly. These tests do what
such a user does: generate a Python client with openapi-python-client and use it against a
real server for the main flows, and generate TypeScript types with openapi-typescript and
compile code using them with `tsc --strict` (where Node is present).
"""

from __future__ import annotations

import importlib
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from calls_server.contract import SPEC_PATH, load_spec
from tests.conftest import SEED_REQUEST

pytestmark = pytest.mark.generators

GENERATOR = Path(sys.executable).with_name("openapi-python-client")
OPENAPI_TYPESCRIPT = "openapi-typescript@7.13.0"
TYPESCRIPT = "typescript@5.9.3"
SEED = SEED_REQUEST


def generate_python(source: list[str], out: Path) -> subprocess.CompletedProcess[str]:
    """Run openapi-python-client with its default configuration."""
    environ = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"}
    return subprocess.run(
        [str(GENERATOR), "generate", *source, "--output-path", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env=environ,
    )


def assert_clean(result: subprocess.CompletedProcess[str]) -> None:
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "warning" not in output.lower(), output


@pytest.fixture
def key_headers(server) -> dict[str, str]:
    """A key pair of a new organization: each test starts with no calls."""
    return server.new_key_headers()


@pytest.fixture(params=["spec file", "served spec"])
def client_package(request, server, tmp_path) -> Any:
    """The Python client generated from openapi.yaml, or from the spec the server serves."""
    if request.param == "spec file":
        source = ["--path", str(SPEC_PATH)]
    else:
        source = ["--url", f"{server.base_url}/api/openapi.json"]
    out = tmp_path / "client"
    assert_clean(generate_python(source, out))
    (package,) = [p for p in out.iterdir() if (p / "client.py").exists()]
    sys.path.insert(0, str(out))
    try:
        yield importlib.import_module(package.name)
    finally:
        sys.path.remove(str(out))
        for name in [m for m in sys.modules if m.split(".")[0] == package.name]:
            del sys.modules[name]


def endpoint(package: Any, method: str, path: str) -> Any:
    """The generated module of the operation at `method path`, found through its operationId."""
    operation = load_spec()["paths"][path][method]
    op_id = operation["operationId"]
    module = re.sub(r"[^a-z0-9]+", "_", re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", op_id).lower())
    tag = re.sub(r"[^a-z0-9]+", "_", operation["tags"][0].lower())
    return importlib.import_module(f"{package.__name__}.api.{tag}.{module}")


def test_the_python_client_generates_from_the_spec_file_without_warnings(tmp_path):
    assert_clean(generate_python(["--path", str(SPEC_PATH)], tmp_path / "client"))


def test_the_python_client_generates_from_the_served_spec_without_warnings(server, tmp_path):
    url = f"{server.base_url}/api/openapi.json"
    assert_clean(generate_python(["--url", url], tmp_path / "client"))


def test_the_generated_python_client_runs_the_main_flows(client_package, server, key_headers):
    models = importlib.import_module(f"{client_package.__name__}.models")
    client = client_package.Client(
        base_url=f"{server.base_url}/api", headers=key_headers, raise_on_unexpected_status=True
    )
    with client:
        run_main_flows(client_package, models, client)


def run_main_flows(client_package: Any, models: Any, client: Any) -> None:
    """Create, read, list, update, schedule and delete calls, each response parsed strictly."""

    def call(method: str, path: str, **kwargs: Any) -> Any:
        response = endpoint(client_package, method, path).sync_detailed(client=client, **kwargs)
        assert response.status_code == 200, response.content
        assert response.parsed is not None, response.content
        return response.parsed

    created = call("post", "/calls/create", body=models.CreateCallRequest.from_dict(SEED)).data
    call_id = created.call.call_id
    assert str(created.call.call_status) == "registered"

    web_body = models.CreateWebCallRequest.from_dict({"agent_id": "agent-123"})
    web = call("post", "/calls/create-web-call", body=web_body).data
    assert web.call.direction is None  # null is part of the enum

    later = int(time.time()) + 3600
    phone = call(
        "post",
        "/calls/create-phone-call",
        body=models.CreatePhoneCallRequest.from_dict(
            {
                "from_number": "+14157774444",
                "to_number": "+12137774445",
                "override_agent_id": "agent-123",
                "scheduled_timestamp": later,
            }
        ),
    ).data
    assert str(phone.status) == "call_scheduled"

    got = call("get", "/calls/{call_id}", call_id=web.call.call_id).data
    assert got.call_id == web.call.call_id

    page = call("get", "/calls").data  # holds a web call, whose direction is null
    assert {c.call_id for c in page.calls} >= {call_id, web.call.call_id}
    searched = call("post", "/calls", body=models.SearchCallsRequest.from_dict({"limit": 2})).data
    assert searched.pagination.total_count == 3

    updated = call(
        "put",
        "/calls/{call_id}",
        call_id=call_id,
        body=models.UpdateCallRequest.from_dict({"call_status": "ONGOING"}),
    ).data
    assert str(updated.call.call_status) == "ongoing"

    moved = call(
        "put",
        "/calls/{call_id}/schedule",
        call_id=phone.call.call_id,
        body=models.ScheduleRequest.from_dict({"scheduled_timestamp": later + 60}),
    ).data
    assert moved.new_scheduled_timestamp == later + 60
    cancelled = call("delete", "/calls/{call_id}/schedule", call_id=phone.call.call_id).data
    assert cancelled.cancelled_scheduled_timestamp == later + 60

    deleted = call("delete", "/calls/{call_id}", call_id=call_id).data
    assert deleted.call_id == call_id


needs_npx = pytest.mark.skipif(shutil.which("npx") is None, reason="Node.js (npx) is not installed")


def generate_typescript(spec: str, out: Path) -> None:
    """Run openapi-typescript with its default settings; fail on any warning or error."""
    generated = subprocess.run(
        ["npx", "--yes", OPENAPI_TYPESCRIPT, spec, "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = "\n".join(
        line
        for line in (generated.stdout + generated.stderr).splitlines()
        if not line.startswith("npm warn")  # npm's own notices, not the generator's
    )
    assert generated.returncode == 0, output
    assert "warn" not in output.lower(), output
    assert "error" not in output.lower(), output


def compile_strictly(source: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["npx", "--yes", "-p", TYPESCRIPT, "tsc", "--strict", "--noEmit", str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def typescript_types(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder of `api.d.ts`, openapi-typescript's types of the spec file."""
    folder = tmp_path_factory.mktemp("openapi-typescript")
    generate_typescript(str(SPEC_PATH), folder / "api.d.ts")
    return folder


@needs_npx
@pytest.mark.parametrize("source", ["spec file", "served spec"])
def test_typescript_types_generate_and_compile_strictly(source, server, tmp_path):
    spec = str(SPEC_PATH) if source == "spec file" else f"{server.base_url}/api/openapi.json"
    generate_typescript(spec, tmp_path / "api.d.ts")

    (tmp_path / "use.ts").write_text(
        """
import type { components } from "./api";
type Schemas = components["schemas"];
const call = {} as Schemas["Call"];
const envelope: Schemas["CallEnvelope"] = {
  message: "Call retrieved successfully", status: "success", error: null, data: call,
};
const direction: "inbound" | "outbound" | "INBOUND" | "OUTBOUND" | null = envelope.data.direction;
const listed: Schemas["CallListEnvelope"]["data"]["calls"] = [envelope.data];
const failed: Schemas["ErrorEnvelope"] = {
  message: "Call not found", status: "error", error: "Call with ID 'x' does not exist", data: null,
};
export { direction, listed, failed };
"""
    )
    compiled = compile_strictly(tmp_path / "use.ts")
    assert compiled.returncode == 0, compiled.stdout + compiled.stderr


@needs_npx
def test_typescript_requests_typed_as_the_readme_sends_them_compile(typescript_types):
    """Request fields with a default are optional: the docs' bodies type as they are."""
    source = typescript_types / "readme.ts"
    source.write_text(
        """
import type { components } from "./api";
type Schemas = components["schemas"];
const call: Schemas["CreateCallRequest"] = {
  agent_id: "agent-123", call_type: "PHONE_CALL", direction: "OUTBOUND",
  metadata: { customer_id: "cust-001", priority: "high", campaign: "summer-2024" },
};
const bare: Schemas["CreateCallRequest"] = { agent_id: "agent-123" };
const web: Schemas["CreateWebCallRequest"] = { agent_id: "agent-123" };
const update: Schemas["UpdateCallRequest"] = { call_status: "ONGOING", metadata: { attempt: 2 } };
const lower: Schemas["UpdateCallRequest"] = { call_status: "ended", direction: "inbound" };
const hook: Schemas["CreateWebhookRequest"] = { name: "CRM", url: "https://crm.example/hook" };
const batch: Schemas["CreateBatchCallRequest"] = {
  from_number: "+14157774444", tasks: [{ to_number: "+12137774445" }],
  retry_config: { enabled: true },
  retry_rules: [{ condition: "NO_ANSWER", retry_timing: { type: "AT", time: "13:00" } }],
};
export { call, bare, web, update, lower, hook, batch };
"""
    )
    compiled = compile_strictly(source)
    assert compiled.returncode == 0, compiled.stdout + compiled.stderr


@needs_npx
@pytest.mark.parametrize(
    ("schema", "field", "misspelled"),
    [
        ("CreateCallRequest", "call_type", "PHONE_CAL"),
        ("UpdateCallRequest", "call_status", "ONGOIN"),
        ("UpdateCallRequest", "direction", "Inbound"),
    ],
)
def test_typescript_refuses_a_misspelled_enum_value_in_a_request(
    typescript_types, schema, field, misspelled
):
    source = typescript_types / f"misspelled_{field}.ts"
    body = {"agent_id": "agent-123"} if schema == "CreateCallRequest" else {}
    body[field] = misspelled
    source.write_text(
        f"""
import type {{ components }} from "./api";
const body: components["schemas"]["{schema}"] = {json.dumps(body)};
export {{ body }};
"""
    )
    compiled = compile_strictly(source)
    assert compiled.returncode != 0
    assert f"Type '\"{misspelled}\"' is not assignable" in compiled.stdout, compiled.stdout
