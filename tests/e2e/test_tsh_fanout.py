"""``tsh ssh LOGIN@LABEL=VALUE COMMAND``: one command on every matching node, through the CLI.

As Teleport's tsh does, each line a node prints comes out prefixed with the
node's name (``[web1] line``), stdout to stdout and stderr to stderr, and the
exit status says whether it failed anywhere.
"""

from __future__ import annotations

from pathlib import Path

from tests.roles.proxy.cluster import LOGIN, open_cluster
from tests.test_tsh import login, text, tsh


async def test_a_label_selector_runs_the_command_on_every_matching_node(tmp_path: Path) -> None:
    async with open_cluster(tmp_path) as cluster:
        await cluster.add_node("web1", {"env": "prod", "team": "web"})
        db1 = await cluster.add_node("db1", {"env": "prod", "team": "db"})
        await cluster.add_node("dev1", {"env": "dev"})
        alice = await cluster.add_user("alice")
        home = tmp_path / "tsh"
        await login(cluster, home, alice)

        done = await tsh(
            cluster, home, "ssh", f"{LOGIN}@env=prod", "echo hello; echo two; echo warn >&2"
        )
        assert done.returncode == 0, text(done)
        out = done.stdout.decode().splitlines()
        assert sorted(out) == sorted(["[db1] hello", "[db1] two", "[web1] hello", "[web1] two"])
        assert out.index("[web1] hello") < out.index("[web1] two")  # each node's order kept
        assert sorted(done.stderr.decode().splitlines()) == ["[db1] warn", "[web1] warn"]
        assert "dev1" not in text(done)

        # The node's port tells the two apart: the command fails on db1 only.
        fail_on_db1 = f'case "$SSH_CONNECTION" in *" {db1.addr.port}") exit 3;; esac; echo ok'
        done = await tsh(cluster, home, "ssh", f"{LOGIN}@env=prod", fail_on_db1)
        assert done.returncode == 3
        assert done.stdout.decode().splitlines() == ["[web1] ok"]
        assert "the command failed on 1 of 2 nodes: db1 (exit status 3)" in text(done)

        # A partial last line is still printed, as its own line.
        done = await tsh(cluster, home, "ssh", "team=db", "printf 'no newline'")
        assert done.stdout == b"no newline"  # one node: no prefix, as plain tsh ssh
        done = await tsh(cluster, home, "ssh", "env=prod", "printf 'no newline'")
        assert sorted(done.stdout.decode().splitlines()) == [
            "[db1] no newline",
            "[web1] no newline",
        ]

        # -A reaches every node: each session gets its own forwarded agent socket.
        done = await tsh(
            cluster,
            home,
            *("ssh", "-A", "env=prod", 'test -S "$SSH_AUTH_SOCK" && echo agent'),
            env={"SSH_AUTH_SOCK": str(tmp_path / "agent.sock")},
        )
        assert done.returncode == 0, text(done)
        assert sorted(done.stdout.decode().splitlines()) == ["[db1] agent", "[web1] agent"]

        nothing = await tsh(cluster, home, "ssh", "env=staging", "true")
        assert nothing.returncode == 255
        assert "no node you can reach has the labels env=staging" in text(nothing)
        assert "db1, dev1, web1" in text(nothing)
        shell = await tsh(cluster, home, "ssh", "env=prod")
        assert shell.returncode == 255
        assert "env=prod matches several nodes (db1, web1); give a command" in text(shell)
