"""Headless Chromium for the dashboard tests: where it is, the flags they launch it with, one way
to launch it (chromium()) and one way a page's errors are collected (watch()). Test support only: never imports flows or connectors.

A missing chromium is a failure, never a skip: a skipped browser test hides a broken dashboard.
"""

from __future__ import annotations

import shutil
from contextlib import contextmanager

import playwright.sync_api as playwright  # a dev dependency: `make test` installs it
import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# no sandbox (root in CI), no background traffic; COMMON_ARGS leaves the GPU flags to the caller
COMMON_ARGS = ["--no-sandbox", "--disable-quic", "--disable-background-networking", "--disable-component-update",
               "--disable-sync"]
BROWSER_ARGS = [*COMMON_ARGS, "--disable-gpu"]


def require_chromium() -> None:
    """Fail the importing test module, with the fix, when Debian's chromium is not installed."""
    if not shutil.which("chromium"):
        pytest.fail("Debian's chromium is not installed: apt-get install chromium (.ci/run does)", pytrace=False)


def watch(page, errors: list, *, http: bool = True):
    """Collect into `errors` the page's console errors, uncaught page errors and (http) any
    response with status ≥ 400; returns the page."""
    page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    if http:
        page.on("response", lambda r: errors.append(f"HTTP {r.status} {r.url}") if r.status >= 400 else None)
    return page


@contextmanager
def chromium(args=BROWSER_ARGS):
    """A headless Chromium launched with `args` (closed on leaving, whatever happened)."""
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=args)
        try:
            yield browser
        finally:
            browser.close()
