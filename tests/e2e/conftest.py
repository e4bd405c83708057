"""The console's browser fixtures (headless Chromium, a page that fails on JavaScript errors or
HTTP 5xx) for every browser test module of this directory."""

from tests.support.browser import browser, page  # noqa: F401
