"""setuptools build hook: build the web UI into the package before the package is built.

Everything else about the package is in ``pyproject.toml``. The web UI's sources
live in ``web/src`` and its third-party parts (xterm.js and its fit addon) come
from the npm registry, pinned by ``web/package-lock.json``. Neither the npm
packages nor the built files are committed: ``trioport/roles/proxy/webui/static``
is made here, by ``npm ci`` (the lockfile's exact versions) and ``node build.mjs``
(which copies our sources and the vendor files into it), and shipped as package
data.

So README's one command, ``python3 -m pip install . && trioport run``, builds the
UI on a fresh machine that has Node.js and npm, and so does ``pip install -e .``
(setuptools runs ``build_py`` in editable mode too, where it copies nothing, but
our step runs first either way).

The build runs only when the static folder is missing or stale: a hash of every
input (the sources, the lockfile, build.mjs) is written beside the built files and
compared on the next install. Building from a tree without ``web/`` (an sdist with
the static files already in it) skips the step. ``TRIOPORT_SKIP_WEB_BUILD=1``
installs without the web UI (the proxy then answers ``/web/`` with a message saying
so); without it, a missing Node.js is an error that says what to install.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
WEB = ROOT / "web"
STATIC = ROOT / "trioport" / "roles" / "proxy" / "webui" / "static"
STAMP = ".build-inputs"


def web_inputs_hash() -> str:
    """A hash over every file the built UI is made from (names and contents)."""
    digest = hashlib.sha256()
    files = [WEB / "package.json", WEB / "package-lock.json", WEB / "build.mjs"]
    files += sorted(p for p in (WEB / "src").rglob("*") if p.is_file())
    for path in files:
        digest.update(str(path.relative_to(WEB)).encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def build_web(log=print) -> None:
    """Build the web UI into the package's static folder unless it is up to date."""
    if os.environ.get("TRIOPORT_SKIP_WEB_BUILD") or not (WEB / "package-lock.json").exists():
        return
    wanted = web_inputs_hash()
    stamp = STATIC / STAMP
    if stamp.exists() and stamp.read_text().strip() == wanted:
        return
    npm = shutil.which("npm")
    node = shutil.which("node")
    if not (npm and node):
        raise SystemExit(
            "trioport: building the web UI needs Node.js and npm (Debian: apt-get install "
            "nodejs npm); or set TRIOPORT_SKIP_WEB_BUILD=1 to install without the web UI"
        )
    log("trioport: building the web UI (npm ci, node build.mjs)")
    subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=WEB, check=True)
    subprocess.run([node, "build.mjs"], cwd=WEB, check=True)
    stamp.write_text(wanted + "\n")


class BuildPyWithWeb(build_py):
    """``build_py`` that builds the web UI first, so its files are there to be copied."""

    def run(self) -> None:
        build_web(log=self.announce)
        super().run()


setup(cmdclass={"build_py": BuildPyWithWeb})
