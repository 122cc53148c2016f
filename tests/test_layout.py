"""The package layout keeps its promises (DESIGN.md)."""

from __future__ import annotations

import ast
import pathlib
import tomllib

ROOT = pathlib.Path(__file__).resolve().parent.parent

#: Modules that would let the sans-IO core read a clock, the OS RNG, a socket or
#: spawn threads. Time and randomness are parameters of the core.
FORBIDDEN_IN_SSHPROTO = {"trio", "socket", "time", "threading", "asyncio", "random", "selectors"}


def _imports(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_sshproto_does_no_io_and_reads_no_clock_or_rng() -> None:
    offenders = []
    for path in sorted((ROOT / "trioport" / "sshproto").rglob("*.py")):
        for name in _imports(path):
            top = name.split(".")[0]
            if top in FORBIDDEN_IN_SSHPROTO | {"secrets"} or name == "os.urandom":
                offenders.append(f"{path.relative_to(ROOT)} imports {name}")
        text = path.read_text()
        if "urandom" in text:
            offenders.append(f"{path.relative_to(ROOT)} mentions urandom")
    assert offenders == []


def test_every_package_folder_is_installed() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = set(config["tool"]["setuptools"]["packages"])
    found = {
        ".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "trioport").rglob("__init__.py")
    }
    assert found <= listed
    assert "trioport_cli" in listed
