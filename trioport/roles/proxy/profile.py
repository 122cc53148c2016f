"""What ``tsh login`` keeps on disk, and where: the profile, the key, the certificate.

Everything lives under ``~/.tsh`` (``TSH_HOME`` overrides it), which is made 0700;
every file that holds a key is 0600. The layout follows Teleport's ``tsh`` so that
the same OpenSSH configuration works with either::

    ~/.tsh/
      current-profile            the proxy host of the profile in use
      PROXY.yaml                 the profile: proxy addresses, user, cluster, TLS choice
      known_hosts                @cert-authority lines for each cluster's host CA
      keys/PROXY/USER            the private key (OpenSSH format, 0600)
      keys/PROXY/USER.pub        its public key
      keys/PROXY/USER-cert.pub   the user certificate

``PROXY`` is the proxy's host name as given to ``tsh login --proxy``, without the
port. OpenSSH finds ``USER-cert.pub`` next to the key by itself, and
``known_hosts`` holds lines such as::

    @cert-authority *.CLUSTER,PROXY,[PROXY]:3023 ssh-ed25519 AAAA... type=host&clustername=CLUSTER

so OpenSSH trusts the cluster's host CA for the proxy and for ``NODE.CLUSTER``
names, and for nothing else.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence

import attrs
import yaml

from trioport.config import Address
from trioport.errors import ConfigError, KeyFormatError, TrioportError
from trioport.sshproto.certs import Certificate, CertificateCheckResult, CertType, check_certificate
from trioport.sshproto.keys import PrivateKey, PublicKey, public_key_from_line

__all__ = [
    "CURRENT_PROFILE",
    "KNOWN_HOSTS",
    "NotLoggedIn",
    "Profile",
    "known_hosts_patterns",
    "tsh_home",
]

CURRENT_PROFILE = "current-profile"
KNOWN_HOSTS = "known_hosts"
KEYS_DIR = "keys"


class NotLoggedIn(TrioportError):
    """There is no profile, or its certificate has expired: run ``tsh login``."""


def tsh_home() -> str:
    """``$TSH_HOME``, or ``~/.tsh``."""
    return os.path.abspath(os.environ.get("TSH_HOME") or os.path.expanduser("~/.tsh"))


def _write(path: str, data: bytes, mode: int = 0o600) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _mkdir(path: str) -> None:
    os.makedirs(path, mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)


def known_hosts_patterns(cluster: str, proxy_host: str, ssh_port: int) -> str:
    """The host patterns the cluster's host CA is trusted for in ``known_hosts``."""
    host = f"[{proxy_host}]" if ":" in proxy_host else proxy_host
    return f"*.{cluster},{proxy_host},[{host.strip('[]')}]:{ssh_port}"


@attrs.define
class Profile:
    """One logged-in profile: which proxy, who, which cluster, and the credentials.

    Attributes:
        proxy_host: the proxy's host, as given to ``--proxy``.
        web_port: its HTTPS port.
        ssh_host / ssh_port: where its SSH port is reached.
        user: the user name (the certificate's key id).
        cluster: the cluster's name.
        insecure: HTTPS certificate checks were turned off at login.
        home: the ``TSH_HOME`` directory it lives in.
    """

    proxy_host: str
    web_port: int
    ssh_host: str
    ssh_port: int
    user: str
    cluster: str
    insecure: bool = False
    home: str = attrs.Factory(tsh_home)
    key: PrivateKey | None = attrs.field(default=None, repr=False)
    certificate: Certificate | None = attrs.field(default=None, repr=False)
    host_cas: list[PublicKey] = attrs.Factory(list)

    # --- paths -------------------------------------------------------------------

    @property
    def web_addr(self) -> Address:
        return Address(self.proxy_host, self.web_port)

    @property
    def ssh_addr(self) -> Address:
        return Address(self.ssh_host, self.ssh_port)

    @property
    def keys_dir(self) -> str:
        return os.path.join(self.home, KEYS_DIR, self.proxy_host)

    @property
    def key_path(self) -> str:
        return os.path.join(self.keys_dir, self.user)

    @property
    def cert_path(self) -> str:
        return self.key_path + "-cert.pub"

    @property
    def known_hosts_path(self) -> str:
        return os.path.join(self.home, KNOWN_HOSTS)

    @property
    def profile_path(self) -> str:
        return os.path.join(self.home, f"{self.proxy_host}.yaml")

    # --- the certificate -----------------------------------------------------------

    def check(self, now: float | None = None) -> CertificateCheckResult:
        """The certificate, checked against its own CA claims for expiry and shape.

        Raises:
            NotLoggedIn: no certificate, or it has expired (with what to do).
        """
        cert = self.certificate
        if cert is None or self.key is None:
            raise NotLoggedIn("not logged in: run tsh login")
        try:
            return check_certificate(
                cert,
                cert_type=CertType.USER,
                trusted_cas=[cert.signature_key],
                principal=None,
                now=time.time() if now is None else now,
            )
        except TrioportError as exc:
            if "expired" in str(exc):
                until = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(cert.valid_before))
                raise NotLoggedIn(
                    f"your certificate for {self.cluster} has expired: run tsh login"
                    f" --proxy={self.web_addr} to get a new one (it was valid until {until})"
                ) from None
            raise NotLoggedIn(f"your certificate cannot be used ({exc}): run tsh login") from None

    # --- saving --------------------------------------------------------------------

    def save(self) -> None:
        """Write the profile, key, certificate and CA lines; make it the current one."""
        if self.key is None or self.certificate is None:
            raise ValueError("a profile is saved with its key and certificate")
        _mkdir(self.home)
        _mkdir(os.path.join(self.home, KEYS_DIR))
        _mkdir(self.keys_dir)
        _write(self.key_path, self.key.to_openssh())
        _write(self.key_path + ".pub", (self.key.public.openssh_line(self.user) + "\n").encode())
        _write(self.cert_path, (self.certificate.openssh_line(self.user) + "\n").encode())
        doc = {
            "web_proxy_addr": str(self.web_addr),
            "ssh_proxy_addr": str(self.ssh_addr),
            "user": self.user,
            "cluster": self.cluster,
            "insecure": self.insecure,
        }
        _write(self.profile_path, yaml.safe_dump(doc, sort_keys=False).encode())
        self._write_known_hosts()
        _write(os.path.join(self.home, CURRENT_PROFILE), (self.proxy_host + "\n").encode())

    def _known_hosts_lines(self) -> list[str]:
        patterns = known_hosts_patterns(self.cluster, self.proxy_host, self.ssh_port)
        comment = f"type=host&clustername={self.cluster}"
        return [f"@cert-authority {patterns} {k.openssh_line(comment)}" for k in self.host_cas]

    def _write_known_hosts(self) -> None:
        kept = [
            line
            for line in _read_lines(self.known_hosts_path)
            if not _is_cluster_line(line, self.cluster)
        ]
        lines = kept + self._known_hosts_lines()
        _write(self.known_hosts_path, "".join(f"{line}\n" for line in lines).encode())

    def remove(self) -> None:
        """Delete the key, certificate, profile and this cluster's CA lines."""
        for path in (self.key_path, self.key_path + ".pub", self.cert_path, self.profile_path):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        kept = [
            line
            for line in _read_lines(self.known_hosts_path)
            if not _is_cluster_line(line, self.cluster)
        ]
        if os.path.exists(self.known_hosts_path):
            _write(self.known_hosts_path, "".join(f"{line}\n" for line in kept).encode())
        current = os.path.join(self.home, CURRENT_PROFILE)
        if _read_text(current).strip() == self.proxy_host:
            os.unlink(current)
        try:
            os.rmdir(self.keys_dir)
        except OSError:
            pass

    # --- loading -------------------------------------------------------------------

    @classmethod
    def load(cls, home: str | None = None, proxy_host: str | None = None) -> Profile:
        """The current profile (or the one for ``proxy_host``), with its credentials.

        Raises:
            NotLoggedIn: there is none.
            ConfigError: its files are damaged.
        """
        home = home or tsh_home()
        if proxy_host is None:
            proxy_host = _read_text(os.path.join(home, CURRENT_PROFILE)).strip()
            if not proxy_host:
                raise NotLoggedIn("not logged in: run tsh login --proxy=HOST:3080")
        path = os.path.join(home, f"{proxy_host}.yaml")
        text = _read_text(path)
        if not text:
            raise NotLoggedIn(f"not logged in to {proxy_host}: run tsh login --proxy={proxy_host}")
        try:
            doc = yaml.safe_load(text)
            web = _split(str(doc["web_proxy_addr"]))
            ssh = _split(str(doc["ssh_proxy_addr"]))
            profile = cls(
                proxy_host=web[0],
                web_port=web[1],
                ssh_host=ssh[0],
                ssh_port=ssh[1],
                user=str(doc["user"]),
                cluster=str(doc["cluster"]),
                insecure=bool(doc.get("insecure", False)),
                home=home,
            )
        except (yaml.YAMLError, KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"damaged profile: {exc}", path=path) from None
        try:
            with open(profile.key_path, "rb") as f:
                profile.key = PrivateKey.from_openssh(f.read())
            cert = public_key_from_line(_read_text(profile.cert_path))
        except (OSError, KeyFormatError, ValueError) as exc:
            raise NotLoggedIn(
                f"your key for {proxy_host} is missing ({exc}): run tsh login"
            ) from None
        if not isinstance(cert, Certificate) or cert.key != profile.key.public:
            raise NotLoggedIn(f"{profile.cert_path} does not certify your key: run tsh login")
        profile.certificate = cert
        profile.host_cas = _cluster_cas(_read_lines(profile.known_hosts_path), profile.cluster)
        return profile

    @classmethod
    def list_all(cls, home: str | None = None) -> Sequence[str]:
        """The proxy hosts with a saved profile."""
        home = home or tsh_home()
        try:
            names = os.listdir(home)
        except FileNotFoundError:
            return []
        return sorted(n.removesuffix(".yaml") for n in names if n.endswith(".yaml"))


def _split(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def _read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        return ""


def _read_lines(path: str) -> list[str]:
    return [line for line in _read_text(path).splitlines() if line.strip()]


def _is_cluster_line(line: str, cluster: str) -> bool:
    fields = line.split()
    return (
        len(fields) >= 5
        and fields[0] == "@cert-authority"
        and f"clustername={cluster}" in fields[4].split("&")
    )


def _cluster_cas(lines: Iterable[str], cluster: str) -> list[PublicKey]:
    out = []
    for line in lines:
        if _is_cluster_line(line, cluster):
            fields = line.split()
            try:
                out.append(public_key_from_line(f"{fields[2]} {fields[3]}"))
            except TrioportError:
                continue
    return out
