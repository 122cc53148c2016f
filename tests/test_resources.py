"""Resources: round trips through JSON and YAML, secrets kept in, and every refusal named."""

from __future__ import annotations

import datetime as dt
import json

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from trioport import resources as r
from trioport.errors import ConfigError

UTC = dt.UTC
T0 = dt.datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
ED25519 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyFakeKeyFakeKeyFakeKeyFakeKeyFakeKey cluster"


def make_user() -> r.User:
    return r.User(
        metadata=r.Metadata(name="alice", labels={"team": "db"}),
        spec=r.UserSpec(
            roles=["access"],
            traits={"logins": ["alice", "root"]},
            created=T0,
            status=r.UserStatus(locked_until=T0 + dt.timedelta(minutes=30), lock_reason="x"),
            local_auth=r.LocalAuth(
                password_hash=b"$2b$12$abcdefghijklmnopqrstuuFakeHashFakeHashFakeHashFakeHa",
                totp_secret="JBSWY3DPEHPK3PXP",
                totp_last_step=57_000_000,
            ),
        ),
    )


def make_all() -> list[object]:
    return [
        make_user(),
        r.preset_roles()["access"],
        r.Token(
            metadata=r.Metadata(name="0123456789abcdef0123456789abcdef", expires=T0),
            spec=r.TokenSpec(roles=["node"]),
        ),
        r.Node(
            metadata=r.Metadata(name="7f0c2b8e-uuid", labels={"env": "prod"}, expires=T0),
            spec=r.NodeSpec(
                hostname="db1",
                addr="10.0.0.5:3022",
                cmd_labels={"arch": r.CommandLabel(command=["uname", "-m"], result="x86_64")},
            ),
        ),
        r.CertAuthority(
            metadata=r.Metadata(name="example"),
            spec=r.CertAuthoritySpec(
                type="user",
                cluster_name="example",
                public_keys=[ED25519],
                private_keys=["-----BEGIN OPENSSH PRIVATE KEY-----\nsecret\n"],
            ),
        ),
        r.Session(
            metadata=r.Metadata(name="sid-1"),
            spec=r.SessionSpec(
                user="alice",
                login="root",
                node="7f0c2b8e-uuid",
                created=T0,
                parties=[r.Party(id="p1", user="alice", remote_addr="127.0.0.1:5000", joined=T0)],
            ),
        ),
        r.AuditEvent(
            metadata=r.Metadata(name="ev-1"),
            spec=r.AuditEventSpec(
                event="user.login",
                code="T1000I",
                time=T0,
                fields={"user": "alice", "success": True, "n": 1.5, "extra": [None, {"a": 1}]},
            ),
        ),
    ]


# --- round trips --------------------------------------------------------------------


@pytest.mark.parametrize("obj", make_all(), ids=lambda o: type(o).__name__)
def test_every_kind_round_trips_through_json_and_yaml_with_secrets(obj: object) -> None:
    assert r.from_json(r.to_json(obj, secrets=True)) == obj
    assert r.from_yaml(r.to_yaml(obj, secrets=True)) == obj
    assert r.from_dict(r.to_dict(obj, secrets=True), type(obj)) == obj


def test_public_json_is_the_public_view() -> None:
    for obj in make_all():
        assert r.from_json(r.to_json(obj)) == obj.public()  # type: ignore[attr-defined]


def test_a_list_dumps_as_yaml_documents_and_loads_back() -> None:
    objs = make_all()
    text = r.to_yaml(objs, secrets=True)
    assert text.startswith("---")
    assert r.from_yaml_all(text) == objs


def test_dumps_omit_unset_fields() -> None:
    data = r.to_dict(r.preset_roles()["auditor"])
    assert "expires" not in data["metadata"] and "revision" not in data["metadata"]
    assert data["spec"]["deny"] == {}
    assert list(data) == ["kind", "version", "metadata", "spec"]


def test_times_are_utc_rfc3339_and_naive_times_read_as_utc() -> None:
    node = make_all()[3]
    assert r.to_dict(node)["metadata"]["expires"] == "2024-05-01T12:00:00Z"
    text = "kind: token\nmetadata: {name: abcd, expires: 2024-05-01 14:00:00+02:00}\n"
    text += "spec: {roles: [node]}\n"
    assert r.from_yaml(text).metadata.expires == T0
    loaded = r.from_json(
        '{"kind": "token", "metadata": {"name": "abcd", '
        '"expires": "2024-05-01T12:00:00"}, "spec": {"roles": ["node"]}}'
    )
    assert loaded.metadata.expires == T0


names = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_.@", min_size=1, max_size=20
).filter(lambda s: s not in (".", ".."))
logins = st.from_regex(r"[a-z_][a-z0-9_-]{0,15}", fullmatch=True)
label_keys = st.from_regex(r"[a-z][a-z0-9/._:-]{0,10}", fullmatch=True)
label_values = st.one_of(
    st.just("*"), st.from_regex(r"[a-z0-9]{1,8}", fullmatch=True), st.just("^prod-[0-9]+$")
)
durations = st.integers(min_value=60, max_value=40 * 3600).map(lambda s: dt.timedelta(seconds=s))
conditions = st.builds(
    r.RoleConditions,
    logins=st.lists(st.one_of(logins, st.just("{{internal.logins}}")), max_size=4),
    node_labels=st.dictionaries(label_keys, st.lists(label_values, min_size=1, max_size=3)),
    rules=st.lists(
        st.builds(
            r.Rule,
            resources=st.lists(st.sampled_from(r.RULE_RESOURCES), min_size=1, max_size=3),
            verbs=st.lists(st.sampled_from(r.RULE_VERBS), min_size=1, max_size=3),
        ),
        max_size=3,
    ),
)
roles = st.builds(
    r.Role,
    metadata=st.builds(r.Metadata, name=names, description=st.text(max_size=30)),
    spec=st.builds(
        r.RoleSpec,
        options=st.builds(
            r.RoleOptions,
            max_session_ttl=durations,
            forward_agent=st.booleans(),
            port_forwarding=st.booleans(),
            client_idle_timeout=st.integers(0, 7200).map(lambda s: dt.timedelta(seconds=s)),
            disconnect_expired_cert=st.booleans(),
        ),
        allow=conditions,
        deny=conditions,
    ),
)
times = st.datetimes(
    min_value=dt.datetime(2000, 1, 1), max_value=dt.datetime(2100, 1, 1), timezones=st.just(UTC)
)
users = st.builds(
    r.User,
    metadata=st.builds(r.Metadata, name=names),
    spec=st.builds(
        r.UserSpec,
        roles=st.lists(names, max_size=3),
        traits=st.dictionaries(names, st.lists(st.text(max_size=10), max_size=3), max_size=3),
        created=st.none() | times,
        status=st.builds(
            r.UserStatus,
            locked_until=st.none() | times,
            failed_logins=st.lists(times, max_size=3),
            state=st.sampled_from(["invited", "active", "reset"]),
        ),
        local_auth=st.none()
        | st.builds(
            r.LocalAuth,
            password_hash=st.none() | st.binary(max_size=30).map(lambda b: b.hex().encode()),
            totp_secret=st.none()
            | st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", min_size=16),
        ),
    ),
)


@given(roles)
def test_any_role_round_trips(role: r.Role) -> None:
    assert r.from_yaml(r.to_yaml(role)) == role
    assert r.from_json(r.to_json(role)) == role


@given(users)
def test_any_user_round_trips_with_secrets_and_without(user: r.User) -> None:
    assert r.from_json(r.to_json(user, secrets=True)) == user
    assert r.from_yaml(r.to_yaml(user, secrets=True)) == user
    assert r.from_json(r.to_json(user)) == user.public()


@given(st.integers(min_value=0, max_value=10 * 365 * 86400))
def test_durations_round_trip_in_go_syntax(seconds: int) -> None:
    d = dt.timedelta(seconds=seconds)
    assert r.parse_duration(r.format_duration(d)) == d


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("23h", 23 * 3600),
        ("30m", 1800),
        ("1h30m", 5400),
        ("1h30m15s", 5415),
        ("1.5h", 5400),
        ("90s", 90),
        ("500ms", 0.5),
        ("0", 0),
        ("0s", 0),
        ("+5m", 300),
    ],
)
def test_go_durations_parse(text: str, seconds: float) -> None:
    assert r.parse_duration(text).total_seconds() == seconds


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(5400, "1h30m"), (23 * 3600, "23h"), (0, "0s"), (45, "45s"), (0.25, "250ms"), (3601, "1h1s")],
)
def test_go_durations_print(seconds: float, text: str) -> None:
    assert r.format_duration(dt.timedelta(seconds=seconds)) == text


@pytest.mark.parametrize("text", ["", "5", "1d", "h", "1h 30m", "-1h", "1.2.3s", "99999999h"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        r.parse_duration(text)


# --- secrets ------------------------------------------------------------------------


def test_user_public_view_and_repr_hold_no_credentials() -> None:
    user = make_user()
    public = r.to_json(user)
    assert "local_auth" not in public and "$2b$" not in public and "JBSWY3DP" not in public
    for text in (repr(user), str(user), repr(user.spec.local_auth)):
        assert "$2b$" not in text and "JBSWY3DP" not in text
    stored = json.loads(r.to_json(user, secrets=True))
    assert stored["spec"]["local_auth"]["password_hash"].startswith("$2b$12$")


def test_token_name_is_masked_in_repr_and_public_view() -> None:
    token = make_all()[2]
    assert "0123456789abcdef0123456789ab" not in repr(token)
    assert repr(token).endswith(
        "expires=datetime.datetime(2024, 5, 1, 12, 0, tzinfo=datetime.timezone.utc))"
    )
    assert r.to_dict(token)["metadata"]["name"] == "*" * 24 + "89abcdef"
    assert r.to_dict(token, secrets=True)["metadata"]["name"] == token.metadata.name  # type: ignore[attr-defined]


def test_ca_private_keys_never_leave_the_public_view() -> None:
    ca = make_all()[4]
    assert "PRIVATE" not in r.to_json(ca) and "PRIVATE" not in r.to_yaml(ca)
    assert "PRIVATE" not in repr(ca)
    assert r.from_json(r.to_json(ca)).spec.private_keys == []
    assert "PRIVATE" in r.to_json(ca, secrets=True)


def test_mask_secret_shows_the_last_quarter_only() -> None:
    assert r.mask_secret("abcdefgh") == "******gh"
    assert r.mask_secret("abc") == "***"


# --- presets and helpers ----------------------------------------------------------


def test_preset_roles() -> None:
    presets = r.preset_roles()
    assert list(presets) == ["access", "editor", "auditor"] == list(r.PRESET_ROLES)
    access = presets["access"].spec
    assert access.allow.logins == ["{{internal.logins}}"]
    assert access.allow.node_labels == {"*": ["*"]}
    assert access.options.max_session_ttl == dt.timedelta(hours=23)
    assert presets["editor"].spec.allow.logins == []
    assert presets["auditor"].spec.allow.rules == [
        r.Rule(resources=["session", "event"], verbs=["list", "read"])
    ]
    presets["access"].spec.allow.logins.append("root")
    assert r.preset_roles()["access"].spec.allow.logins == ["{{internal.logins}}"]


def test_node_labels_merge_static_and_command_labels() -> None:
    node = make_all()[3]
    assert node.all_labels() == {"env": "prod", "arch": "x86_64"}  # type: ignore[attr-defined]


def test_user_logins_come_from_the_logins_trait() -> None:
    assert make_user().logins == ["alice", "root"]


def test_audit_event_flat_record_round_trips() -> None:
    event = make_all()[6]
    record = event.to_record()  # type: ignore[attr-defined]
    assert record["event"] == "user.login" and record["code"] == "T1000I"
    assert record["time"] == "2024-05-01T12:00:00Z" and record["uid"] == "ev-1"
    assert record["user"] == "alice"
    assert r.AuditEvent.from_record(json.loads(json.dumps(record))) == event


def test_audit_event_fields_may_not_shadow_the_core_keys() -> None:
    with pytest.raises(ConfigError, match=r"spec\.fields\.code: 'code' is reserved"):
        r.from_dict(
            {
                "kind": "event",
                "metadata": {"name": "e"},
                "spec": {
                    "event": "x",
                    "code": "T1",
                    "time": "2024-01-01T00:00:00Z",
                    "fields": {"code": 1},
                },
            }
        )
    with pytest.raises(ConfigError, match="uid: required key missing"):
        r.AuditEvent.from_record({"event": "x", "code": "y", "time": "2024-01-01T00:00:00Z"})


def test_single_valued_node_labels_are_written_as_strings() -> None:
    role = r.from_yaml(
        "kind: role\nmetadata: {name: r}\nspec: {allow: {node_labels: {env: prod, team: [a, b]}}}\n"
    )
    assert role.spec.allow.node_labels == {"env": ["prod"], "team": ["a", "b"]}
    assert r.to_dict(role)["spec"]["allow"]["node_labels"] == {"env": "prod", "team": ["a", "b"]}


# --- refusals ---------------------------------------------------------------------

ROLE_HEAD = "kind: role\nversion: v1\nmetadata:\n  name: dev\nspec:\n"

REFUSALS = [
    # (document, "line: key: message" expected in the error)
    (
        ROLE_HEAD + "  allow:\n    logins: [root, alice, 3]\n",
        "7: spec.allow.logins[2]: expected a string, got a number",
    ),
    (
        ROLE_HEAD + "  allow:\n    logins:\n      - root\n      - 'bad login'\n",
        "9: spec.allow.logins[1]: not a valid login name",
    ),
    (
        ROLE_HEAD + "  allow:\n    logins: ['{{external.logins}}']\n",
        "spec.allow.logins[0]: a template must look like {{internal.logins}}",
    ),
    (
        ROLE_HEAD + "  allow:\n    logins: root\n",
        "7: spec.allow.logins: expected a list, got a string",
    ),
    (
        ROLE_HEAD + "  allow:\n    lgins: [root]\n",
        "7: spec.allow.lgins: unknown key (expected one of: logins, node_labels, rules)",
    ),
    (
        ROLE_HEAD + "  allow:\n    node_labels:\n      env: 'prod-*'\n",
        "8: spec.allow.node_labels.env: use '*' alone",
    ),
    (
        ROLE_HEAD + "  allow:\n    node_labels:\n      env: ['a', '^(unclosed$']\n",
        "spec.allow.node_labels.env[1]: bad regular expression",
    ),
    (
        ROLE_HEAD + "  allow:\n    node_labels:\n      '*': prod\n",
        "spec.allow.node_labels['*']: the wildcard key '*' only takes the value '*'",
    ),
    (
        ROLE_HEAD + "  allow:\n    node_labels:\n      'bad key': x\n",
        "spec.allow.node_labels['bad key']: key 'bad key': a label key may only",
    ),
    (
        ROLE_HEAD + "  allow:\n    node_labels:\n      env: []\n",
        "spec.allow.node_labels.env: expected a string or a list of strings",
    ),
    (
        ROLE_HEAD + "  allow:\n    rules:\n      - resources: [nodes]\n        verbs: [read]\n",
        "8: spec.allow.rules[0].resources[0]: expected one of: user, role, token, node, "
        "cert_authority, session, event, * (got 'nodes')",
    ),
    (
        ROLE_HEAD + "  allow:\n    rules:\n      - resources: [node]\n",
        "8: spec.allow.rules[0].verbs: required key missing",
    ),
    (
        ROLE_HEAD + "  options:\n    max_session_ttl: 1x\n",
        "7: spec.options.max_session_ttl: expected a duration like '23h'",
    ),
    (
        ROLE_HEAD + "  options:\n    max_session_ttl: 30\n",
        "spec.options.max_session_ttl: expected a duration like '23h' or '1h30m', got a number",
    ),
    (
        ROLE_HEAD + "  options:\n    max_session_ttl: 30s\n",
        "spec.options.max_session_ttl: must be at least 1m",
    ),
    (
        ROLE_HEAD + "  options:\n    forward_agent: 'yes'\n",
        "7: spec.options.forward_agent: expected true or false, got a string",
    ),
    (
        ROLE_HEAD + "  options:\n    client_idle_timeout: -5m\n",
        "spec.options.client_idle_timeout: a duration must not be negative",
    ),
    (
        "kind: role\nversion: v3\nmetadata: {name: a}\n",
        "2: version: expected one of: v1 (got 'v3')",
    ),
    (
        "kind: usr\n",
        "1: kind: expected one of: user, role, token, node, cert_authority, session, event "
        "(got 'usr')",
    ),
    ("metadata: {name: a}\n", "kind: expected one of: user"),
    ("- kind: role\n", "expected a mapping, got a list"),
    ("kind: role\nmetadata: {}\n", "2: metadata.name: required key missing"),
    (
        "kind: role\nmetadata: {name: 'a/b'}\n",
        "metadata.name: name must not contain '/' or control characters",
    ),
    ("kind: role\nmetadata: {name: ''}\n", "metadata.name: name must not be empty"),
    (
        "kind: role\nmetadata: {name: a, labels: {x: 1}}\n",
        "metadata.labels.x: expected a string, got a number",
    ),
    ("kind: role\nmetadata: 5\n", "2: metadata: expected a mapping, got a number"),
    (
        "kind: user\nmetadata: {name: a}\nspec: {roles: [access], traits: {logins: root}}\n",
        "spec.traits.logins: expected a list, got a string",
    ),
    (
        "kind: user\nmetadata: {name: a}\nspec: {created: yesterday}\n",
        "spec.created: expected a time like 2024-05-01T12:00:00Z",
    ),
    (
        "kind: user\nmetadata: {name: a}\nspec: {status: {state: banned}}\n",
        "spec.status.state: expected one of: invited, active, reset (got 'banned')",
    ),
    (
        "kind: token\nmetadata: {name: abcd}\nspec: {roles: []}\n",
        "3: spec.roles: must not be empty",
    ),
    (
        "kind: token\nmetadata: {name: abcd}\nspec: {roles: [admin]}\n",
        "spec.roles[0]: expected one of: node, proxy, auth (got 'admin')",
    ),
    ("kind: token\nmetadata: {name: abcd}\n", "spec: required key missing"),
    (
        "kind: node\nmetadata: {name: u}\n"
        "spec: {hostname: h, addr: a, cmd_labels: {a: {command: []}}}\n",
        "spec.cmd_labels.a.command: must not be empty",
    ),
    (
        "kind: cert_authority\nmetadata: {name: c}\n"
        "spec: {type: user, cluster_name: c, public_keys: [nonsense]}\n",
        "spec.public_keys[0]: expected an OpenSSH public key line",
    ),
    (
        "kind: cert_authority\nmetadata: {name: c}\n"
        "spec: {type: both, cluster_name: c, public_keys: []}\n",
        "spec.type: expected one of: user, host (got 'both')",
    ),
    (
        "kind: session\nmetadata: {name: s}\n"
        "spec: {user: a, login: b, node: n, created: 2024-01-01T00:00:00Z, state: paused}\n",
        "spec.state: expected one of: active, ended",
    ),
    (
        "kind: event\nmetadata: {name: e}\n"
        "spec: {event: x, code: y, time: 2024-01-01T00:00:00Z, fields: {t: 2024-01-01}}\n",
        "spec.fields.t: expected a JSON value, got a date",
    ),
    ("kind: role\nmetadata: {name: a}\nmetadata: {name: b}\n", "3: duplicate key 'metadata'"),
    ("kind: [role\n", "invalid YAML: expected ',' or ']'"),
    ("a: &a [*a]\n", "a YAML alias refers to itself"),
]


@pytest.mark.parametrize(("text", "expected"), REFUSALS)
def test_bad_resources_are_refused_with_file_line_and_path(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        r.from_yaml(text, source="res.yaml")
    message = str(info.value)
    assert message.startswith("res.yaml")
    assert expected in message.splitlines()[0]


def test_every_problem_is_listed_in_file_order() -> None:
    text = ROLE_HEAD + "  allow:\n    logins: [3]\n  options:\n    forward_agent: 1\n  bogus: 1\n"
    with pytest.raises(ConfigError) as info:
        r.from_yaml(text, source="res.yaml")
    assert str(info.value).splitlines() == [
        "res.yaml:7: spec.allow.logins[0]: expected a string, got a number",
        "res.yaml:9: spec.options.forward_agent: expected true or false, got a number",
        "res.yaml:10: spec.bogus: unknown key (expected one of: allow, deny, options)",
    ]
    assert info.value.key == "spec.allow.logins[0]" and info.value.line == 7


def test_json_errors_name_the_path_without_a_line() -> None:
    with pytest.raises(ConfigError, match=r"^spec\.roles\[0\]: expected one of"):
        r.from_json('{"kind": "token", "metadata": {"name": "abcd"}, "spec": {"roles": [1]}}')
    with pytest.raises(ConfigError, match="invalid JSON"):
        r.from_json("{nope")


def test_loading_a_specific_kind_refuses_another_kind() -> None:
    with pytest.raises(ConfigError, match="kind: expected one of: role"):
        r.from_yaml("kind: user\nmetadata: {name: a}\n", r.Role)


def test_alias_bombs_are_refused_before_they_expand() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 8):
        prev = f"*a{i - 1}"
        lines.append(f"a{i}: &a{i} [{', '.join([prev] * 10)}]")
    with pytest.raises(ConfigError, match="document too large"):
        r.from_yaml("\n".join(lines) + "\n")


def test_yaml_merge_keys_work_and_lines_follow_local_keys() -> None:
    text = (
        "base: &base {logins: [root]}\n"
        "kind: role\n"
        "metadata: {name: a}\n"
        "spec:\n"
        "  allow:\n"
        "    <<: *base\n"
        "    logins: [3]\n"
    )
    with pytest.raises(ConfigError) as info:
        r.from_yaml(text, source="m.yaml")
    # "base" is an unknown top-level key; the local logins override is reported at line 7.
    assert "m.yaml:7: spec.allow.logins[0]: expected a string" in str(info.value)
    assert "m.yaml:1: base: unknown key" in str(info.value)


def test_deeply_nested_documents_are_refused_not_crashed() -> None:
    with pytest.raises(ConfigError, match="nested too deeply"):
        r.from_yaml("a: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError, match="invalid JSON"):
        r.from_json("[" * 100_000 + "]" * 100_000)


KEYS = ["kind", "version", "metadata", "spec", "name", "allow", "deny", "logins", "node_labels"]
KEYS += ["rules", "options", "roles", "traits", "labels", "expires", "resources", "verbs"]
plain_data = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=8)
    | st.sampled_from(["role", "user", "token", "node", "session", "event", "v1", "1h", "*"]),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(KEYS) | st.text(max_size=4) | st.none(), inner, max_size=5
        )
    ),
    max_leaves=20,
)


@given(plain_data)
def test_arbitrary_data_is_a_resource_or_a_config_error(data: object) -> None:
    try:
        r.from_dict(data)
    except ConfigError:
        pass


@given(st.text(alphabet="kind: role\n-[]{}&*!|>'\"#,?%@`~\t metadata spec0123\x85", max_size=80))
def test_arbitrary_yaml_is_a_resource_or_a_config_error(text: str) -> None:
    try:
        r.from_yaml_all(text)
    except ConfigError:
        pass


def test_odd_yaml_keys_are_named_in_errors() -> None:
    with pytest.raises(ConfigError, match=r"\['None'\]: unknown key"):
        r.from_yaml("kind: role\nmetadata: {name: a}\n~: 1\n")
    with pytest.raises(ConfigError, match=r"metadata\['1.5'\]: unknown key"):
        r.from_yaml("kind: role\nmetadata: {name: a, 1.5: x}\n")


def test_line_breaking_characters_survive_a_yaml_round_trip() -> None:
    user = r.User(
        metadata=r.Metadata(name="u", description="a\x85b\u2028c\u2029d José"),
        spec=r.UserSpec(traits={"x": ["\x85", "\r\n", " lead", "trail "]}),
    )
    assert r.from_yaml(r.to_yaml(user)) == user


def test_several_documents_load_with_from_yaml_all_only() -> None:
    text = "kind: role\nmetadata: {name: a}\n---\nkind: role\nmetadata: {name: b}\n---\n"
    assert [x.metadata.name for x in r.from_yaml_all(text)] == ["a", "b"]
    with pytest.raises(ConfigError, match="expected one YAML document, found 2"):
        r.from_yaml(text)


def test_direct_construction_validates_names() -> None:
    with pytest.raises(ValueError, match="must not be empty"):
        r.Metadata(name="")
    with pytest.raises(ValueError, match="must be at least 1m"):
        r.RoleOptions(max_session_ttl=dt.timedelta(seconds=5))
    assert attrs.evolve(r.Metadata(name="a"), description="d").description == "d"
