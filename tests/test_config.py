"""The configuration file: defaults, the documented example, every refusal, and flags."""

from __future__ import annotations

import datetime as dt
import pathlib
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trioport import config as c
from trioport import resources as r
from trioport.errors import ConfigError

DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs"


def yaml_blocks(name: str) -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", (DOCS / name).read_text(), re.S)


# --- defaults and the documented example --------------------------------------------


def test_defaults_are_teleports_ports_and_safe_limits() -> None:
    cfg = c.Config.default("/srv/tp")
    assert cfg.teleport.data_dir == "/srv/tp"
    assert str(cfg.auth_service.listen_addr) == "0.0.0.0:3025"
    assert str(cfg.ssh_service.listen_addr) == "0.0.0.0:3022"
    assert str(cfg.proxy_service.listen_addr) == "0.0.0.0:3023"
    assert str(cfg.proxy_service.web_listen_addr) == "0.0.0.0:3080"
    assert cfg.enabled_services() == ["auth", "proxy", "node"]
    assert cfg.teleport.storage.type == "sqlite"
    assert cfg.storage_path == "/srv/tp/backend/sqlite.db"
    assert cfg.cluster_name == cfg.teleport.nodename != ""
    assert cfg.auth_service.session_recording == "node"
    assert cfg.auth_service.authentication.second_factor == "otp"
    lim = cfg.teleport.connection_limits
    assert lim.login_grace_time <= dt.timedelta(seconds=60)
    assert lim.client_idle_timeout == dt.timedelta(minutes=15)
    assert lim.max_unauthenticated_per_source <= lim.max_unauthenticated
    assert lim.keep_alive_count_max == 3
    c.validate_config(cfg)


def test_an_empty_file_means_every_default(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing here\n")
    assert c.load_config(path) == c.Config()


def test_the_complete_example_in_the_docs_loads(tmp_path: pathlib.Path) -> None:
    (example,) = yaml_blocks("config.md")
    path = tmp_path / "trioport.yaml"
    path.write_text(example)
    cfg = c.load_config(path)
    c.validate_config(cfg)
    g = cfg.teleport
    assert g.nodename == "db1" and cfg.cluster_name == "example.com"
    assert g.auth_token == "0123456789abcdef"
    assert g.auth_servers == [c.Address("auth.example.com", 3025)]
    assert g.diag_addr == c.Address("127.0.0.1", 3000)
    assert cfg.storage_path == "/var/lib/trioport/backend/sqlite.db"
    assert [str(t) for t in cfg.auth_service.tokens] == [
        "node:static-node-token-0123456789",
        "node,proxy:static-shared-token-abcdef",
    ]
    assert cfg.auth_service.tokens[1].roles == ("node", "proxy")
    assert cfg.ssh_service.labels == {"env": "prod", "team": "db"}
    (arch,) = cfg.ssh_service.commands
    assert (arch.name, arch.command, arch.period) == (
        "arch",
        ["uname", "-m"],
        dt.timedelta(hours=1),
    )
    assert cfg.proxy_service.public_addr == c.Address("proxy.example.com", 3080)
    # Every key in the example is written out: nothing documented is left at a hidden default.
    assert c.loads_config(c.dump_config(cfg)) == cfg


def test_the_resource_examples_in_the_docs_load() -> None:
    blocks = yaml_blocks("resources.md")
    loaded = [r.from_yaml(b, source="docs/resources.md") for b in blocks]
    assert [type(x).__name__ for x in loaded] == ["Role", "Role", "User", "Token"]
    assert loaded[1] == r.preset_roles()["access"]


def test_dump_and_load_round_trip_a_changed_config() -> None:
    cfg = c.apply_flags(
        c.Config.default("/d"),
        roles="node",
        auth_servers="a.example.com,[::1]:4000",
        token="tok-123456",
        labels="env=dev",
        diag_addr="127.0.0.1:0",
    )
    assert c.loads_config(c.dump_config(cfg)) == cfg


def test_secrets_are_masked_in_repr() -> None:
    cfg = c.loads_config(
        "teleport: {auth_token: supersecrettoken}\n"
        "auth_service: {tokens: [node:othersecretvalue]}\n"
    )
    text = repr(cfg)
    assert "supersecrettoken" not in text and "othersecretvalue" not in text
    assert "tokn" in text or "oken" in text  # the last quarter stays, to tell tokens apart


# --- refusals ---------------------------------------------------------------------

REFUSALS = [
    # (file text, "line: key: message")
    (
        "teleport:\n  nodname: x\n",
        "2: teleport.nodname: unknown key (expected one of: auth_servers, auth_token, "
        "connection_limits, data_dir, diag_addr, log, nodename, storage)",
    ),
    ("teleprot: {}\n", "1: teleprot: unknown key"),
    ("version: v3\n", "1: version: expected one of: v1 (got 'v3')"),
    ("teleport: []\n", "1: teleport: expected a mapping, got a list"),
    ("teleport:\n  nodename: a/b\n", "2: teleport.nodename: name must not contain '/'"),
    (
        "teleport:\n  auth_servers: auth:3025\n",
        "2: teleport.auth_servers: expected a list of host:port strings",
    ),
    (
        "teleport:\n  auth_servers:\n    - ok\n    - 'bad host'\n",
        "4: teleport.auth_servers[1]: not a host name or IP address",
    ),
    (
        "teleport:\n  auth_servers: ['a:0']\n",
        "teleport.auth_servers[0]: the port must be a number from 1 to 65535",
    ),
    ("teleport:\n  diag_addr: 3000\n", "teleport.diag_addr: expected host:port as a string"),
    (
        "teleport:\n  storage:\n    type: dynamodb\n",
        "3: teleport.storage.type: expected one of: sqlite, etcd (got 'dynamodb')",
    ),
    (
        "teleport:\n  storage:\n    type: etcd\n",
        "2: teleport.storage.peers: type etcd needs at least one peer URL",
    ),
    (
        "teleport:\n  storage:\n    type: etcd\n    peers: [etcd1:2379]\n",
        "4: teleport.storage.peers[0]: expected a URL like https://host:2379",
    ),
    (
        "teleport:\n  storage:\n    peers: [https://e:2379]\n",
        "3: teleport.storage.peers: only used with type: etcd",
    ),
    (
        "teleport:\n  storage:\n    type: etcd\n    peers: [https://e:2379]\n"
        "    tls_cert_file: c.pem\n",
        "teleport.storage.tls_key_file: give tls_cert_file and tls_key_file together",
    ),
    (
        "teleport:\n  log:\n    severity: loud\n",
        "3: teleport.log.severity: expected one of: DEBUG, INFO, WARN, ERROR",
    ),
    (
        "teleport:\n  connection_limits:\n    login_grace_time: 30\n",
        "3: teleport.connection_limits.login_grace_time: expected a duration",
    ),
    (
        "teleport:\n  connection_limits:\n    login_grace_time: 0s\n",
        "3: teleport.connection_limits.login_grace_time: must be at least 1s",
    ),
    (
        "teleport:\n  connection_limits:\n    max_connections: 0\n",
        "3: teleport.connection_limits.max_connections: must be at least 1",
    ),
    (
        "teleport:\n  connection_limits:\n    max_connections: '10'\n",
        "teleport.connection_limits.max_connections: expected an integer, got a string",
    ),
    (
        "teleport:\n  connection_limits:\n    max_unauthenticated: 5\n",
        "teleport.connection_limits.max_unauthenticated_per_source: "
        "must not exceed max_unauthenticated",
    ),
    ("teleport:\n  auth_token: ''\n", "2: teleport.auth_token: must not be empty"),
    (
        "auth_service:\n  enabled: 'yes'\n",
        "2: auth_service.enabled: expected true or false, got a string",
    ),
    (
        "auth_service:\n  listen_addr: 'a:b'\n",
        "2: auth_service.listen_addr: the port must be a number",
    ),
    (
        "auth_service:\n  listen_addr: '::1'\n",
        "auth_service.listen_addr: write an IPv6 address in brackets",
    ),
    ("auth_service:\n  tokens: [abc]\n", "2: auth_service.tokens[0]: expected 'ROLES:TOKEN'"),
    (
        "auth_service:\n  tokens: ['admin:abc']\n",
        "auth_service.tokens[0]: unknown role 'admin' (expected node, proxy or auth)",
    ),
    (
        "auth_service:\n  tokens: ['node:']\n",
        "auth_service.tokens[0]: the token after ':' must not be empty",
    ),
    (
        "auth_service:\n  session_recording: proxy\n",
        "auth_service.session_recording: expected one of: node, off (got 'proxy')",
    ),
    (
        "auth_service:\n  authentication:\n    second_factor: off\n",
        "3: auth_service.authentication.second_factor: expected one of: otp",
    ),
    (
        "ssh_service:\n  lables: {}\n",
        "2: ssh_service.lables: unknown key "
        "(expected one of: commands, enabled, labels, listen_addr)",
    ),
    (
        "ssh_service:\n  labels:\n    env: 1\n",
        "3: ssh_service.labels.env: expected a string, got a number",
    ),
    (
        "ssh_service:\n  labels:\n    'bad key': x\n",
        "ssh_service.labels['bad key']: a label key may only contain",
    ),
    (
        "ssh_service:\n  commands:\n    - name: arch\n      command: uname\n",
        "4: ssh_service.commands[0].command: expected a list, got a string",
    ),
    (
        "ssh_service:\n  commands:\n    - name: arch\n      command: [uname]\n      perod: 1m\n",
        "5: ssh_service.commands[0].perod: unknown key",
    ),
    (
        "ssh_service:\n  commands:\n    - name: arch\n      command: []\n",
        "ssh_service.commands[0].command: must name a program to run",
    ),
    (
        "ssh_service:\n  commands:\n    - {name: a, command: [x], period: 0s}\n",
        "ssh_service.commands[0].period: must be at least 1s",
    ),
    (
        "ssh_service:\n  labels: {a: b}\n  commands:\n    - {name: a, command: [x]}\n",
        "4: ssh_service.commands[0].name: label 'a' is defined twice",
    ),
    (
        "ssh_service:\n  commands:\n    - {command: [x]}\n",
        "3: ssh_service.commands[0].name: required key missing",
    ),
    (
        "proxy_service:\n  https_cert_file: cert.pem\n",
        "1: proxy_service.https_key_file: give https_cert_file and https_key_file together",
    ),
    (
        "proxy_service:\n  public_addr: 'https://proxy'\n",
        "proxy_service.public_addr: expected host:port, not a URL",
    ),
    (
        "proxy_service:\n  web_listen_addr: '[::1'\n",
        "proxy_service.web_listen_addr: missing ']' after an IPv6 address",
    ),
    ("teleport:\n  nodename: a\nteleport:\n  nodename: b\n", "3: duplicate key 'teleport'"),
    ("teleport:\n  nodename: [a\n", "invalid YAML"),
    ("a: 1\n---\nb: 2\n", "expected one YAML document, found several"),
    ("- teleport\n", "expected a mapping, got a list"),
]


@pytest.mark.parametrize(("text", "expected"), REFUSALS)
def test_bad_files_are_refused_naming_file_line_and_key(
    tmp_path: pathlib.Path, text: str, expected: str
) -> None:
    path = tmp_path / "trioport.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        c.load_config(path)
    first = str(info.value).splitlines()[0]
    assert first.startswith(str(path))
    assert expected in first
    assert info.value.path == str(path)


def test_all_problems_are_reported_in_file_order(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text(
        "teleport:\n"
        "  nodename: ok\n"
        "  data_dri: /x\n"
        "auth_service:\n"
        "  listen_addr: 'a:b'\n"
        "ssh_service:\n"
        "  labels: {env: 3}\n"
    )
    with pytest.raises(ConfigError) as info:
        c.load_config(path)
    lines = str(info.value).splitlines()
    assert [line.split(": ")[0:2] for line in lines] == [
        [f"{path}:3", "teleport.data_dri"],
        [f"{path}:5", "auth_service.listen_addr"],
        [f"{path}:7", "ssh_service.labels.env"],
    ]
    assert (info.value.line, info.value.key) == (3, "teleport.data_dri")


def test_an_unreadable_file_is_a_config_error(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ConfigError, match=r"missing\.yaml: cannot read the file: No such file"):
        c.load_config(tmp_path / "missing.yaml")
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00junk")
    with pytest.raises(ConfigError, match="not UTF-8"):
        c.load_config(binary)


def test_yaml_syntax_errors_carry_their_line(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text("teleport:\n  nodename: x\n  data_dir: [unclosed\n\nauth_service: {}\n")
    with pytest.raises(ConfigError) as info:
        c.load_config(path)
    assert info.value.line is not None and info.value.line >= 3


@given(st.text(alphabet="teleport:auth_service\n -[]{}&*'\"#,?:0123.lstn_adr", max_size=80))
def test_arbitrary_text_is_a_config_or_a_config_error(text: str) -> None:
    try:
        c.loads_config(text)
    except ConfigError:
        pass


# --- addresses --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("auth.example.com:3025", ("auth.example.com", 3025)),
        ("auth.example.com", ("auth.example.com", 3025)),
        ("10.0.0.1", ("10.0.0.1", 3025)),
        (":4000", ("0.0.0.0", 4000)),
        ("[::1]:22", ("::1", 22)),
        ("[::1]", ("::1", 3025)),
        ("  host:1  ", ("host", 1)),
        ("localhost.", ("localhost.", 3025)),
    ],
)
def test_addresses_parse_with_defaults(text: str, expected: tuple[str, int]) -> None:
    addr = c.parse_addr(text, 3025)
    assert (addr.host, addr.port) == expected
    assert c.parse_addr(str(addr), 1) == addr


@pytest.mark.parametrize(
    "text",
    [
        "",
        "host:",
        "host:x",
        "host:70000",
        "host:0",
        "::1",
        "[::1",
        "[nothost]:1",
        "[::1]x",
        "a b:1",
        "https://host",
        "host:-1",
        "host:123456",
    ],
)
def test_bad_addresses_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        c.parse_addr(text, 3025)


def test_port_zero_only_where_allowed() -> None:
    assert c.parse_addr("127.0.0.1:0", 1, allow_zero_port=True).port == 0
    cfg = c.loads_config("auth_service: {listen_addr: '127.0.0.1:0'}\n")
    assert cfg.auth_service.listen_addr == c.Address("127.0.0.1", 0)


# --- flags ------------------------------------------------------------------------


def test_flags_override_the_file() -> None:
    base = c.loads_config("ssh_service:\n  labels: {env: prod, team: db}\n")
    cfg = c.apply_flags(
        base,
        roles="node, proxy",
        data_dir="/tmp/tp",
        nodename="n2",
        auth_servers=["auth1", "auth2:4025"],
        token="join-me",
        labels="env=dev,region=eu",
        diag_addr="127.0.0.1:3001",
    )
    assert cfg.enabled_services() == ["proxy", "node"]
    assert cfg.teleport.data_dir == "/tmp/tp" and cfg.storage_path.startswith("/tmp/tp/")
    assert cfg.teleport.nodename == "n2" and cfg.cluster_name == "n2"
    assert cfg.teleport.auth_servers == [c.Address("auth1", 3025), c.Address("auth2", 4025)]
    assert cfg.teleport.auth_token == "join-me"
    assert cfg.ssh_service.labels == {"env": "dev", "team": "db", "region": "eu"}
    assert cfg.teleport.diag_addr == c.Address("127.0.0.1", 3001)
    # the original is untouched
    assert base.ssh_service.labels == {"env": "prod", "team": "db"}
    assert base.enabled_services() == ["auth", "proxy", "node"]


def test_no_flags_changes_nothing() -> None:
    cfg = c.Config.default("/x")
    assert c.apply_flags(cfg) == cfg


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ({"roles": "auth,web"}, "--roles: expected a list of auth, proxy, node"),
        ({"roles": ""}, "--roles: expected a list"),
        ({"labels": "env"}, "--labels: expected key=value, got 'env'"),
        ({"labels": "bad key=x"}, "--labels: label 'bad key': a label key may only contain"),
        ({"auth_servers": "a:b"}, "--auth-server: the port must be a number"),
        ({"diag_addr": "::1"}, "--diag-addr: write an IPv6 address in brackets"),
        ({"nodename": ""}, "--nodename: the node name must not be empty"),
        ({"token": " "}, "--token: must not be empty"),
        ({"data_dir": ""}, "--data-dir: must not be empty"),
        # settings that depend on each other
        (
            {"roles": "node"},
            "teleport.auth_servers: required when this process runs no auth_service",
        ),
        ({"roles": "proxy,node"}, "teleport.auth_servers: required when"),
    ],
)
def test_bad_flags_name_the_flag(flags: dict[str, str], expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        c.apply_flags(c.Config.default("/x"), **flags)  # type: ignore[arg-type]
    assert str(info.value).startswith(expected)


def test_a_node_with_an_auth_server_needs_no_local_auth() -> None:
    cfg = c.apply_flags(c.Config.default("/x"), roles="node", auth_servers="auth.example.com")
    assert cfg.enabled_services() == ["node"]


def test_parse_labels() -> None:
    assert c.parse_labels("a=1, b = two ,c=x=y,") == {"a": "1", "b": "two", "c": "x=y"}
    assert c.parse_labels("") == {}
