"""RBAC tables: which logins, which nodes, which rules and which certificate options."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trioport import rbac
from trioport import resources as r


def role(
    name: str,
    *,
    logins: list[str] | None = None,
    labels: dict[str, list[str]] | None = None,
    deny_logins: list[str] | None = None,
    deny_labels: dict[str, list[str]] | None = None,
    rules: list[tuple[list[str], list[str]]] | None = None,
    deny_rules: list[tuple[list[str], list[str]]] | None = None,
    ttl: str = "23h",
    agent: bool = False,
    ports: bool = False,
    idle: str = "0s",
    disconnect: bool = False,
) -> r.Role:
    """A role built through the loader, so every test role is one an admin could write."""
    return r.from_dict(
        {
            "kind": "role",
            "metadata": {"name": name},
            "spec": {
                "options": {
                    "max_session_ttl": ttl,
                    "forward_agent": agent,
                    "port_forwarding": ports,
                    "client_idle_timeout": idle,
                    "disconnect_expired_cert": disconnect,
                },
                "allow": {
                    "logins": logins or [],
                    "node_labels": labels or {},
                    "rules": [{"resources": a, "verbs": b} for a, b in rules or []],
                },
                "deny": {
                    "logins": deny_logins or [],
                    "node_labels": deny_labels or {},
                    "rules": [{"resources": a, "verbs": b} for a, b in deny_rules or []],
                },
            },
        },
        r.Role,
    )


ACCESS = r.preset_roles()["access"]
EDITOR = r.preset_roles()["editor"]
AUDITOR = r.preset_roles()["auditor"]
TRAITS = {"logins": ["alice", "root"]}
PROD = {"env": "prod", "team": "db"}
STAGING = {"env": "staging", "team": "web"}

DEV = role("dev", logins=["dev", "{{internal.logins}}"], labels={"env": ["staging", "dev"]})
DBA = role("dba", logins=["postgres"], labels={"team": ["db"], "env": ["^prod.*$"]})
NO_PROD = role("no-prod", deny_labels={"env": ["prod"]})
NO_ROOT = role("no-root", deny_logins=["root"])
NO_OWN = role("no-own", deny_logins=["{{internal.logins}}"])
ANY_ENV = role("any-env", logins=["ops"], labels={"env": ["*"]})


@pytest.mark.parametrize(
    ("roles", "labels", "expected"),
    [
        # access: the user's own logins on every node, even one without labels
        ([ACCESS], PROD, {"alice", "root"}),
        ([ACCESS], {}, {"alice", "root"}),
        # allow is per role: dba's login only where dba's labels match
        ([DBA], PROD, {"postgres"}),
        ([DBA], STAGING, set()),
        ([DBA], {"env": "production", "team": "db"}, {"postgres"}),
        ([DBA], {"env": "prod"}, set()),  # team label missing: every key must match
        ([DEV], STAGING, {"dev", "alice", "root"}),
        ([DEV], PROD, set()),
        ([DEV, DBA], PROD, {"postgres"}),
        ([DEV, DBA], STAGING, {"dev", "alice", "root"}),
        # '*' as a value needs the label to exist
        ([ANY_ENV], {"env": ""}, {"ops"}),
        ([ANY_ENV], {"team": "db"}, set()),
        # deny logins remove, on every node
        ([ACCESS, NO_ROOT], PROD, {"alice"}),
        ([ACCESS, NO_OWN], PROD, set()),
        ([DEV, NO_OWN], STAGING, {"dev"}),
        # deny labels hide the node: nothing, whatever else allows
        ([ACCESS, NO_PROD], PROD, set()),
        ([ACCESS, NO_PROD], STAGING, {"alice", "root"}),
        ([ACCESS, DBA, NO_PROD], PROD, set()),
        # no roles, nothing
        ([], PROD, set()),
        ([EDITOR, AUDITOR], PROD, set()),
    ],
)
def test_allowed_logins(roles: list[r.Role], labels: dict[str, str], expected: set[str]) -> None:
    assert rbac.allowed_logins(roles, TRAITS, labels) == expected
    for login in ("alice", "root", "postgres", "dev", "ops", "nobody"):
        assert rbac.can_access_node(roles, TRAITS, labels, login) == (login in expected)


@pytest.mark.parametrize(
    ("traits", "expected"),
    [
        ({"logins": ["alice"]}, {"alice"}),
        ({}, set()),
        ({"logins": []}, set()),
        # values that are not login names are dropped, never passed to the OS
        ({"logins": ["ok", "bad name", "-rf", "x;y", "", "$(id)"]}, {"ok"}),
    ],
)
def test_templates_expand_only_to_valid_logins(traits: dict, expected: set[str]) -> None:
    assert rbac.allowed_logins([ACCESS], traits, PROD) == expected


def test_other_traits_expand_too() -> None:
    custom = role("c", logins=["{{internal.db_logins}}"], labels={"*": ["*"]})
    assert rbac.allowed_logins([custom], {"db_logins": ["pg"], "logins": ["x"]}, {}) == {"pg"}
    assert rbac.expand_logins(["a", "{{ internal.logins }}", "a"], {"logins": ["b", "a"]}) == [
        "a",
        "b",
    ]


@pytest.mark.parametrize(
    ("pattern", "value", "matches"),
    [
        ("*", "", True),
        ("*", "anything", True),
        ("prod", "prod", True),
        ("prod", "prod2", False),
        ("prod", "Prod", False),
        ("^prod-[0-9]+$", "prod-12", True),
        ("^prod-[0-9]+$", "prod-12x", False),
        ("^prod-[0-9]+$", "xprod-12", False),
        ("^prod$", "prod\n", False),  # anchored to the whole value
        ("^(a|b)$", "b", True),
        ("^(unclosed$", "(unclosed", False),  # a broken regex matches nothing
        ("^", "^", True),  # too short to be a regex: exact
        ("prod.*", "prod-1", False),  # not anchored: exact, not a regex
    ],
)
def test_label_value_matching(pattern: str, value: str, matches: bool) -> None:
    assert rbac.match_label_value(pattern, value) is matches


@pytest.mark.parametrize(
    ("selector", "labels", "matches"),
    [
        ({}, PROD, False),
        ({"*": ["*"]}, {}, True),
        ({"*": ["*"]}, PROD, True),
        ({"*": ["prod"]}, PROD, False),
        ({"env": ["prod"]}, PROD, True),
        ({"env": ["staging", "prod"]}, PROD, True),
        ({"env": ["prod"], "team": ["web"]}, PROD, False),
        ({"env": ["prod"], "team": ["^d.$"]}, PROD, True),
        ({"region": ["*"]}, PROD, False),
    ],
)
def test_label_selectors(selector: dict, labels: dict[str, str], matches: bool) -> None:
    assert rbac.match_labels(selector, labels) is matches


@pytest.mark.parametrize(
    ("roles", "labels", "visible"),
    [
        ([ACCESS], PROD, True),
        ([DBA], STAGING, False),
        ([ACCESS, NO_PROD], PROD, False),
        ([EDITOR], PROD, False),
        ([role("viewer", labels={"env": ["prod"]})], PROD, True),  # visible without logins
    ],
)
def test_node_visibility(roles: list[r.Role], labels: dict[str, str], visible: bool) -> None:
    assert rbac.can_see_node(roles, labels) is visible


@pytest.mark.parametrize(
    ("roles", "login", "labels", "reason"),
    [
        ([ACCESS, NO_PROD], "alice", PROD, "role 'no-prod' denies access to this node"),
        ([ACCESS, NO_ROOT], "root", PROD, "role 'no-root' denies login 'root'"),
        ([DBA], "root", PROD, "no role allows login 'root' on this node (roles: dba)"),
        ([], "root", PROD, "no role allows login 'root' on this node (roles: none)"),
        ([DEV, DBA], "postgres", PROD, "role 'dba' allows login 'postgres'"),
    ],
)
def test_decisions_say_which_role_decided(
    roles: list[r.Role], login: str, labels: dict[str, str], reason: str
) -> None:
    decision = rbac.decide_node_access(roles, TRAITS, labels, login)
    assert decision.reason == reason
    assert bool(decision) is decision.allowed is reason.endswith(f"allows login {login!r}")


@pytest.mark.parametrize(
    ("roles", "resource", "verb", "allowed"),
    [
        ([EDITOR], "user", "create", True),
        ([EDITOR], "role", "delete", True),
        ([EDITOR], "cert_authority", "read", True),
        ([EDITOR], "cert_authority", "delete", False),
        ([EDITOR], "event", "list", False),
        ([AUDITOR], "event", "list", True),
        ([AUDITOR], "session", "read", True),
        ([AUDITOR], "session", "delete", False),
        ([AUDITOR], "user", "read", False),
        ([ACCESS], "node", "list", True),
        ([ACCESS], "token", "create", False),
        ([], "node", "list", False),
        ([role("all", rules=[(["*"], ["*"])])], "token", "delete", True),
        # deny rules win over any allow
        ([EDITOR, role("nd", deny_rules=[(["user"], ["delete"])])], "user", "delete", False),
        ([EDITOR, role("nd", deny_rules=[(["user"], ["delete"])])], "user", "update", True),
        ([EDITOR, role("nd", deny_rules=[(["*"], ["*"])])], "role", "read", False),
    ],
)
def test_rules(roles: list[r.Role], resource: str, verb: str, allowed: bool) -> None:
    assert rbac.check_rule(roles, resource, verb) is allowed


H = 3600


@pytest.mark.parametrize(
    ("requested", "ttls", "expected"),
    [
        (None, [], 23 * H),
        (None, ["23h"], 23 * H),
        (3600, ["23h"], 3600),
        (10, ["23h"], 60),  # at least a minute
        (0, ["23h"], 60),
        (-5, ["23h"], 60),
        (100 * H, ["40h"], 30 * H),  # at most 30 hours
        (100 * H, [], 23 * H),  # no roles: the default limit
        (None, ["1h", "8h"], 1 * H),  # the smallest role limit
        (2 * H, ["8h", "30m"], 1800),
        (None, ["90s"], 90),
        (30, ["90s"], 60),
        (61.9, ["23h"], 61),
    ],
)
def test_cert_ttl(requested: float | None, ttls: list[str], expected: int) -> None:
    roles = [role(f"r{i}", ttl=t) for i, t in enumerate(ttls)]
    assert rbac.cert_ttl(requested, roles) == expected


def test_max_session_ttl_is_the_smallest() -> None:
    assert rbac.max_session_ttl([role("a", ttl="8h"), role("b", ttl="1h30m")]) == 5400
    assert rbac.max_session_ttl([]) == 23 * H


@given(
    st.one_of(st.none(), st.integers(-(10**9), 10**9)),
    st.lists(st.integers(60, 40 * H), max_size=4),
)
def test_cert_ttl_never_leaves_its_bounds(requested: int | None, limits: list[int]) -> None:
    roles = [
        r.Role(
            metadata=r.Metadata(name=f"r{i}"),
            spec=r.RoleSpec(options=r.RoleOptions(max_session_ttl=dt.timedelta(seconds=s))),
        )
        for i, s in enumerate(limits)
    ]
    ttl = rbac.cert_ttl(requested, roles)
    assert ttl <= min([rbac.MAX_CERT_TTL, *limits])
    assert ttl >= min([rbac.MIN_CERT_TTL, *limits])


@pytest.mark.parametrize(
    ("roles", "expected"),
    [
        ([], ["permit-pty"]),
        ([EDITOR], ["permit-pty"]),
        ([ACCESS], ["permit-agent-forwarding", "permit-port-forwarding", "permit-pty"]),
        ([role("p", ports=True)], ["permit-port-forwarding", "permit-pty"]),
        ([role("a", agent=True)], ["permit-agent-forwarding", "permit-pty"]),
        (
            [role("a", agent=True), role("p", ports=True)],
            ["permit-agent-forwarding", "permit-port-forwarding", "permit-pty"],
        ),
    ],
)
def test_cert_extensions(roles: list[r.Role], expected: list[str]) -> None:
    ext = rbac.cert_extensions(roles)
    assert list(ext) == expected  # sorted, as OpenSSH requires
    assert set(ext.values()) == {None}  # flags: empty extension data
    assert rbac.can_forward_agent(roles) is ("permit-agent-forwarding" in ext)
    assert rbac.can_port_forward(roles) is ("permit-port-forwarding" in ext)


@pytest.mark.parametrize(
    ("roles", "traits", "expected"),
    [
        ([ACCESS], TRAITS, ["alice", "root"]),
        ([ACCESS, NO_ROOT], TRAITS, ["alice"]),
        ([DEV, DBA], {"logins": ["zed"]}, ["dev", "postgres", "zed"]),
        # deny labels do not remove principals: nodes refuse by their labels
        ([ACCESS, NO_PROD], TRAITS, ["alice", "root"]),
    ],
)
def test_principals(roles: list[r.Role], traits: dict, expected: list[str]) -> None:
    assert rbac.principals_for(roles, traits) == expected


@pytest.mark.parametrize(
    ("roles", "traits"),
    [([], TRAITS), ([EDITOR, AUDITOR], TRAITS), ([ACCESS], {}), ([ACCESS, NO_OWN], TRAITS)],
)
def test_principals_are_never_empty(roles: list[r.Role], traits: dict) -> None:
    principals = rbac.principals_for(roles, traits, placeholder_id="1234")
    assert principals == ["-trioport-nologin-1234"]
    fresh = rbac.principals_for(roles, traits)
    assert len(fresh) == 1 and fresh[0].startswith(rbac.NOLOGIN_PREFIX)
    assert fresh != rbac.principals_for(roles, traits)  # a new placeholder each time
    assert not r.LOGIN_NAME.fullmatch(fresh[0])  # and never a login a node would accept


def test_idle_timeout_and_expired_cert_options() -> None:
    assert rbac.client_idle_timeout([ACCESS]) is None
    assert rbac.client_idle_timeout([role("a", idle="30m"), role("b", idle="10m"), ACCESS]) == 600
    assert rbac.disconnect_expired_cert([ACCESS]) is False
    assert rbac.disconnect_expired_cert([ACCESS, role("d", disconnect=True)]) is True
