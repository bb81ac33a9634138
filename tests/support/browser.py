"""Debian's chromium, driven by Playwright's Python package, against a node's console.

``scripts/install-browser.sh`` installs the browser (``make test`` runs it); Playwright's
own browser download needs the internet and is never used. A ``Watched`` page records
what a test must be able to say never happened: errors in the browser's console or
page, and requests to any origin but the node's.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from playwright.sync_api import Browser, ConsoleMessage, Page, Request, sync_playwright

from support.node import Node


def chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        raise RuntimeError("no chromium on PATH: scripts/install-browser.sh installs it")
    return path


@contextmanager
def launched() -> Iterator[Browser]:
    """The system's chromium, headless (``--no-sandbox``: tests run as root)."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


def console_token(node: Node) -> str:
    """A fresh console token, made by the real CLI."""
    return str(json.loads(node.cli("console", "token", "--json").stdout)["token"])


@dataclass
class Watched:
    """A page of its own browser context, and everything it did that it should not."""

    page: Page
    origin: str
    errors: list[str] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)

    def assert_clean(self) -> None:
        assert not self.errors, f"errors in the browser: {self.errors}"
        assert not self.foreign, f"requests to other origins: {self.foreign}"

    def _console(self, message: ConsoleMessage) -> None:
        if message.type in ("error", "warning"):
            self.errors.append(f"{message.type}: {message.text}")

    def _request(self, request: Request) -> None:
        if not request.url.startswith(self.origin + "/"):
            self.foreign.append(request.url)


def watched_page(browser: Browser, origin: str) -> Watched:
    page = browser.new_context(viewport={"width": 1280, "height": 800}).new_page()
    watched = Watched(page, origin)
    page.on("console", watched._console)
    page.on("pageerror", lambda error: watched.errors.append(f"page error: {error}"))
    page.on("request", watched._request)
    return watched


def signed_in(browser: Browser, node: Node) -> Watched:
    """A page signed in to ``node``'s console with a fresh token, on the live view."""
    watched = watched_page(browser, node.url)
    watched.page.goto(f"{node.url}/console?token={console_token(node)}")
    watched.page.wait_for_selector("#state:text('live')")
    return watched
