"""The proxy line's parser and verifier (sans-IO), with a host CA made here.

What a node does with a line: believes the client address only from the
cluster's proxy, valid now, for this node, fresh and once; says why otherwise.
"""

from __future__ import annotations

import secrets

import pytest

from trioport.roles.node import proxyline
from trioport.roles.node.proxyline import ProxyLineRefused, ReplayGuard
from trioport.sshproto.certs import CertType, ServiceRole, sign_certificate, trioport_extensions
from trioport.sshproto.keys import PrivateKey

CLUSTER = "example.test"
NODE = "0b7c1d2e-node"
NOW = 1_700_000_000


@pytest.fixture(scope="module")
def ca() -> PrivateKey:
    return PrivateKey.generate()


def proxy_cert(
    ca: PrivateKey,
    key: PrivateKey,
    *,
    role: ServiceRole = ServiceRole.PROXY,
    cluster: str = CLUSTER,
    valid: tuple[int, int] = (NOW - 60, NOW + 3600),
) -> bytes:
    return sign_certificate(
        ca,
        key.public,
        cert_type=CertType.HOST,
        key_id="proxy",
        principals=["127.0.0.1"],
        valid_after=valid[0],
        valid_before=valid[1],
        nonce=secrets.token_bytes(32),
        extensions=trioport_extensions(service_role=role, cluster=cluster),
    ).blob


def make(key: PrivateKey, cert: bytes, client: str = "198.51.100.4:50022", at: int = NOW) -> bytes:
    return proxyline.encode(
        key=key, certificate=cert, client_addr=client, node_id=NODE, now=at, nonce=b"\x01" * 16
    )


def check(
    data: bytes, ca: PrivateKey, *, now: float = NOW, replay: ReplayGuard | None = None
) -> str:
    return proxyline.verify(
        proxyline.parse(data),
        host_cas=[ca.public],
        cluster=CLUSTER,
        node_id=NODE,
        now=now,
        replay=replay,
    )


@pytest.mark.parametrize("client", ["198.51.100.4:50022", "[2001:db8::7]:443", "[::1]:1"])
def test_a_line_of_the_clusters_proxy_names_the_client(ca: PrivateKey, client: str) -> None:
    key = PrivateKey.generate()
    data = make(key, proxy_cert(ca, key), client)
    assert data.startswith(b"TRIOPORT-PROXY v1 ") and data.endswith(b"\r\n")
    assert check(data, ca) == client
    # Within the allowed skew either way.
    assert check(data, ca, now=NOW + 119) == client
    assert check(data, ca, now=NOW - 119) == client


@pytest.mark.parametrize(
    ("kwargs", "why"),
    [
        ({"valid": (NOW - 7200, NOW - 3600)}, "certificate is refused"),
        ({"valid": (NOW + 3600, NOW + 7200)}, "certificate is refused"),
        ({"role": ServiceRole.NODE}, "service role is 'node', not 'proxy'"),
        ({"role": ServiceRole.AUTH}, "service role is 'auth', not 'proxy'"),
        ({"cluster": "other.test"}, "for cluster 'other.test'"),
    ],
)
def test_certificates_that_are_not_this_clusters_valid_proxy_are_refused(
    ca: PrivateKey, kwargs: dict[str, object], why: str
) -> None:
    key = PrivateKey.generate()
    data = make(key, proxy_cert(ca, key, **kwargs))  # type: ignore[arg-type]
    with pytest.raises(ProxyLineRefused, match=why):
        check(data, ca)


def test_another_ca_another_node_stale_times_and_replays_are_refused(ca: PrivateKey) -> None:
    key = PrivateKey.generate()
    data = make(key, proxy_cert(ca, key))
    with pytest.raises(ProxyLineRefused, match="untrusted CA"):
        check(data, PrivateKey.generate())
    with pytest.raises(ProxyLineRefused, match="another node"):
        proxyline.verify(
            proxyline.parse(data), host_cas=[ca.public], cluster=CLUSTER, node_id="x", now=NOW
        )
    with pytest.raises(ProxyLineRefused, match="from this node's clock"):
        check(data, ca, now=NOW + 121)
    with pytest.raises(ProxyLineRefused, match="knows no host CA"):
        proxyline.verify(proxyline.parse(data), host_cas=[], cluster=CLUSTER, node_id=NODE, now=NOW)
    guard = ReplayGuard()
    assert check(data, ca, replay=guard)
    with pytest.raises(ProxyLineRefused, match="replay"):
        check(data, ca, now=NOW + 1, replay=guard)
    # A refused line spends no nonce: the guard is checked last.
    other = PrivateKey.generate()
    forged = make(other, proxy_cert(PrivateKey.generate(), other))
    with pytest.raises(ProxyLineRefused):
        check(forged, ca, replay=ReplayGuard())


def test_the_replay_guard_forgets_after_its_window_and_is_bounded() -> None:
    guard = ReplayGuard(window=240, max_entries=3)
    assert guard.check_and_add("a", 0)
    assert not guard.check_and_add("a", 100)
    assert guard.check_and_add("a", 241)  # outside the window: the time check refuses it
    for nonce in "bcde":
        assert guard.check_and_add(nonce, 242)
    assert len(guard) == 3


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"TRIOPORT-PROXY " + b"x" * 9000, "longer than 8192"),
        (b"TRIOPORT-PROXY v2 1.2.3.4:5 n 1 00 AA== AA==\r\n", "version 'v2'"),
        (b"TRIOPORT-PROXY v1 1.2.3.4:5 n 1\r\n", "5 fields, not 8"),
        (b"TRIOPORT-PROXY v1 1.2.3.4 n 1 00 AA== AA== x\r\n", "fields, not 8"),
        (b"TRIOPORT-PROXY v1 1.2.3.4 n 1 00 AA== AA==\r\n", "not IP:PORT"),
        (b"TRIOPORT-PROXY v1 ::1:22 n 1 00 AA== AA==\r\n", "not IP:PORT"),
        (b"TRIOPORT-PROXY v1 1.2.3.4:0 n 1 00 AA== AA==\r\n", "out of range"),
        (b"TRIOPORT-PROXY v1 1.2.3.4:5 n -1 00 AA== AA==\r\n", "time is not"),
        (b"TRIOPORT-PROXY v1 1.2.3.4:5 n 1 zz AA== AA==\r\n", "nonce"),
        (b"TRIOPORT-PROXY v1 1.2.3.4:5 n 1 " + b"0" * 32 + b" !! AA==\r\n", "base64"),
        (b"TRIOPORT-PROXY v1 1.2.3.4:5 n 1 " + b"0" * 32 + b" AA== AA==\r\n", "malformed"),
        (b"TRIOPORT-PROXY v1 \xff 1 2 3 4 5\r\n", "not ASCII"),
    ],
)
def test_malformed_lines_are_refused_with_what_is_wrong(data: bytes, why: str) -> None:
    with pytest.raises(ProxyLineRefused, match=why):
        proxyline.parse(data)


def test_only_a_node_announcing_it_gets_a_line() -> None:
    version = proxyline.node_software_version("trioport_0.1")
    assert proxyline.accepts_proxy_line(f"SSH-2.0-{version}\r".encode())
    assert proxyline.accepts_proxy_line(f"SSH-2.0-{version} comment".encode())
    assert not proxyline.accepts_proxy_line(b"SSH-2.0-trioport_0.1\r")
    assert not proxyline.accepts_proxy_line(b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r")
    assert not proxyline.accepts_proxy_line(b"SSH-1.99-x+proxyline1\r")
