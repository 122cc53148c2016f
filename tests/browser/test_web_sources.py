"""The web UI's sources keep the promises docs/web.md makes, checked without a browser.

- ``index.html`` has no inline script and no inline event handler: the proxy's
  Content-Security-Policy (``script-src 'self'``) would refuse them.
- Our modules never put text into the page as HTML (``innerHTML`` and friends) and
  never turn strings into code (``eval``, ``new Function``, string timers): names,
  labels and events come from other people and machines.
- Every relative import names a file that exists, and every file the page loads is
  one the build makes (our sources, or one of the three vendor files).
- The built files are shipped with the package (``[tool.setuptools.package-data]``).
"""

from __future__ import annotations

import re
import tomllib
from html.parser import HTMLParser
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "web" / "src"
VENDOR = {"xterm.js", "xterm.css", "addon-fit.js"}


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.problems: list[str] = []
        self.loads: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = dict(attrs)
        for name, _ in attrs:
            if name.startswith("on"):
                self.problems.append(f"<{tag} {name}=...>: an inline event handler")
        if tag == "script":
            self._in_script = True
            if not names.get("src"):
                self.problems.append("<script> without src: an inline script")
            else:
                self.loads.append(names["src"] or "")
        if tag == "link" and names.get("href", "").startswith("/web/"):
            self.loads.append(names["href"] or "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.problems.append("text inside <script>: an inline script")


def _modules() -> list[Path]:
    return sorted(SRC.rglob("*.js"))


def test_index_html_has_no_inline_script_and_loads_only_built_files() -> None:
    page = _Page()
    page.feed((SRC / "index.html").read_text())
    assert page.problems == []
    assert page.loads, "index.html loads nothing"
    for url in page.loads:
        assert url.startswith("/web/"), url
        rel = url.removeprefix("/web/")
        if rel.startswith("vendor/"):
            assert rel.removeprefix("vendor/") in VENDOR, url
        else:
            assert (SRC / rel).is_file(), url


def test_our_modules_never_write_html_or_evaluate_strings() -> None:
    forbidden = re.compile(
        r"\.innerHTML\b|\.outerHTML\b|insertAdjacentHTML|document\.write|\beval\(|"
        r"new Function\b|setTimeout\(\s*[\"'`]|setInterval\(\s*[\"'`]"
    )
    found = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for path in _modules()
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if forbidden.search(line)
    ]
    assert found == []


def test_every_relative_import_names_a_file_that_exists() -> None:
    imports = re.compile(r"""^\s*(?:import|export)\b[^'"]*?from\s+["'](\.{1,2}/[^"']+)["']""", re.M)
    missing = []
    count = 0
    for path in _modules():
        for target in imports.findall(path.read_text()):
            count += 1
            if not (path.parent / target).resolve().is_file():
                missing.append(f"{path.relative_to(ROOT)} imports {target}")
    assert count > 10
    assert missing == []


def test_the_built_files_are_package_data() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    data = config["tool"]["setuptools"]["package-data"]["trioport.roles.proxy.webui"]
    assert "static/**/*" in data
    assert "/trioport/roles/proxy/webui/static/" in (ROOT / ".gitignore").read_text()
