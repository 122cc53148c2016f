"""The auth API's handlers and authorization, called directly (no network).

Every identity kind is tried against every kind of endpoint: what it may call
gets an answer (possibly 400 or 404 for a deliberately incomplete request), what
it may not call is a 403 with a reason and an ``auth`` audit event.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from trioport.resources import (
    Metadata,
    Node,
    NodeSpec,
    Party,
    Role,
    RoleSpec,
    Session,
    SessionSpec,
    from_dict,
    to_dict,
)
from trioport.roles.auth._http import RateLimiter
from trioport.roles.auth.api import AuthAPI, Identity, IdentityKind
from trioport.roles.auth.server import AuthServer
from trioport.roles.auth.users import LOGIN_FAILED
from trioport.sshproto.certs import Certificate, CertType, check_certificate
from trioport.sshproto.keys import PrivateKey, public_key_from_line

from .conftest import START, FakeClock, totp_now
from .test_users import PASSWORD, enrol

NODE_ID = str(uuid.UUID(int=1))
OTHER_NODE_ID = str(uuid.UUID(int=2))


def from_role_spec(data: dict[str, Any]) -> RoleSpec:
    return from_dict(data, RoleSpec)


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def api(auth: AuthServer) -> AuthAPI:
    return AuthAPI(auth, proxy_addr="proxy.example.test:3080")


async def call(
    api: AuthAPI, who: Identity, method: str, path: str, body: Any = None
) -> tuple[int, Any]:
    raw = body if isinstance(body, bytes) else b"" if body is None else json.dumps(body).encode()
    response = await api.handle(who, method, path, raw)
    if response.content_type == "application/json":
        return response.status, json.loads(response.body)
    return response.status, response.body


def host(kind: IdentityKind, host_id: str = NODE_ID, name: str = "web1") -> Identity:
    return Identity(
        kind, name, host_id=host_id, remote_addr="192.0.2.10:50000", source="192.0.2.10"
    )


async def user(auth: AuthServer, name: str, *roles: str) -> Identity:
    await auth.users.add(name, logins=[name], roles=list(roles))
    return Identity(IdentityKind.USER, name, remote_addr="192.0.2.20:50000", source="192.0.2.20")


ADMIN = Identity(IdentityKind.ADMIN, "-admin-", remote_addr="127.0.0.1:4000", source="127.0.0.1")
JOINER = Identity(
    IdentityKind.JOIN, "-join-", remote_addr="198.51.100.7:4000", source="198.51.100.7"
)

ALL = {"admin", "node", "proxy", "auth", "join", "editor", "access", "auditor", "nobody"}
AUTHENTICATED = ALL - {"join"}

#: (method, path, body, who may call it). A caller who may gets anything but 403.
MATRIX: list[tuple[str, str, Any, set[str]]] = [
    ("POST", "/v1/join", {}, ALL),
    ("GET", "/v1/whoami", None, AUTHENTICATED),
    ("GET", "/v1/authorities", None, AUTHENTICATED),
    ("GET", "/v1/status", None, {"admin", "editor"}),
    ("POST", "/v1/nodes/heartbeat", {}, {"admin", "node"}),
    ("GET", "/v1/nodes", None, {"admin", "proxy", "auth", "editor", "access"}),
    ("DELETE", f"/v1/nodes/{OTHER_NODE_ID}", None, {"admin", "editor"}),
    ("POST", "/v1/access", {"user": "nobody", "labels": {}}, {"admin", "node", "proxy", "auth"}),
    # The administrator has no host key to renew: refused by the handler.
    ("POST", "/v1/hosts/certificate", {}, {"node", "proxy", "auth"}),
    ("POST", "/v1/login", {}, {"admin", "proxy", "auth"}),
    ("POST", "/v1/invites/abc/totp", None, {"admin", "proxy", "auth"}),
    ("POST", "/v1/users", {"name": ""}, {"admin", "editor"}),
    ("GET", "/v1/users", None, {"admin", "editor"}),
    ("GET", "/v1/users/zed", None, {"admin", "editor"}),
    ("DELETE", "/v1/users/zed", None, {"admin", "editor"}),
    ("POST", "/v1/users/zed/reset", None, {"admin", "editor"}),
    ("POST", "/v1/tokens", {"roles": ["bogus"]}, {"admin", "editor"}),
    ("GET", "/v1/tokens", None, {"admin", "editor"}),
    ("GET", "/v1/roles", None, {"admin", "editor"}),
    ("PUT", "/v1/roles/x", {}, {"admin", "editor"}),
    ("DELETE", "/v1/roles/zed", None, {"admin", "editor"}),
    ("POST", "/v1/events", {"code": "bogus"}, {"admin", "node", "proxy", "auth"}),
    ("GET", "/v1/events", None, {"admin", "auditor"}),
    ("PUT", "/v1/sessions/s1", {}, {"admin", "node"}),
    ("GET", "/v1/sessions", None, AUTHENTICATED - {"node"}),
    ("GET", "/v1/recordings", None, AUTHENTICATED - {"node"}),
    ("PUT", "/v1/recordings/s1/chunks/0", b"data", {"admin", "node"}),
    ("POST", "/v1/recordings/s1/complete", {}, {"admin", "node"}),
]


async def identities(auth: AuthServer) -> dict[str, Identity]:
    return {
        "admin": ADMIN,
        "node": host(IdentityKind.NODE),
        "proxy": host(IdentityKind.PROXY, str(uuid.UUID(int=3)), "proxy1"),
        "auth": host(IdentityKind.AUTH, str(uuid.UUID(int=4)), "auth2"),
        "join": JOINER,
        "editor": await user(auth, "eddie", "editor"),
        "access": await user(auth, "alice", "access"),
        "auditor": await user(auth, "audrey", "auditor"),
        "nobody": await user(auth, "nora", "access"),
    }


@pytest.mark.parametrize(("method", "path", "body", "allowed"), MATRIX, ids=lambda v: str(v)[:40])
async def test_authorization_matrix(
    api: AuthAPI, auth: AuthServer, method: str, path: str, body: Any, allowed: set[str]
) -> None:
    who = await identities(auth)
    # "nobody" has a role that allows nothing but logins.
    await auth.roles.upsert(Role(metadata=Metadata(name="bare")))
    await auth.users.update("nora", roles=["bare"])
    for name, identity in who.items():
        status, reply = await call(api, identity, method, path, body)
        if name in allowed:
            assert status != 403, (name, reply)
        else:
            assert status == 403, (name, status, reply)
            assert reply["error"]["kind"] == "access_denied"
            assert reply["error"]["message"]


async def test_a_refusal_is_audited_with_its_reason(api: AuthAPI, auth: AuthServer) -> None:
    status, reply = await call(api, host(IdentityKind.NODE), "POST", "/v1/users", {"name": "eve"})
    assert status == 403
    assert reply["error"]["message"] == "a node may not call POST /v1/users"
    found = await auth.audit.search(since=START - 1, until=START + 10, events=["T3007W"])
    record = found[-1].to_record()
    assert record["user"] == "web1"
    assert record["server_id"] == NODE_ID
    assert record["addr.remote"] == "192.0.2.10:50000"
    assert record["success"] is False
    assert record["error"] == "a node may not call POST /v1/users"
    assert record["request"] == "POST /v1/users"
    assert [u.metadata.name for u in await auth.users.list()] == []


async def test_without_a_certificate_only_joining_is_allowed(api: AuthAPI) -> None:
    for method, path, body, _allowed in MATRIX:
        if path == "/v1/join":
            continue
        status, reply = await call(api, JOINER, method, path, body)
        assert status == 403
        assert reply["error"]["message"] == "only joining is allowed without a certificate"


async def test_join_through_the_api_gives_a_certificate(
    api: AuthAPI, auth: AuthServer, clock: FakeClock
) -> None:
    token = (await auth.tokens.add(["node"])).name
    key = PrivateKey.generate()
    status, reply = await call(
        api,
        JOINER,
        "POST",
        "/v1/join",
        {
            "token": token,
            "public_key": key.public.openssh_line(),
            "node_name": "db1",
            "addresses": ["10.1.2.3"],
        },
    )
    assert status == 200, reply
    cert = public_key_from_line(reply["certificate"])
    checked = check_certificate(
        cert,
        cert_type=CertType.HOST,
        trusted_cas=auth.ca.public_keys("host"),
        principal="db1",
        now=clock(),
    )
    assert checked.service_role is not None and checked.service_role.value == "node"
    assert not reply["host_ca"]["spec"].get("private_keys")
    assert not reply["user_ca"]["spec"].get("private_keys")
    # The token is spent: a second join with it is refused, the same way as a bad one.
    status, again = await call(
        api,
        JOINER,
        "POST",
        "/v1/join",
        {"token": token, "public_key": key.public.openssh_line(), "node_name": "db2"},
    )
    assert status == 401
    assert again["error"]["message"] == "the join token is invalid, expired or already used"


async def test_join_is_rate_limited_per_source(auth: AuthServer) -> None:
    clock = FakeMonotonic()
    api = AuthAPI(
        auth, proxy_addr="p:3080", join_limiter=RateLimiter(per_minute=20, burst=40, clock=clock)
    )
    statuses = [(await call(api, JOINER, "POST", "/v1/join", {}))[0] for _ in range(41)]
    assert statuses[:40] == [400] * 40
    assert statuses[40] == 429
    other = attrs.evolve(JOINER, source="198.51.100.8")
    assert (await call(api, other, "POST", "/v1/join", {}))[0] == 400
    clock.now += 3.0  # 20 a minute: one token every 3 seconds
    assert (await call(api, JOINER, "POST", "/v1/join", {}))[0] == 400
    status, reply = await call(api, JOINER, "POST", "/v1/join", {})
    assert status == 429
    assert reply["error"]["kind"] == "rate_limited"


async def test_login_forwarded_by_a_proxy(api: AuthAPI, auth: AuthServer, clock: FakeClock) -> None:
    secret = await enrol(auth, clock, "alice")
    proxy = host(IdentityKind.PROXY, str(uuid.UUID(int=3)), "proxy1")
    key = PrivateKey.generate()
    body = {
        "user": "alice",
        "password": PASSWORD,
        "totp_code": totp_now(secret, clock),
        "public_key": key.public.openssh_line(),
        "ttl": 3600,
        "remote_addr": "203.0.113.9:5555",
    }
    status, reply = await call(api, proxy, "POST", "/v1/login", body)
    assert status == 200, reply
    cert = public_key_from_line(reply["certificate"])
    checked = check_certificate(
        cert,
        cert_type=CertType.USER,
        trusted_cas=auth.ca.public_keys("user"),
        principal="root",
        now=clock(),
    )
    assert checked.key_id == "alice"
    assert cert.valid_before == int(clock()) + 3600
    assert reply["known_hosts"][0].startswith("@cert-authority * ssh-ed25519 ")
    assert reply["user"]["spec"].get("local_auth") is None
    events = await auth.audit.search(since=START - 1, until=START + 3600, events=["T1000I"])
    assert events[-1].to_record()["addr.remote"] == "203.0.113.9:5555"
    # A wrong password: 401 and the one message for every failure.
    clock.advance(30)
    status, reply = await call(api, proxy, "POST", "/v1/login", {**body, "password": "x" * 12})
    assert status == 401
    assert reply["error"] == {"kind": "authentication_failed", "message": LOGIN_FAILED}


async def test_invite_completed_through_a_proxy(
    api: AuthAPI, auth: AuthServer, clock: FakeClock
) -> None:
    status, invite = await call(api, ADMIN, "POST", "/v1/users", {"name": "bob", "logins": ["bob"]})
    assert status == 200
    assert invite["url"] == f"https://proxy.example.test:3080/web/invite/{invite['token']}"
    proxy = host(IdentityKind.PROXY, str(uuid.UUID(int=3)), "proxy1")
    status, enrolment = await call(api, proxy, "POST", f"/v1/invites/{invite['token']}/totp")
    assert status == 200
    assert enrolment["uri"].startswith("otpauth://totp/")
    code = totp_now(enrolment["secret"], clock)
    body = {"password": PASSWORD, "totp_code": code}
    status, done = await call(api, proxy, "POST", f"/v1/invites/{invite['token']}", body)
    assert status == 200, done
    assert done["user"]["spec"]["status"]["state"] == "active"
    assert "certificate" not in done  # no key asked for, none given
    status, _again = await call(api, proxy, "POST", f"/v1/invites/{invite['token']}", body)
    assert status == 401


async def test_an_invite_completed_with_a_key_comes_back_with_a_certificate(
    api: AuthAPI, auth: AuthServer, clock: FakeClock
) -> None:
    status, invite = await call(
        api, ADMIN, "POST", "/v1/users", {"name": "cleo", "logins": ["cleo"]}
    )
    assert status == 200
    proxy = host(IdentityKind.PROXY, str(uuid.UUID(int=3)), "proxy1")
    path = f"/v1/invites/{invite['token']}"
    status, enrolment = await call(api, proxy, "POST", path + "/totp")
    body = {"password": PASSWORD, "totp_code": totp_now(enrolment["secret"], clock)}
    # A key that cannot be certified is refused before the invite is spent ...
    bad = {**body, "public_key": "ssh-ed25519 AAAA not-a-key"}
    status, reply = await call(api, proxy, "POST", path, bad)
    assert status == 400, reply
    # ... so the same invite still works with a good one.
    key = PrivateKey.generate("ssh-ed25519")
    status, done = await call(
        api, proxy, "POST", path, {**body, "public_key": key.public.openssh_line(), "ttl": 600}
    )
    assert status == 200, done
    cert = public_key_from_line(done["certificate"])
    assert isinstance(cert, Certificate) and cert.key == key.public
    assert cert.key_id == "cleo" and "cleo" in cert.principals
    assert cert.valid_before - cert.valid_after <= 600 + 60


async def test_user_names_starting_with_a_dash_are_reserved(api: AuthAPI) -> None:
    status, reply = await call(api, ADMIN, "POST", "/v1/users", {"name": "-admin-"})
    assert status == 400
    assert "reserved" in reply["error"]["message"]


async def test_a_node_asks_about_access_to_itself_only(api: AuthAPI, auth: AuthServer) -> None:
    await auth.users.add("alice", logins=["root", "alice"], roles=["access"])
    deny = Role(
        metadata=Metadata(name="no-prod"),
        spec=from_role_spec({"deny": {"node_labels": {"env": "prod"}}}),
    )
    await auth.roles.upsert(deny)
    node = host(IdentityKind.NODE)
    status, reply = await call(
        api, node, "POST", "/v1/access", {"user": "alice", "login": "root", "labels": {}}
    )
    assert status == 200
    assert reply["allowed"] is True
    assert reply["logins"] == ["alice", "root"]
    assert reply["options"]["forward_agent"] is True
    status, reply = await call(
        api, node, "POST", "/v1/access", {"user": "alice", "login": "postgres", "labels": {}}
    )
    assert reply["allowed"] is False
    assert "postgres" in reply["reason"]
    await auth.users.update("alice", roles=["access", "no-prod"])
    status, reply = await call(
        api,
        node,
        "POST",
        "/v1/access",
        {"user": "alice", "login": "root", "labels": {"env": "prod"}},
    )
    assert (reply["allowed"], reply["logins"]) == (False, [])
    status, reply = await call(
        api, node, "POST", "/v1/access", {"user": "alice", "node": OTHER_NODE_ID, "labels": {}}
    )
    assert status == 403
    status, reply = await call(api, node, "POST", "/v1/access", {"user": "mallory", "labels": {}})
    assert (status, reply["known"], reply["allowed"], reply["logins"]) == (200, False, False, [])


async def register(auth: AuthServer, name: str, role: str = "node") -> Identity:
    token = (await auth.tokens.add([role])).name
    result = await auth.join(
        token=token, public_key=PrivateKey.generate().public, node_name=name, role=role
    )
    return host(IdentityKind(role), result.host_id, name)


async def test_heartbeats_only_as_itself(api: AuthAPI, auth: AuthServer) -> None:
    web = await register(auth, "web1")
    db = await register(auth, "db1")
    report = Node(
        metadata=Metadata(name=web.host_id or "", labels={"env": "prod"}),
        spec=NodeSpec(hostname="web1", addr="10.0.0.1:3022"),
    )
    status, reply = await call(api, web, "POST", "/v1/nodes/heartbeat", to_dict(report))
    assert status == 200, reply
    assert (reply["hostname"], reply["online"], reply["labels"]) == ("web1", True, {"env": "prod"})
    status, reply = await call(api, db, "POST", "/v1/nodes/heartbeat", to_dict(report))
    assert status == 403
    assert reply["error"]["message"] == "a host may only report its own heartbeat"
    status, nodes = await call(api, ADMIN, "GET", "/v1/nodes")
    assert [n["hostname"] for n in nodes["nodes"]] == ["web1"]


async def test_users_see_only_the_nodes_their_roles_show(api: AuthAPI, auth: AuthServer) -> None:
    web = await register(auth, "web1")
    await api.auth.nodes.heartbeat(
        Node(
            metadata=Metadata(name=web.host_id or "", labels={"env": "prod"}),
            spec=NodeSpec(hostname="web1", addr="10.0.0.1:3022"),
        ),
        caller_host_id=web.host_id or "",
    )
    dev_only = Role(
        metadata=Metadata(name="dev"),
        spec=from_role_spec(
            {
                "allow": {
                    "node_labels": {"env": "dev"},
                    "rules": [{"resources": ["node"], "verbs": ["list", "read"]}],
                }
            }
        ),
    )
    await auth.roles.upsert(dev_only)
    alice = await user(auth, "alice", "access")
    dave = await user(auth, "dave", "dev")
    assert len((await call(api, alice, "GET", "/v1/nodes"))[1]["nodes"]) == 1
    assert (await call(api, dave, "GET", "/v1/nodes"))[1]["nodes"] == []
    assert (await call(api, dave, "GET", f"/v1/nodes/{web.host_id}"))[0] == 404


def session(sid: str, owner: str, node_id: str, *parties: str) -> dict[str, Any]:
    spec = SessionSpec(
        user=owner,
        login="root",
        node=node_id,
        created=dt.datetime(2023, 11, 14, tzinfo=dt.UTC),
        parties=[Party(id=str(i), user=p) for i, p in enumerate(parties)],
    )
    return to_dict(Session(metadata=Metadata(name=sid), spec=spec))


async def test_users_read_only_their_own_sessions_unless_roles_allow(
    api: AuthAPI, auth: AuthServer
) -> None:
    node = await register(auth, "web1")
    assert node.host_id is not None
    for sid, owner, parties in (("s-alice", "alice", ["alice"]), ("s-bob", "bob", ["bob", "carl"])):
        status, _ = await call(
            api, node, "PUT", f"/v1/sessions/{sid}", session(sid, owner, node.host_id, *parties)
        )
        assert status == 200
        assert (await call(api, node, "PUT", f"/v1/recordings/{sid}/chunks/0", b"x" * 10))[0] == 200
        assert (await call(api, node, "POST", f"/v1/recordings/{sid}/complete", {"chunks": 1}))[
            0
        ] == 200
    alice = await user(auth, "alice", "access")
    carl = await user(auth, "carl", "access")
    audrey = await user(auth, "audrey", "auditor")

    def sids(reply: Any, key: str = "sessions") -> list[str]:
        items = reply[key]
        return sorted(i["metadata"]["name"] if "metadata" in i else i["sid"] for i in items)

    # access allows listing sessions (to join them); a bare role shows only one's own.
    await auth.roles.upsert(Role(metadata=Metadata(name="bare")))
    await auth.users.update("alice", roles=["bare"])
    assert sids((await call(api, alice, "GET", "/v1/sessions"))[1]) == ["s-alice"]
    assert sids((await call(api, carl, "GET", "/v1/sessions"))[1]) == ["s-alice", "s-bob"]
    assert sids((await call(api, alice, "GET", "/v1/recordings"))[1], "recordings") == ["s-alice"]
    assert (await call(api, alice, "GET", "/v1/sessions/s-bob"))[0] == 404
    assert (await call(api, alice, "GET", "/v1/recordings/s-alice")) == (200, b"x" * 10)
    status, reply = await call(api, alice, "GET", "/v1/recordings/s-bob")
    assert (status, reply["error"]["message"]) == (403, "you may only replay your own sessions")
    # A party of a session may replay it; the auditor may replay everything.
    assert (await call(api, carl, "GET", "/v1/recordings/s-bob"))[0] == 200
    assert (await call(api, audrey, "GET", "/v1/recordings/s-alice"))[0] == 200
    accessed = await auth.audit.search(since=START - 1, until=START + 10, events=["T2012I"])
    assert [e.to_record()["user"] for e in accessed] == ["alice", "carl", "audrey"]


async def test_a_node_reports_and_uploads_only_its_own_sessions(
    api: AuthAPI, auth: AuthServer
) -> None:
    web = await register(auth, "web1")
    db = await register(auth, "db1")
    assert web.host_id and db.host_id
    status, _ = await call(api, web, "PUT", "/v1/sessions/s1", session("s1", "alice", web.host_id))
    assert status == 200
    status, reply = await call(api, db, "PUT", "/v1/sessions/s1", session("s1", "a", db.host_id))
    assert (status, reply["error"]["message"]) == (403, "this session belongs to another node")
    status, reply = await call(api, db, "PUT", "/v1/sessions/s2", session("s2", "a", web.host_id))
    assert (status, reply["error"]["message"]) == (403, "a node may only report its own sessions")
    status, reply = await call(api, db, "PUT", "/v1/recordings/s1/chunks/0", b"forged")
    assert status == 403
    assert await auth.recordings.list_incomplete() == []


async def test_events_from_a_node_carry_its_id(api: AuthAPI, auth: AuthServer) -> None:
    node = host(IdentityKind.NODE)
    body = {
        "code": "T2000I",
        "user": "alice",
        "login": "root",
        "sid": "s1",
        "server_id": OTHER_NODE_ID,
        "fields": {"size": "80:25"},
    }
    status, reply = await call(api, node, "POST", "/v1/events", body)
    assert status == 200, reply
    status, reply = await call(
        api, node, "POST", "/v1/events", {"code": "T2000I", "fields": {"server_id": "x"}}
    )
    assert status == 400
    status, found = await call(api, ADMIN, "GET", "/v1/events?event=session.start")
    assert status == 200
    (record,) = found["events"]
    assert (record["event"], record["code"]) == ("session.start", "T2000I")
    assert (record["server_id"], record["user"], record["size"]) == (NODE_ID, "alice", "80:25")


async def test_a_deleted_user_loses_access_at_once(api: AuthAPI, auth: AuthServer) -> None:
    eddie = await user(auth, "eddie", "editor")
    assert (await call(api, eddie, "GET", "/v1/users"))[0] == 200
    await auth.users.update("eddie", roles=["access"])
    assert (await call(api, eddie, "GET", "/v1/users"))[0] == 403
    await auth.users.remove("eddie")
    status, reply = await call(api, eddie, "GET", "/v1/whoami")
    assert (status, reply["error"]["message"]) == (403, "user 'eddie' no longer exists")


async def test_an_expired_certificate_is_refused(api: AuthAPI, clock: FakeClock) -> None:
    who = attrs.evolve(ADMIN, valid_before=clock() + 60)
    assert (await call(api, who, "GET", "/v1/whoami"))[0] == 200
    clock.advance(61)
    status, reply = await call(api, who, "GET", "/v1/whoami")
    assert (status, reply["error"]["kind"]) == (401, "authentication_failed")


async def test_roles_users_and_tokens_through_the_api(api: AuthAPI, auth: AuthServer) -> None:
    role = {
        "kind": "role",
        "version": "v1",
        "metadata": {"name": "dev"},
        "spec": {"allow": {"logins": ["dev"]}},
    }
    assert await call(api, ADMIN, "PUT", "/v1/roles/dev", role) == (200, {"created": True})
    assert await call(api, ADMIN, "PUT", "/v1/roles/dev", role) == (200, {"created": False})
    status, reply = await call(api, ADMIN, "PUT", "/v1/roles/other", role)
    assert status == 400
    bad = {**role, "spec": {"allow": {"logins": ["not a login"]}}}
    status, reply = await call(api, ADMIN, "PUT", "/v1/roles/dev", bad)
    assert (status, reply["error"]["kind"]) == (400, "invalid_resource")
    assert "spec.allow.logins[0]" in reply["error"]["message"]
    status, _invite = await call(
        api, ADMIN, "POST", "/v1/users", {"name": "ann", "logins": ["ann"], "roles": ["dev"]}
    )
    assert status == 200
    status, reply = await call(api, ADMIN, "POST", "/v1/users", {"name": "ann"})
    assert (status, reply["error"]["kind"]) == (409, "already_exists")
    status, reply = await call(api, ADMIN, "POST", "/v1/users", {"name": "bo", "roles": ["nope"]})
    assert status == 404
    status, updated = await call(api, ADMIN, "PUT", "/v1/users/ann", {"logins": ["ann", "root"]})
    assert updated["spec"]["traits"]["logins"] == ["ann", "root"]
    status, token = await call(api, ADMIN, "POST", "/v1/tokens", {"roles": ["node"], "ttl": 60})
    assert status == 200 and len(token["token"]) == 32
    assert token["auth_ca_pin"].startswith("sha256:")
    status, listed = await call(api, ADMIN, "GET", "/v1/tokens")
    assert [t["metadata"]["name"] for t in listed["tokens"]] == ["*" * 24 + token["token"][-8:]]
    assert (await call(api, ADMIN, "DELETE", f"/v1/tokens/{token['token']}"))[0] == 200
    status, reply = await call(api, ADMIN, "DELETE", f"/v1/tokens/{token['token']}")
    assert status == 404
    assert token["token"] not in reply["error"]["message"]
    status, reply = await call(api, ADMIN, "DELETE", "/v1/roles/nope")
    assert reply["error"]["message"] == "role 'nope' not found"


async def test_requests_the_router_refuses(api: AuthAPI) -> None:
    assert (await call(api, ADMIN, "GET", "/v2/nothing"))[0] == 404
    status, reply = await call(api, ADMIN, "DELETE", "/v1/whoami")
    assert (status, reply["error"]["kind"]) == (405, "method_not_allowed")
    status, reply = await call(api, ADMIN, "POST", "/v1/users", b"{not json")
    assert (status, reply["error"]["message"]) == (400, "the body is not valid JSON")
    status, reply = await call(api, ADMIN, "POST", "/v1/users", b"[1, 2]")
    assert (status, reply["error"]["message"]) == (400, "the body must be a JSON object")
    status, reply = await call(api, ADMIN, "POST", "/v1/users", {"name": 5})
    assert (status, reply["error"]["message"]) == (400, "name: expected a string")


async def test_status_counts_and_the_ca_lines(api: AuthAPI, auth: AuthServer) -> None:
    await auth.users.add("alice", logins=["alice"])
    status, reply = await call(api, ADMIN, "GET", "/v1/status")
    assert status == 200
    assert reply["cluster_name"] == auth.cluster_name
    assert reply["counts"]["users"] == 1 and reply["counts"]["roles"] == 3
    assert reply["authorities"]["user"] == [k.fingerprint() for k in auth.ca.public_keys("user")]
    status, cas = await call(api, host(IdentityKind.NODE), "GET", "/v1/authorities")
    assert cas["user"]["lines"][0].startswith("cert-authority ssh-ed25519 ")
    assert cas["host"]["lines"][0].startswith("@cert-authority * ssh-ed25519 ")
    assert cas["host"]["pin"] == reply["ca_pin"]


async def serve_raw(api: AuthAPI, who: Identity, data: bytes) -> bytes:
    """Feed ``data`` to the API's HTTP server over a stream, then read all it answers."""
    client, server = trio.testing.memory_stream_pair()

    async def serve() -> None:
        async with server:  # as the SSH layer closes the channel when the API is done
            await api.serve_channel(server, who)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        await client.send_all(data)
        await client.send_eof()
        out = b""
        while chunk := await client.receive_some():
            out += chunk
    return out


async def test_keep_alive_answers_requests_in_order(api: AuthAPI) -> None:
    request = b"GET /v1/whoami HTTP/1.1\r\nHost: auth\r\n\r\n"
    post = b'POST /v1/users HTTP/1.1\r\nHost: auth\r\nContent-Length: 11\r\n\r\n{"name": 5}'
    out = await serve_raw(api, ADMIN, request + post + request)
    assert out.count(b"HTTP/1.1 200 ") == 2 and out.count(b"HTTP/1.1 400 ") == 1
    assert out.index(b"HTTP/1.1 400 ") > out.index(b"HTTP/1.1 200 ")
    assert b'"kind": "admin"' in out and b"name: expected a string" in out


async def test_unreadable_or_oversized_requests_end_the_channel(api: AuthAPI) -> None:
    out = await serve_raw(api, ADMIN, b"HELLO\r\n\r\nGET /v1/whoami HTTP/1.1\r\nHost: a\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 400 ")
    assert b"connection: close" in out.lower() and b"admin" not in out
    big = b"PUT /v1/recordings/s1/chunks/0 HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999\r\n\r\n"
    out = await serve_raw(api, host(IdentityKind.NODE), big)
    assert out.startswith(b"HTTP/1.1 413 ")
    assert b'"too_large"' in out


async def test_head_gets_headers_only_and_the_channel_goes_on(api: AuthAPI) -> None:
    # Found by fuzz/fuzz_authapi.py: a body sent for HEAD made h11 kill the channel.
    head = b"HEAD /v1/whoami HTTP/1.1\r\nHost: auth\r\n\r\n"
    get = b"GET /v1/whoami HTTP/1.1\r\nHost: auth\r\n\r\n"
    out = await serve_raw(api, ADMIN, head + get)
    first, _, rest = out.partition(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 405 ")  # whoami is GET only; the answer has no body
    assert rest.startswith(b"HTTP/1.1 200 ")
    assert b'"kind": "admin"' in rest
