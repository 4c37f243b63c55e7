"""The tools a contract user reaches for first accept openapi.yaml with their defaults.

Linters (Spectral with its `spectral:oas` ruleset, Redocly with its recommended rules),
openapi-generator's most used generators (`python`, `typescript-fetch`), and mock servers
such as Prism, which read YAML 1.2 (no `<<` merge keys). Each runs as a user runs it, at the
version pinned below; the generated clients are built once per session, then used: the
Python one against a real server, the TypeScript one compiled with `tsc --strict`.

What the linters still warn about, and why it stays:
- Spectral `info-contact`: a self-hosted server has no one contact to publish; whoever runs
  it is.
- Redocly `operation-4xx-response` (3): getHealth and getReadiness take no input and no
  credentials, so no client error of theirs exists to declare; the webhook callback's
  answers other than 2xx are its `default` response (retried).
- Redocly `no-illogical-composition-keywords` (1): NewCallType, an `anyOf` of CallTypeInput
  alone, carries the default of createCall's `call_type`. The other ways to say it break a
  generator (see its comment in openapi.yaml).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import venv
from pathlib import Path
from typing import Any

import pytest
import yaml

from calls_server.contract import SPEC_PATH, load_spec
from tests.conftest import SEED_REQUEST

pytestmark = pytest.mark.generators

SPECTRAL = "@stoplight/spectral-cli@6.16.3"
REDOCLY = "@redocly/cli@2.77.0"
TYPESCRIPT = "typescript@5.9.3"
OPENAPI_GENERATOR = Path(sys.executable).with_name("openapi-generator-cli")

# Warnings the linters may still give (see the module's docstring): rule -> how many.
SPECTRAL_ACCEPTED = {"info-contact": 1}
REDOCLY_ACCEPTED = {"no-illogical-composition-keywords": 1, "operation-4xx-response": 3}

needs_npx = pytest.mark.skipif(shutil.which("npx") is None, reason="Node.js (npx) is not installed")
needs_java = pytest.mark.skipif(
    shutil.which("java") is None, reason="openapi-generator needs Java, which is not installed"
)


def run(command: list[str], cwd: Path, env: dict[str, str] | None = None) -> Any:
    return subprocess.run(
        command,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **(env or {})},
    )


def counted(rules: list[str]) -> dict[str, int]:
    return {rule: rules.count(rule) for rule in sorted(set(rules))}


# -- linters ------------------------------------------------------------------------------


@needs_npx
def test_spectral_finds_no_error_with_its_oas_ruleset(tmp_path):
    ruleset = tmp_path / ".spectral.yaml"
    ruleset.write_text('extends: ["spectral:oas"]\n')
    linted = run(
        ["npx", "--yes", SPECTRAL, "lint", str(SPEC_PATH), "--ruleset", str(ruleset), "-f", "json"],
        cwd=tmp_path,
    )
    start = linted.stdout.find("[")
    assert start >= 0, linted.stdout + linted.stderr
    problems = json.loads(linted.stdout[start:])
    errors = [p for p in problems if p["severity"] == 0]
    assert errors == [], json.dumps(errors, indent=1)
    warnings = counted([p["code"] for p in problems if p["severity"] == 1])
    assert warnings == SPECTRAL_ACCEPTED, json.dumps(problems, indent=1)


@needs_npx
def test_redocly_finds_no_error_with_its_recommended_rules(tmp_path):
    linted = run(
        ["npx", "--yes", REDOCLY, "lint", str(SPEC_PATH), "--format", "json"],
        cwd=tmp_path,  # no redocly.yaml here: the recommended rules apply
        env={"REDOCLY_TELEMETRY": "off", "REDOCLY_SUPPRESS_UPDATE_NOTICE": "true"},
    )
    start = linted.stdout.find("{")
    assert start >= 0, linted.stdout + linted.stderr
    report = json.loads(linted.stdout[start:])
    problems = report["problems"]
    errors = [p for p in problems if p["severity"] == "error"]
    assert errors == [], json.dumps(errors, indent=1)
    warnings = counted([p["ruleId"] for p in problems if p["severity"] == "warn"])
    assert warnings == REDOCLY_ACCEPTED, json.dumps(problems, indent=1)
    assert linted.returncode == 0, linted.stdout + linted.stderr


# -- YAML 1.2 readers (Prism and other mock servers) ----------------------------------------


class Yaml12Loader(yaml.SafeLoader):
    """PyYAML's safe loader without YAML 1.1's merge key: `<<` is a plain key, as YAML 1.2
    and JSON-minded readers (Prism's) take it."""


Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:merge"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def keys_named(node: Any, name: str, path: str = "#") -> list[str]:
    """Where in `node` a mapping has a key `name`."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == name:
                found.append(path)
            found += keys_named(value, name, f"{path}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += keys_named(value, name, f"{path}/{index}")
    return found


def test_the_spec_reads_the_same_without_yaml_merge_keys():
    with open(SPEC_PATH, encoding="utf-8") as f:
        as_yaml_12 = yaml.load(f, Loader=Yaml12Loader)
    assert keys_named(as_yaml_12, "<<") == []
    assert as_yaml_12 == load_spec()


# -- openapi-generator ------------------------------------------------------------------------


def generate(generator: str, out: Path) -> None:
    """Run openapi-generator with its default settings; fail on a crash."""
    generated = run(
        [str(OPENAPI_GENERATOR), "generate", "-g", generator, "-i", str(SPEC_PATH), "-o", str(out)],
        cwd=out.parent,
    )
    assert generated.returncode == 0, generated.stdout[-5000:] + generated.stderr[-5000:]


@pytest.fixture(scope="session")
def python_client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A throwaway virtual environment with the openapi-generator `python` client of the spec
    installed (its dependencies from the package index): the environment's interpreter."""
    root = tmp_path_factory.mktemp("openapi-generator-python")
    generate("python", root / "client")
    venv.create(root / "venv", with_pip=True)
    python = root / "venv" / "bin" / "python"
    installed = run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "./client"],
        cwd=root,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return python


@pytest.fixture(scope="session")
def typescript_fetch_client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The openapi-generator `typescript-fetch` client of the spec."""
    out = tmp_path_factory.mktemp("openapi-generator-typescript-fetch") / "client"
    generate("typescript-fetch", out)
    return out


# Run in the throwaway environment: a call created and read back through the generated
# client, whose models parse each response strictly (pydantic).
CREATE_AND_GET = """
import json, sys
import openapi_client as api

base_url, key, secret, seed = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
configuration = api.Configuration(host=base_url, api_key={"apiKey": key, "apiSecret": secret})
with api.ApiClient(configuration) as client:
    calls = api.CallsApi(client)
    created = calls.create_call(api.CreateCallRequest.from_dict(seed))
    got = calls.get_call(created.data.call.call_id)
print(json.dumps({
    "created_type": type(created).__name__,
    "created": created.data.call.to_dict(),
    "got_type": type(got).__name__,
    "got": got.data.to_dict(),
    "got_status": got.data.call_status.name,
}, default=str))
"""


@needs_java
def test_the_openapi_generator_python_client_imports_and_creates_and_reads_a_call(
    python_client, server
):
    imported = run([str(python_client), "-c", "import openapi_client"], cwd=python_client.parent)
    assert imported.returncode == 0, imported.stderr

    headers = server.new_key_headers()
    used = run(
        [
            str(python_client),
            "-c",
            CREATE_AND_GET,
            f"{server.base_url}/api",
            headers["X-API-KEY"],
            headers["X-API-SECRET"],
            json.dumps(SEED_REQUEST),
        ],
        cwd=python_client.parent,
    )
    assert used.returncode == 0, used.stdout + used.stderr
    result = json.loads(used.stdout.strip().splitlines()[-1])
    assert result["created_type"] == "CallCreatedEnvelope"
    assert result["got_type"] == "CallEnvelope"
    created, got = result["created"], result["got"]
    assert got["call_id"] == created["call_id"]
    assert got["agent_id"] == SEED_REQUEST["agent_id"]
    assert got["metadata"] == SEED_REQUEST["metadata"]
    # The server's default casing: lower in the create's answer, UPPER in a get's; each
    # spelling is a member of the one enum, named apart.
    assert created["call_status"] == "registered"
    assert got["call_status"] == "REGISTERED"
    assert result["got_status"] == "REGISTERED_UPPER"


@needs_java
@needs_npx
def test_the_openapi_generator_typescript_fetch_client_compiles_strictly(
    typescript_fetch_client,
):
    assert (typescript_fetch_client / "apis" / "CallsApi.ts").exists()
    compiled = run(
        [
            *("npx", "--yes", "-p", TYPESCRIPT, "tsc", "--strict", "--noEmit"),
            # The generator writes no tsconfig: a project's usual settings (fetch is the DOM's).
            *("--target", "es2019", "--lib", "es2019,dom"),
            *("--module", "commonjs", "--moduleResolution", "node"),
            "index.ts",
        ],
        cwd=typescript_fetch_client,
    )
    assert compiled.returncode == 0, compiled.stdout + compiled.stderr
    assert re.search(r"error TS\d+", compiled.stdout) is None, compiled.stdout
