"""What tsh keeps under TSH_HOME, and the OpenSSH configuration it prints."""

from __future__ import annotations

import secrets
import stat
import time
from pathlib import Path

import pytest
from trioport_cli.tsh import openssh_config

from trioport.roles.proxy.profile import NotLoggedIn, Profile, known_hosts_patterns
from trioport.sshproto.certs import Certificate, CertType, sign_certificate, trioport_extensions
from trioport.sshproto.keys import PrivateKey

CA = PrivateKey.generate()
HOST_CA = PrivateKey.generate()


def _profile(home: Path, *, lifetime: int = 3600, key: PrivateKey | None = None) -> Profile:
    key = key or PrivateKey.generate()
    now = int(time.time())
    cert = sign_certificate(
        CA,
        key.public,
        cert_type=CertType.USER,
        key_id="alice",
        principals=["alice", "root"],
        valid_after=now - 60,
        valid_before=now + lifetime,
        nonce=secrets.token_bytes(32),
        extensions={"permit-pty": None, **trioport_extensions(roles=["access"], cluster="c.test")},
    )
    assert isinstance(cert, Certificate)
    return Profile(
        proxy_host="127.0.0.1",
        web_port=3080,
        ssh_host="127.0.0.1",
        ssh_port=3023,
        user="alice",
        cluster="c.test",
        home=str(home),
        key=key,
        certificate=cert,
        host_cas=[HOST_CA.public],
    )


def test_a_saved_profile_loads_back_with_private_modes(tmp_path: Path) -> None:
    home = tmp_path / "tsh"
    home.mkdir(mode=0o755)
    other = (
        f"@cert-authority *.other.test {PrivateKey.generate().public.openssh_line()}"
        " type=host&clustername=other.test"
    )
    (home / "known_hosts").write_text(other + "\n")
    _profile(home).save()
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert stat.S_IMODE((home / "keys" / "127.0.0.1" / "alice").stat().st_mode) == 0o600
    loaded = Profile.load(str(home))
    assert (loaded.user, loaded.cluster, loaded.ssh_addr.port) == ("alice", "c.test", 3023)
    assert loaded.host_cas == [HOST_CA.public]
    assert loaded.check().key_id == "alice"
    lines = (home / "known_hosts").read_text().splitlines()
    assert lines[0] == other  # another cluster's line is kept
    assert lines[1].startswith("@cert-authority *.c.test,127.0.0.1,[127.0.0.1]:3023 ssh-ed25519 ")

    loaded.remove()
    assert (home / "known_hosts").read_text().splitlines() == [other]
    assert not (home / "keys" / "127.0.0.1").exists()
    with pytest.raises(NotLoggedIn, match="run tsh login"):
        Profile.load(str(home))


def test_expired_or_mismatched_credentials_say_to_log_in_again(tmp_path: Path) -> None:
    home = tmp_path / "tsh"
    profile = _profile(home, lifetime=1)
    profile.save()
    with pytest.raises(NotLoggedIn, match="has expired: run tsh login"):
        Profile.load(str(home)).check(now=time.time() + 3600)
    (home / "keys" / "127.0.0.1" / "alice").write_bytes(PrivateKey.generate().to_openssh())
    with pytest.raises(NotLoggedIn, match="does not certify your key"):
        Profile.load(str(home))


def test_known_hosts_patterns_name_the_proxy_and_the_cluster() -> None:
    assert known_hosts_patterns("c.test", "proxy.c.test", 3023) == (
        "*.c.test,proxy.c.test,[proxy.c.test]:3023"
    )
    assert known_hosts_patterns("c.test", "::1", 3023) == "*.c.test,::1,[::1]:3023"


def test_the_openssh_config_uses_the_profile_files(tmp_path: Path) -> None:
    profile = _profile(tmp_path / "tsh")
    text = openssh_config(profile)
    assert "Host *.c.test 127.0.0.1\n" in text
    assert f'    CertificateFile "{tmp_path}/tsh/keys/127.0.0.1/alice-cert.pub"' in text
    assert f'    UserKnownHostsFile "{tmp_path}/tsh/known_hosts"' in text
    assert "Host *.c.test !127.0.0.1\n" in text
    assert "ProxyCommand ssh -p 3023 " in text and " %r@127.0.0.1 -s proxy:%h:%p" in text
