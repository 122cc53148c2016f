"""``tsh scp``'s progress bar: on a terminal, one line per file; nothing when piped or with -q.

The terminal is a real pty (pexpect); the cluster runs in the test's trio loop
(:mod:`tests.roles.proxy.cluster`) with a node service that serves ``sftp``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pexpect
import trio

from tests.roles.proxy.cluster import open_cluster, tsh_env
from tests.test_tsh import TSH, login, text, tsh
from trioport.roles.proxy.transfer import format_progress, human_size

#: What the last redraw of a finished 4 MiB file looks like.
DONE_LINE = rb"big\.bin +100%  4\.0 MiB / 4\.0 MiB  [0-9.]+ (B|KiB|MiB|GiB)/s\r\n"


def test_the_progress_line_shows_name_percent_bytes_and_rate() -> None:
    line = format_progress("big.bin", 3 * 1024 * 1024, 4 * 1024 * 1024, 2.0, width=79)
    assert re.fullmatch(r"big\.bin +75%  3\.0 MiB / 4\.0 MiB  1\.5 MiB/s", line)
    assert len(line) <= 79
    assert format_progress("empty", 0, 0, 0.0).split()[1] == "100%"
    long_name = "a-very-long-directory-name/" * 5 + "file.txt"
    squeezed = format_progress(long_name, 10, 20, 1.0, width=60)
    assert len(squeezed) <= 60 and squeezed.startswith("...") and "file.txt" in squeezed
    assert [human_size(n) for n in (0, 1023, 1024, 5 * 1024**3)] == [
        "0 B",
        "1023 B",
        "1.0 KiB",
        "5.0 GiB",
    ]


async def test_scp_draws_a_progress_bar_on_a_terminal_only(tmp_path: Path) -> None:
    async with open_cluster(tmp_path) as cluster:
        await cluster.add_node("web1")
        ivan = await cluster.add_user("ivan")
        home = tmp_path / "tsh"
        await login(cluster, home, ivan)
        payload = os.urandom(4 * 1024 * 1024)
        local = tmp_path / "big.bin"
        local.write_bytes(payload)
        remote = tmp_path / "remote"
        remote.mkdir()
        env = tsh_env(home, SSL_CERT_FILE=str(cluster.https_cert))

        def on_a_terminal(*args: str) -> tuple[int, bytes]:
            child = pexpect.spawn(TSH[0], [*TSH[1:], *args], env=env, timeout=60)
            try:
                child.expect(pexpect.EOF)
                output = child.before
            finally:
                child.close()
            return int(child.exitstatus), output

        status, shown = await trio.to_thread.run_sync(
            on_a_terminal, "scp", str(local), f"web1:{remote}"
        )
        assert status == 0, shown
        assert re.search(DONE_LINE, shown), shown
        assert (remote / "big.bin").read_bytes() == payload

        back = tmp_path / "back"
        back.mkdir()
        status, shown = await trio.to_thread.run_sync(
            on_a_terminal, "scp", f"web1:{remote}/big.bin", str(back)
        )
        assert status == 0, shown
        assert re.search(DONE_LINE, shown), shown
        assert (back / "big.bin").read_bytes() == payload

        status, shown = await trio.to_thread.run_sync(
            on_a_terminal, "scp", "-q", str(local), f"web1:{remote}/quiet.bin"
        )
        assert status == 0 and b"%" not in shown and shown.strip() == b"", shown

        piped = await tsh(cluster, home, "scp", str(local), f"web1:{remote}/piped.bin")
        assert piped.returncode == 0, text(piped)
        assert piped.stdout == b"" and b"%" not in piped.stderr
        assert (remote / "piped.bin").read_bytes() == payload
