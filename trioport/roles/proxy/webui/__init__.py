"""The proxy's web UI: browser sessions, its JSON API, the terminal websocket, static files.

- :mod:`.http`: requests and responses of the proxy's HTTPS loop, security headers;
- :mod:`.sessions`: web sessions (cookie, CSRF token, the user's certificate);
- :mod:`.app`: :class:`WebUI`, the JSON endpoints under ``/v1/webapi/`` and dispatch;
- :mod:`.terminal`: the terminal websocket (protocol ``trioport.terminal.v1``);
- :mod:`.static`: the built front end under ``/web/``;
- :mod:`.playback`: recordings as player events, and the enrolment QR code.
"""

from .app import WebUI

__all__ = ["WebUI"]
