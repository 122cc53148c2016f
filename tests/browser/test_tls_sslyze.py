"""sslyze finds the proxy's HTTPS port compliant with Mozilla's "intermediate" profile.

The proxy runs as ``trioport run`` does, with a certificate chain the way a
deployment has one (``https_cert_file``/``https_key_file``): an ECDSA P-256 leaf for
127.0.0.1, valid 90 days, issued by a CA made here. sslyze is told to trust that CA
(``--certinfo_ca_file``); everything else it checks is the proxy's own doing:
protocol versions, cipher suites and their order, key exchange groups,
compression, renegotiation, the certificate's key and signature.

sslyze 6.3.1 pins ``cryptography<47``, older than ours, so it lives in its own
virtualenv: ``.ci/run`` makes ``/opt/sslyze`` (``TRIOPORT_SSLYZE`` names another
sslyze program). Without it this test fails and says how to make it.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.e2e import cluster

SSLYZE = os.environ.get("TRIOPORT_SSLYZE", "/opt/sslyze/bin/sslyze")
#: sslyze's whole scan of one server, with room for a busy machine.
SSLYZE_TIMEOUT = 300


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "trioport tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def make_ca_and_leaf(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a leaf for 127.0.0.1 it issued; (ca.pem, chain.pem, key.pem)."""
    now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("trioport test CA"))
        .issuer_name(_name("trioport test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(_name("127.0.0.1"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=90))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    ca_path = directory / "ca.pem"
    chain_path = directory / "proxy.pem"
    key_path = directory / "proxy-key.pem"
    ca_path.write_bytes(ca.public_bytes(pem))
    chain_path.write_bytes(leaf.public_bytes(pem) + ca.public_bytes(pem))
    key_path.write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_path.chmod(0o600)
    return ca_path, chain_path, key_path


def test_the_proxy_is_compliant_with_mozillas_intermediate_profile(tmp_path: Path) -> None:
    if not Path(SSLYZE).exists():
        pytest.fail(
            f"sslyze is not installed at {SSLYZE}: make its own virtualenv with "
            "`python3 -m venv /opt/sslyze && /opt/sslyze/bin/pip install sslyze==6.3.1` "
            "(.ci/run does), or point TRIOPORT_SSLYZE at an sslyze program"
        )
    ca, chain, key = make_ca_and_leaf(tmp_path)
    ports = cluster.Ports(*cluster.free_ports(4))
    config = cluster.write_config(tmp_path / "trioport.yaml", tmp_path / "data", ports)
    with config.open("a") as f:
        f.write(f"  https_cert_file: {chain}\n  https_key_file: {key}\n")
    process = cluster.start(config, tmp_path / "trioport.stderr")
    try:
        scan = subprocess.run(
            [
                SSLYZE,
                "--mozilla_config=intermediate",
                f"--certinfo_ca_file={ca}",
                f"--json_out={tmp_path / 'sslyze.json'}",
                f"127.0.0.1:{ports.web}",
            ],
            capture_output=True,
            text=True,
            timeout=SSLYZE_TIMEOUT,
            check=False,
        )
    finally:
        assert process.stop() == 0, process.stderr
    report = scan.stdout + scan.stderr
    (tmp_path / "sslyze.txt").write_text(report)
    assert f"127.0.0.1:{ports.web}: OK - Compliant" in report, report[-3000:]
    assert scan.returncode == 0, report[-3000:]
