"""Fixtures of the browser tests: a cluster as ``trioport run`` starts it, and Chromium.

The cluster runs in a subprocess (tests/e2e/cluster.py), so the tests here are
plain ``def`` functions driving Playwright's sync API: nothing of theirs runs in
pytest-trio's event loop. Chromium is Debian's (``/usr/bin/chromium``, installed by
``.ci/run``); Playwright's own browser download is never used. The proxy's
certificate is the self-signed one ``trioport run`` makes, so each browser context
ignores certificate errors, as a person clicking through the warning would.

Screenshots go to each test's ``tmp_path/screenshots``; under CI (``CI`` set) they
are copied to ``$CI_ARTIFACTS/browser`` (``artifacts/browser`` in the work tree if
that is not set) as well.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    Page,
    Playwright,
    expect,
    sync_playwright,
)

from tests.e2e import cluster as e2e

CHROMIUM = os.environ.get("TRIOPORT_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ROOT = Path(__file__).resolve().parents[2]
#: The OS account the web user logs in as on the node: one per run.
LOGIN = f"tpweb{os.getpid()}"
#: Milliseconds Playwright waits for anything to appear.
WAIT_MS = 20_000
expect.set_options(timeout=WAIT_MS)


@dataclass
class Cluster:
    config: Path
    ports: e2e.Ports
    process: e2e.Process
    tmp: Path

    @property
    def base(self) -> str:
        return f"https://127.0.0.1:{self.ports.web}"

    def tctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return e2e.run([e2e.program("tctl"), "--config", str(self.config), *args])


def _userdel(name: str) -> None:
    subprocess.run(["userdel", "-r", name], capture_output=True, check=False)


@pytest.fixture(scope="module")
def os_login() -> Iterator[str]:
    """An OS account on this machine for the node's sessions."""
    _userdel(LOGIN)
    subprocess.run(["useradd", "-m", "-s", "/bin/bash", LOGIN], check=True)
    try:
        yield pwd.getpwnam(LOGIN).pw_name
    finally:
        _userdel(LOGIN)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("web")
    ports = e2e.Ports(*e2e.free_ports(4))
    config = e2e.write_config(tmp / "trioport.yaml", tmp / "data", ports)
    process = e2e.start(config, tmp / "trioport.log")
    try:
        yield Cluster(config, ports, process, tmp)
    finally:
        status = process.stop()
    assert status == 0, process.stderr
    assert "Traceback" not in process.stderr, process.stderr


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)")
    browser = playwright.chromium.launch(
        executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
    )
    try:
        yield browser
    finally:
        browser.close()


@dataclass
class Screens:
    """Numbered screenshots of a test, and what the pages said on their consoles."""

    directory: Path
    count: int = 0
    console: list[str] = field(default_factory=list)

    def shot(self, page: Page, name: str) -> Path:
        self.count += 1
        path = self.directory / f"{self.count:02d}-{name}.png"
        page.screenshot(path=str(path), full_page=True)
        return path

    def watch(self, page: Page, who: str) -> Page:
        page.on("console", lambda m: self.console.append(f"{who} {m.type}: {m.text}"))
        page.on("pageerror", lambda e: self.console.append(f"{who} pageerror: {e}"))
        return page

    def script_problems(self) -> list[str]:
        """Uncaught errors in our scripts and anything the CSP refused, as logged."""
        signs = ("pageerror:", "Content Security Policy", "Refused to")
        return [line for line in self.console if any(sign in line for sign in signs)]


@pytest.fixture
def screens(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Screens]:
    directory = tmp_path / "screenshots"
    directory.mkdir()
    screens = Screens(directory)
    try:
        yield screens
    finally:
        (directory / "console.txt").write_text("\n".join(screens.console) + "\n")
        if os.environ.get("CI"):
            artifacts = Path(os.environ.get("CI_ARTIFACTS") or ROOT / "artifacts")
            shutil.copytree(
                directory, artifacts / "browser" / request.node.name, dirs_exist_ok=True
            )


@pytest.fixture
def new_context(browser: Browser) -> Iterator[Callable[..., BrowserContext]]:
    """Make browser contexts (separate cookie jars: separate people) closed after the test."""
    made: list[BrowserContext] = []

    def make(width: int = 1100, height: int = 720) -> BrowserContext:
        context = browser.new_context(
            ignore_https_errors=True, viewport={"width": width, "height": height}
        )
        context.set_default_timeout(WAIT_MS)
        made.append(context)
        return context

    try:
        yield make
    finally:
        for context in made:
            context.close()
