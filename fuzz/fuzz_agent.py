"""Fuzz the ssh-agent protocol (draft-miller-ssh-agent): framing, codecs, the agent.

The input after the first byte is a client's byte stream. It is split into frames
by ``AgentFramer`` (fed whole and, for short inputs, byte by byte: both must give
the same payloads and the same error), and each payload is decoded as a request
and as a response and handed to an ``AgentState`` whose keyring already holds an
Ed25519 key, the same key's user certificate, an RSA key and an ECDSA key that
needs confirmation. The first byte: bit 0 makes it a forwarded agent, bit 1
approves confirmations, bit 2 gives the keyring a default lifetime.

Invariant: framing and decoding raise only ``DecodeError``; what decodes encodes
back to the same bytes; ``AgentState.handle`` never raises (a bad request is
answered with FAILURE) and every answer it gives is one a client can decode.
"""

from __future__ import annotations

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from _fixtures import HOST_ECDSA, HOST_RSA, NOW, USER_CERT, USER_ED25519
from _harness import main, tolerate_known_bugs

from trioport.errors import DecodeError
from trioport.sshproto import agent as a

BYTEWISE_LIMIT = 512


def keyring(default_lifetime: float | None) -> a.Keyring:
    ring = a.Keyring(default_lifetime=default_lifetime)
    ring.add(a.AgentKey(USER_ED25519, "user"))
    ring.add(a.AgentKey(USER_ED25519, "user cert", certificate=USER_CERT))  # type: ignore[arg-type]
    ring.add(a.AgentKey(HOST_RSA, "rsa", expires_at=NOW + 30))
    ring.add(a.AgentKey(HOST_ECDSA, "ecdsa", confirm=True))
    return ring


def frames(chunks: list[bytes]) -> tuple[list[bytes], DecodeError | None]:
    framer = a.AgentFramer()
    out: list[bytes] = []
    try:
        for chunk in chunks:
            framer.receive_data(chunk)
            out.extend(framer.payloads())
    except DecodeError as exc:
        return out, exc
    return out, None


def _decode(payload: bytes) -> a.Request | None:
    """Decode a request (and, for the codec's sake, as a response); round trips exact."""
    try:
        response = a.decode_response(payload)
    except DecodeError:
        pass
    else:
        _stable(a.encode_message(response), a.decode_response)
    try:
        request = a.decode_request(payload)
    except DecodeError:
        return None
    _stable(a.encode_message(request), a.decode_request)
    return request


def _stable(encoded: bytes, decode) -> None:  # type: ignore[no-untyped-def]
    again = a.encode_message(decode(encoded))
    if again != encoded:
        raise AssertionError(f"agent message {encoded[:40]!r} re-encodes as {again[:40]!r}")


def check(data: bytes) -> None:
    if not data:
        return
    selector, stream = data[0], data[1:]
    payloads, error = frames([stream])
    if len(stream) <= BYTEWISE_LIMIT:
        split = frames([stream[i : i + 1] for i in range(len(stream))])
        if split[0] != payloads or type(split[1]) is not type(error):
            raise AssertionError("framing depends on how the bytes arrive")
    state = a.AgentState(keyring(60.0 if selector & 4 else None), forwarded=bool(selector & 1))
    for payload in payloads:
        request = _decode(payload)
        # Undecodable payloads go in as bytes: the agent must answer them FAILURE.
        answer = state.handle(payload if request is None else request, now=NOW)
        if isinstance(answer, a.ConfirmationRequired):
            answer = state.complete_confirmation(answer, bool(selector & 2), now=NOW)
        encoded = a.frame(answer)[4:]
        if a.decode_response(encoded) != answer:
            raise AssertionError(f"the agent's answer {answer!r} does not decode as itself")


TestOneInput = tolerate_known_bugs("agent", check)

if __name__ == "__main__":
    main(TestOneInput, "agent", instrument=("trioport",))
