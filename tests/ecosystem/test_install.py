"""A normal install works: a wheel built from the repository, installed into a fresh venv,
gives a `calls-server` that starts and serves the API, under one import name."""

from __future__ import annotations

import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import httpx
import pytest

from tests.conftest import running_server

REPOSITORY = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.install


def pip(*args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args],
        check=True,
        capture_output=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    pip("wheel", "--no-deps", "-w", str(out), str(REPOSITORY))
    (built,) = out.glob("calls_server-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """A fresh venv with the wheel and its dependencies installed (no editable link)."""
    home = tmp_path_factory.mktemp("venv")
    venv.create(home, with_pip=False)
    python = home / "bin" / "python"
    pip("--python", str(python), "install", str(wheel))
    return home


def test_the_wheel_installs_one_top_level_package_with_the_spec_inside(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/", 1)[0] for name in names if not name.startswith("calls_server-")}

    assert top_level == {"calls_server"}
    assert "calls_server/openapi.yaml" in names
    for layer in ("handlers", "domain", "storage", "integrations", "services"):
        assert f"calls_server/{layer}/__init__.py" in names


def test_the_installed_command_serves_the_api_from_the_installed_package(installed, tmp_path):
    python = installed / "bin" / "python"
    where = subprocess.run(
        [str(python), "-c", "import calls_server; print(calls_server.__file__)"],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    ).stdout
    assert Path(where).is_relative_to(installed)

    command = (str(installed / "bin" / "calls-server"),)
    with running_server(tmp_path / "data", command=command) as server:
        spec = httpx.get(f"{server.base_url}/api/openapi.json").json()
        created = httpx.post(
            f"{server.base_url}/api/calls/create",
            headers=server.new_key_headers(),
            json={"agent_id": "agent-123"},
        )

    assert spec["info"]["title"].startswith("Calls API")
    assert created.status_code == 200, created.text
    assert created.json()["data"]["call"]["call_status"] == "registered"
