"""``tsh invite`` reads the links ``tctl`` prints, and refuses anything else before asking.

No cluster here: these are the checks made before the first request, so a
mistyped link costs the user no password prompt.
"""

from __future__ import annotations

import pytest

from trioport.config import Address
from trioport.errors import ConfigError
from trioport.roles.proxy.invite_client import (
    InviteLink,
    check_new_password,
    parse_invite_url,
)

TOKEN = "3f6c0e" + "ab" * 29


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (f"https://db1:3080/web/invite/{TOKEN}", InviteLink(Address("db1", 3080), TOKEN)),
        (f"https://db1/web/invite/{TOKEN}", InviteLink(Address("db1", 3080), TOKEN)),
        (f"  https://db1:443/web/invite/{TOKEN}/\n", InviteLink(Address("db1", 443), TOKEN)),
        (
            f"https://[::1]:3080/web/reset/{TOKEN}",
            InviteLink(Address("::1", 3080), TOKEN, "reset"),
        ),
    ],
)
def test_the_links_tctl_prints_are_read(url: str, expected: InviteLink) -> None:
    assert parse_invite_url(url) == expected


@pytest.mark.parametrize(
    ("url", "why"),
    [
        (f"http://db1:3080/web/invite/{TOKEN}", "https://PROXY:3080"),
        (f"db1:3080/web/invite/{TOKEN}", "https://PROXY:3080"),
        ("https://db1:3080/web/invite/", "copy the whole link"),
        ("https://db1:3080/web/invite/3f6c", "copy the whole link"),
        (f"https://db1:3080/web/login/{TOKEN}", "copy the whole link"),
        (f"https://db1:3080/web/invite/{TOKEN}?next=/evil", "copy the whole link"),
        ("https://db1:3080/web/invite/..%2f..%2fv1%2fwebapi", "copy the whole link"),
        (f"https://db1:99999/web/invite/{TOKEN}", "the link's host"),
        (f"https://user@db1:3080/web/invite/{TOKEN}", "the link's host"),
    ],
)
def test_anything_else_is_refused_with_a_reason(url: str, why: str) -> None:
    with pytest.raises(ConfigError, match=r"^URL: ") as caught:
        parse_invite_url(url)
    assert why in str(caught.value)


def test_a_short_or_mismatched_password_is_refused_before_any_request() -> None:
    assert check_new_password("correct horse battery", "correct horse battery")
    with pytest.raises(ValueError, match="do not match"):
        check_new_password("correct horse battery", "correct horse batter")
    with pytest.raises(ValueError, match="at least 12"):
        check_new_password("short", "short")
    with pytest.raises(ValueError, match="at most 128"):
        check_new_password("x" * 129)
