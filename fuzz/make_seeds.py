"""Regenerate the seed corpora in ``fuzz/corpus/`` from real encoders and real sessions.

``python3 fuzz/make_seeds.py [target ...]`` rewrites the named corpora (all by
default). Every seed is a valid input made by trioport's own encoders, a recorded
session between two real connections, or (key files, certificates) ``ssh-keygen``
output, so the fuzzers start deep inside each parser. The transport seeds replay
byte for byte because every RNG is seeded; the script checks that each one still
gets as far as it should, so a change in the core that breaks them is noticed.
The seeds are committed; run this again only when a format or the core changes.
"""

from __future__ import annotations

import atexit
import base64
import pathlib
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import replace

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from _fixtures import (
    CA,
    HOST_CERT,
    HOST_ECDSA,
    HOST_ED25519,
    HOST_RSA,
    KEYS,
    PASSPHRASE,
    USER_CERT,
    USER_ED25519,
    USER_NAME,
    make_rng,
)
from _ssh import STAGES, Driver, Options, Pair, join_payloads, peer_config, run
from cryptography.hazmat.primitives.asymmetric import ed25519

from trioport.errors import RemoteProtocolError
from trioport.sshproto import Connection, HostKey, Role, wire
from trioport.sshproto import agent as a
from trioport.sshproto import events as ev
from trioport.sshproto import messages as m
from trioport.sshproto.authfiles import hash_host, host_lookup_name
from trioport.sshproto.certs import (
    DEFAULT_USER_EXTENSIONS,
    VALID_FOREVER,
    CertType,
    parse_certificate,
    sign_certificate,
    trioport_extensions,
)
from trioport.sshproto.keyfiles import dump_private_key, encode_private_key
from trioport.sshproto.keys import PrivateKey

CORPUS = pathlib.Path(__file__).resolve().parent / "corpus"
Seeds = Callable[[], dict[str, bytes]]
GENERATORS: dict[str, Seeds] = {}


def generator(name: str) -> Callable[[Seeds], Seeds]:
    def register(fn: Seeds) -> Seeds:
        GENERATORS[name] = fn
        return fn

    return register


# --- transport ------------------------------------------------------------------------

#: Algorithm combinations recorded as whole sessions (stage 0) and used as prefixes.
_COMBOS = (
    Options(),
    Options(auth_style=1, cipher=1, host_key=1),
    Options(auth_style=2, cipher=2, host_key=2, kex=1),
    Options(auth_style=3, cipher=3, host_key=3),
)


def _recording(pair: Pair) -> list[bytes]:
    """Record every payload the peer writes from now on."""
    payloads: list[bytes] = []
    transport = pair.peer._transport
    original = transport._write

    def write(payload: bytes) -> None:
        payloads.append(bytes(payload))
        original(payload)

    transport._write = write  # type: ignore[method-assign]
    return payloads


def _peer_channel(pair: Pair, kind: str) -> int:
    return next(ch for ch, k in pair.peer_driver.kinds.items() if k == kind)


def _kick(pair: Pair, stage: str) -> None:
    """Make the peer carry on past the prefix as a full session would."""
    peer, pd = pair.peer, pair.peer_driver
    if pair.victim.role is Role.SERVER:
        if stage == "kex":
            pd.authenticate = pd.open_channels = True
            pd._next_attempt()
        elif stage == "auth":
            pd.open_channels = True
            pd._on_UserauthSuccess(ev.UserauthSuccess())
        else:
            ch = _peer_channel(pair, "session")
            peer.send(ev.ChannelData(channel=ch, data=b"echo hi\n"))
            peer.send(
                ev.ChannelRequest(
                    channel=ch, request=ev.WindowChange(width_chars=100, height_rows=40)
                )
            )
            peer.send(ev.ChannelRequest(channel=ch, request=ev.Signal(name="INT")))
            pair.pump()
            peer.send(ev.ChannelEOF(channel=ch))
            pd.eof_sent.add(ch)
    else:
        if stage == "kex":
            pd.answer_auth = True
            assert pd.unanswered is not None
            pd.on_event(pd.unanswered)
        elif stage == "auth":
            peer.send(ev.GlobalRequest(request=ev.KeepAlive(), want_reply=True))
            for kind in ("forwarded-tcpip", "auth-agent@openssh.com", "session"):
                pd._open(
                    ev.ChannelOpen(
                        channel=peer.new_channel_id(),
                        kind=kind,
                        host="127.0.0.1" if kind == "forwarded-tcpip" else "",
                        port=4242 if kind == "forwarded-tcpip" else 0,
                        originator_address="127.0.0.1" if kind == "forwarded-tcpip" else "",
                        originator_port=50000 if kind == "forwarded-tcpip" else 0,
                    )
                )
        else:
            ch = _peer_channel(pair, "session")
            peer.send(ev.ChannelData(channel=ch, data=b"$ ls\n"))
            peer.send(ev.ChannelData(channel=ch, data=b"oops\n", stream=1))
            exit_signal = ev.ExitSignal(name="TERM", core_dumped=False, message="bye")
            peer.send(ev.ChannelRequest(channel=ch, request=ev.ExitStatus(status=1)))
            peer.send(ev.ChannelRequest(channel=ch, request=exit_signal))
            peer.send(ev.ChannelRequest(channel=ch, request=ev.Eow()))
            peer.send(ev.ChannelEOF(channel=ch))
            peer.send(ev.ChannelClose(channel=ch))
            pd.eof_sent.add(ch)
            pd.close_sent.add(ch)
    pair.pump()


def _rekey(pair: Pair) -> list[bytes]:
    """The peer's payloads of a real re-exchange, up to and including its NEWKEYS."""
    payloads = _recording(pair)
    pair.peer.rekey()
    pair.pump()
    newkeys = payloads.index(bytes(m.NewKeys()))
    return payloads[: newkeys + 1]


def _global(request: object) -> m.GlobalRequest:
    name, data = m.encode_global_request(request)  # type: ignore[arg-type]
    return m.GlobalRequest(name, True, data)


def _channel_request(request: object, recipient: int = 0) -> m.ChannelRequest:
    name, data = m.encode_channel_request(request)  # type: ignore[arg-type]
    return m.ChannelRequest(recipient, name, True, data)


def _handmade(role: Role) -> dict[str, list[bytes]]:
    """One small payload list per message the peer of ``role`` might send."""
    cho = m.ChannelOpen
    tcpip = wire.string("127.0.0.1") + wire.uint32(22) + wire.string("10.0.0.1") + wire.uint32(5)
    pty = m.encode_channel_request(
        ev.PtyRequest(term="vt100", width_chars=80, height_rows=24, modes={1: 3, 128: 38400})
    )
    out: dict[str, list[bytes]] = {
        "ignore_debug": [bytes(m.Ignore(b"x" * 20)), bytes(m.Debug(True, "hello", "en"))],
        "unimplemented": [bytes(m.Unimplemented(3))],
        "disconnect": [bytes(m.Disconnect(11, "bye", ""))],
        "ext_info": [bytes(m.ExtInfo((("server-sig-algs", b"ssh-ed25519"), ("ping", b"0"))))],
        "unknown_number": [b"\xc8hello", b"\x3cabc"],
        "global_requests": [
            bytes(_global(r))
            for r in (
                ev.TcpipForward(address="0.0.0.0", port=0),
                ev.CancelTcpipForward(address="0.0.0.0", port=8080),
                ev.KeepAlive(),
                ev.NoMoreSessions(),
                ev.UnknownGlobalRequest(name="hostkeys-00@openssh.com", data=b"\x00"),
            )
        ],
        "request_replies": [bytes(m.RequestSuccess(wire.uint32(1234))), bytes(m.RequestFailure())],
        "channel_opens": [
            bytes(cho("session", 7, 4096, 1024, b"")),
            bytes(cho("direct-tcpip", 8, 4096, 1024, tcpip)),
            bytes(cho("forwarded-tcpip", 9, 4096, 1024, tcpip)),
            bytes(cho("x11", 10, 4096, 1024, wire.string("127.0.0.1") + wire.uint32(6000))),
            bytes(cho("auth-agent@openssh.com", 11, 4096, 1024, b"")),
            bytes(cho("tun@openssh.com", 12, 4096, 1024, wire.uint32(1) + wire.uint32(0))),
        ],
        "open_answers": [
            bytes(m.ChannelOpenConfirmation(0, 5, 65536, 32768)),
            bytes(m.ChannelOpenFailure(1, 2, "connect failed", "")),
        ],
        "channel_traffic": [
            bytes(m.ChannelWindowAdjust(0, 1 << 20)),
            bytes(m.ChannelData(0, b"data")),
            bytes(m.ChannelExtendedData(0, 1, b"stderr")),
            bytes(m.ChannelSuccess(0)),
            bytes(m.ChannelFailure(0)),
            bytes(m.ChannelEof(0)),
            bytes(m.ChannelClose(0)),
        ],
        "channel_requests": [
            bytes(_channel_request(r))
            for r in (
                ev.Env(name="LC_ALL", value="C"),
                ev.Exec(command=b"uname -a"),
                ev.Subsystem(name="sftp"),
                ev.WindowChange(width_chars=1, height_rows=1),
                ev.Signal(name="HUP"),
                ev.ExitStatus(status=0),
                ev.ExitSignal(name="KILL", core_dumped=True, message="m", language="en"),
                ev.Eow(),
                ev.AgentForwarding(),
                ev.UnknownRequest(name="x11-req", data=b"\x00" + wire.string("MIT") * 2),
            )
        ]
        + [bytes(m.ChannelRequest(0, pty[0], True, pty[1]))],
        "window": [
            bytes(m.ChannelData(0, bytes(256))),
            bytes(m.ChannelData(0, bytes(257))),
            bytes(m.ChannelWindowAdjust(0, 0xFFFFFFFF)),
        ],
    }
    # A forward the victim server answers by opening a channel, then an answer to
    # the open, for each id the victim may have picked.
    forward = bytes(_global(ev.TcpipForward(address="", port=0)))
    for i in range(4):
        out[f"pending_open_{i}"] = [forward, bytes(m.ChannelOpenConfirmation(i, 40, 4096, 1024))]
        out[f"refused_open_{i}"] = [forward, bytes(m.ChannelOpenFailure(i, 2, "refused", ""))]
    if role is Role.SERVER:
        userauth = m.UserauthRequest
        out |= {
            "service_request": [bytes(m.ServiceRequest("ssh-userauth"))],
            "auth_none_password": [
                bytes(userauth(USER_NAME, "ssh-connection", "none")),
                bytes(
                    userauth(USER_NAME, "ssh-connection", "password", b"\x00" + wire.string("fuzz"))
                ),
            ],
            "auth_kbdint": [
                bytes(userauth(USER_NAME, "ssh-connection", "keyboard-interactive", b"\0" * 8)),
                bytes(m.UserauthInfoResponse(("fuzz",))),
            ],
        }
    else:
        out |= {
            "service_accept": [bytes(m.ServiceAccept("ssh-userauth"))],
            "auth_answers": [
                bytes(m.UserauthBanner("welcome\r\n", "")),
                bytes(m.UserauthFailure(("publickey", "password"), False)),
                bytes(m.UserauthSuccess()),
            ],
            "auth_60": [
                bytes(m.UserauthInfoRequest("n", "i", "", (("Password: ", False),))),
                bytes(m.UserauthPasswdChangeReq("new password", "")),
            ],
        }
    return out


def _transport(role: Role) -> dict[str, bytes]:
    seeds: dict[str, bytes] = {}
    for i, opts in enumerate(_COMBOS):
        # Stage 0: a whole recorded session, as the raw byte stream the victim got.
        pair = Pair(role, Options(**{**opts.__dict__, "stage": 3}))
        pair.pump()
        _kick(pair, "channel")
        start = Options(stage=0, auth_style=opts.auth_style).header()
        seeds[f"start_session_{i}"] = start + bytes(pair.peer_bytes)
        if role is Role.CLIENT and i == 0:
            seeds["start_prebanner"] = start + b"Welcome\r\n\r\n" + bytes(pair.peer_bytes)
        # Stages 1-3: what the peer says after each prefix, then a real rekey.
        for stage in (1, 2, 3):
            staged = Options(**{**opts.__dict__, "stage": stage})
            pair = Pair(role, staged)
            pair.pump()
            payloads = _recording(pair)
            _kick(pair, STAGES[stage])
            seeds[f"{STAGES[stage]}_continue_{i}"] = staged.header() + join_payloads(payloads)
            if i < 2:
                pair = Pair(role, staged)
                pair.pump()
                seeds[f"{STAGES[stage]}_rekey_{i}"] = staged.header() + join_payloads(_rekey(pair))
    for name, payloads in _handmade(role).items():
        stage = 1 if name.startswith(("service", "auth", "ext_info")) else 3
        seeds[f"{STAGES[stage]}_{name}"] = Options(stage=stage).header() + join_payloads(payloads)
    seeds.update(_auth_seeds(role))
    # The victim's own rekey timer fires, then the peer, which has not seen that
    # KEXINIT yet, carries on as before: the victim's answers are held meanwhile.
    for stage in (1, 2, 3):
        plain = seeds[f"{STAGES[stage]}_continue_0"]
        header = Options(stage=stage, rekey=True).header()
        seeds[f"{STAGES[stage]}_timer_fires_first"] = header + plain[2:]
    seeds.update(_mlkem_session(role))
    if role is Role.CLIENT:
        seeds.update(_untrusted_servers())
        seeds["start_1025_lines_first"] = b"\0\0" + b"\r\n" * 1025 + b"SSH-2.0-x\r\n"
    _check_transport(role, seeds)
    return seeds


def _auth_seeds(role: Role) -> dict[str, bytes]:
    """User-authentication corners, by the client's method in progress."""
    seeds: dict[str, bytes] = {}
    if role is Role.CLIENT:
        ext = bytes(m.ExtInfo((("server-sig-algs", b"ssh-ed25519"),)))
        for style in range(4):
            header = Options(stage=1, auth_style=style).header()
            answers = {
                "60_pk_ok": bytes(m.UserauthPkOk("ssh-ed25519", USER_ED25519.public.blob)),
                "60_passwd": bytes(m.UserauthPasswdChangeReq("expired", "")),
                "60_info": bytes(m.UserauthInfoRequest("", "", "", (("Code: ", True),))),
            }
            for name, payload in answers.items():
                seeds[f"kex_auth{style}_{name}"] = header + join_payloads([payload])
            seeds[f"kex_auth{style}_ext_success"] = header + join_payloads(
                [ext, bytes(m.UserauthSuccess())]
            )
        header = Options(stage=1).header()
        failure = bytes(m.UserauthFailure(("password",), False))
        seeds["kex_ext_twice"] = header + join_payloads([ext, ext])
        seeds["kex_ext_then_failure"] = header + join_payloads([ext, failure])
        return seeds
    userauth = m.UserauthRequest

    def password(word: str) -> bytes:
        return bytes(userauth(USER_NAME, "ssh-connection", "password", b"\0" + wire.string(word)))

    kbdint = bytes(userauth(USER_NAME, "ssh-connection", "keyboard-interactive", b"\0" * 8))
    bad_key = b"\0" + wire.string("ssh-ed25519") + wire.string(b"\0\0\0\x0bssh-ed25519")
    header = Options(stage=1).header()
    seeds["kex_too_many_failures"] = header + join_payloads([password("no")] * 5)
    seeds["kex_kbdint_interrupted"] = header + join_payloads([kbdint, password("fuzz")])
    seeds["kex_kbdint_two_answers"] = header + join_payloads(
        [kbdint, bytes(m.UserauthInfoResponse(("a", "b")))]
    )
    seeds["kex_bad_key_blob"] = header + join_payloads(
        [bytes(userauth(USER_NAME, "ssh-connection", "publickey", bad_key))]
    )
    seeds["kex_user_changes"] = header + join_payloads(
        [password("no"), bytes(userauth("bob", "ssh-connection", "none"))]
    )
    return seeds


def _mlkem_session(role: Role) -> dict[str, bytes]:
    """A whole session over mlkem768x25519-sha256, which the prefixes never use.

    The client's ML-KEM key comes from its RNG, so a recorded server replays
    against a client victim to the end; the server's encapsulation draws from the
    OS, so against a server victim only the key exchange messages replay.
    """
    peer_role = Role.SERVER if role is Role.CLIENT else Role.CLIENT
    pair = Pair(role, Options(stage=3))
    config = replace(peer_config(peer_role, Options()), kex_algorithms=("mlkem768x25519-sha256",))
    pair.peer = Connection(config, rng=make_rng("peer"), now=0.0)
    pair.peer_driver = Driver(pair.peer)
    pair.pump()
    _kick(pair, "channel")
    name = "start_session_mlkem" if role is Role.CLIENT else "start_mlkem_kex"
    return {name: Options().header() + bytes(pair.peer_bytes)}


def _untrusted_servers() -> dict[str, bytes]:
    """Whole sessions from servers the victim client must refuse (seen from byte 0)."""
    stranger = PrivateKey.from_cryptography(ed25519.Ed25519PrivateKey.from_private_bytes(bytes(32)))
    wrong_name = sign_certificate(
        CA,
        HOST_ED25519.public,
        cert_type=CertType.HOST,
        key_id="h",
        principals=["other.example"],
        valid_after=0,
        valid_before=VALID_FOREVER,
        nonce=bytes(16),
    )
    servers = {
        "start_untrusted_key": ([HostKey(stranger)], "ssh-ed25519"),
        "start_cert_wrong_name": ([HostKey(HOST_ED25519, wrong_name.blob)], wrong_name.key_type),
    }
    seeds = {}
    for name, (host_keys, algorithm) in servers.items():
        pair = Pair(Role.CLIENT, Options(stage=3))
        config = replace(
            peer_config(Role.SERVER, Options()),
            host_keys=host_keys,
            host_key_algorithms=(algorithm,),
        )
        pair.peer = Connection(config, rng=make_rng("peer"), now=0.0)
        pair.peer_driver = Driver(pair.peer)
        try:
            pair.pump()
        except RemoteProtocolError:
            pass
        assert pair.victim.closed
        seeds[name] = Options().header() + bytes(pair.peer_bytes)
    return seeds


def _check_transport(role: Role, seeds: dict[str, bytes]) -> None:
    """Each recorded seed must replay without a protocol error, as far as it went."""
    for name, data in seeds.items():
        outcome = run(role, data)
        assert outcome is not None
        if "session" in name or "continue" in name or "rekey" in name or "prebanner" in name:
            assert outcome.error is None, (role, name, outcome.error)
        if name.startswith("start_session"):
            closes = [e for e in outcome.events if isinstance(e, ev.ChannelClose)]
            assert closes, (role, name, "the recorded session did not replay to the end")
        if "rekey" in name:
            assert sum(isinstance(e, ev.KexComplete) for e in outcome.events) == 1, (role, name)


@generator("transport_server")
def _transport_server() -> dict[str, bytes]:
    return _transport(Role.SERVER)


@generator("transport_client")
def _transport_client() -> dict[str, bytes]:
    return _transport(Role.CLIENT)


# --- the other parsers ----------------------------------------------------------------------


def _keygen(folder: pathlib.Path) -> dict[str, pathlib.Path]:
    """ssh-keygen keys of every type, certificates, and PEM/PKCS#8 files, once."""
    made: dict[str, pathlib.Path] = {}

    def keygen(name: str, *args: str) -> pathlib.Path:
        path = folder / name
        subprocess.run(
            ["ssh-keygen", "-q", "-C", f"seed {name}", "-f", str(path), *args],
            check=True,
            input=b"",
        )
        made[name] = path
        return path

    keygen("ed25519", "-t", "ed25519", "-N", "")
    keygen("ecdsa256", "-t", "ecdsa", "-b", "256", "-N", "")
    keygen("ecdsa384", "-t", "ecdsa", "-b", "384", "-N", "")
    keygen("ecdsa521", "-t", "ecdsa", "-b", "521", "-N", "")
    keygen("rsa2048", "-t", "rsa", "-b", "2048", "-N", "")
    keygen("ed25519_enc", "-t", "ed25519", "-N", "fuzz", "-a", "1")
    keygen("ecdsa_enc", "-t", "ecdsa", "-N", "fuzz", "-a", "2")
    keygen("rsa_pem", "-t", "rsa", "-b", "2048", "-N", "", "-m", "PEM")
    keygen("ecdsa_pem", "-t", "ecdsa", "-N", "", "-m", "PEM")
    keygen("ecdsa_pkcs8", "-t", "ecdsa", "-N", "", "-m", "PKCS8")
    # ssh-keygen writes Ed25519 keys only in its own format, and wants 5+ characters
    # for PEM passphrases: openssl makes these (encrypted with "fuzz").
    subprocess.run(
        ["openssl", "genpkey", "-algorithm", "ed25519", "-out", str(folder / "ed25519_pkcs8")],
        check=True,
    )
    made["ed25519_pkcs8"] = folder / "ed25519_pkcs8"
    for name, command in (
        ("ecdsa_pkcs8_enc", ["pkcs8", "-topk8", "-v2", "aes-256-cbc", "-in", "ecdsa_pkcs8"]),
        ("ecdsa_pem_enc", ["ec", "-aes256", "-in", "ecdsa_pem"]),
        (
            "ed25519_pkcs8_scrypt_enc",  # the smallest cost: mutations stay cheap
            [
                "pkcs8",
                "-topk8",
                "-scrypt",
                "-scrypt_N",
                "2",
                "-scrypt_r",
                "1",
                "-scrypt_p",
                "1",
                "-in",
                "ed25519_pkcs8",
            ],
        ),
    ):
        out = folder / name
        subprocess.run(
            ["openssl", *command, "-passout", "pass:fuzz", "-out", str(out)],
            check=True,
            cwd=folder,
            capture_output=True,
        )
        made[name] = out
    ca = str(KEYS / "ca_ed25519")

    def sign(name: str, key: str, signer: str, *args: str) -> None:
        cert_dir = folder / name
        cert_dir.mkdir()
        pub = cert_dir / "key.pub"
        pub.write_bytes(made[key].with_suffix(".pub").read_bytes())
        subprocess.run(["ssh-keygen", "-q", "-s", signer, "-I", name, *args, str(pub)], check=True)
        made[name] = cert_dir / "key-cert.pub"

    sign(
        "cert_user_opts",
        "ed25519",
        ca,
        "-n",
        "alice,bob",
        "-V",
        "20200101:20400101",
        "-O",
        "force-command=/bin/true",
        "-O",
        "source-address=127.0.0.1/32,::1/128",
        "-O",
        "no-pty",
        "-O",
        "extension:trioport-roles@trioport.dev=dev,ops",
    )
    sign("cert_user_ecdsa", "ecdsa384", ca, "-n", "alice", "-V", "20200101:20400101")
    sign(
        "cert_user_rsa_ca",
        "ecdsa521",
        str(KEYS / "host_rsa"),
        "-n",
        "alice",
        "-V",
        "20200101:20400101",
        "-t",
        "rsa-sha2-256",
    )
    sign(
        "cert_host_ecdsa_ca",
        "rsa2048",
        str(KEYS / "host_ecdsa"),
        "-h",
        "-n",
        "fuzz.example,*.fuzz.example",
        "-V",
        "20200101:20400101",
    )
    sign("cert_host_forever", "ecdsa256", ca, "-h", "-n", "*")
    sign("cert_user_expired", "ed25519", ca, "-n", "alice", "-V", "20200101:20210101")
    return made


def _blob(path: pathlib.Path) -> bytes:
    return base64.b64decode(path.read_text().split()[1])


_MADE: dict[str, pathlib.Path] = {}


def _made() -> dict[str, pathlib.Path]:
    if not _MADE:
        folder = pathlib.Path(tempfile.mkdtemp(prefix="trioport-seeds-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        _MADE.update(_keygen(folder))
    return _MADE


@generator("messages")
def _messages() -> dict[str, bytes]:
    seeds: dict[str, bytes] = {}
    for role in Role:
        for name, payloads in _handmade(role).items():
            for i, payload in enumerate(payloads):
                seeds[f"{role.value}_{name}_{i}"] = b"\x00" + payload
    pair = Pair(Role.SERVER, Options(stage=3))
    payloads = _recording(pair)
    pair.pump()
    _kick(pair, "channel")
    for i, payload in enumerate(payloads[:12]):
        seeds[f"session_{i}"] = b"\x00" + payload
    seeds["kexinit"] = b"\x00" + bytes(
        m.KexInit(
            bytes(16),
            ("curve25519-sha256", "kex-strict-c-v00@openssh.com"),
            ("ssh-ed25519",),
            ("aes128-ctr",),
            ("aes128-ctr",),
            ("hmac-sha2-256",),
            ("hmac-sha2-256",),
            ("none",),
            ("none",),
            (),
            (),
            True,
            0,
        )
    )
    seeds["ecdh_init"] = b"\x00" + bytes(m.KexEcdhInit(bytes(range(32))))
    seeds["ecdh_reply"] = b"\x00" + bytes(
        m.KexEcdhReply(HOST_ED25519.public.blob, bytes(32), HOST_ED25519.sign(b"h"))
    )
    seeds["newkeys"] = b"\x00" + bytes(m.NewKeys())
    seeds["pk_ok"] = b"\x01" + bytes(m.UserauthPkOk("ssh-ed25519", USER_ED25519.public.blob))
    seeds["passwd_changereq"] = b"\x02" + bytes(m.UserauthPasswdChangeReq("expired", "en"))
    seeds["info_request"] = b"\x03" + bytes(
        m.UserauthInfoRequest("name", "instr", "", (("Password: ", False), ("OTP: ", True)))
    )
    seeds["pty_modes"] = b"\x04" + m.encode_pty_modes({1: 3, 2: 28, 53: 1, 128: 38400})
    return seeds


@generator("keys")
def _keys() -> dict[str, bytes]:
    made = _made()
    seeds: dict[str, bytes] = {}
    for name, path in sorted(made.items()):
        pub = path if name.startswith("cert") else path.with_suffix(".pub")
        if not pub.exists():
            continue
        seeds[f"blob_{name}"] = b"\x00" + _blob(pub)
        seeds[f"pub_{name}"] = b"\x01" + pub.read_bytes()
    for name in ("host_ed25519-cert.pub", "ca_ed25519.pub", "host_rsa.pub"):
        seeds[f"pub_{name}"] = b"\x01" + (KEYS / name).read_bytes()
    return seeds


@generator("signatures")
def _signatures() -> dict[str, bytes]:
    from fuzz_signatures import KEYS as SIG_KEYS
    from fuzz_signatures import MESSAGE

    seeds: dict[str, bytes] = {}
    for index, (private, public) in enumerate(SIG_KEYS[:6]):
        for algorithm in public.signature_algorithms():
            allowed = 3 if algorithm == "ssh-rsa" else 1
            selector = index | allowed << 3
            seeds[f"{index}_{algorithm}"] = bytes((selector,)) + private.sign(MESSAGE, algorithm)
    return seeds


def _hostile_certs() -> dict[str, bytes]:
    """Certificates ssh-keygen refuses to make (tests' builder idea, our own code)."""
    user = USER_ED25519.public
    nonce = bytes(range(32))

    def build(**kw: object) -> bytes:
        fields: dict[str, object] = {
            "cert_type": CertType.USER,
            "key_id": "alice",
            "principals": ["alice"],
            "valid_after": 0,
            "valid_before": VALID_FOREVER,
            "nonce": nonce,
            "extensions": dict(DEFAULT_USER_EXTENSIONS),
        }
        fields.update(kw)
        return sign_certificate(CA, user, **fields).blob  # type: ignore[arg-type]

    good = build(
        extensions={
            **DEFAULT_USER_EXTENSIONS,
            **trioport_extensions(roles=["dev", "admin"], service_role="node", cluster="fuzz"),
        }
    )
    out = {
        "trioport_ext": good,
        "host_service": sign_certificate(
            CA,
            HOST_ED25519.public,
            cert_type=CertType.HOST,
            key_id="node",
            nonce=nonce,
            principals=["fuzz.example", "10.0.0.*"],
            valid_after=0,
            valid_before=VALID_FOREVER,
            extensions=trioport_extensions(service_role="proxy", cluster="c"),
        ).blob,
        "unknown_critical": build(critical_options={"verify-required": None, "x@y": "v"}),
        "force_command": build(critical_options={"force-command": "/usr/bin/id"}),
        "trailing": good + b"\x00",
    }
    cert = parse_certificate(good)
    # A CA that is itself a certificate: the CA field replaced, signed by that cert's key.
    signed = cert.signed_data
    ca_field = wire.string(CA.public.blob)
    nested = signed[: -len(ca_field)] + wire.string(USER_CERT.blob)
    out["nested"] = nested + wire.string(USER_ED25519.sign(nested))
    many = b"".join(wire.string(f"p{i}") for i in range(300))
    r = wire.Reader(signed)
    head = [r.string(), r.string(), r.string(), r.uint64(), r.uint32(), r.string()]
    r.string()  # principals
    rest = r.rest()
    body = (
        wire.string(head[0])
        + wire.string(head[1])
        + wire.string(head[2])
        + wire.uint64(head[3])
        + wire.uint32(head[4])
        + wire.string(head[5])
        + wire.string(many)
        + rest
    )
    out["many_principals"] = body + wire.string(CA.sign(body))
    return out


@generator("certs")
def _certs() -> dict[str, bytes]:
    made = _made()
    seeds: dict[str, bytes] = {}
    user, host = 2 | 8, 1 | 2 << 1  # (USER, "alice", 127.0.0.1), (HOST, "fuzz.example")
    blobs = {name: _blob(path) for name, path in made.items() if name.startswith("cert")}
    blobs["fixture_user"] = USER_CERT.blob
    blobs["fixture_host"] = HOST_CERT.blob
    blobs.update(_hostile_certs())
    for name, blob in sorted(blobs.items()):
        is_host = "host" in name
        selector = host if is_host else user
        seeds[f"{name}"] = bytes((selector,)) + blob
        seeds[f"{name}_resigned"] = bytes((selector | 32 | 64,)) + blob
        seeds[f"{name}_other_use"] = bytes((selector ^ 1 | 3 << 3,)) + blob
    return seeds


@generator("keyfiles")
def _keyfiles() -> dict[str, bytes]:
    made = _made()
    seeds: dict[str, bytes] = {}
    for name, path in sorted(made.items()):
        if name.startswith("cert"):
            continue
        secret = 1 if "enc" in name else 0
        seeds[name] = bytes((secret,)) + path.read_bytes()
        if "rsa" not in name:  # RSA private keys cost ~35 ms each to validate
            seeds[f"{name}_is_encrypted"] = bytes((secret | 2,)) + path.read_bytes()
    rng = make_rng("seeds")
    seeds["ours_encrypted"] = b"\x01" + dump_private_key(
        USER_ED25519, PASSPHRASE, "our comment", rng=rng, rounds=1
    )
    seeds["ours_pkcs8"] = b"\x00" + dump_private_key(HOST_ECDSA, format="pkcs8")
    for name, key in (("ed25519", USER_ED25519), ("ecdsa", HOST_ECDSA), ("rsa", HOST_RSA)):
        seeds[f"codec_{name}"] = b"\x04" + encode_private_key(key)
    seeds["codec_cert"] = b"\x04" + encode_private_key(USER_ED25519, USER_CERT)  # type: ignore[arg-type]
    return seeds


@generator("authfiles")
def _authfiles() -> dict[str, bytes]:
    user = USER_ED25519.public.openssh_line("alice@laptop")
    ca = CA.public.openssh_line("fuzz CA")
    host = HOST_ED25519.public.openssh_line()
    authorized = [
        user,
        USER_CERT.openssh_line("alice cert"),
        'restrict,pty,command="echo \\"hi\\"",environment="LANG=C",from="10.0.0.0/8,!10.0.0.1,'
        '*.fuzz.example",permitopen="db:5432",permitlisten="127.0.0.1:8080",'
        'expiry-time="20300101Z",tunnel="1",no-touch-required ' + user,
        'cert-authority,principals="alice,bob",no-agent-forwarding ' + ca,
        "no-port-forwarding,no-X11-forwarding,no-user-rc,agent-forwarding "
        + HOST_RSA.public.openssh_line("rsa"),
        'from="::1,192.168.0.0/16" ' + HOST_ECDSA.public.openssh_line(),
    ]
    known = [
        "fuzz.example,10.0.0.1 " + host,
        "[fuzz.example]:2222,[10.0.0.1]:2222 " + HOST_ECDSA.public.openssh_line("ecdsa"),
        hash_host(host_lookup_name("fuzz.example"), bytes(range(20))) + " " + host,
        "@cert-authority *.fuzz.example,!bad.fuzz.example " + ca,
        "@revoked * " + HOST_RSA.public.openssh_line(),
        "fuzz.example " + HOST_CERT.openssh_line(),
    ]
    seeds: dict[str, bytes] = {}
    for i, line in enumerate(authorized):
        seeds[f"authorized_{i}"] = b"\x00" + line.encode()
    for i, line in enumerate(known):
        seeds[f"known_{i}"] = b"\x01" + line.encode()
    seeds["authorized_file"] = b"\x02" + "\n# comment\n\n".join(authorized).encode() + b"\n"
    seeds["known_file"] = b"\x03" + "\r\n".join(["# known", *known, "bad line"]).encode()
    return seeds


@generator("agent")
def _agent() -> dict[str, bytes]:
    from fuzz_agent import keyring

    new_key = PrivateKey.from_cryptography(
        ed25519.Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    )
    session_id = bytes(range(32))
    bind = a.SessionBind(HOST_ED25519.public.blob, session_id, HOST_ED25519.sign(session_id), False)
    requests: dict[str, list[a.Request | a.Response]] = {
        "list": [a.RequestIdentities()],
        "sign_each": [
            a.SignRequest(entry.public.blob, b"sign me", flags)
            for entry in keyring(None).keys
            for flags in (0, a.SIGN_RSA_SHA2_256, a.SIGN_RSA_SHA2_512)
        ],
        "add_remove": [
            a.AddIdentity(new_key, "new"),
            a.AddIdentity(HOST_ECDSA, "ecdsa", None, (a.Lifetime(60), a.Confirm())),
            a.AddIdentity(USER_ED25519, "c", USER_CERT, (a.Lifetime(1),)),  # type: ignore[arg-type]
            a.RequestIdentities(),
            a.RemoveIdentity(new_key.public.blob),
            a.RemoveAllIdentities(),
            a.RequestIdentities(),
        ],
        "constraints": [
            a.AddIdentity(new_key, "m", None, (a.MaxSignatures(5),)),
            a.AddIdentity(
                new_key,
                "e",
                None,
                (a.ConstraintExtension("restrict-destination-v00@openssh.com", wire.string(b"")),),
            ),
            a.AddIdentity(new_key, "x", None, (a.ConstraintExtension("x@y", b"zz"),)),
        ],
        "lock": [a.Lock(b"pw"), a.RequestIdentities(), a.Unlock(b"no"), a.Unlock(b"pw")],
        "smartcard": [
            a.AddSmartcardKey("/usr/lib/p11.so", "1234"),
            a.RemoveSmartcardKey("/usr/lib/p11.so", "1234"),
        ],
        "extensions": [bind, a.Extension("query", b""), a.UnknownRequest(99, b"??")],
        "responses": [
            a.Failure(),
            a.Success(b""),
            a.IdentitiesAnswer((a.Identity(USER_ED25519.public.blob, "u"),)),
            a.SignResponse(USER_ED25519.sign(b"x")),
            a.ExtensionFailure(),
            a.ExtensionResponse("query", wire.string("session-bind@openssh.com")),
        ],
    }
    seeds: dict[str, bytes] = {}
    for name, messages in requests.items():
        stream = b"".join(a.frame(msg) for msg in messages)
        seeds[name] = b"\x00" + stream
        seeds[f"{name}_forwarded_approving"] = b"\x03" + stream
    seeds["bad_frame"] = b"\x00" + a.frame(a.RequestIdentities()) + bytes(4)
    return seeds


# --- main -----------------------------------------------------------------------------------


def main(names: list[str]) -> None:
    for name in names or sorted(GENERATORS):
        seeds = GENERATORS[name]()
        folder = CORPUS / name
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.iterdir():
            if not old.name.startswith("fixed-"):  # inputs of fixed crashes stay
                old.unlink()
        for seed_name, data in seeds.items():
            (folder / seed_name).write_bytes(data)
        print(f"{name}: {len(seeds)} seeds, {sum(map(len, seeds.values()))} bytes")


if __name__ == "__main__":
    main(sys.argv[1:])
