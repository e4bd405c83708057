"""What every console browser test needs: headless Chromium, a page that fails the test on any
JavaScript error or HTTP 5xx, screenshots kept as artifacts, and logging in.

Test modules import the fixtures (``from tests.support.browser import browser, page``) so each
module gets the same checks without copying them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect, sync_playwright

from tests.support.processes import ACCESS_KEY, SECRET_KEY

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(os.environ.get("IOTDEFENDER_TEST_ARTIFACTS", Path(__file__).parents[2] / "test-artifacts")) / "console"
# Flags a headless Chromium needs on a closed network as root (see the machine notes in README).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update"]


@pytest.fixture(scope="module")
def browser():
    assert Path(CHROMIUM).exists(), "make test installs Debian's chromium package"
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser) -> Page:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    # Any console error fails the run: a CSP block, an invalid `pattern` attribute, a failed fetch.
    # Expected refusals (the 400 of a rejected form, the 401 of a wrong login) are logged by
    # Chromium as "Failed to load resource"; they are answers the test asks for, not faults.
    page.on("console", lambda message: errors.append(message.text)
            if message.type == "error" and "Failed to load resource" not in message.text else None)
    page.on("response", lambda response: errors.append(f"HTTP {response.status} {response.url}")
            if response.status >= 500 else None)
    yield page
    context.close()
    assert errors == [], f"JavaScript errors or server errors: {errors}"


def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def log_in(page: Page, base: str) -> None:
    page.goto(f"{base}/console/login")
    page.fill("input[name=access_key_id]", ACCESS_KEY)
    page.fill("input[name=secret_access_key]", SECRET_KEY)
    page.click("button[type=submit]")
    expect(page.locator("header")).to_be_visible()
