"""``tsh sessions``, ``tsh join`` and ``tsh play``: live and recorded sessions.

(Being built; this module registers its subcommands with tsh's parser.)
"""

from __future__ import annotations

import argparse


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register this module's subcommands on tsh's parser."""
