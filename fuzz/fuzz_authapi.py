"""Fuzz the auth API's request handling: HTTP/1.1 bytes in, JSON responses out.

The auth API (:mod:`trioport.roles.auth.api`) is HTTP/1.1 (h11) inside SSH
channels. This target feeds it what a caller could send once logged in, as each
kind of caller, in two ways:

- **stream** (bit 4 of the first byte clear): the rest of the input is the byte
  stream of an SSH channel, served by :meth:`AuthAPI.serve_channel` (the real
  loop: h11, body limits, keep-alive, one request after another) over a
  ``trio.testing.memory_stream_pair``; bit 3 sends it in 7-byte pieces instead of
  at once. The client then half-closes and reads every response to the end.
- **direct** (bit 4 set): the rest is ``METHOD SP TARGET LF BODY``, given to
  :meth:`AuthAPI.handle` (router, policy, JSON decoding, the handler), which lets
  the fuzzer reach the handlers without keeping ``Content-Length`` right.

Bits 0-2 pick the caller: the administrator, users ``alice`` (role ``access``),
``eve`` (``auditor``) and ``ed`` (``editor``), the node ``web1``, the proxy, an
auth server, or an unauthenticated joiner.

Invariant: every response has a 2xx or 4xx status (never 5xx: a 500 means a
handler raised something the API did not expect; only h11's own 501 for an unknown
transfer coding and 505 for an unknown HTTP version are allowed) and every refusal has the error
shape ``{"error": {"kind", "message"}}``; nothing raises out of the API, and no
input runs longer than :data:`TIME_LIMIT` seconds.

**How it runs.** One auth server (memory backend, fixed wall clock, bcrypt cost
4, a data directory under ``/tmp``) is built at import inside a trio loop that
runs in a background thread for the life of the process; each input runs in that
loop through ``trio.from_thread.run`` (about 0.1 ms of overhead, where a
``trio.run`` per input plus building the server would cost about 100 ms).
Before each input the store is put back to the state after the fixtures were
made, uploads are removed and the audit log is emptied, so an input that
deletes a user or a role does not change what the next one sees: every input
replays alike, alone or in a corpus.

The fixtures: users ``alice`` (active, TOTP secret :data:`TOTP_SECRET`, password
:data:`PASSWORD`), ``eve``, ``ed``, an invited ``newbie`` (invite token
:data:`INVITE`; while an input runs, new TOTP secrets and invite tokens are these
two as well, so a seed can complete an invite), nodes ``web1`` (:data:`WEB1`,
joined with ``fuzz/keys/host_ed25519``) and ``web2`` (:data:`WEB2`) with
heartbeats, the proxy :data:`PROXY`, a session and its complete recording
(:data:`SID`), and the static join token :data:`STATIC_TOKEN` for ``node`` and
``proxy``.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import pathlib
import re
import secrets
import shutil
import sys
import tempfile
import threading
from collections.abc import Iterator

import pyotp
import trio
import trio.testing

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from _fixtures import HOST_ED25519, USER_ED25519
from _harness import CORPUS, KnownBug, _raised_at, main

from trioport.config import StaticToken
from trioport.resources import Metadata, Node, NodeSpec, Party, Session, SessionSpec, to_dict
from trioport.roles.auth._http import RateLimiter
from trioport.roles.auth.api import SESSIONS_PREFIX, AuthAPI, Identity, IdentityKind
from trioport.roles.auth.server import AuthServer, open_auth_server
from trioport.roles.auth.users import INVITE_TOKEN_BYTES
from trioport.sshproto.keys import PrivateKey
from trioport.store import open_memory_backend
from trioport.store.backend import Item
from trioport.store.memory import MemoryBackend

NAME = "authapi"
#: Wall-clock seconds one input may run (the slowest seed takes 60 ms, a completed
#: recording's fsync; most take 1 to 10 ms).
TIME_LIMIT = 5.0
#: 2023-11-14T22:13:20Z, the wall clock the auth server sees, always.
NOW = 1_700_000_000.0
CLUSTER = "fuzz.example"
PASSWORD = "correct horse battery"
TOTP_SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
STATIC_TOKEN = "fuzz-static-join-token"
WEB1 = "5c2a0c64-7d7e-4a0b-9a35-2f1d7f0e9c11"
WEB2 = "0d1e2f30-4152-4637-8899-aabbccddeeff"
PROXY = "a1b2c3d4-e5f6-4789-8abc-def012345678"
SID = "1f0e9c11-7d7e-4a0b-9a35-5c2a0c642f1d"
#: The pending invite of ``newbie`` (made with a fixed "random" token).
INVITE = "ab" * INVITE_TOKEN_BYTES
#: The address invite links point at.
PROXY_ADDR = "proxy.fuzz.example:3080"


def _identities() -> list[Identity]:
    def user(name: str) -> Identity:
        return Identity(IdentityKind.USER, name, remote_addr="192.0.2.10:40000", source="u")

    def host(kind: IdentityKind, name: str, host_id: str) -> Identity:
        return Identity(kind, name, host_id=host_id, remote_addr="10.0.0.5:41000", source="h")

    return [
        Identity(IdentityKind.ADMIN, "-admin-", remote_addr="127.0.0.1:40000", source="a"),
        user("alice"),
        user("eve"),
        user("ed"),
        host(IdentityKind.NODE, "web1", WEB1),
        host(IdentityKind.PROXY, "proxy1", PROXY),
        host(IdentityKind.AUTH, "auth2", "99999999-8888-4777-8666-555555555555"),
        Identity(IdentityKind.JOIN, "-join-", remote_addr="198.51.100.9:5000", source="j"),
    ]


IDENTITIES = _identities()


# --- the auth server, in a trio loop of its own ----------------------------------------


class _World:
    """The auth server every input talks to, and how to put it back as it was."""

    def __init__(self) -> None:
        self.data_dir = pathlib.Path(tempfile.mkdtemp(prefix="trioport-fuzz-authapi-"))
        atexit.register(shutil.rmtree, self.data_dir, ignore_errors=True)
        self.auth: AuthServer | None = None
        self.token: trio.lowlevel.TrioToken | None = None
        self._snapshot: tuple[dict[str, Item], list[str], int] | None = None
        self._kept_records: set[str] = set()
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        thread = threading.Thread(target=self._run, name="fuzz-authapi-trio", daemon=True)
        thread.start()
        self._ready.wait()
        if self._failure is not None:
            raise RuntimeError("the fuzz auth server did not start") from self._failure

    def _run(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:  # reported to the importing thread
            self._failure = exc
            self._ready.set()

    async def _main(self) -> None:
        async with (
            open_memory_backend(clock=lambda: NOW, sweep_interval=1e9) as backend,
            open_auth_server(
                backend,
                data_dir=self.data_dir,
                cluster_name=CLUSTER,
                static_tokens=[StaticToken(("node", "proxy"), STATIC_TOKEN)],
                bcrypt_cost=4,
            ) as auth,
        ):
            with _deterministic():
                await _fixtures(auth)
            self.auth = auth
            self._snapshot = (dict(backend._items), list(backend._keys), backend._revision)
            self._kept_records = set(os.listdir(self.data_dir / "records"))
            self.token = trio.lowlevel.current_trio_token()
            self._ready.set()
            await trio.sleep_forever()

    def reset(self) -> None:
        """The store as after the fixtures; no uploads; an empty audit log."""
        assert self.auth is not None and self._snapshot is not None
        backend = self.auth.backend
        assert isinstance(backend, MemoryBackend)
        items, keys, revision = self._snapshot
        backend._items, backend._keys, backend._revision = dict(items), list(keys), revision
        records = self.data_dir / "records"
        for name in os.listdir(records):
            if name not in self._kept_records:
                (records / name).unlink()
        for log in (self.data_dir / "log").iterdir():
            os.truncate(log, 0)  # opened for appending: the next event starts the file
        del _CAUGHT[:]


@contextlib.contextmanager
def _deterministic() -> Iterator[None]:
    """New TOTP secrets are :data:`TOTP_SECRET`, new invite tokens :data:`INVITE`.

    Only while an input (or the fixtures) runs, so the process around (pytest
    replaying the corpus) keeps its real randomness.
    """
    real_base32, real_hex = pyotp.random_base32, secrets.token_hex
    pyotp.random_base32 = lambda *a, **k: TOTP_SECRET  # type: ignore[assignment]
    secrets.token_hex = lambda n=None: INVITE  # type: ignore[assignment]
    try:
        yield
    finally:
        pyotp.random_base32, secrets.token_hex = real_base32, real_hex  # type: ignore[assignment]


async def _fixtures(auth: AuthServer) -> None:
    for name, roles in (("alice", ["access"]), ("eve", ["auditor"]), ("ed", ["editor"])):
        invite = await auth.users.add(name, logins=["root", name], roles=roles)
        enrolment = await auth.users.start_enrolment(invite.token)
        code = pyotp.TOTP(enrolment.secret).at(NOW - 30)  # the step before NOW
        await auth.users.complete_invite(invite.token, PASSWORD, code)
    await auth.users.add("newbie", logins=["newbie"])
    for host_id, name, role in (
        (WEB1, "web1", "node"),
        (WEB2, "web2", "node"),
        (PROXY, "proxy1", "proxy"),
    ):
        await auth.join(
            token=STATIC_TOKEN,
            public_key=(HOST_ED25519 if name == "web1" else PrivateKey.generate()).public,
            node_name=name,
            role=role,
            host_id=host_id,
            addresses=["10.0.0.5"],
        )
    for host_id, name, env in ((WEB1, "web1", "prod"), (WEB2, "web2", "dev")):
        node = Node(
            metadata=Metadata(name=host_id, labels={"env": env}),
            spec=NodeSpec(hostname=name, addr="10.0.0.5:3022"),
        )
        await auth.nodes.heartbeat(node, caller_host_id=host_id)
    session = _session()
    await auth.backend.put(
        Item(SESSIONS_PREFIX + SID, json.dumps(to_dict(session)).encode(), expires=NOW + 3600)
    )
    await auth.recordings.append(SID, 0, b"\x1b[1mhello\x1b[0m\r\n")
    await auth.recordings.complete(SID, chunks=1)


def _session() -> Session:
    import datetime as dt

    t0 = dt.datetime.fromtimestamp(NOW - 90, tz=dt.UTC)
    return Session(
        metadata=Metadata(name=SID),
        spec=SessionSpec(
            user="alice",
            login="root",
            node=WEB1,
            node_hostname="web1",
            parties=[Party(id="p1", user="alice", remote_addr="192.0.2.7:4000", joined=t0)],
            created=t0,
        ),
    )


class _Caught(logging.Handler):
    """Remembers what the API logged as an unexpected failure (the cause of a 500)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.causes: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            self.causes.append(f"{type(exc).__name__} at {_raised_at(exc)}: {exc}")

    def clear(self) -> None:
        del self.causes[:]


_CAUGHT_HANDLER = _Caught()
_CAUGHT = _CAUGHT_HANDLER.causes
_API_LOG = logging.getLogger("trioport.auth.api")


@contextlib.contextmanager
def _catching_api_errors() -> Iterator[None]:
    """While one input runs: record the API's failures, keep them off stderr."""
    _API_LOG.addHandler(_CAUGHT_HANDLER)
    propagate, _API_LOG.propagate = _API_LOG.propagate, False
    try:
        yield
    finally:
        _API_LOG.removeHandler(_CAUGHT_HANDLER)
        _API_LOG.propagate = propagate


WORLD = _World()


# --- one input --------------------------------------------------------------------------


class BadResponse(AssertionError):
    """A 5xx, a status outside 2xx/4xx, or a refusal without the error shape."""


class Hang(AssertionError):
    """An input ran longer than :data:`TIME_LIMIT` seconds."""


def _api() -> AuthAPI:
    # A fresh limiter per input, on a fixed clock: the same 40 joins for every input.
    assert WORLD.auth is not None
    limiter = RateLimiter(per_minute=20, burst=40, clock=lambda: 0.0)
    return AuthAPI(WORLD.auth, proxy_addr=PROXY_ADDR, join_limiter=limiter)


async def _stream(who: Identity, payload: bytes, piece: int) -> bytes:
    """Serve ``payload`` as a channel's bytes; everything the server answered."""
    client, server = trio.testing.memory_stream_pair()
    api = _api()
    received = bytearray()

    async def serve() -> None:
        try:
            await api.serve_channel(server, who)
        finally:
            await server.aclose()

    async def send() -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            for i in range(0, len(payload), piece):
                await client.send_all(payload[i : i + piece])
            await client.send_eof()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            nursery.start_soon(send)
            while data := await client.receive_some(1 << 16):
                received += data
    except BaseExceptionGroup as group:
        # What escaped serve_channel, as itself (its traceback says where it came from).
        if len(group.exceptions) == 1 and isinstance(group.exceptions[0], Exception):
            raise group.exceptions[0] from None
        raise
    await client.aclose()
    return bytes(received)


async def _direct(who: Identity, payload: bytes) -> list[tuple[int, bytes]]:
    head, _, body = payload.partition(b"\n")
    method, _, target = head.partition(b" ")
    response = await _api().handle(
        who, method.decode("latin-1"), target.decode("latin-1") or "/", body
    )
    return [(response.status, response.body)]


_STATUS_LINE = re.compile(rb"HTTP/1\.1 (\d{3}) [^\r\n]*\r\n")


def _responses(raw: bytes) -> list[tuple[int, bytes]]:
    """Split what the server sent into (status, body) pairs (it always sends a length)."""
    out = []
    pos = 0
    while pos < len(raw):
        m = _STATUS_LINE.match(raw, pos)
        if m is None:
            raise BadResponse(f"not an HTTP/1.1 response at byte {pos}: {raw[pos : pos + 60]!r}")
        end = raw.index(b"\r\n\r\n", m.end())
        headers = raw[m.end() : end].lower()
        length = re.search(rb"(?m)^content-length: (\d+)\r?$", headers)
        if length is None:
            raise BadResponse("a response without content-length")
        body_start = end + 4
        body_end = body_start + int(length.group(1))
        out.append((int(m.group(1)), raw[body_start:body_end]))
        pos = body_end
    return out


#: 5xx statuses that are no failure: h11 answers a transfer coding it does not know
#: with 501 (RFC 9112 section 6.1) and an HTTP version it does not speak with 505.
PROTOCOL_REFUSALS = frozenset({501, 505})


def _check_response(status: int, body: bytes, causes: list[str]) -> None:
    if not (200 <= status < 300 or 400 <= status < 500 or status in PROTOCOL_REFUSALS):
        raise BadResponse(f"status {status} ({'; '.join(causes) or 'no cause logged'})")
    if status >= 400 and body:  # an answer to HEAD has headers only
        try:
            error = json.loads(body)["error"]
            ok = isinstance(error["kind"], str) and isinstance(error["message"], str)
        except (ValueError, KeyError, TypeError):
            ok = False
        if not ok:
            raise BadResponse(f"status {status} without the error shape: {body[:300]!r}")


async def _one(data: bytes) -> list[tuple[int, bytes]]:
    WORLD.reset()
    selector, payload = data[0], data[1:]
    who = IDENTITIES[selector & 7]
    with _deterministic(), trio.move_on_after(TIME_LIMIT) as scope:
        if selector & 16:
            return await _direct(who, payload)
        raw = await _stream(who, payload, 7 if selector & 8 else max(1, len(payload)))
    if scope.cancelled_caught:
        lines = re.findall(rb"(?m)^[A-Z]+ /\S*", payload)
        shown = b", ".join(lines[:5]).decode("latin-1")[:300]
        raise Hang(f"no answer within {TIME_LIMIT} s to {shown or 'the input'}")
    return _responses(raw)


def check(data: bytes) -> None:
    """The invariant, for one input: only 2xx and 4xx, with the error shape."""
    if not data:
        return
    # Our response splitter reads bodies by Content-Length, which a response to HEAD
    # declares without sending: keep the method out (length-preserving), so the
    # splitter stays simple. HEAD itself is covered by tests/roles/auth/test_api.py.
    data = data.replace(b"HEAD", b"GETT")
    assert WORLD.token is not None
    with _catching_api_errors():
        responses = trio.from_thread.run(_one, data, trio_token=WORLD.token)
    for status, body in responses:
        _check_response(status, body, list(_CAUGHT))


# --- known bugs ------------------------------------------------------------------------


#: Bugs this target found that are not fixed yet; see ``fuzz_resources.KNOWN_BUGS``.
KNOWN_BUGS: tuple[KnownBug, ...] = (
    # Fixed: bug-events-since-inf (query times must lie in 1970..9999, else 400),
    # bug-events-since-year-1 (AuditLog.search reads only the day files that exist)
    # and bug-head-request (a HEAD response carries no body).
)

#: How each known bug is recognised: the harness raises :class:`BadResponse` and
#: :class:`Hang` itself, so the frame that raised says nothing; the message names the
#: cause (the exception the API logged for a 500, the request line of a hang).
MARKERS: dict[str, str] = {
    "bug-events-since-inf": "OverflowError at audit_log.py:_as_datetime",
    "bug-events-since-year-1": "/v1/events",
    "bug-head-request": "Too much data for declared Content-Length",
}

#: The input of each known bug (the ``crash`` name, a file in the corpus unless it hangs).
BUG_INPUTS: dict[str, bytes] = {
    "bug-head-request": bytes([7]) + b"HEAD /v1/join HTTP/1.1\r\nHost: a\r\n\r\n",
    "bug-events-since-inf": bytes([2 | 16]) + b"GET /v1/events?since=inf\n",
    "bug-events-since-year-1": bytes([2])
    + b"GET /v1/events?since=-62135596800 HTTP/1.1\r\nHost: a\r\n\r\n",
}


def known_bug(exc: BaseException) -> KnownBug | None:
    """The recorded bug ``exc`` is, if any."""
    where = _raised_at(exc)
    for bug in KNOWN_BUGS:
        if type(exc) is bug.exception and where == bug.where and MARKERS[bug.crash] in str(exc):
            return bug
    return None


def TestOneInput(data: bytes) -> None:
    try:
        check(data)
    except Exception as exc:
        if known_bug(exc) is None:
            raise


# --- seeds ------------------------------------------------------------------------------


def _request(method: str, target: str, body: object = None, *, close: bool = False) -> bytes:
    data = b"" if body is None else json.dumps(body).encode()
    lines = [f"{method} {target} HTTP/1.1", "Host: auth"]
    if data:
        lines += ["Content-Type: application/json", f"Content-Length: {len(data)}"]
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + data


def _upload(sid: str, index: int, data: bytes) -> bytes:
    head = (
        f"PUT /v1/recordings/{sid}/chunks/{index} HTTP/1.1\r\nHost: auth\r\n"
        f"Content-Type: application/octet-stream\r\nContent-Length: {len(data)}\r\n\r\n"
    )
    return head.encode() + data


def _heartbeat(host_id: str, name: str) -> dict[str, object]:
    node = Node(
        metadata=Metadata(name=host_id, labels={"env": "prod"}),
        spec=NodeSpec(hostname=name, addr="10.0.0.5:3022"),
    )
    return to_dict(node)


def seeds() -> dict[str, bytes]:
    """Every seed of ``corpus/authapi/``, by file name."""
    who = {i.name: n for n, i in enumerate(IDENTITIES)}
    key = USER_ED25519.public.openssh_line()
    node_key = HOST_ED25519.public.openssh_line()
    code = pyotp.TOTP(TOTP_SECRET).at(NOW)
    role = {
        "kind": "role",
        "version": "v1",
        "metadata": {"name": "ops"},
        "spec": {"allow": {"logins": ["root"], "node_labels": {"*": "*"}}},
    }
    requests: dict[str, tuple[str, list[bytes]]] = {
        "admin_status": ("-admin-", [_request("GET", "/v1/status")]),
        "admin_users": (
            "-admin-",
            [
                _request("POST", "/v1/users", {"name": "bob", "logins": ["bob"]}),
                _request("GET", "/v1/users"),
                _request("GET", "/v1/users/alice"),
                _request("PUT", "/v1/users/alice", {"logins": ["root"], "roles": ["access"]}),
                _request("POST", "/v1/users/alice/reset"),
                _request("POST", "/v1/users/alice/unlock"),
                _request("DELETE", "/v1/users/bob"),
            ],
        ),
        "admin_tokens": (
            "-admin-",
            [
                _request("POST", "/v1/tokens", {"roles": ["node"], "ttl": 60}),
                _request("GET", "/v1/tokens"),
                _request("DELETE", "/v1/tokens/0123456789abcdef0123456789abcdef"),
            ],
        ),
        "admin_roles": (
            "-admin-",
            [
                _request("GET", "/v1/roles"),
                _request("PUT", "/v1/roles/ops", role),
                _request("GET", "/v1/roles/ops"),
                _request("DELETE", "/v1/roles/ops"),
            ],
        ),
        "admin_nodes": (
            "-admin-",
            [
                _request("GET", "/v1/nodes"),
                _request("GET", f"/v1/nodes/{WEB1}"),
                _request("DELETE", f"/v1/nodes/{WEB2}"),
            ],
        ),
        "admin_events": (
            "-admin-",
            [
                _request("GET", "/v1/events?since=1699990000&until=2023-11-15T00:00:00&limit=5"),
                _request("GET", "/v1/events?event=user.login,T1000W"),
                _request("POST", "/v1/events", {"code": "T2000I", "user": "alice"}),
            ],
        ),
        "admin_sessions": (
            "-admin-",
            [
                _request("GET", "/v1/sessions?state=active"),
                _request("GET", f"/v1/sessions/{SID}"),
                _request("GET", "/v1/recordings"),
                _request("GET", f"/v1/recordings/{SID}?offset=2&size=5", close=True),
            ],
        ),
        "alice_whoami": ("alice", [_request("GET", "/v1/whoami"), _request("GET", "/v1/nodes")]),
        "alice_own_session": (
            "alice",
            [_request("GET", "/v1/sessions"), _request("GET", f"/v1/recordings/{SID}")],
        ),
        "alice_refused": ("alice", [_request("POST", "/v1/users", {"name": "mallory"})]),
        "eve_events": ("eve", [_request("GET", "/v1/events?limit=10")]),
        "ed_role": ("ed", [_request("PUT", "/v1/roles/ops", role)]),
        "node_heartbeat": (
            "web1",
            [
                _request("POST", "/v1/nodes/heartbeat", _heartbeat(WEB1, "web1")),
                _request("GET", "/v1/authorities"),
                _request("POST", "/v1/access", {"user": "alice", "login": "root"}),
            ],
        ),
        "node_session_upload": (
            "web1",
            [
                _request("PUT", "/v1/sessions/new-session-1", _session_body("new-session-1")),
                _request("GET", "/v1/recordings/new-session-1/upload"),
                _upload("new-session-1", 0, b"\x1b[31mls\r\n"),
                _request("POST", "/v1/events", {"code": "T2000I", "sid": "new-session-1"}),
                _request("POST", "/v1/recordings/new-session-1/complete", {"chunks": 1}),
            ],
        ),
        "node_renew": (
            "web1",
            [_request("POST", "/v1/hosts/certificate", {"public_key": node_key})],
        ),
        "proxy_login": (
            "proxy1",
            [
                _request(
                    "POST",
                    "/v1/login",
                    {
                        "user": "alice",
                        "password": PASSWORD,
                        "totp_code": code,
                        "public_key": key,
                        "ttl": 3600,
                    },
                ),
            ],
        ),
        "proxy_invite": (
            "proxy1",
            [
                _request("POST", f"/v1/invites/{INVITE}/totp"),
                _request(
                    "POST", f"/v1/invites/{INVITE}", {"password": PASSWORD, "totp_code": code}
                ),
            ],
        ),
        "proxy_access": (
            "proxy1",
            [_request("POST", "/v1/access", {"user": "alice", "labels": {"env": "prod"}})],
        ),
        "auth_nodes": ("auth2", [_request("GET", "/v1/nodes")]),
        "join": (
            "-join-",
            [
                _request(
                    "POST",
                    "/v1/join",
                    {"token": STATIC_TOKEN, "public_key": key, "node_name": "web9"},
                ),
                _request("GET", "/v1/whoami"),
            ],
        ),
    }
    out: dict[str, bytes] = {}
    for name, (caller, reqs) in requests.items():
        index = who[caller]
        out[name] = bytes([index]) + b"".join(reqs)
        out[name + "_trickled"] = bytes([index | 8]) + b"".join(reqs)
        # The first request again, as a direct call.
        first = reqs[0]
        head, _, rest = first.partition(b"\r\n")
        body = rest.partition(b"\r\n\r\n")[2]
        method, target, _version = head.split(b" ")
        out[name + "_direct"] = bytes([index | 16]) + method + b" " + target + b"\n" + body
    out["garbage"] = bytes([0]) + b"\x00\x01GET / HTTP/9.9\r\n\r\n"
    out["pipelined_then_half"] = bytes([0]) + _request("GET", "/v1/whoami") * 3 + b"GET /v1/st"
    out["too_large"] = bytes([4]) + (
        b"PUT /v1/recordings/x/chunks/0 HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999\r\n\r\n"
    )
    out["chunked"] = bytes([1]) + (
        b"POST /v1/users HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'5\r\n{"a":\r\n2\r\n1}\r\n0\r\n\r\n'
    )
    # Not the hangs: each mutation of one would cost TIME_LIMIT when the corpus is replayed.
    hangs = {bug.crash for bug in KNOWN_BUGS if bug.exception is Hang}
    out.update({name: data for name, data in BUG_INPUTS.items() if name not in hangs})
    return out


def _session_body(sid: str) -> dict[str, object]:
    import attrs

    session = _session()
    session = attrs.evolve(session, metadata=Metadata(name=sid))
    return to_dict(session)


def write_seeds() -> None:
    folder = CORPUS / NAME
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in seeds().items():
        TestOneInput(data)  # every seed passes the invariant, or is a known bug
        (folder / name).write_bytes(data)


if __name__ == "__main__":
    if sys.argv[1:] == ["--write-seeds"]:
        write_seeds()
    else:
        main(TestOneInput, NAME, instrument=("trioport", "h11"))
