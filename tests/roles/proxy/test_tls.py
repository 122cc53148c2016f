"""HTTPS for the proxy: the self-signed certificate, and what the TLS contexts accept."""

from __future__ import annotations

import datetime as dt
import ssl
import stat
import warnings
from pathlib import Path

import pytest
import trio
from cryptography import x509

from trioport.errors import ConfigError
from trioport.tls import client_context, ensure_self_signed, file_fingerprint, server_context
from trioport.tls.certs import RENEW_BEFORE, SELF_SIGNED_LIFETIME
from trioport.tls.context import _set_groups

NAMES = ["proxy.example.test", "localhost", "127.0.0.1", "::1", "0.0.0.0"]


def _sans(path: str) -> tuple[set[str], set[str]]:
    cert = x509.load_pem_x509_certificate(Path(path).read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return set(san.get_values_for_type(x509.DNSName)), {
        str(ip) for ip in san.get_values_for_type(x509.IPAddress)
    }


def test_self_signed_certificate_is_made_once_and_names_every_host(tmp_path: Path) -> None:
    folder = tmp_path / "https"
    made = ensure_self_signed(folder, NAMES)
    assert made.created
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE(Path(made.key_file).stat().st_mode) == 0o600
    dns, ips = _sans(made.cert_file)
    assert dns == {"proxy.example.test", "localhost"}
    assert ips == {"127.0.0.1", "::1"}  # 0.0.0.0 is a listen address, not a name
    assert made.fingerprint == file_fingerprint(made.cert_file)
    again = ensure_self_signed(folder, ["localhost"])
    assert not again.created and again.fingerprint == made.fingerprint


def test_self_signed_certificate_is_remade_for_new_names_and_before_expiry(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "https"
    first = ensure_self_signed(folder, ["localhost"])
    wider = ensure_self_signed(folder, ["localhost", "10.1.2.3"])
    assert wider.created and wider.fingerprint != first.fingerprint
    assert "10.1.2.3" in _sans(wider.cert_file)[1]
    late = dt.datetime.now(dt.UTC) + SELF_SIGNED_LIFETIME - RENEW_BEFORE
    renewed = ensure_self_signed(folder, ["localhost"], now=late)
    assert renewed.created


def test_a_damaged_certificate_file_is_a_config_error(tmp_path: Path) -> None:
    folder = tmp_path / "https"
    made = ensure_self_signed(folder, ["localhost"])
    Path(made.cert_file).write_text("not a certificate")
    with pytest.raises(ConfigError, match="not a PEM certificate"):
        ensure_self_signed(folder, ["localhost"])
    with pytest.raises(ConfigError, match="cannot read"):
        file_fingerprint(tmp_path / "missing.pem")


async def _handshake(server: ssl.SSLContext, client: ssl.SSLContext) -> trio.SSLStream:
    """Connect a client to a one-shot TLS server on loopback; return the client stream."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    failed: list[trio.BrokenResourceError] = []
    async with trio.open_nursery() as nursery:

        async def serve_one() -> None:
            tcp = await listeners[0].accept()
            stream = trio.SSLStream(tcp, server, server_side=True)
            try:
                await stream.do_handshake()
                await stream.send_all(b"hi")
            except trio.BrokenResourceError:
                pass
            finally:
                await trio.aclose_forcefully(stream)

        nursery.start_soon(serve_one)
        tcp = await trio.open_tcp_stream("127.0.0.1", port)
        stream = trio.SSLStream(tcp, client, server_hostname="127.0.0.1")
        try:
            await stream.do_handshake()
            assert await stream.receive_some() == b"hi"
        except trio.BrokenResourceError as exc:
            failed.append(exc)
        finally:
            await trio.aclose_forcefully(stream)
            await trio.aclose_forcefully(listeners[0])
    if failed:
        raise failed[0]
    return stream


@pytest.fixture
def server(tmp_path: Path) -> tuple[ssl.SSLContext, str]:
    made = ensure_self_signed(tmp_path / "https", NAMES)
    return server_context(made.cert_file, made.key_file), made.cert_file


async def test_clients_that_trust_the_certificate_get_tls_13(
    server: tuple[ssl.SSLContext, str],
) -> None:
    ctx, cert = server
    stream = await _handshake(ctx, client_context(cafile=cert))
    assert stream.version() == "TLSv1.3"
    assert stream.selected_alpn_protocol() == "http/1.1"


async def test_tls_12_clients_get_an_ecdhe_aead_suite(server: tuple[ssl.SSLContext, str]) -> None:
    ctx, cert = server
    client = client_context(cafile=cert)
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    stream = await _handshake(ctx, client)
    name, version, _bits = stream.cipher()
    assert version == "TLSv1.2"
    assert name.startswith("ECDHE-") and ("GCM" in name or "CHACHA20" in name)


async def test_old_protocols_and_weak_suites_are_refused(
    server: tuple[ssl.SSLContext, str],
) -> None:
    ctx, cert = server
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.load_verify_locations(cert)
    with warnings.catch_warnings():  # setting them is deprecated: that is the point
        warnings.simplefilter("ignore", DeprecationWarning)
        old.minimum_version = ssl.TLSVersion.TLSv1
        old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.set_ciphers("ALL:@SECLEVEL=0")
    with pytest.raises(trio.BrokenResourceError):
        await _handshake(ctx, old)
    cbc = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    cbc.load_verify_locations(cert)
    cbc.maximum_version = ssl.TLSVersion.TLSv1_2
    cbc.set_ciphers("ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES128-SHA256")  # CBC only
    with pytest.raises(trio.BrokenResourceError):
        await _handshake(ctx, cbc)


async def test_an_untrusted_certificate_is_refused_unless_insecure(
    server: tuple[ssl.SSLContext, str], tmp_path: Path
) -> None:
    ctx, _cert = server
    other = ensure_self_signed(tmp_path / "other", ["localhost"])
    with pytest.raises(trio.BrokenResourceError) as caught:
        await _handshake(ctx, client_context(cafile=other.cert_file))
    assert isinstance(caught.value.__cause__, ssl.SSLCertVerificationError)
    stream = await _handshake(ctx, client_context(insecure=True))
    assert stream.version() == "TLSv1.3"


def test_contexts_follow_rfc_9325() -> None:
    ctx = client_context(insecure=False)
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert ctx.options & ssl.OP_NO_COMPRESSION and ctx.options & ssl.OP_NO_RENEGOTIATION
    tls12 = [c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12 and all(n.startswith("ECDHE-") and ("GCM" in n or "CHACHA" in n) for n in tls12)


@pytest.mark.parametrize("group", ["X25519", "P-256", "P-384"])
async def test_the_profile_s_key_exchange_groups_are_accepted(
    server: tuple[ssl.SSLContext, str], group: str
) -> None:
    ctx, cert = server
    client = client_context(cafile=cert)
    assert _set_groups(client, group)
    stream = await _handshake(ctx, client)
    assert stream.version() == "TLSv1.3"


@pytest.mark.parametrize("group", ["X448", "P-521", "ffdhe2048"])
async def test_groups_outside_mozilla_s_intermediate_profile_are_refused(
    server: tuple[ssl.SSLContext, str], group: str
) -> None:
    ctx, cert = server
    client = client_context(cafile=cert)
    assert _set_groups(client, group)
    with pytest.raises(trio.BrokenResourceError):
        await _handshake(ctx, client)
