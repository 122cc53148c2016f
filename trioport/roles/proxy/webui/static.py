"""The web UI's files, served from the package's ``webui/static`` directory.

The front end (``web/`` in the source tree) is built into that directory by its
build (``npm ci`` and ``node build.mjs``, run by ``setup.py``); the proxy serves
whatever is there under ``/web/``:

- ``/web/<file>``: the file, with its content type (``nosniff`` on every answer);
- ``/web/`` and any ``/web/<path>`` that is not a file: ``index.html``, so the
  single-page app can route by path;
- nothing built (no ``index.html``): a 503 page saying how to build it.

A path is resolved inside the directory and nowhere else: ``..``, backslashes,
NUL bytes, hidden files (a segment starting with ``.``) and symbolic links that
lead outside are refused (answered as "not a file"). Files are read in a worker
thread, at most :data:`MAX_FILE_BYTES` each.
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path
from urllib.parse import unquote

import trio

from .http import PAGE_CSP, WebResponse

__all__ = ["CONTENT_TYPES", "MAX_FILE_BYTES", "STATIC_DIR", "StaticFiles"]

#: Where the built front end is.
STATIC_DIR = Path(__file__).resolve().parent / "static"
#: The largest file served.
MAX_FILE_BYTES = 32 * 1024 * 1024

#: Content types by file extension (anything else is application/octet-stream).
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".map": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".txt": "text/plain; charset=utf-8",
    ".woff2": "font/woff2",
    ".woff": "font/woff",
}

_NOT_BUILT = b"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>trioport: web UI not built</title></head>
<body><h1>The web UI has not been built</h1>
<p>This proxy works (tsh and ssh can use it), but its browser front end is missing.
Build it from the source tree with Node.js: <code>cd web &amp;&amp; npm ci &amp;&amp;
npm run build</code> (or reinstall trioport: <code>pip install .</code> runs the build),
then reload this page.</p></body></html>
"""


class StaticFiles:
    """Serves the built front end from ``root`` (default :data:`STATIC_DIR`)."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root) if root is not None else STATIC_DIR

    def _resolve(self, url_path: str) -> Path | None:
        """The file ``url_path`` (below ``/web/``) names, or None if it names none."""
        rel = unquote(url_path.removeprefix("/web").lstrip("/"))
        if "\x00" in rel or "\\" in rel:
            return None
        parts = [p for p in rel.split("/") if p]
        if any(p == ".." or p.startswith(".") for p in parts):
            return None
        if not parts:
            return None
        root = self.root.resolve()
        candidate = (root / posixpath.join(*parts)).resolve()
        if root not in candidate.parents or not candidate.is_file():
            return None
        return candidate

    def _read(self, url_path: str) -> tuple[Path, bytes] | None:
        path = self._resolve(url_path)
        if path is None:
            path = self.root / "index.html"
            if not path.is_file():
                return None
        if path.stat().st_size > MAX_FILE_BYTES:
            return None
        return path, path.read_bytes()

    async def serve(self, url_path: str) -> WebResponse:
        """The answer to ``GET url_path`` (a path under ``/web``)."""
        try:
            found = await trio.to_thread.run_sync(self._read, url_path)
        except OSError:
            found = None
        if found is None:
            return WebResponse(
                503,
                _NOT_BUILT,
                "text/html; charset=utf-8",
                csp=PAGE_CSP,
                headers=(("retry-after", "60"),),
            )
        path, body = found
        content_type = CONTENT_TYPES.get(path.suffix.lower(), "application/octet-stream")
        # The page itself is never cached (it names the scripts); the rest is revalidated.
        cache = "no-store" if path.name == "index.html" else "no-cache"
        return WebResponse(200, body, content_type, csp=PAGE_CSP, cache_control=cache)
