"""Bugs the resources and auth API fuzz targets found, replayed as strict xfails.

``fuzz/fuzz_resources.py`` and ``fuzz/fuzz_authapi.py`` keep their known bugs in
their own ``KNOWN_BUGS`` (the shared registry in ``fuzz/_harness.py`` belongs to
the other targets), with each crash input in ``BUG_INPUTS``. Here every one is
replayed through the target's unfiltered ``check``: it must still fail the way
it was recorded. Once the library is fixed the test passes, the build fails, and
the entry goes (its input stays in the corpus as a seed).

A hang is not replayed by the clock: the audit-log search that hangs is checked
by counting the files it probes.
"""

from __future__ import annotations

import importlib.util
import pathlib
import sys
from types import ModuleType

import pytest
import trio

from trioport.roles.auth import audit_log
from trioport.roles.auth.audit_log import AuditLog

FUZZ = pathlib.Path(__file__).resolve().parent.parent / "fuzz"
NOW = 1_700_000_000.0


_LOADED: dict[str, ModuleType] = {}


def _load(name: str) -> ModuleType:
    """The target module, loaded once (so its exception classes are the ones expected)."""
    if name in _LOADED:
        return _LOADED[name]
    sys.path.insert(0, str(FUZZ))
    try:
        spec = importlib.util.spec_from_file_location(f"fuzz_found_{name}", FUZZ / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _LOADED[name] = module
        return module
    finally:
        sys.path.remove(str(FUZZ))


def _params(target: str) -> list[object]:
    module = _load(target)
    params = []
    for bug in module.KNOWN_BUGS:
        if bug.exception.__name__ == "Hang":
            continue  # see test_a_long_search_probes_only_the_files_that_exist
        mark = pytest.mark.xfail(strict=True, raises=bug.exception, reason=bug.reason)
        data = module.BUG_INPUTS[bug.crash]
        params.append(pytest.param(target, bug.crash, data, marks=mark, id=bug.crash))
    return params


def _all_params() -> list[object]:
    found = _params("fuzz_resources") + _params("fuzz_authapi")
    # With every bug fixed, one case checks the registries really are empty (a
    # parametrization with no cases would be reported as skipped).
    return found or [pytest.param(None, None, None, id="no-known-bugs")]


@pytest.mark.parametrize(("target", "crash", "data"), _all_params())
def test_recorded_input_still_fails(target: str | None, crash: str, data: bytes) -> None:
    if target is None:
        assert not _load("fuzz_resources").KNOWN_BUGS
        assert not _load("fuzz_authapi").KNOWN_BUGS
        return
    module = _load(target)
    assert (module.CORPUS / module.NAME / crash).read_bytes() == data
    module.check(data)


async def test_a_long_search_probes_only_the_files_that_exist(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = AuditLog(tmp_path / "log", clock=lambda: NOW)
    try:
        await log.emit(audit_log.USER_LOGIN, user="alice", success=True)
        probes = 0
        real_exists = trio.Path.exists

        async def counting_exists(self: trio.Path) -> bool:
            nonlocal probes
            probes += 1
            return await real_exists(self)

        monkeypatch.setattr(trio.Path, "exists", counting_exists)
        # Ten years back: what an auditor asks when she wants "everything".
        found = await log.search(since=NOW - 10 * 365 * 86400, until=NOW + 1)
        assert [e.spec.event for e in found] == ["user.login"]
        assert probes <= 10, f"{probes} files probed for one day of events"
    finally:
        await log.aclose()
