"""Run a command as a child subreaper, so CPU time of orphaned descendants is counted.

    python3 bench/reaper.py COMMAND [ARGS...]

sshd's privileged monitor exits without waiting for its unprivileged child (the
process that does the connection's cryptography), so that process is reparented
and its CPU time never reaches the sshd listener's ``cutime``. Run under this
wrapper (``PR_SET_CHILD_SUBREAPER``), such orphans are reparented here instead and
reaped here, so their CPU time lands in *this* process's ``cutime``. Prints
``{"pid": N}`` (the command's pid) and exits with the command's status.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys

from benchlib import emit

PR_SET_CHILD_SUBREAPER = 36


def main() -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise SystemExit(f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(ctypes.get_errno())}")
    child = subprocess.Popen(sys.argv[1:])
    signal.signal(signal.SIGTERM, lambda *_: child.terminate())
    emit({"pid": child.pid})
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            return 0
        if pid == child.pid:
            child.returncode = os.waitstatus_to_exitcode(status)
            return child.returncode


if __name__ == "__main__":
    raise SystemExit(main())
