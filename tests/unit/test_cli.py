"""The `calls-server` command's own options."""

from __future__ import annotations

from importlib.metadata import version

import pytest

from calls_server.cli import main


def test_version_prints_the_installed_version_and_exits_0(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["--version"])

    assert exited.value.code == 0
    assert capsys.readouterr().out == f"calls-server {version('calls-server')}\n"
