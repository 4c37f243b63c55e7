"""Headless Chromium for the browser tests: Debian's package (/usr/bin/chromium) driven by
Playwright, its own browser download unused.

A test module that imports from here is skipped, with the reason, where Playwright is not
installed; it takes MARKS as its `pytestmark` (the `browser` mark, and skipped where no
Chromium is installed) and launches the browser once with `launched()`.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Without the background-networking flags Chromium keeps calling out to the internet,
# which a closed network refuses many times over.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 30_000

playwright = pytest.importorskip(
    "playwright.sync_api", reason="Playwright is not installed (pip install -e '.[test]')"
)
expect = playwright.expect
MARKS = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not Path(CHROMIUM).exists(), reason="no Chromium to drive (apt-get install chromium)"
    ),
]


@contextmanager
def launched() -> Iterator[Any]:
    """Chromium, started once (for a module's tests: a page each is cheap), closed after."""
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        expect.set_options(timeout=TIMEOUT_MS)
        try:
            yield browser
        finally:
            browser.close()


def new_page(browser: Any, **options: Any) -> Any:
    """A page in a context of its own (no cookies, cache or preflight cache shared with
    another test's), with the tests' timeout."""
    context = browser.new_context(**options)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    return page
