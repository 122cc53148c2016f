"""The web UI in a real browser: what a person does, from the invite link to the audit log.

One cluster (``trioport run`` in a subprocess) and one Chromium for the module.
The main test follows issue 6's path: the invite link ``tctl users add`` printed ->
a password, the QR code and the secret as text -> a confirming code lands her
logged in on the nodes list -> connect -> ``echo hello-web`` -> a smaller window
resizes the pty (``stty size``) -> a second browser (the same user logged in
again, her own cookie) joins from the active sessions page and both see the same
output, typing from either -> ``exit`` ends it for both -> the recording plays in
the page -> the audit log lists the session's start and end.

The terminal's screen is read from xterm.js's DOM rows: what a person sees.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

import pytest
from playwright.sync_api import BrowserContext, Page, expect

from tests.e2e.cluster import PASSWORD, Totp, invite_url

from .conftest import Cluster, Screens

#: Seconds for a finished session's recording to reach the auth service.
RECORDING_WAIT = 60.0

SCREEN_JS = """
(selector) => {
  const rows = document.querySelector(selector + " .xterm-rows");
  if (!rows) return "";
  return Array.from(rows.children, (row) => row.textContent.replace(/\\u00a0/g, " ").trimEnd())
    .join("\\n");
}
"""


def screen(page: Page, selector: str = "#terminal") -> str:
    """The lines xterm.js shows in ``selector``, trailing blanks removed."""
    return page.evaluate(SCREEN_JS, selector)


def wait_for_line(page: Page, pattern: str, selector: str = "#terminal") -> re.Match[str]:
    """Wait until a whole line on the screen matches ``pattern``; that match."""
    page.wait_for_function(
        """([selector, pattern]) => {
          const rows = document.querySelector(selector + " .xterm-rows");
          if (!rows) return false;
          const re = new RegExp("^(?:" + pattern + ")$");
          return Array.from(rows.children).some(
            (row) => re.test(row.textContent.replace(/\\u00a0/g, " ").trimEnd()));
        }""",
        arg=[selector, pattern],
    )
    for line in screen(page, selector).splitlines():
        match = re.fullmatch(pattern, line)
        if match:
            return match
    raise AssertionError(f"{pattern!r} went away:\n{screen(page, selector)}")


def since_joining(page: Page) -> list[str]:
    """The screen's lines from the first output after the second party joined."""
    lines = screen(page).splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "seen-by-42")
    return [line.strip() for line in lines[start:] if line.strip()]


def type_line(page: Page, text: str) -> None:
    page.locator("#terminal").click()
    page.keyboard.type(text + "\n")


@pytest.fixture(scope="module")
def alice_invite(cluster: Cluster, os_login: str) -> Iterator[str]:
    added = cluster.tctl("users", "add", "alice", f"--logins={os_login}", "--roles=access,auditor")
    assert added.returncode == 0, added.stderr
    url = invite_url(added.stdout)
    assert url.startswith(f"{cluster.base}/web/invite/"), url
    yield url


def log_in(page: Page, cluster: Cluster, user: str, password: str, code: str) -> None:
    page.goto(f"{cluster.base}/web/login")
    page.fill("input[name=user]", user)
    page.fill("input[name=password]", password)
    page.fill("input[name=code]", code)
    page.click("#login-form button[type=submit]")


def finish_invite(page: Page, cluster: Cluster, user: str, login: str) -> Totp:
    """Invite ``user`` with ``tctl users add`` and finish the invite in ``page``."""
    added = cluster.tctl("users", "add", user, f"--logins={login}")
    assert added.returncode == 0, added.stderr
    page.goto(invite_url(added.stdout))
    totp = Totp(page.inner_text("#invite-secret").strip())
    page.fill("input[name=password]", PASSWORD)
    page.fill("input[name=password_again]", PASSWORD)
    page.fill("input[name=code]", totp.code())
    page.click("#invite-form button[type=submit]")
    return totp


def test_invite_terminal_join_playback_and_audit(
    cluster: Cluster,
    os_login: str,
    alice_invite: str,
    new_context: Callable[..., BrowserContext],
    screens: Screens,
) -> None:
    first = screens.watch(new_context().new_page(), "alice-1")
    second = screens.watch(new_context().new_page(), "alice-2")
    try:
        _the_whole_path(cluster, os_login, alice_invite, first, second, screens)
        # Nothing of ours failed, and the proxy's CSP refused nothing the pages load.
        assert screens.script_problems() == []
    finally:
        for name, page in (("first", first), ("second", second)):
            if not page.is_closed():
                screens.shot(page, f"last-{name}")


def _the_whole_path(
    cluster: Cluster, login: str, url: str, first: Page, second: Page, screens: Screens
) -> None:
    # --- the invite: password, QR code and secret, a confirming code ---------------------
    first.goto(url)
    expect(first.locator("h1")).to_contain_text("alice")
    qr = first.locator("#invite-qr")
    expect(qr).to_be_visible()
    assert first.evaluate("(img) => img.naturalWidth > 0 && img.complete", qr.element_handle())
    secret = first.inner_text("#invite-secret").strip()
    assert re.fullmatch(r"[A-Z2-7]{16,}=*", secret), secret
    totp = Totp(secret)
    screens.shot(first, "invite")
    first.fill("input[name=password]", PASSWORD)
    first.fill("input[name=password_again]", PASSWORD + "!")
    first.fill("input[name=code]", totp.wrong_code())
    first.click("#invite-form button[type=submit]")
    expect(first.locator("#invite-form .msg-error")).to_contain_text("do not match")
    first.fill("input[name=password_again]", PASSWORD)
    first.fill("input[name=code]", totp.code())
    first.click("#invite-form button[type=submit]")

    # --- she lands logged in, on the nodes she may reach ---------------------------------
    # (test_finishing_an_invite_lands_logged_in holds the proxy to that; if the auth
    # service did not certify a key at the end of the invite, the page asks her to
    # log in, and so does this test, to go on.)
    expect(first).to_have_url(re.compile(r"/web/(nodes|login)"))
    if "/web/login" in first.url:
        expect(first.locator("#flash")).to_contain_text("Log in with your new password")
        log_in(first, cluster, "alice", PASSWORD, totp.code())
    expect(first).to_have_url(re.compile(r"/web/nodes"))
    expect(first.locator("#whoami-user")).to_have_text("alice")
    row = first.locator("#nodes-table tr[data-node='e2e-node']")
    expect(row).to_contain_text("env=e2e")
    screens.shot(first, "nodes")
    first.fill("input[name=labels]", "env=elsewhere")
    expect(row).to_have_count(0)
    expect(first.locator(".form-status")).to_contain_text("No node matches")
    first.fill("input[name=labels]", "env=e2e")
    expect(row).to_have_count(1)
    first.fill("input[name=labels]", "")
    first.fill("input[name=search]", "e2e-no")
    expect(row).to_have_count(1)
    first.select_option("select[name=login]", login)

    # The used invite link says so (in the second browser, not logged in yet).
    second.goto(url)
    expect(second.locator(".msg-error")).to_contain_text("expired or has already been used")

    # --- connect, type, resize ----------------------------------------------------------
    row.locator("button", has_text="Connect").click()
    expect(first).to_have_url(re.compile(r"/web/terminal\?"))
    expect(first.locator("#term-state")).to_have_text("connected")
    type_line(first, "echo hello-web")
    wait_for_line(first, r"hello-web")
    screens.shot(first, "terminal")
    sid = first.get_attribute("#terminal", "data-sid")
    assert sid

    before = first.inner_text("#term-size")
    first.set_viewport_size({"width": 760, "height": 520})
    expect(first.locator("#term-size")).not_to_have_text(before)
    cols = first.get_attribute("#terminal", "data-cols")
    rows = first.get_attribute("#terminal", "data-rows")
    type_line(first, "stty size")
    wait_for_line(first, f"{rows} {cols}")
    screens.shot(first, "resized")

    # --- a second browser logs in and joins from the active sessions page --------------
    log_in(second, cluster, "alice", PASSWORD, totp.code())
    expect(second).to_have_url(re.compile(r"/web/nodes"))
    second.click("a[data-nav=sessions]")
    listed = second.locator(f"#sessions-table tr[data-sid='{sid}']")
    expect(listed).to_contain_text(f"{login}@e2e-node")
    expect(listed.locator(".parties li")).to_have_count(1)
    screens.shot(second, "active-sessions")
    listed.locator("button", has_text="Join").click()
    expect(second.locator("#term-state")).to_have_text("joined")
    # Both see the same screen from the moment she joined, whoever types.
    type_line(first, "echo seen-by-$((6 * 7))")
    wait_for_line(first, "seen-by-42")
    wait_for_line(second, "seen-by-42")
    type_line(second, "echo typed-by-the-second")
    wait_for_line(first, "typed-by-the-second")
    wait_for_line(second, "typed-by-the-second")
    assert since_joining(first) == since_joining(second)
    screens.shot(second, "joined")
    screens.shot(first, "joined-owner")

    # --- the end: exit ends the session for both ---------------------------------------
    type_line(first, "exit")
    expect(first.locator("#term-banner")).to_contain_text("ended")
    expect(second.locator("#term-state")).to_have_text(re.compile("ended|closed"))
    screens.shot(first, "ended")

    # --- the recording plays back in the page -------------------------------------------
    first.set_viewport_size({"width": 1100, "height": 720})
    first.click("a[data-nav=recordings]")
    recorded = first.locator(f"#recordings-table tr[data-sid='{sid}']")
    deadline = RECORDING_WAIT * 1000
    waited = 0
    while recorded.count() == 0 and waited < deadline:
        first.wait_for_timeout(1000)
        waited += 1000
        first.reload()
        first.wait_for_selector("#recordings-table")
    expect(recorded).to_contain_text(login)
    screens.shot(first, "recordings")
    recorded.locator("a", has_text="Play").click()
    player = first.locator("#player-terminal")
    expect(player).to_have_attribute("data-state", "paused")
    first.select_option("#player-speed", "16")
    first.click("#player-play")
    expect(player).to_have_attribute("data-state", "ended", timeout=60_000)
    wait_for_line(first, "hello-web", "#player-terminal")
    wait_for_line(first, "seen-by-42", "#player-terminal")
    screens.shot(first, "playback")
    # The slider goes back to the start: the screen is drawn again from there.
    first.locator("#player-position").fill("0")
    expect(first.locator("#player-time")).to_contain_text("0:00 /")
    assert "seen-by-42" not in screen(first, "#player-terminal")

    # --- the audit log lists the session's start and end ---------------------------------
    first.click("a[data-nav=audit]")
    table = first.locator("#audit-table")
    expect(table.locator("tr[data-event='session.start']", has_text=sid)).not_to_have_count(0)
    expect(table.locator("tr[data-event='session.end']", has_text=sid)).not_to_have_count(0)
    screens.shot(first, "audit")
    first.fill("input[name=type]", "session.end")
    first.fill("input[name=user]", "alice")
    first.click("#audit-filter button[type=submit]")
    expect(table.locator("tr[data-event='session.start']")).to_have_count(0)
    expect(table.locator("tr[data-event='session.end']", has_text=sid)).not_to_have_count(0)
    screens.shot(first, "audit-filtered")

    # --- log out: the pages need a login again -------------------------------------------
    first.click("#logout")
    expect(first.locator("#flash")).to_contain_text("logged out")
    first.goto(f"{cluster.base}/web/nodes")
    expect(first).to_have_url(re.compile(r"/web/login"))


def test_wrong_credentials_and_an_expired_session_say_so(
    cluster: Cluster,
    alice_invite: str,
    new_context: Callable[..., BrowserContext],
    screens: Screens,
) -> None:
    context = new_context()
    page = screens.watch(context.new_page(), "alice")
    log_in(page, cluster, "alice", "not her password at all", "000000")
    expect(page.locator("#login-form .msg-error")).to_contain_text(
        "Wrong user name, password or code"
    )
    expect(page).to_have_url(re.compile(r"/web/login"))
    screens.shot(page, "wrong-credentials")

    # A session the proxy no longer knows (its cookie is gone): the next page says so.
    page.goto(f"{cluster.base}/web/login")
    # Wait until this page has asked the proxy about its session (it then draws the
    # form): marked any earlier, that page itself would read and clear the mark.
    expect(page.locator("#login-form")).to_be_visible()
    page.evaluate("sessionStorage.setItem('trioport.had_session', '1')")
    page.goto(f"{cluster.base}/web/audit")
    expect(page).to_have_url(re.compile(r"/web/login"))
    expect(page.locator("#flash")).to_contain_text("Your session has expired")
    screens.shot(page, "expired")


def test_a_link_that_is_no_invite_says_it_has_expired_or_was_used(
    cluster: Cluster, new_context: Callable[..., BrowserContext], screens: Screens
) -> None:
    page = screens.watch(new_context().new_page(), "visitor")
    page.goto(f"{cluster.base}/web/invite/{'ab' * 32}")
    expect(page.locator(".msg-error")).to_contain_text("expired or has already been used")
    screens.shot(page, "bad-invite")


def test_finishing_an_invite_lands_logged_in(
    cluster: Cluster,
    os_login: str,
    new_context: Callable[..., BrowserContext],
    screens: Screens,
) -> None:
    page = screens.watch(new_context().new_page(), "bob")
    finish_invite(page, cluster, "bob", os_login)
    expect(page.locator("#nodes-table tr[data-node='e2e-node']")).to_be_visible()
    expect(page).to_have_url(re.compile(r"/web/nodes$"))
    expect(page.locator("#whoami-user")).to_have_text("bob")
    screens.shot(page, "landed")


def test_closing_the_tab_ends_the_session(
    cluster: Cluster,
    os_login: str,
    new_context: Callable[..., BrowserContext],
    screens: Screens,
) -> None:
    context = new_context()
    page = screens.watch(context.new_page(), "carol")
    totp = finish_invite(page, cluster, "carol", os_login)
    expect(page).to_have_url(re.compile(r"/web/(nodes|login)"))
    if "/web/login" in page.url:  # see test_finishing_an_invite_lands_logged_in
        log_in(page, cluster, "carol", PASSWORD, totp.code())
    row = page.locator("#nodes-table tr[data-node='e2e-node']")
    row.locator("button", has_text="Connect").click()
    expect(page.locator("#term-state")).to_have_text("connected")
    type_line(page, "echo still-here")
    wait_for_line(page, "still-here")
    sid = page.get_attribute("#terminal", "data-sid")

    # A party who joined and leaves (or closes her tab) leaves the session running.
    other = screens.watch(context.new_page(), "carol-2")
    other.goto(f"{cluster.base}/web/sessions")
    listed = other.locator(f"#sessions-table tr[data-sid='{sid}']")
    listed.locator("button", has_text="Join").click()
    expect(other.locator("#term-state")).to_have_text("joined")
    other.click("#term-end")
    expect(other.locator("#term-state")).to_have_text("closed")
    type_line(page, "echo after-she-left")
    wait_for_line(page, "after-she-left")
    expect(page.locator("#term-state")).to_have_text("connected")

    other.goto(f"{cluster.base}/web/sessions")
    expect(listed).to_have_count(1)
    page.close()
    # The page refreshes itself every few seconds; the session leaves the list.
    expect(listed).to_have_count(0, timeout=30_000)
    screens.shot(other, "gone")
