"""The configuration files docs/ha.md shows are valid as written."""

from __future__ import annotations

import pathlib
import re

from trioport.config import apply_flags, loads_config

DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "ha.md"


def test_every_configuration_in_the_ha_guide_loads() -> None:
    blocks = re.findall(r"```yaml\n(.*?)```", DOC.read_text(), re.S)
    assert len(blocks) == 3  # auth-a, a node, a proxy
    configs = [apply_flags(loads_config(block, source="docs/ha.md")) for block in blocks]
    auth, node, proxy = configs
    assert auth.enabled_services() == ["auth"]
    assert auth.teleport.storage.type == "etcd"
    assert len(auth.teleport.storage.peers) == 3
    assert node.enabled_services() == ["node"]
    assert proxy.enabled_services() == ["proxy"]
    for config in (node, proxy):
        assert [str(a) for a in config.teleport.auth_servers] == [
            "10.0.0.21:3025",
            "10.0.0.22:3025",
        ]
