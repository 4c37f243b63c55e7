"""The lock files hold what pyproject.toml asks for: every direct dependency pinned to one
version its specifier allows, every pin with a sha256 hash (docs/development.md, "Reproducible
installs").

requirements.lock covers `[project.dependencies]`; requirements-test.lock adds the `test`
extra. A dependency added to or changed in pyproject.toml without regenerating the locks
fails here."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

# Each lock and the groups of pyproject.toml it must cover.
LOCKS = {
    "requirements.lock": {"dependencies": PROJECT["dependencies"]},
    "requirements-test.lock": {
        "dependencies": PROJECT["dependencies"],
        "test extra": PROJECT["optional-dependencies"]["test"],
    },
}


def normalize(name: str) -> str:
    """PEP 503: lowercase, runs of `-`, `_` and `.` become one `-`."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class Entry:
    """One requirement of a lock file: the requirement text and its options (--hash=...)."""

    requirement: str
    options: tuple[str, ...]

    @property
    def hashes(self) -> list[str]:
        return [o for o in self.options if o.startswith("--hash=sha256:")]


@cache
def lines(lock: str) -> tuple[str, ...]:
    """The lock's logical lines: continuations joined, comments and blank lines dropped."""
    logical: list[str] = []
    pending = ""
    for raw in (ROOT / lock).read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    if pending:
        logical.append(pending)
    return tuple(logical)


def entries(lock: str) -> list[Entry]:
    """The lock's requirements (lines that are not options such as `--index-url` or `-e`)."""
    result = []
    for line in lines(lock):
        if line.startswith("-"):
            continue
        requirement, *options = re.split(r"\s+(?=--)", line)
        result.append(Entry(requirement.strip(), tuple(o.strip() for o in options)))
    return result


def exact_version(requirement: Requirement) -> Version | None:
    """The version of a `name==version` requirement; None for any other specifier."""
    specifiers = list(requirement.specifier)
    if len(specifiers) != 1 or specifiers[0].operator != "==" or "*" in specifiers[0].version:
        return None
    return Version(specifiers[0].version)


@cache
def pins(lock: str) -> dict[str, list[Version]]:
    """Normalized name -> the versions pinned with `==` (one per marker branch)."""
    pinned: dict[str, list[Version]] = {}
    for entry in entries(lock):
        requirement = Requirement(entry.requirement)
        version = exact_version(requirement)
        if version is not None:
            pinned.setdefault(normalize(requirement.name), []).append(version)
    return pinned


DIRECT = [
    pytest.param(lock, requirement, id=f"{lock}-{group}-{requirement}")
    for lock, groups in LOCKS.items()
    for group, requirements in groups.items()
    for requirement in requirements
]


@pytest.mark.parametrize("lock", LOCKS)
def test_every_requirement_in_the_lock_is_pinned_to_one_version(lock):
    loose = [
        e.requirement for e in entries(lock) if exact_version(Requirement(e.requirement)) is None
    ]

    assert entries(lock), f"{lock} holds no requirement"
    assert loose == [], f"{lock}: not pinned with `==`"


@pytest.mark.parametrize("lock", LOCKS)
def test_every_pin_in_the_lock_carries_a_sha256_hash(lock):
    unhashed = [entry.requirement for entry in entries(lock) if not entry.hashes]

    assert unhashed == [], f"{lock}: pinned without --hash=sha256:"


@pytest.mark.parametrize("lock", LOCKS)
def test_the_lock_does_not_hold_the_project_itself(lock):
    project = normalize(PROJECT["name"])
    editable = [line for line in lines(lock) if re.match(r"(-e|--editable)\b", line)]
    named = [
        e.requirement
        for e in entries(lock)
        if normalize(Requirement(e.requirement).name) == project
    ]

    assert editable + named == [], f"{lock}: the project is installed with --no-deps after it"


@pytest.mark.parametrize(("lock", "requirement"), DIRECT)
def test_every_direct_dependency_is_pinned_in_the_lock(lock, requirement):
    # Extras (`connexion[swagger-ui,uvicorn]`) are installed through the base package's pin.
    name = normalize(Requirement(requirement).name)

    assert name in pins(lock), f"{requirement} is not pinned in {lock}: regenerate the locks"


@pytest.mark.parametrize(("lock", "requirement"), DIRECT)
def test_the_pinned_version_satisfies_the_specifier_in_pyproject(lock, requirement):
    wanted = Requirement(requirement)
    pinned = pins(lock).get(normalize(wanted.name), [])
    outside = [str(v) for v in pinned if not wanted.specifier.contains(v, prereleases=True)]

    assert pinned, f"{requirement} is not pinned in {lock}"
    assert outside == [], f"{lock} pins {wanted.name}=={outside} outside {wanted.specifier}"
