"""Small helpers shared by the command-line tools: error printing and exit codes."""

from __future__ import annotations

import sys

from trioport.errors import TrioportError


def fail(message: str, code: int = 1) -> None:
    """Print ``message`` to stderr in the tools' one format and exit."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)


def run_main(fn, argv: list[str] | None) -> int:
    """Run a CLI body, turning our errors into one clear line and exit code 1."""
    try:
        return fn(argv) or 0
    except TrioportError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        return 130
    return 0
