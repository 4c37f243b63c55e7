"""Long commands show their progress (tqdm) to a person at a terminal, and print nothing more
than they always did to a pipe: a pseudo-terminal stands in for the person."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import struct
import subprocess
import sys
import tempfile
import termios
from dataclasses import dataclass
from pathlib import Path

from calls_server.domain.keys import SECRET_WARNING
from tests.conftest import cli
from tests.store.test_store_integrity import fill


@dataclass
class Run:
    returncode: int
    stdout: str
    terminal: str  # what stderr wrote to the terminal, escape sequences and all


def on_a_terminal(*args: str, env: dict[str, str] | None = None) -> Run:
    """Run `calls-server` with its stderr on a pseudo-terminal of 100 columns (stdout on a
    pipe, as when its report is saved), to completion."""
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    with tempfile.TemporaryFile() as stdout:
        process = subprocess.Popen(
            [sys.executable, "-m", "calls_server.cli", *args],
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=terminal,
            env={**os.environ, **(env or {})},
        )
        os.close(terminal)  # the child holds it now: reading ends when the child closes it
        written = bytearray()
        while True:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # EIO: the terminal's other end is closed
                break
            if not chunk:
                break
            written += chunk
        os.close(controller)
        returncode = process.wait(timeout=60)
        stdout.seek(0)
        return Run(returncode, stdout.read().decode(), written.decode(errors="replace"))


def recovered_message(target: Path) -> str:
    return (
        f"Salvaged into {target}: 0 problem(s), listed above. "
        f"Start the server with --data-dir {target}."
    )


def test_recover_on_a_terminal_shows_what_it_is_doing_and_for_how_long(tmp_path):
    data, target = tmp_path / "data", tmp_path / "recovered"
    fill(data, count=30, compact_every=10)

    run = on_a_terminal("--data-dir", str(data), "recover", "--to", str(target))

    assert run.returncode == 0, run.terminal
    assert "Recovering data... 00:0" in run.terminal
    assert recovered_message(target) in run.terminal
    assert json.loads(run.stdout)["last_record"] == 30  # the report itself is unchanged


def test_recover_off_a_terminal_prints_only_what_it_always_did(tmp_path):
    data, target = tmp_path / "data", tmp_path / "recovered"
    fill(data, count=30, compact_every=10)

    result = cli("--data-dir", str(data), "recover", "--to", str(target))

    assert result.returncode == 0, result.stderr
    assert result.stderr == recovered_message(target) + "\n"


def test_copy_to_postgres_on_a_terminal_shows_a_bar_of_the_records_copied(tmp_path, database_url):
    data = tmp_path / "data"
    fill(data, count=40, compact_every=10)

    run = on_a_terminal("--data-dir", str(data), "copy-to-postgres", "--database-url", database_url)

    assert run.returncode == 0, run.terminal
    assert "Reading data... 00:0" in run.terminal
    assert "Copying calls:" in run.terminal  # each kind named while it is copied
    assert "Copying: 100%" in run.terminal
    assert "40/40 [" in run.terminal  # 40 calls, no other record
    assert json.loads(run.stdout)["copied"]["calls"] == 40


def test_copy_to_postgres_off_a_terminal_prints_only_what_it_always_did(tmp_path, database_url):
    data = tmp_path / "data"
    fill(data, count=40, compact_every=10)

    result = cli("--data-dir", str(data), "copy-to-postgres", "--database-url", database_url)

    assert result.returncode == 0, result.stderr
    assert result.stderr.startswith(f"Copied {data} into the database (40 calls")
    assert result.stderr.count("\n") == 1
    assert "%" not in result.stderr


def test_a_quick_command_on_a_terminal_shows_no_progress(tmp_path):
    data = tmp_path / "data"
    fill(data, count=5, compact_every=10)

    run = on_a_terminal("--data-dir", str(data), "create-org", "--id", "acme")

    assert run.returncode == 0, run.terminal
    # Reading a small directory takes less than half a second: no line for it.
    assert run.terminal == SECRET_WARNING.replace("\n", "\r\n") + "\r\n"
    assert json.loads(run.stdout)["organization"]["organization_id"] == "acme"
