"""Schemathesis against a real server process on loopback: every check, every phase.

The "Contract testing in your CI" block of docs/contract-testing.md, run as written: the
server started with the block's settings and `--create-org`, then the block's one Schemathesis
command over every tag, with the shipped configuration, the key pair the server printed and the
admin token. It must be green, follow most of the spec's links in its stateful phase, and leave
its key valid.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import httpx
import pytest

from tests.conftest import ADMIN_TOKEN, running_server

ROOT = Path(__file__).parents[2]
# The page read: the repository's, unless CONTRACT_README names a draft of it.
README = Path(os.environ.get("CONTRACT_README", ROOT / "docs" / "contract-testing.md"))
SEED = os.environ.get("CONTRACT_SEED", "1")

# The spec's links the run follows at least: 26 of 44 with seed 1, on this project's 2-core
# machine. The rest are mostly batch calls' and webhook events' that random data rarely gets
# to (a resumed batch, a delivered event). The links from an agent into the creates that
# name it pass the agent as `body.<field>` parameters: link `requestBody` objects followed
# more (40 of 46) but openapi-generator's validator refuses them (it wants a string).
README_LINKS_COVERED = 26

pytestmark = pytest.mark.contract


def readme_block() -> str:
    """The fenced block under "Contract testing in your CI" in docs/contract-testing.md."""
    text = README.read_text()
    section = text[text.index("**Contract testing in your CI.**") :]
    block = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    assert block is not None, section[:2000]
    return block[1]


def readme_commands(block: str) -> list[list[str]]:
    """The block's commands as argument lists (continuation lines joined, comments dropped)."""
    return [shlex.split(line, comments=True) for line in block.replace("\\\n", " ").splitlines()]


def is_setting(word: str) -> bool:
    return re.match(r"^[A-Z_]+=", word) is not None


def test_readme_contract_command_is_green_and_follows_the_links(tmp_path):
    install, token, serve, run = readme_commands(readme_block())
    assert install == ["pip", "install", f"schemathesis=={version('schemathesis')}"], install
    assert token[0] == "export", token
    assert token[1].startswith("ADMIN_TOKEN="), token
    # The server as the block starts it: its settings (the admin token being this suite's),
    # then `calls-server serve --create-org ci &`, on a free port instead of 8080.
    settings = dict(word.split("=", 1) for word in serve if is_setting(word))
    command = [word for word in serve if not is_setting(word)]
    assert command[:2] == ["calls-server", "serve"], serve
    assert command[-1] == "&", serve
    assert settings.pop("CALLS_ADMIN_TOKEN") == "$ADMIN_TOKEN", serve
    with running_server(tmp_path / "data", serve_args=tuple(command[2:-1]), **settings) as server:
        printed = re.search(r"export KEY=(\S+) SECRET=(\S+)", server.log())
        assert printed is not None, server.log()
        credentials = {"$KEY": printed[1], "$SECRET": printed[2], "$ADMIN_TOKEN": ADMIN_TOKEN}
        assert run[0] == "schemathesis", run
        argv = [str(Path(sys.executable).with_name("schemathesis"))]
        for word in run[1:]:
            word = word.replace("http://127.0.0.1:8080", server.base_url)
            for name, value in credentials.items():
                word = word.replace(name, value)
            argv.append(word)
        # As written, but for this suite's knobs: a seed (the same links followed from run
        # to run) and, when asked for, another number of test cases than the configuration's.
        argv += ["--seed", SEED]
        if "CONTRACT_MAX_EXAMPLES" in os.environ:
            argv += ["--max-examples", os.environ["CONTRACT_MAX_EXAMPLES"]]
        # The block names the configuration file from the repository's root.
        result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=1200)
        key = {"X-API-KEY": printed[1], "X-API-SECRET": printed[2]}
        key_still_valid = httpx.get(f"{server.base_url}/api/calls", headers=key).status_code
        log = server.log()

    assert result.returncode == 0, result.stdout + result.stderr + log
    links = re.search(r"API Links: +(\d+) covered / (\d+) selected", result.stdout)
    assert links is not None, result.stdout
    print(f"README run: {links[1]} of {links[2]} links covered")
    assert int(links[1]) >= README_LINKS_COVERED, result.stdout
    assert key_still_valid == 200, "the run revoked the key it ran with"
