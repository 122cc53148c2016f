"""Fuzz the resource and configuration loaders: YAML and JSON in, attrs resources out.

What ``tctl create``, the auth API, the store and ``trioport run --config`` read
from people and files: :func:`trioport.resources.from_yaml`, ``from_yaml_all``,
``from_json``, ``AuditEvent.from_record`` and :func:`trioport.config.loads_config`.

The first input byte chooses the loader (bits 0-2) and the class asked for (bits
3-5: any resource by its ``kind``, or one class); the rest is the document,
decoded as UTF-8 (Latin-1 if that fails, so every byte value reaches the parser).

Invariants:

- a document loads, or the loader raises :class:`~trioport.errors.ConfigError`
  (a ``TrioportError``); nothing else ever escapes;
- what loads survives the way back: ``to_json``/``to_yaml`` (with secrets) read
  back equal, and ``dump_config`` reads back as the same configuration;
- an alias bomb ("billion laughs", a merge-key bomb) is refused by counting,
  before anything is expanded: no YAML document that loads has more than
  ``resources.MAX_YAML_NODES`` nodes once its aliases are expanded (counted
  here, deterministically), and no input costs more CPU than a base plus a cost
  per byte (:data:`CPU_BASE`, :data:`CPU_PER_BYTE`).

``python3 fuzz/fuzz_resources.py --write-seeds`` rewrites ``corpus/resources/``
from :func:`seeds`: valid role, user, token, node, CA, session and event documents
in YAML and JSON, a configuration file, and the bombs.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import json
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from _harness import CORPUS, KnownBug, _raised_at, main

from trioport import resources as r
from trioport.config import Config, dump_config, loads_config
from trioport.errors import ConfigError

NAME = "resources"
#: CPU seconds one input may take: a base plus a cost per input byte, generous for
#: PyYAML's pure-Python scanner (about 100 KB/s, slower in deeply nested flow
#: collections); :data:`SLOWDOWN` scales it under atheris's instrumentation.
CPU_BASE = 1.0
CPU_PER_BYTE = 100e-6
SLOWDOWN = 1.0

#: The classes the second selector picks; ``r.Resource`` lets ``kind`` decide.
CLASSES: tuple[object, ...] = (
    r.Resource,
    r.Role,
    r.User,
    r.Token,
    r.Node,
    r.CertAuthority,
    r.Session,
    r.AuditEvent,
)
LOADERS = ("yaml", "yaml_all", "json", "config", "record", "json_bytes", "yaml", "json")


class SlowInput(AssertionError):
    """One input took more CPU than :data:`CPU_BASE` + :data:`CPU_PER_BYTE` allow."""


class AliasBombAccepted(AssertionError):
    """A YAML document loaded whose expansion exceeds ``resources.MAX_YAML_NODES``."""


class RoundTripError(AssertionError):
    """Something that loaded did not read back equal to itself."""


def _text(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _expanded_size(data: object, cap: int) -> int:
    """Nodes in ``data`` counting every alias again (as a consumer walks it), up to ``cap``."""
    count = 0
    stack = [data]
    while stack and count <= cap:
        item = stack.pop()
        count += 1
        if isinstance(item, dict):
            for key, value in item.items():
                stack += (key, value)
        elif isinstance(item, list | tuple | set):
            stack += item
    return count


def _check_yaml_bounds(text: str) -> None:
    """What the YAML layer lets through is at most ``MAX_YAML_NODES`` per document."""
    try:
        docs = r.yaml_documents(text, "fuzz.yaml")
    except ConfigError:
        return
    for data, _lines in docs:
        if _expanded_size(data, r.MAX_YAML_NODES + 1) > r.MAX_YAML_NODES:
            raise AliasBombAccepted(f"a document of more than {r.MAX_YAML_NODES} nodes loaded")


def _round_trip(obj: object, cls: object) -> None:
    kind = type(obj)
    back = r.from_json(r.to_json(obj, secrets=True), kind)
    if back != obj:
        raise RoundTripError(f"JSON changed {obj!r} into {back!r}")
    back = r.from_yaml(r.to_yaml(obj, secrets=True), kind)
    if back != obj:
        raise RoundTripError(f"YAML changed {obj!r} into {back!r}")
    if cls is not r.Resource and kind is not cls:
        raise AssertionError(f"asked for {cls!r}, got a {kind.__name__}")


def _config_round_trip(cfg: Config) -> None:
    back = loads_config(dump_config(cfg))
    if back != cfg:
        raise RoundTripError(f"dump_config changed {cfg!r} into {back!r}")


def _load(data: bytes) -> None:
    if not data:
        return
    selector, body = data[0], data[1:]
    loader = LOADERS[selector & 7]
    cls = CLASSES[selector >> 3 & 7]
    text = _text(body)
    try:
        if loader == "yaml":
            _round_trip(r.from_yaml(text, cls, source="fuzz.yaml"), cls)
        elif loader == "yaml_all":
            for obj in r.from_yaml_all(text, cls, source="fuzz.yaml"):
                _round_trip(obj, cls)
        elif loader == "json":
            _round_trip(r.from_json(text, cls, source="fuzz.json"), cls)
        elif loader == "json_bytes":
            _round_trip(r.from_json(body, cls), cls)
        elif loader == "record":
            try:
                record = json.loads(text)
            except (ValueError, RecursionError):
                return
            event = r.AuditEvent.from_record(record, source="fuzz.log")
            _round_trip(event, r.AuditEvent)
            if r.AuditEvent.from_record(json.loads(json.dumps(event.to_record()))) != event:
                raise RoundTripError(f"to_record/from_record changed {event!r}")
        else:
            _config_round_trip(loads_config(text, source="teleport.yaml"))
    except ConfigError:
        return
    if loader in ("yaml", "yaml_all", "config"):
        _check_yaml_bounds(text)


def check(data: bytes) -> None:
    """The invariant, for one input: our errors only, round trips, bounded CPU."""
    started = time.process_time()
    _load(data)
    spent = time.process_time() - started
    if spent > (CPU_BASE + CPU_PER_BYTE * len(data)) * SLOWDOWN:
        raise SlowInput(f"{spent:.1f} s of CPU for {len(data)} bytes")


# --- known bugs ------------------------------------------------------------------------

#: Bugs this target found that are not fixed yet. Each crash input is committed in
#: ``corpus/resources/bug-*`` and replayed unfiltered as a strict xfail by
#: ``tests/test_fuzz_auth_found.py`` (the shared registry in ``_harness.py`` is not
#: this target's to edit).
_UNCAUGHT = (
    "yaml_documents catches yaml.YAMLError, but PyYAML's safe constructors raise plain"
    " ValueError/IndexError/AttributeError/KeyError for a malformed scalar, even an untagged"
    " one (an implicit timestamp like 2001-13-45), so it escapes instead of a ConfigError"
)
_READER = (
    "yaml.SafeLoader(text) checks for non-printable characters in its constructor, which"
    " yaml_documents calls outside its try: a stray control character (U+009A) escapes as"
    " yaml.reader.ReaderError instead of a ConfigError"
)
KNOWN_BUGS: tuple[KnownBug, ...] = (
    # Fixed: PyYAML constructor errors (bug-timestamp-*, bug-float-*, bug-bool-*,
    # bug-int-*) and the reader's unprintable-character check (bug-control-character)
    # now become ConfigError in resources.yaml_documents. Their inputs stay as seeds.
)

#: The input of each known bug (the ``crash`` name, a file in the corpus), and more
#: inputs of the same bugs.
BUG_INPUTS = {
    "bug-timestamp-month-13": b"\x00kind: role\nmetadata: {name: a, expires: 2001-13-45}\n",
    "bug-timestamp-tag-junk": b"\x03teleport: {nodename: !!timestamp x}\n",
    "bug-float-tag-empty": b"\x00kind: role\nversion: !!float _\n",
    "bug-bool-tag-junk": b"\x03ssh_service: {enabled: !!bool x}\n",
    "bug-control-character": b"\x00kind: role\nmetadata: {name: a\xc2\x9a}\n",
    "bug-timestamp-offset-25": b"\x03teleport: {nodename: 2001-01-01 10:00:00 +25}\n",
    "bug-int-tag-0x": b"\x03teleport:\n  connection_limits: {max_connections: !!int 0x}\n",
    "bug-int-tag-empty": b"\x00kind: token\nmetadata: {name: !!int ''}\n",
    "bug-float-tag-sexagesimal": b"\x00kind: role\nversion: !!float 1:x\n",
}


def known_bug(exc: BaseException) -> KnownBug | None:
    """The recorded bug ``exc`` is, if any (same class, raised by the same function)."""
    where = _raised_at(exc)
    for bug in KNOWN_BUGS:
        if type(exc) is bug.exception and fnmatch.fnmatchcase(where, bug.where):
            return bug
    return None


def TestOneInput(data: bytes) -> None:
    try:
        check(data)
    except Exception as exc:
        if known_bug(exc) is None:
            raise


# --- seeds ------------------------------------------------------------------------------

_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPsXJ1a5tmXJ8QX4L8i7Y3x3q4cU0bWc9Y8Y1hKQxV3H"
_T0 = dt.datetime(2023, 11, 14, 22, 13, 20, tzinfo=dt.UTC)


def _resources() -> dict[str, object]:
    meta = r.Metadata
    return {
        "role_access": r.preset_roles()["access"],
        "role_editor": r.preset_roles()["editor"],
        "role_custom": r.Role(
            metadata=meta(name="dev", description="developers", labels={"team": "a"}),
            spec=r.RoleSpec(
                options=r.RoleOptions(
                    max_session_ttl=dt.timedelta(hours=8),
                    forward_agent=True,
                    client_idle_timeout=dt.timedelta(minutes=15),
                ),
                allow=r.RoleConditions(
                    logins=["{{internal.logins}}", "ubuntu"],
                    node_labels={"env": ["staging", "^dev-[0-9]+$"], "team": ["*"]},
                    rules=[r.Rule(resources=["session"], verbs=["list", "read"])],
                ),
                deny=r.RoleConditions(logins=["root"], node_labels={"env": ["prod"]}),
            ),
        ),
        "user_active": r.User(
            metadata=meta(name="alice"),
            spec=r.UserSpec(
                roles=["access", "auditor"],
                traits={"logins": ["root", "alice"]},
                created=_T0,
                status=r.UserStatus(
                    failed_logins=[_T0], locked_until=_T0 + dt.timedelta(minutes=30)
                ),
                local_auth=r.LocalAuth(
                    password_hash=b"$2b$04$abcdefghijklmnopqrstuu5zbz1Z2JXCNPQUGyxQGQkN0tWhYkHau",
                    totp_secret="JBSWY3DPEHPK3PXP",
                    totp_last_step=56666666,
                ),
            ),
        ),
        "user_invited": r.User(
            metadata=meta(name="bob"),
            spec=r.UserSpec(
                roles=["access"],
                status=r.UserStatus(state="invited", invite_expires=_T0),
                local_auth=r.LocalAuth(invite_token_hash="ab" * 32),
            ),
        ),
        "token": r.Token(
            metadata=meta(name="0123456789abcdef0123456789abcdef", expires=_T0),
            spec=r.TokenSpec(roles=["node", "proxy"]),
        ),
        "node": r.Node(
            metadata=meta(
                name="5c2a0c64-7d7e-4a0b-9a35-2f1d7f0e9c11", labels={"env": "prod", "a/b.c": ""}
            ),
            spec=r.NodeSpec(
                hostname="web1",
                addr="10.0.0.5:3022",
                cmd_labels={
                    "arch": r.CommandLabel(
                        command=["uname", "-m"], period=dt.timedelta(minutes=1), result="x86_64"
                    )
                },
            ),
        ),
        "cert_authority": r.CertAuthority(
            metadata=meta(name="example.test"),
            spec=r.CertAuthoritySpec(
                type="host",
                cluster_name="example.test",
                public_keys=[_KEY],
                private_keys=["-----BEGIN OPENSSH PRIVATE KEY-----\n...\n"],
            ),
        ),
        "session": r.Session(
            metadata=meta(name="1f0e9c11-7d7e-4a0b-9a35-5c2a0c642f1d"),
            spec=r.SessionSpec(
                user="alice",
                login="root",
                node="5c2a0c64-7d7e-4a0b-9a35-2f1d7f0e9c11",
                node_hostname="web1",
                parties=[r.Party(id="p1", user="alice", remote_addr="192.0.2.7:4000", joined=_T0)],
                created=_T0,
                ended=_T0 + dt.timedelta(seconds=90),
                state="ended",
            ),
        ),
        "event": r.AuditEvent(
            metadata=meta(name="9a35-uid"),
            spec=r.AuditEventSpec(
                event="user.login",
                code="T1000I",
                time=_T0,
                fields={"user": "alice", "success": True, "addr.remote": "192.0.2.7:4000"},
            ),
        ),
    }


def _selector(loader: str, cls: object = r.Resource) -> bytes:
    return bytes([LOADERS.index(loader) | CLASSES.index(cls) << 3])


def _bombs() -> dict[str, str]:
    laughs = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    for i in range(1, 9):
        laughs += f"{chr(97 + i)}: &{chr(97 + i)} [" + ",".join([f"*{chr(96 + i)}"] * 9) + "]\n"
    merge = "a0: &a0 {k0: 1, k1: 2}\n"
    for i in range(1, 40):
        merge += f"a{i}: &a{i} {{<<: [*a{i - 1}, *a{i - 1}]}}\n"
    fields = "x0: &x0 [1, 2, 3, 4, 5, 6, 7, 8]\n"
    for i in range(1, 8):
        fields += f"    x{i}: &x{i} [" + ", ".join([f"*x{i - 1}"] * 8) + "]\n"
    event = (
        "kind: event\nmetadata: {name: e}\nspec:\n  event: user.login\n  code: T1000I\n"
        "  time: 2023-11-14T22:13:20Z\n  fields:\n    " + fields
    )
    under = "x0: &x0 [0, 1, 2, 3, 4, 5, 6, 7]\n"
    for i in range(1, 5):
        under += f"    x{i}: &x{i} [" + ", ".join([f"*x{i - 1}"] * 8) + "]\n"
    return {
        # About 37 000 nodes once expanded: under the cap, so it loads (in about 0.05 s).
        "event_fields_under_cap": event.replace(fields, under),
        "bomb_laughs": laughs,
        "bomb_merge": merge,
        "bomb_event_fields": event,
        "bomb_self_alias": "a: &a [*a]\n",
        # Past the recursion limit. (Not in flow style: PyYAML scans deep flow collections
        # in O(depth²), about 1 s for 10 KB of "[", which slows fuzzing to a crawl.)
        "deep_block": "- " * 600 + "x",
    }


def seeds() -> dict[str, bytes]:
    """Every seed of ``corpus/resources/``, by file name."""
    out: dict[str, bytes] = {}
    docs = _resources()
    for name, obj in docs.items():
        cls = type(obj)
        out[f"{name}.yaml"] = _selector("yaml") + r.to_yaml(obj, secrets=True).encode()
        out[f"{name}.json"] = _selector("json") + r.to_json(obj, secrets=True).encode()
        out[f"{name}_typed.yaml"] = _selector("yaml", cls) + r.to_yaml(obj).encode()
    out["event.record"] = _selector("record") + json.dumps(docs["event"].to_record()).encode()  # type: ignore[attr-defined]
    stream = r.to_yaml([docs["role_custom"], docs["user_invited"], docs["token"]], secrets=True)
    out["stream.yaml"] = _selector("yaml_all") + stream.encode()
    out["tctl_create.yaml"] = (
        _selector("yaml_all")
        + b"kind: role\nmetadata: {name: ops}\nspec:\n  allow:\n    logins: [root]\n"
        b"    node_labels: {'*': '*'}\n  options: {max_session_ttl: 1h30m}\n---\n"
        b"kind: token\nmetadata: {name: abcd, expires: 2024-05-01 14:00:00+02:00}\n"
        b"spec: {roles: [node]}\n...\n"
    )
    out["role_anchors.yaml"] = _selector("yaml") + (
        b"kind: role\nmetadata: {name: r, labels: &l {a: b}}\nspec:\n  allow:\n"
        b"    node_labels: *l\n    logins: &x [root]\n  deny: {logins: *x}\n"
    )
    out["config_default.yaml"] = _selector("config") + dump_config(Config()).encode()
    out["config_etcd.yaml"] = _selector("config") + (
        b"version: v1\nteleport:\n  nodename: auth1\n  data_dir: /var/lib/trioport\n"
        b"  storage:\n    type: etcd\n    peers: [https://127.0.0.1:2379]\n"
        b"    prefix: /trioport\n    tls_ca_file: /etc/etcd/ca.pem\n"
        b"auth_service:\n  cluster_name: example.test\n  listen_addr: 0.0.0.0:3025\n"
        b"  tokens: ['node:static-secret-1', 'proxy,node:another']\n"
        b"ssh_service:\n  enabled: false\nproxy_service:\n  enabled: no\n"
    )
    out["config_empty.yaml"] = _selector("config")
    for name, text in _bombs().items():
        out[f"{name}.yaml"] = _selector("yaml") + text.encode()
        if name.startswith("bomb"):
            out[f"{name}.config"] = _selector("config") + text.encode()
    out.update(BUG_INPUTS)
    return out


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
        SLOWDOWN = 20.0  # atheris's instrumentation makes PyYAML about ten times slower
        main(TestOneInput, NAME, instrument=("trioport", "yaml"))
