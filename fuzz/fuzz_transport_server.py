"""Fuzz a server-side SSH Connection: from its first byte, and after a valid prefix.

See _ssh.py for the input format (two header bytes: stage, algorithms, feeding),
the peer that seals the fuzzed payloads with its real keys, and the invariant.
"""

from __future__ import annotations

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from _harness import main, tolerate_known_bugs
from _ssh import run

from trioport.sshproto import Role


def check(data: bytes) -> None:
    run(Role.SERVER, data)


TestOneInput = tolerate_known_bugs("transport_server", check)

if __name__ == "__main__":
    main(TestOneInput, "transport_server", instrument=("trioport",))
