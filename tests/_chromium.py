"""Headless Chromium for the browser tests (test_browser.py, test_book.py): Debian's chromium driven
by Playwright.

The `playwright` fixture (conftest.py) starts Playwright's driver once per session;
`launch(playwright)` starts a fresh browser. Tests skip only where Chromium (/usr/bin/chromium,
Debian package `chromium`, installed by .ci/run) or the playwright package is missing.
"""

import contextlib
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
# Root needs --no-sandbox; the rest keep Chromium off the network, which is closed here (it would
# retry many times). Playwright gives every launch a fresh profile of its own (--user-data-dir in a
# new temporary folder).
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-proxy-server",
]
BROWSER_START_MS = 30_000


def require_browser():
    """The playwright package's sync API; skip when it or Chromium is missing (the only reasons to
    skip)."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found: install Debian's `chromium` package (.ci/run does)")
    return pytest.importorskip(
        "playwright.sync_api", reason="the playwright package is not installed (dev extra)"
    )


def launch(playwright):
    """A new headless Chromium (close it when done)."""
    return playwright.chromium.launch(
        executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS, timeout=BROWSER_START_MS
    )


@contextlib.contextmanager
def browser_page(playwright, screenshot, timeout_ms):
    """A 1400 x 900 page in a fresh headless Chromium. Afterwards, pass or fail: a screenshot to
    `screenshot`, then Chromium closed (the screenshot is for a person; failing to take one never
    hides the test's own failure)."""
    browser = launch(playwright)
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.set_default_timeout(timeout_ms)
        yield page
        try:
            page.screenshot(path=str(screenshot), timeout=timeout_ms)
        except Exception as e:
            print(f"no screenshot: {e}")
    finally:
        browser.close()
