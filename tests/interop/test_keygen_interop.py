"""Interop with Debian's OpenSSH 9.2 ssh-keygen: certificates, key files, fingerprints.

- ``ssh-keygen -L`` prints every field of our certificates as we wrote them;
- certificates made by ``ssh-keygen -s`` (every key type, ``-O`` options, ``-V``
  windows, ``-n`` principals, ``-h`` host certificates) parse and get the verdicts
  sshd and ssh would give;
- ``ssh-keygen -y`` reads our private key files, with and without a passphrase, and we
  read ssh-keygen's (openssh-key-v1, PEM, PKCS#8);
- our fingerprint lines equal ``ssh-keygen -lf``; ``ssh-keygen -F`` finds our hashed
  known_hosts lines and we match ssh-keygen's ``-H`` output.

Every ssh-keygen run happens in a temporary directory; only one RSA key is generated.
"""

from __future__ import annotations

import base64
import datetime
import os
import pathlib
import shutil
import subprocess

import pytest

from trioport.errors import CertificateInvalid
from trioport.sshproto.authfiles import (
    KnownHost,
    hash_host,
    host_lookup_name,
    known_hosts_lookup,
    parse_known_hosts,
)
from trioport.sshproto.certs import (
    DEFAULT_USER_EXTENSIONS,
    Certificate,
    CertType,
    ServiceRole,
    check_certificate,
    sign_certificate,
    trioport_extensions,
)
from trioport.sshproto.keyfiles import (
    dump_private_key,
    fingerprint_line,
    load_private_key,
    load_private_key_and_comment,
    load_public_key_file,
)
from trioport.sshproto.keys import PrivateKey, PublicKey

pytestmark = pytest.mark.interop

KEYGEN = shutil.which("ssh-keygen") or "/usr/bin/ssh-keygen"
#: A fixed "now" inside the -V windows used below (2025-06-01T00:00:00Z).
NOW = 1_748_736_000
KEY_TYPES = {
    "ed25519": ["-t", "ed25519"],
    "ecdsa256": ["-t", "ecdsa", "-b", "256"],
    "ecdsa384": ["-t", "ecdsa", "-b", "384"],
    "ecdsa521": ["-t", "ecdsa", "-b", "521"],
    "rsa": ["-t", "rsa", "-b", "2048"],
}


def keygen(*args: str, cwd: pathlib.Path, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(
        [KEYGEN, *args],
        cwd=cwd,
        env={**os.environ, "TZ": "UTC"},
        capture_output=True,
        text=True,
        timeout=60,
        check=check,
        stdin=subprocess.DEVNULL,
    )


class Keys:
    """Key pairs made by ssh-keygen: ``path(name)`` on disk, ``private(name)`` loaded."""

    def __init__(self, root: pathlib.Path) -> None:
        self.root = root
        for name, args in KEY_TYPES.items():
            keygen(*args, "-q", "-N", "", "-C", f"{name}@test", "-f", name, cwd=root)
        for name in ("ca_ed25519", "ca_ecdsa"):
            kind = ["-t", "ed25519"] if name == "ca_ed25519" else ["-t", "ecdsa"]
            keygen(*kind, "-q", "-N", "", "-C", name, "-f", name, cwd=root)

    def path(self, name: str) -> pathlib.Path:
        return self.root / name

    def private(self, name: str) -> PrivateKey:
        return load_private_key(self.path(name).read_bytes())

    def public(self, name: str) -> PublicKey:
        return load_public_key_file(self.path(f"{name}.pub").read_text())[0]


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return Keys(tmp_path_factory.mktemp("keygen"))


def parse_listing(text: str) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Fields of ``ssh-keygen -L`` output, and the indented lists under some of them."""
    fields: dict[str, str] = {}
    lists: dict[str, list[str]] = {}
    current = ""
    for line in text.splitlines()[1:]:
        if line.startswith(" " * 16):
            lists[current].append(line.strip())
        elif line.strip():
            name, _, value = line.strip().partition(":")
            fields[name] = value.strip()
            lists[name] = []
            current = name
    return fields, lists


def _utc(seconds: int) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S")


# --- our certificates, read by ssh-keygen -L ------------------------------------------

CASES = [
    ("ed25519", "rsa"),
    ("rsa", "ca_ed25519"),
    ("ecdsa256", "ca_ecdsa"),
    ("ecdsa384", "ca_ed25519"),
    ("ecdsa521", "rsa"),
]


@pytest.mark.parametrize(("subject", "ca_name"), CASES)
def test_ssh_keygen_lists_every_field_of_our_user_certificates(keys, subject, ca_name) -> None:
    ca = keys.private(ca_name)
    cert = sign_certificate(
        ca,
        keys.public(subject),
        cert_type=CertType.USER,
        key_id="alice@trioport",
        principals=["alice", "root", "deploy"],
        valid_after=NOW - 60,
        valid_before=NOW + 12 * 3600,
        nonce=os.urandom(32),
        serial=1234567890123,
        critical_options={"force-command": "/usr/bin/uptime", "source-address": "10.0.0.0/8,::1"},
        extensions={**DEFAULT_USER_EXTENSIONS, **trioport_extensions(roles=["dev"])},
    )
    path = keys.root / f"{subject}-by-{ca_name}-cert.pub"
    path.write_text(cert.openssh_line("ours") + "\n")
    fields, lists = parse_listing(keygen("-L", "-f", str(path), cwd=keys.root).stdout)
    algorithm = cert.signature_algorithm
    assert fields["Type"] == f"{cert.key_type} user certificate"
    assert fields["Public key"].split()[1] == cert.key.fingerprint()
    assert fields["Signing CA"].split()[1] == ca.public.fingerprint()
    assert fields["Signing CA"].endswith(f"(using {algorithm})")
    assert algorithm == ("rsa-sha2-512" if ca_name == "rsa" else ca.public.key_type)
    assert fields["Key ID"] == '"alice@trioport"'
    assert fields["Serial"] == "1234567890123"
    assert fields["Valid"] == f"from {_utc(NOW - 60)} to {_utc(NOW + 12 * 3600)}"
    assert lists["Principals"] == ["alice", "root", "deploy"]
    assert lists["Critical Options"] == [
        "force-command /usr/bin/uptime",
        "source-address 10.0.0.0/8,::1",
    ]
    assert lists["Extensions"][:5] == sorted(DEFAULT_USER_EXTENSIONS)
    assert lists["Extensions"][5].startswith("trioport-roles@trioport.dev UNKNOWN OPTION")
    # ssh-keygen -l sees the certified key's fingerprint, as we do.
    listed = keygen("-l", "-f", str(path), cwd=keys.root).stdout.strip()
    assert listed == fingerprint_line(cert, "ours")


def test_ssh_keygen_lists_our_host_certificate(keys) -> None:
    cert = sign_certificate(
        keys.private("ca_ed25519"),
        keys.public("ecdsa256"),
        cert_type=CertType.HOST,
        key_id="node-1",
        principals=["node-1", "*.nodes.example"],
        valid_after=0,
        valid_before=2**64 - 1,
        nonce=os.urandom(16),
        extensions=trioport_extensions(service_role=ServiceRole.NODE, cluster="prod"),
    )
    path = keys.root / "host-cert.pub"
    path.write_text(cert.openssh_line() + "\n")
    fields, lists = parse_listing(keygen("-L", "-f", str(path), cwd=keys.root).stdout)
    assert fields["Type"] == f"{cert.key_type} host certificate"
    assert fields["Valid"] == "forever" and fields["Serial"] == "0"
    assert lists["Principals"] == ["node-1", "*.nodes.example"]
    assert fields["Critical Options"] == "(none)"
    assert [e.split()[0] for e in lists["Extensions"]] == [
        "trioport-cluster@trioport.dev",
        "trioport-service-role@trioport.dev",
    ]


# --- ssh-keygen's certificates, checked by us ------------------------------------------


def _sign_with_keygen(keys: Keys, subject: str, *args: str, ca: str = "ca_ed25519") -> Certificate:
    work = keys.root / "signing"
    work.mkdir(exist_ok=True)
    shutil.copy(keys.path(f"{subject}.pub"), work / "key.pub")
    keygen("-q", "-s", str(keys.path(ca)), "-I", "kid", *args, str(work / "key.pub"), cwd=work)
    cert, _ = load_public_key_file((work / "key-cert.pub").read_text())
    assert isinstance(cert, Certificate)
    return cert


def _verdict(keys: Keys, cert: Certificate, **overrides):
    args = dict(
        cert_type=CertType.USER,
        trusted_cas=[keys.public("ca_ed25519")],
        principal="alice",
        now=NOW,
        source_address="127.0.0.1",
    )
    args.update(overrides)
    return check_certificate(cert, **args)


@pytest.mark.parametrize("subject", sorted(KEY_TYPES))
def test_ssh_keygen_user_certificates_of_every_key_type_validate(keys, subject) -> None:
    cert = _sign_with_keygen(keys, subject, "-n", "alice,bob", "-V", "20200101:20350101")
    assert cert.key == keys.public(subject)
    assert cert.key_id == "kid" and cert.principals == ("alice", "bob")
    result = _verdict(keys, cert)
    assert result.principal == "alice"
    # ssh-keygen's default extensions are the five permit-* flags.
    assert result.permit_pty and result.permit_port_forwarding
    assert result.permit_agent_forwarding and result.permit_x11_forwarding
    assert result.permit_user_rc and result.force_command is None


@pytest.mark.parametrize("ca", ["rsa", "ca_ecdsa"])
def test_ssh_keygen_certificates_from_rsa_and_ecdsa_cas(keys, ca) -> None:
    cert = _sign_with_keygen(keys, "ed25519", "-n", "alice", ca=ca)
    expected = "rsa-sha2-512" if ca == "rsa" else "ecdsa-sha2-nistp256"
    assert cert.signature_algorithm == expected
    assert _verdict(keys, cert, trusted_cas=[keys.public(ca)]).principal == "alice"


def test_ssh_keygen_options_become_typed_permissions(keys) -> None:
    cert = _sign_with_keygen(
        keys,
        "ecdsa256",
        "-n",
        "alice",
        "-z",
        "99",
        "-O",
        "force-command=/bin/echo restricted",
        "-O",
        "source-address=127.0.0.0/8,::1/128",
        "-O",
        "no-pty",
        "-O",
        "no-port-forwarding",
        "-O",
        "extension:trioport-roles@trioport.dev=admin,dev",
        "-O",
        "extension:trioport-cluster@trioport.dev=prod",
    )
    result = _verdict(keys, cert)
    assert cert.serial == 99
    assert result.force_command == "/bin/echo restricted"
    assert [str(n) for n in result.source_addresses] == ["127.0.0.0/8", "::1/128"]
    assert not result.permit_pty and not result.permit_port_forwarding
    assert result.permit_agent_forwarding and result.permit_x11_forwarding
    assert result.roles == ("admin", "dev") and result.cluster == "prod"
    assert _verdict(keys, cert, source_address="::1").principal == "alice"
    with pytest.raises(CertificateInvalid, match=r"does not allow 10\.1\.1\.1"):
        _verdict(keys, cert, source_address="10.1.1.1")
    cleared = _sign_with_keygen(keys, "ecdsa256", "-n", "alice", "-O", "clear")
    result = _verdict(keys, cleared)
    assert not any(
        (
            result.permit_pty,
            result.permit_port_forwarding,
            result.permit_agent_forwarding,
            result.permit_x11_forwarding,
            result.permit_user_rc,
        )
    )


@pytest.mark.parametrize(
    ("args", "overrides", "reason"),
    [
        (["-n", "alice", "-V", "19800101:19900101"], {}, "expired at 1990-01-01"),
        (["-n", "alice", "-V", "20400101:20410101"], {}, "not valid until 2040-01-01"),
        (["-n", "alice", "-V", "always:20250601"], {}, "expired"),  # valid_before == now
        (["-n", "bob"], {}, "'alice' is not a listed principal"),
        (["-n", "bob,*"], {}, "'alice' is not a listed principal"),  # no wildcards for users
        ([], {}, "no principals"),
        (["-n", "alice", "-O", "critical:foo@example.com=x"], {}, "unknown critical option"),
        (["-n", "alice", "-O", "verify-required"], {}, "unknown critical option"),
        (["-n", "alice", "-O", "source-address=10.0.0.0/8"], {}, "does not allow 127.0.0.1"),
        (["-n", "alice"], {"trusted_cas": []}, "untrusted CA"),
        (["-n", "alice", "-h"], {}, "is a host certificate, not a user certificate"),
        (["-n", "alice"], {"cert_type": CertType.HOST}, "is a user certificate, not a host"),
    ],
)
def test_ssh_keygen_certificates_get_sshd_verdicts(keys, args, overrides, reason) -> None:
    cert = _sign_with_keygen(keys, "ed25519", *args)
    with pytest.raises(CertificateInvalid, match=reason):
        _verdict(keys, cert, **overrides)


def test_ssh_keygen_sha1_rsa_ca_signature_is_refused(keys) -> None:
    cert = _sign_with_keygen(keys, "ed25519", "-n", "alice", "-t", "ssh-rsa", ca="rsa")
    assert cert.signature_algorithm == "ssh-rsa"
    with pytest.raises(CertificateInvalid, match="'ssh-rsa' is not allowed"):
        _verdict(keys, cert, trusted_cas=[keys.public("rsa")])


def test_ssh_keygen_host_certificates_match_names_like_ssh(keys) -> None:
    cert = _sign_with_keygen(keys, "ecdsa384", "-h", "-n", "*.example.com,db?.internal")
    assert cert.cert_type is CertType.HOST
    for name in ("www.example.com", "db1.internal"):
        assert _verdict(keys, cert, cert_type=CertType.HOST, principal=name).principal == name
    for name in ("example.com", "db10.internal", "www.example.org"):
        with pytest.raises(CertificateInvalid, match="not a listed principal"):
            _verdict(keys, cert, cert_type=CertType.HOST, principal=name)
    # ssh-keygen lets a host certificate carry critical options; ssh refuses it.
    constrained = _sign_with_keygen(keys, "ecdsa384", "-h", "-n", "h", "-O", "force-command=x")
    assert list(constrained.critical_options) == ["force-command"]
    with pytest.raises(CertificateInvalid, match="host certificate carries critical options"):
        _verdict(keys, constrained, cert_type=CertType.HOST, principal="h")


# --- private key files ---------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(KEY_TYPES))
@pytest.mark.parametrize("passphrase", [None, "open sesame"])
def test_ssh_keygen_reads_our_private_key_files(keys, tmp_path, name, passphrase) -> None:
    key = keys.private(name)
    path = tmp_path / "id"
    path.write_bytes(dump_private_key(key, passphrase, "written by trioport", rng=os.urandom))
    path.chmod(0o600)
    out = keygen("-y", "-P", passphrase or "", "-f", str(path), cwd=tmp_path).stdout.split()
    assert out[:2] == key.public.openssh_line().split()
    assert " ".join(out[2:]) == "written by trioport"
    if passphrase:
        wrong = keygen("-y", "-P", "wrong", "-f", str(path), cwd=tmp_path, check=False)
        assert wrong.returncode != 0 and "incorrect passphrase" in wrong.stderr


@pytest.mark.parametrize("name", ["ed25519", "ecdsa384", "rsa"])
def test_we_read_ssh_keygen_encrypted_files_in_every_format(keys, tmp_path, name) -> None:
    shutil.copy(keys.path(name), tmp_path / "id")
    (tmp_path / "id").chmod(0o600)
    keygen("-q", "-p", "-P", "", "-N", "pass phrase", "-f", "id", cwd=tmp_path)
    key, comment = load_private_key_and_comment((tmp_path / "id").read_bytes(), "pass phrase")
    assert key.public == keys.public(name) and comment == f"{name}@test"
    with pytest.raises(Exception, match="wrong passphrase or corrupt key"):
        load_private_key((tmp_path / "id").read_bytes(), "pass word")
    if name == "ed25519":
        return  # OpenSSH writes Ed25519 keys only in its own format
    for fmt in ("PEM", "PKCS8"):
        keygen("-q", "-p", "-P", "pass phrase", "-N", "other words", "-m", fmt, "-f", "id",
               cwd=tmp_path)  # fmt: skip
        data = (tmp_path / "id").read_bytes()
        assert b"OPENSSH" not in data
        assert load_private_key(data, "other words").public == keys.public(name)
        keygen("-q", "-p", "-P", "other words", "-N", "pass phrase", "-f", "id", cwd=tmp_path)


# --- fingerprints and known_hosts ------------------------------------------------------


@pytest.mark.parametrize("name", [*sorted(KEY_TYPES), "ca_ed25519"])
def test_fingerprint_lines_equal_ssh_keygen_lf(keys, name) -> None:
    public, comment = load_public_key_file(keys.path(f"{name}.pub").read_text())
    expected = keygen("-l", "-f", str(keys.path(f"{name}.pub")), cwd=keys.root).stdout.strip()
    assert fingerprint_line(public, comment) == expected
    sha = keygen("-l", "-E", "sha256", "-f", str(keys.path(name)), cwd=keys.root).stdout
    assert public.fingerprint() in sha


def test_ssh_keygen_finds_our_hashed_known_hosts_lines(keys, tmp_path) -> None:
    key = keys.public("ed25519")
    lines = [
        KnownHost(key=key, hashed=_hashed(host_lookup_name("alpha.example"))),
        KnownHost(key=key, hashed=_hashed(host_lookup_name("beta.example", 2222))),
        KnownHost(key=keys.public("ecdsa256"), patterns=("gamma.example", "[gamma.example]:22")),
    ]
    path = tmp_path / "known_hosts"
    path.write_text("".join(line.to_line() + "\n" for line in lines))
    for host in ("alpha.example", "[beta.example]:2222", "gamma.example"):
        found = keygen("-F", host, "-f", str(path), cwd=tmp_path)
        assert "found: line" in found.stdout
    missing = keygen("-F", "beta.example", "-f", str(path), cwd=tmp_path, check=False)
    assert missing.returncode != 0


def _hashed(name: str) -> tuple[bytes, bytes]:
    _, _, salt, digest = hash_host(name, os.urandom(20)).split("|")
    return base64.b64decode(salt), base64.b64decode(digest)


def test_we_match_ssh_keygen_hashed_known_hosts(keys, tmp_path) -> None:
    ed = keys.public("ed25519").openssh_line()
    ca = keys.public("ca_ed25519").openssh_line()
    path = tmp_path / "known_hosts"
    path.write_text(f"alpha.example,[beta.example]:2222 {ed}\n@cert-authority *.corp {ca}\n")
    keygen("-q", "-H", "-f", str(path), cwd=tmp_path)
    entries = parse_known_hosts(path.read_text(), strict=True)
    assert sum(e.hashed is not None for e in entries) == 2
    assert known_hosts_lookup(entries, "alpha.example").keys == (keys.public("ed25519"),)
    assert known_hosts_lookup(entries, "beta.example", 2222).keys == (keys.public("ed25519"),)
    assert known_hosts_lookup(entries, "beta.example").keys == ()
    corp = known_hosts_lookup(entries, "db.corp")
    assert corp.cert_authorities == (keys.public("ca_ed25519"),)
