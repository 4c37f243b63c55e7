"""docs/configuration.md is generated from `Settings`, so it cannot drift from the code."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from calls_server.cli import main
from calls_server.settings import (
    PREFIX,
    REFERENCE_COMMAND,
    Settings,
    environment_default,
    reference_markdown,
)

PAGE = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
FIELDS = dataclasses.fields(Settings)


def test_the_committed_page_is_what_the_settings_generate():
    assert PAGE.read_text() == reference_markdown(), (
        f"docs/configuration.md differs from the settings' descriptions: run `{REFERENCE_COMMAND}`"
    )


def test_the_command_prints_the_page(capsys):
    assert main(["settings", "--markdown"]) == 0

    assert capsys.readouterr().out == reference_markdown()


@pytest.mark.parametrize("field", FIELDS, ids=lambda field: field.name)
def test_every_setting_has_a_description_of_one_line(field):
    description = Settings.describe(field.name)

    assert description.strip()
    assert "\n" not in description


def test_every_setting_is_a_row_under_a_section():
    page = reference_markdown()

    assert "section" in FIELDS[0].metadata
    for field in FIELDS:
        assert page.count(f"| `{PREFIX}{field.name.upper()}` |") == 1, field.name
    assert page.count("| variable | default | meaning |") == sum(
        "section" in field.metadata for field in FIELDS
    )


def test_links_in_descriptions_are_pages_under_docs():
    targets = {
        target
        for field in FIELDS
        for target in re.findall(r"\]\(([^)]+)\)", Settings.describe(field.name))
    }

    assert targets
    for target in targets:
        assert not re.match(r"[a-z]+:|/|#", target), target  # relative to docs/, no anchor alone
        assert (PAGE.parent / target.partition("#")[0]).is_file(), target


@pytest.mark.parametrize(
    ("value", "spelled"),
    [
        (None, "unset"),
        ("", "unset"),
        (False, "`false`"),
        (True, "`true`"),
        (30.0, "`30`"),
        (0.5, "`0.5`"),
        (1_048_576, "`1048576`"),
        (Path("calls-data"), "`calls-data`"),
    ],
)
def test_defaults_are_spelled_as_the_environment_would_set_them(value, spelled):
    assert environment_default(value) == spelled


@pytest.mark.parametrize("field", FIELDS, ids=lambda field: field.name)
def test_each_default_shown_reads_back_as_the_default(field):
    spelled = environment_default(field.default)
    variable = f"{PREFIX}{field.name.upper()}"
    environ = {} if spelled == "unset" else {variable: spelled.strip("`")}

    assert getattr(Settings.load(environ), field.name) == field.default
