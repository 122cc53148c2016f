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

import pathlib
import sys
from collections.abc import Callable

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from _fixtures import USER_NAME
from _ssh import STAGES, Options, Pair, join_payloads, run

from trioport.sshproto import Role, wire
from trioport.sshproto import events as ev
from trioport.sshproto import messages as m

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
            bytes(m.GlobalRequest(*m.encode_global_request(r), True))  # type: ignore[misc]
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
            bytes(m.ChannelRequest(0, *m.encode_channel_request(r), True))  # type: ignore[misc]
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
    }
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
    _check_transport(role, seeds)
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


# --- main -----------------------------------------------------------------------------------


def main(names: list[str]) -> None:
    for name in names or sorted(GENERATORS):
        seeds = GENERATORS[name]()
        folder = CORPUS / name
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.iterdir():
            old.unlink()
        for seed_name, data in seeds.items():
            (folder / seed_name).write_bytes(data)
        print(f"{name}: {len(seeds)} seeds, {sum(map(len, seeds.values()))} bytes")


if __name__ == "__main__":
    main(sys.argv[1:])
