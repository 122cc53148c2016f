"""Every kex x cipher/MAC x host-key algorithm trioport shares with OpenSSH 9.2, both ways.

One test per direction walks the whole cross product (defaults and the algorithms
that are off by default, switched on), a few connections at a time, and reports
every combination that failed rather than stopping at the first.
"""

from __future__ import annotations

import itertools

import pytest
import trio

from trioport.ssh import connect
from trioport.sshproto import ConnectionConfig, HostKey, Role
from trioport.sshproto.keys import PrivateKey

from .conftest import ssh_command
from .test_ssh_to_trioport import CIPHER_MAC_PAIRS, KEXES, everything_enabled

pytestmark = pytest.mark.interop

#: Host-key algorithms both implement, with the key type each needs.
HOST_KEY_ALGORITHMS = {
    "ssh-ed25519": "ssh-ed25519",
    "rsa-sha2-512": "ssh-rsa",
    "rsa-sha2-256": "ssh-rsa",
    "ssh-rsa": "ssh-rsa",
    "ecdsa-sha2-nistp256": "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384": "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521": "ecdsa-sha2-nistp521",
}
#: sshd's test host keys (tests/interop/conftest.py) cover these.
SSHD_HOST_KEY_ALGORITHMS = [
    a
    for a, t in HOST_KEY_ALGORITHMS.items()
    if t in ("ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256")
]
PARALLEL = 4


async def run_all(combos, attempt) -> list[str]:
    failures: list[str] = []
    limiter = trio.CapacityLimiter(PARALLEL)

    async def one(combo) -> None:
        async with limiter:
            try:
                await attempt(*combo)
            except Exception as exc:  # collect, report all at the end
                failures.append(f"{combo}: {type(exc).__name__}: {exc}"[:300])

    async with trio.open_nursery() as nursery:
        for combo in combos:
            nursery.start_soon(one, combo)
    return failures


async def test_openssh_client_against_our_server_every_combination(
    trioport_server, user_key
) -> None:
    keys = [
        PrivateKey.generate(t, bits=3072) if t == "ssh-rsa" else PrivateKey.generate(t)
        for t in sorted(set(HOST_KEY_ALGORITHMS.values()))
    ]
    config = everything_enabled(keys[0])
    config = ConnectionConfig(
        role=Role.SERVER,
        host_keys=[HostKey(k) for k in keys],
        kex_algorithms=config.kex_algorithms,
        ciphers=config.ciphers,
        macs=config.macs,
        host_key_algorithms=config.host_key_algorithms,
    )
    server = await trioport_server(config=config)
    combos = list(itertools.product(KEXES, CIPHER_MAC_PAIRS, HOST_KEY_ALGORITHMS))

    async def attempt(kex: str, cipher_mac: tuple[str, str], host_key: str) -> None:
        cipher, mac = cipher_mac
        options = {
            "KexAlgorithms": kex,
            "Ciphers": cipher,
            "MACs": mac,
            "HostKeyAlgorithms": host_key,
        }
        with trio.fail_after(60):
            result = await trio.run_process(
                ssh_command(server.port, user_key.path, "echo ok", options=options),
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
        if result.returncode != 0 or result.stdout != b"ok\n":
            raise AssertionError(result.stderr.decode(errors="replace")[-200:])

    failures = await run_all(combos, attempt)
    assert failures == [], f"{len(failures)} of {len(combos)} failed: {failures[:5]}"


async def test_our_client_against_sshd_every_combination(sshd, user_key) -> None:
    server = sshd(
        {
            "KexAlgorithms": ",".join(KEXES),
            "Ciphers": ",".join(sorted({c for c, _ in CIPHER_MAC_PAIRS})),
            "MACs": ",".join(sorted({m for _, m in CIPHER_MAC_PAIRS})),
            "HostKeyAlgorithms": ",".join(SSHD_HOST_KEY_ALGORITHMS),
        }
    )
    combos = list(itertools.product(KEXES, CIPHER_MAC_PAIRS, SSHD_HOST_KEY_ALGORITHMS))

    async def attempt(kex: str, cipher_mac: tuple[str, str], host_key: str) -> None:
        cipher, mac = cipher_mac
        config = ConnectionConfig(
            role=Role.CLIENT,
            kex_algorithms=[kex],
            ciphers=[cipher],
            macs=[mac],
            host_key_algorithms=[host_key],
        )
        with trio.fail_after(60):
            async with connect(
                "127.0.0.1", server.port, username="root", signers=[user_key.key], config=config
            ) as conn:
                result = await conn.run("echo ok")
                got = (
                    conn.negotiated["kex"],
                    conn.negotiated["cipher_c2s"],
                    conn.negotiated["host_key"],
                )
        if result.stdout != b"ok\n" or got != (kex, cipher, host_key):
            raise AssertionError(f"ran {result!r} with {got}")

    failures = await run_all(combos, attempt)
    assert failures == [], f"{len(failures)} of {len(combos)} failed: {failures[:5]}"
