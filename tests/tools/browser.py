"""Headless Chromium through Playwright for Python, for the page's browser test
(tests/test_serve.py) and screenshot (tests/tools/screenshot.py).

The browser is the system's Chromium (Debian: `apt-get install chromium`), not one that
`playwright install` downloads: this project's machines reach package registries only.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from meet_milvus.errors import MeetError

CHROMIUM = Path(os.environ.get("MEET_CHROMIUM", "/usr/bin/chromium"))
# Headless and quiet: no sandbox (runs as root in containers), no GPU, and no traffic of its
# own (updates, sync, QUIC probes) beyond the page it is sent to.
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


def chromium_missing() -> str | None:
    """Why the browser cannot run here, or None when it can."""
    if not CHROMIUM.is_file():
        return f"no Chromium at {CHROMIUM} (apt-get install chromium, or set MEET_CHROMIUM)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright for Python is not installed (pip install playwright)"
    return None


@contextmanager
def chromium_page(width: int = 1280, height: int = 900) -> Iterator[Any]:
    """A Playwright page in a fresh headless Chromium (its own temp profile, removed after)."""
    reason = chromium_missing()
    if reason:
        raise MeetError(reason)
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="meet-chromium-")
    try:
        with sync_playwright() as p:
            # A persistent context is how Playwright takes a user-data-dir of our choosing.
            context = p.chromium.launch_persistent_context(
                profile,
                executable_path=str(CHROMIUM),
                headless=True,
                args=CHROMIUM_ARGS,
                viewport={"width": width, "height": height},
            )
            try:
                yield context.pages[0] if context.pages else context.new_page()
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def loaded_images(page: Any, selector: str = "#results img") -> list[int]:
    """naturalWidth of every image the selector matches (0: not loaded or broken)."""
    return page.eval_on_selector_all(
        selector, "imgs => imgs.map(i => i.complete ? i.naturalWidth : 0)"
    )


def wait_until(page: Any, predicate: str, arg: Any = None, timeout_ms: int = 60_000) -> None:
    """Poll `predicate` (a JavaScript function of `arg`) until it is true. Not Playwright's
    wait_for_function: that one builds its predicate with eval, which the page's Content
    Security Policy forbids (as it should)."""
    deadline = time.monotonic() + timeout_ms / 1000
    while not page.evaluate(predicate, arg):
        if time.monotonic() > deadline:
            raise MeetError(f"the page did not get there within {timeout_ms / 1000:g} s")
        time.sleep(0.05)


def search_text(
    page: Any,
    base_url: str,
    query: str,
    k: int = 10,
    diagnostics: bool = False,
    timeout_ms: int = 60_000,
) -> None:
    """Opens the page, types a query as a person would, and waits until k images loaded."""
    page.goto(base_url + "/")
    page.wait_for_selector("body[data-ready]", timeout=timeout_ms)
    page.fill("#k", str(k))
    page.set_checked("#diagnostics", diagnostics)
    page.click("#q")
    page.keyboard.type(query)
    page.keyboard.press("Enter")
    wait_until(
        page,
        """k => {
            const imgs = [...document.querySelectorAll('#results img')];
            return document.querySelector('#error').textContent !== '' ||
                (imgs.length === k && imgs.every(i => i.complete && i.naturalWidth > 0));
        }""",
        arg=k,
        timeout_ms=timeout_ms,
    )
    error = page.text_content("#error")
    if error:
        raise MeetError(f"the page shows an error: {error}")
