"""Fixtures for the auth service tests: a fake wall clock, backends, an auth server.

Wall time (what expiry, TOTP, lockout and certificate validity read) is a
:class:`FakeClock` that only moves when a test says so, shared by the backend and
the auth service. trio's own clock is the autojump MockClock wherever a test
requests ``autojump_clock``, so background sweepers never cost real time.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pyotp
import pytest

from trioport.roles.auth.server import AuthServer, open_auth_server
from trioport.store import open_memory_backend, open_sqlite_backend
from trioport.store.backend import Backend

#: 2023-11-14T22:13:20Z: a fixed start, far from a TOTP step boundary.
START = 1_700_000_000.0
CLUSTER = "example.test"
#: bcrypt's lowest cost, so tests stay fast (production uses 12).
TEST_BCRYPT_COST = 4
SSH_KEYGEN = shutil.which("ssh-keygen") or "/usr/bin/ssh-keygen"


class FakeClock:
    """A wall clock that moves only when told to."""

    def __init__(self, start: float = START) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def totp_now(secret: str, clock: FakeClock, steps: int = 0) -> str:
    """The TOTP code an authenticator shows at ``clock`` (``steps`` steps later)."""
    return pyotp.TOTP(secret).at(clock.now + 30 * steps)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def backend(clock: FakeClock) -> AsyncIterator[Backend]:
    async with open_memory_backend(clock=clock, sweep_interval=1.0) as memory:
        yield memory


@pytest.fixture(params=["memory", "sqlite"])
async def any_backend(
    request: pytest.FixtureRequest, clock: FakeClock, tmp_path: Path
) -> AsyncIterator[Backend]:
    """The memory backend and the SQLite one in turn."""
    if request.param == "memory":
        async with open_memory_backend(clock=clock, sweep_interval=1.0) as memory:
            yield memory
    else:
        async with open_sqlite_backend(
            tmp_path / "store", clock=clock, poll_interval=0.05, sweep_interval=1.0
        ) as sqlite:
            yield sqlite


@pytest.fixture
async def auth(backend: Backend, tmp_path: Path) -> AsyncIterator[AuthServer]:
    async with open_auth_server(
        backend, data_dir=tmp_path / "data", cluster_name=CLUSTER, bcrypt_cost=TEST_BCRYPT_COST
    ) as server:
        yield server
