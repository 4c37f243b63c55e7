"""The pytest plugin (calls_server/pytest_plugin.py) as users meet it: the README's example
test run as written, in a pytest of its own, against the sandbox server the plugin starts."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]
SECTION = "## Your integration's tests against a sandbox"


def readme_example() -> str:
    """The first Python block of the README's section on the plugin."""
    text = (REPOSITORY / "README.md").read_text(encoding="utf-8")
    section = text[text.index(SECTION) :]
    found = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert found is not None
    return found.group(1)


def run_pytest(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_pytest_finds_the_plugin_by_its_entry_point():
    found = [e for e in entry_points(group="pytest11") if e.value == "calls_server.pytest_plugin"]

    assert len(found) == 1


def test_the_readme_example_passes_as_written(tmp_path):
    (tmp_path / "test_integration.py").write_text(readme_example(), encoding="utf-8")

    result = run_pytest(tmp_path)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout


def test_a_failing_control_request_says_what_the_sandbox_answered(tmp_path):
    (tmp_path / "test_backwards.py").write_text(
        "import pytest\n"
        "from calls_server.pytest_plugin import SandboxError\n\n"
        "def test_backwards(calls_sandbox):\n"
        "    calls_sandbox.freeze('2030-01-07T09:00:00Z')\n"
        "    with pytest.raises(SandboxError) as refused:\n"
        "        calls_sandbox.advance(to='2030-01-01T00:00:00Z')\n"
        "    assert refused.value.status_code == 400\n"
        "    assert 'backwards' in refused.value.body['error']\n\n"
        "def test_the_clock_is_back_on_real_time_after_a_reset(calls_sandbox):\n"
        "    assert calls_sandbox.now_ms() < 1893456000000  # before 2030\n",
        encoding="utf-8",
    )

    result = run_pytest(tmp_path)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout
