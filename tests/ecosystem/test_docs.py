"""The documentation holds together: the pages under docs/ build as a site with `mkdocs build
--strict` (mkdocs.yml makes every broken link and anchor a warning, so a warning fails it),
every relative link in README.md reaches a file of the repository (and a heading of it, for
a link with an anchor), and the site's front page gives README's two commands as they are."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"

# [text](target), outside fenced code blocks; autolinks (<https://...>) are not relative.
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


def test_the_docs_build_as_a_site_with_no_warning(tmp_path):
    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert built.returncode == 0, built.stdout + built.stderr


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as `-`."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    """Every heading's anchor in `markdown` (a repeated one numbered, as GitHub does)."""
    found: set[str] = set()
    for line in FENCE.sub("", markdown).splitlines():
        heading = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading is None:
            continue
        base = slug(heading[1])
        anchor, n = base, 0
        while anchor in found:
            n += 1
            anchor = f"{base}-{n}"
        found.add(anchor)
    return found


def relative_links(markdown: str) -> list[str]:
    targets = LINK.findall(FENCE.sub("", markdown))
    return [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:", t, re.IGNORECASE)]


def broken(source: Path) -> list[str]:
    """The relative links of `source` whose file or anchor does not exist."""
    wrong = []
    for link in relative_links(source.read_text(encoding="utf-8")):
        path, _, anchor = link.partition("#")
        target = (source.parent / unquote(path)).resolve() if path else source
        if not target.exists():
            wrong.append(f"{link}: no file {target}")
        elif (
            anchor
            and target.suffix == ".md"
            and anchor not in anchors(target.read_text(encoding="utf-8"))
        ):
            wrong.append(f"{link}: no heading with that anchor in {target.name}")
    return wrong


def test_every_relative_link_of_the_readme_reaches_a_file_and_its_heading():
    assert relative_links(README.read_text(encoding="utf-8")), "README links to no page"

    assert broken(README) == []


def test_a_broken_link_is_found(tmp_path):
    (tmp_path / "page.md").write_text("# A page\n\n## Its `part` (one)\n")
    source = tmp_path / "source.md"
    source.write_text(
        "[ok](page.md#its-part-one) [here](#top) [web](https://example.com/x)\n"
        "# Top\n[gone](missing.md) [no anchor](page.md#other)\n"
        "```sh\n[in code](missing.md)\n```\n"
    )

    assert broken(source) == [
        f"missing.md: no file {tmp_path / 'missing.md'}",
        "page.md#other: no heading with that anchor in page.md",
    ]


def sh_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```sh\n(.*?)^```", markdown, re.MULTILINE | re.DOTALL)


def test_the_front_page_gives_the_readmes_two_commands_as_they_are():
    readme = sh_blocks(README.read_text(encoding="utf-8"))
    front = sh_blocks((ROOT / "docs" / "index.md").read_text(encoding="utf-8"))

    assert front[:2] == readme[:2]
