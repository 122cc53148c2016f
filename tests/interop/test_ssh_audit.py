"""ssh-audit (PyPI) judges our server's defaults: no failures, and a hardened policy passes."""

from __future__ import annotations

import pathlib
import re
import shutil
import sys

import pytest
import trio

from trioport.sshproto import ConnectionConfig, HostKey, Role
from trioport.sshproto.keys import PrivateKey

pytestmark = pytest.mark.interop

POLICY = pathlib.Path(__file__).parent / "data" / "hardened.policy"


def ssh_audit() -> list[str]:
    exe = shutil.which("ssh-audit")
    return [exe] if exe else [sys.executable, "-m", "ssh_audit"]


async def audit(*args: str) -> trio.CompletedProcess:
    with trio.fail_after(120):
        return await trio.run_process(
            [*ssh_audit(), *args], capture_stdout=True, capture_stderr=True, check=False
        )


def strip_ansi(text: bytes) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text.decode(errors="replace"))


async def test_defaults_have_no_failures(trioport_server) -> None:
    # An Ed25519 and an RSA-3072 host key, as a cluster node would hold.
    keys = [PrivateKey.generate("ssh-ed25519"), PrivateKey.generate("ssh-rsa", bits=3072)]
    server = await trioport_server(
        config=ConnectionConfig(role=Role.SERVER, host_keys=[HostKey(k) for k in keys])
    )
    result = await audit("-n", "-p", str(server.port), "127.0.0.1")
    report = strip_ansi(result.stdout)
    assert "(kex) curve25519-sha256" in report
    assert "(kex) mlkem768x25519-sha256" in report
    assert "(kex) kex-strict-s-v00@openssh.com" in report
    failures = [line for line in report.splitlines() if "-- [fail]" in line]
    assert failures == []
    # The only warnings ssh-audit may raise are about curve25519 not being
    # post-quantum; the hybrid mlkem768x25519-sha256 is offered first.
    warnings = [line for line in report.splitlines() if "-- [warn]" in line]
    assert all("post-quantum" in line for line in warnings), warnings


async def test_hardened_policy_passes(trioport_server) -> None:
    keys = [PrivateKey.generate("ssh-ed25519"), PrivateKey.generate("ssh-rsa", bits=3072)]
    server = await trioport_server(
        config=ConnectionConfig(role=Role.SERVER, host_keys=[HostKey(k) for k in keys])
    )
    result = await audit("-n", "-P", str(POLICY), "-p", str(server.port), "127.0.0.1")
    report = strip_ansi(result.stdout)
    assert "Passed" in report, report
    assert result.returncode == 0, report


async def test_policy_catches_a_weakened_server(trioport_server) -> None:
    # The same check fails once SHA-1 MACs are switched on: the policy has teeth.
    server = await trioport_server(
        config=ConnectionConfig(
            role=Role.SERVER,
            host_keys=[HostKey(PrivateKey.generate("ssh-ed25519"))],
            macs=["hmac-sha2-256-etm@openssh.com", "hmac-sha1"],
        )
    )
    result = await audit("-n", "-P", str(POLICY), "-p", str(server.port), "127.0.0.1")
    report = strip_ansi(result.stdout)
    assert "Failed" in report and "hmac-sha1" in report, report
    assert result.returncode != 0
