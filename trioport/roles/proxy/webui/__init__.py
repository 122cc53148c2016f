"""The proxy's web UI: browser sessions, its JSON API, the terminal websocket, static files."""
