"""authorized_keys and known_hosts lines: parsing, writing back, and matching."""

from __future__ import annotations

import pathlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trioport.errors import KeyFormatError
from trioport.sshproto.authfiles import (
    AuthorizedKey,
    HostKeyStatus,
    KeyOptions,
    KnownHost,
    Marker,
    find_authorized_keys,
    hash_host,
    host_lookup_name,
    known_hosts_lookup,
    match_from,
    match_host_list,
    parse_authorized_key,
    parse_authorized_keys,
    parse_known_host,
    parse_known_hosts,
)
from trioport.sshproto.certs import CertType, sign_certificate
from trioport.sshproto.keys import PrivateKey

DATA = pathlib.Path(__file__).resolve().parent.parent / "data" / "keys"
ED = PrivateKey.from_openssh((DATA / "ed25519").read_bytes())
EC = PrivateKey.from_openssh((DATA / "ecdsa256").read_bytes())
ED_LINE = ED.public.openssh_line("alice@laptop")
EC_LINE = EC.public.openssh_line()
SALT = bytes(range(20))


# --- authorized_keys ------------------------------------------------------------------


def test_plain_line_and_comment() -> None:
    entry = parse_authorized_key(ED_LINE)
    assert entry.key == ED.public and entry.comment == "alice@laptop"
    assert entry.options == KeyOptions()
    assert entry.to_line() == ED_LINE
    assert parse_authorized_key(f"  {EC_LINE}  ").comment == ""


def test_every_option_parses_into_its_typed_field() -> None:
    line = (
        'cert-authority,principals="alice,root",from="10.0.0.0/8,!10.0.0.1,*.corp",'
        'command="echo \\"hi there\\"",environment="LANG=C.UTF-8",environment="A=b=c",'
        'permitopen="db:5432",permitopen="cache:6379",permitlisten="8080",'
        'expiry-time="20300101",tunnel="3",no-pty,no-port-forwarding,'
        "no-agent-forwarding,no-X11-forwarding,no-user-rc " + ED_LINE
    )
    options = parse_authorized_key(line).options
    assert options.cert_authority and options.principals == ("alice", "root")
    assert options.from_patterns == ("10.0.0.0/8", "!10.0.0.1", "*.corp")
    assert options.command == 'echo "hi there"'
    assert options.environment == (("LANG", "C.UTF-8"), ("A", "b=c"))
    assert options.permit_open == ("db:5432", "cache:6379")
    assert options.permit_listen == ("8080",)
    assert options.expiry_time == "20300101" and options.expiry_timestamp() == 1893456000.0
    assert options.tunnel == 3
    assert not any(
        (
            options.allows_pty,
            options.allows_port_forwarding,
            options.allows_agent_forwarding,
            options.allows_x11_forwarding,
            options.allows_user_rc,
        )
    )
    again = parse_authorized_key(parse_authorized_key(line).to_line())
    assert again == parse_authorized_key(line)


def test_restrict_is_evaluated_left_to_right_like_openssh() -> None:
    assert parse_authorized_key("restrict,pty " + ED_LINE).options.allows_pty
    assert not parse_authorized_key("pty,restrict " + ED_LINE).options.allows_pty
    opts = parse_authorized_key("restrict,port-forwarding " + ED_LINE).options
    assert opts.allows_port_forwarding and not opts.allows_agent_forwarding
    assert not opts.allows_x11_forwarding and not opts.allows_user_rc
    assert parse_authorized_key("no-pty,pty " + ED_LINE).options.allows_pty
    # Option names are case-insensitive.
    assert not parse_authorized_key("NO-PTY " + ED_LINE).options.allows_pty
    # Written back, the meaning is unchanged.
    for text in ("restrict,pty", "pty,restrict", "no-pty,restrict,X11-forwarding"):
        entry = parse_authorized_key(f"{text} {ED_LINE}")
        assert parse_authorized_key(entry.to_line()) == entry


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ("bogus", "unknown option 'bogus'"),
        ('command="unterminated', "missing closing quote"),
        ("command=unquoted", "double quotes"),
        ("command", "needs a value"),
        ('no-pty="x"', "takes no value"),
        ('command="a",command="b"', "given twice"),
        ('environment="=x"', "NAME=value"),
        ('permitopen="nohostport"', "host:port"),
        ('tunnel="x"', "not a number"),
        ('expiry-time="2030"', "YYYYMMDD"),
        ('expiry-time="20301399"', "YYYYMMDD"),
        ('from=""', "empty list entry"),
        ('principals="a"', "only meaningful with cert-authority"),
        ("no-pty,,restrict", "bad option syntax"),
    ],
)
def test_bad_options_refuse_the_line(options, reason) -> None:
    with pytest.raises(KeyFormatError, match=reason):
        parse_authorized_key(f"{options} {ED_LINE}")


def test_bad_keys_refuse_the_line() -> None:
    with pytest.raises(KeyFormatError, match="base64"):
        parse_authorized_key("ssh-ed25519 !!!!")
    with pytest.raises(KeyFormatError, match="line says"):
        parse_authorized_key("ssh-rsa " + ED_LINE.split()[1])
    with pytest.raises(KeyFormatError, match="1024 bits"):
        parse_authorized_key((DATA / "rsa1024.pub").read_text())
    with pytest.raises(KeyFormatError, match="expected"):
        parse_authorized_key("no-pty ssh-ed25519")


def test_whole_file_skips_bad_lines_unless_strict() -> None:
    text = f"# comment\n\n{ED_LINE}\nbogus {EC_LINE}\nno-pty {EC_LINE}\n"
    entries = parse_authorized_keys(text)
    assert [e.key for e in entries] == [ED.public, EC.public]
    with pytest.raises(KeyFormatError, match="line 4: unknown option 'bogus'"):
        parse_authorized_keys(text, strict=True)


def test_find_authorized_keys_separates_keys_from_cert_authorities() -> None:
    entries = parse_authorized_keys(f'cert-authority,principals="alice" {ED_LINE}\n{EC_LINE}\n')
    cert = sign_certificate(
        ED,
        EC.public,
        cert_type=CertType.USER,
        key_id="a",
        principals=["alice"],
        valid_after=0,
        valid_before=2**40,
        nonce=bytes(16),
    )
    assert find_authorized_keys(entries, EC.public) == [entries[1]]
    assert find_authorized_keys(entries, cert) == [entries[0]]
    assert find_authorized_keys(entries, ED.public) == []
    with pytest.raises(KeyFormatError, match="cannot itself be a certificate"):
        parse_authorized_key("cert-authority " + cert.openssh_line())


def test_from_matches_addresses_cidrs_hosts_and_negations() -> None:
    patterns = ("10.0.0.0/8", "!10.0.0.1", "192.168.1.*", "*.corp.example", "2001:db8::/32")
    assert match_from(patterns, address="10.2.3.4")
    assert not match_from(patterns, address="10.0.0.1")
    assert match_from(patterns, address="192.168.1.77")
    assert not match_from(patterns, address="192.168.2.1")
    assert match_from(patterns, address="2001:db8::1")
    assert match_from(patterns, address="::ffff:10.1.1.1")
    assert not match_from(patterns, address="172.16.0.1")
    assert match_from(patterns, address="172.16.0.1", hostname="ws.CORP.example")
    assert not match_from(("10.0.0.0/33",), address="10.0.0.1")  # bad CIDR spoils it
    assert not match_from(("*", "!bad.host"), address="1.2.3.4", hostname="bad.host")


# --- known_hosts ------------------------------------------------------------------------


def test_known_hosts_patterns_ports_and_negation() -> None:
    entry = parse_known_host(f"*.example.com,!evil.example.com,[git.example.org]:2222 {ED_LINE}")
    assert entry.matches("www.example.com") and entry.matches("WWW.Example.COM")
    assert not entry.matches("evil.example.com")
    assert entry.matches("git.example.org", 2222)
    assert not entry.matches("git.example.org")
    assert not entry.matches("www.example.com", 2222)
    assert entry.to_line() == f"*.example.com,!evil.example.com,[git.example.org]:2222 {ED_LINE}"
    assert host_lookup_name("Host", 22) == "host"
    assert host_lookup_name("::1", 2200) == "[::1]:2200"
    assert match_host_list("a.b", ["*.b"]) and not match_host_list("a.b", ["*.b", "!a.*"])


def test_hashed_names_match_only_their_host_and_port() -> None:
    hashed = hash_host(host_lookup_name("server.example", 2222), SALT)
    entry = parse_known_host(f"{hashed} {EC_LINE}")
    assert entry.hashed is not None and entry.patterns == ()
    assert entry.matches("server.example", 2222)
    assert entry.matches("SERVER.example", 2222)
    assert not entry.matches("server.example")
    assert not entry.matches("other.example", 2222)
    assert entry.to_line() == f"{hashed} {EC_LINE}"
    for bad in ("|1|abc", "|1|!!!!|!!!!", f"|1|{'A' * 8}|{'A' * 8}"):
        with pytest.raises(KeyFormatError, match="hashed host name"):
            parse_known_host(f"{bad} {EC_LINE}")


def test_markers_and_lookup() -> None:
    ca_line = f"@cert-authority *.example.com {ED_LINE}"
    text = "\n".join(
        [
            ca_line,
            f"@revoked * {EC_LINE}",
            f"{hash_host('db.example.com', SALT)} {EC_LINE}",
            f"web.example.com {ED_LINE}",
            "# comment",
            f"@bogus host {EC_LINE}",
        ]
    )
    entries = parse_known_hosts(text)
    assert len(entries) == 4
    assert entries[0].marker is Marker.CERT_AUTHORITY and entries[0].to_line() == ca_line
    with pytest.raises(KeyFormatError, match="line 6: unknown marker '@bogus'"):
        parse_known_hosts(text, strict=True)

    web = known_hosts_lookup(entries, "web.example.com")
    assert web.keys == (ED.public,) and web.cert_authorities == (ED.public,)
    assert web.status(ED.public) is HostKeyStatus.TRUSTED
    assert web.status(EC.public) is HostKeyStatus.REVOKED
    db = known_hosts_lookup(entries, "db.example.com")
    assert db.status(EC.public) is HostKeyStatus.REVOKED  # revoked beats listed
    other = known_hosts_lookup(entries, "other.org")
    assert other.status(ED.public) is HostKeyStatus.UNKNOWN
    assert other.cert_authorities == ()
    changed = known_hosts_lookup([parse_known_host(f"h {ED_LINE}")], "h")
    assert changed.status(EC.public) is HostKeyStatus.CHANGED

    # A host certificate is revoked if its key or its CA is.
    cert = sign_certificate(
        ED,
        EC.public,
        cert_type=CertType.HOST,
        key_id="h",
        principals=["h"],
        valid_after=0,
        valid_before=2**40,
        nonce=bytes(16),
    )
    assert web.is_revoked(cert)
    only_ca = known_hosts_lookup([parse_known_host(f"@revoked h {ED_LINE}")], "h")
    assert only_ca.is_revoked(cert) and not only_ca.is_revoked(EC.public)


def test_known_host_constructor_checks_its_shape() -> None:
    with pytest.raises(KeyFormatError):
        KnownHost(key=ED.public)
    with pytest.raises(KeyFormatError):
        KnownHost(key=ED.public, patterns=("a",), hashed=(SALT, SALT))
    with pytest.raises(KeyFormatError, match="bad host pattern"):
        KnownHost(key=ED.public, patterns=("a b",))
    with pytest.raises(KeyFormatError, match="20 bytes"):
        hash_host("h", b"short")


# --- hypothesis ---------------------------------------------------------------------

_value = st.text(
    st.characters(codec="utf-8", exclude_characters="\n\r\x00", exclude_categories=("Cs",)),
    max_size=20,
).filter(lambda v: not v.endswith("\\"))
_word = st.from_regex(r"[a-z0-9.*?-]{1,10}", fullmatch=True)


@settings(max_examples=150, deadline=None)
@given(
    flags=st.dictionaries(
        st.sampled_from(
            ["agent_forwarding", "port_forwarding", "pty", "user_rc", "x11_forwarding"]
        ),
        st.booleans(),
    ),
    restrict=st.booleans(),
    command=st.none() | _value,
    env=st.lists(st.tuples(st.from_regex(r"[A-Z_][A-Z0-9_]{0,5}", fullmatch=True), _value)),
    from_patterns=st.none() | st.lists(_word, min_size=1, max_size=3).map(tuple),
    principals=st.none() | st.lists(_word, min_size=1, max_size=3).map(tuple),
    comment=st.from_regex(r"[ -~]{0,20}", fullmatch=True).map(str.strip),
)
def test_authorized_key_options_round_trip(
    flags, restrict, command, env, from_patterns, principals, comment
) -> None:
    options = KeyOptions(
        cert_authority=principals is not None,
        restrict=restrict,
        command=command,
        environment=tuple(env),
        from_patterns=from_patterns,
        principals=principals,
        **flags,
    )
    entry = AuthorizedKey(ED.public, options, comment)
    assert parse_authorized_key(entry.to_line()) == entry


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_random_lines_raise_only_key_format_errors(text) -> None:
    for line in (text, f"{text} {ED_LINE}", f"{ED_LINE.split()[0]} {text}"):
        for parse in (parse_authorized_key, parse_known_host):
            try:
                parse(line)
            except KeyFormatError:
                pass
    parse_authorized_keys(text)
    parse_known_hosts(text)


def test_a_marker_alone_is_refused_not_a_crash() -> None:
    # Found by fuzz/fuzz_authfiles.py: it raised IndexError.
    with pytest.raises(KeyFormatError):
        parse_known_host("@revoked")


def test_tunnel_must_be_ascii_digits() -> None:
    # Found by fuzz/fuzz_authfiles.py: "²" passes str.isdigit() but not int().
    with pytest.raises(KeyFormatError, match="is not a number"):
        parse_authorized_key('tunnel="\xb2" ' + ED_LINE)
