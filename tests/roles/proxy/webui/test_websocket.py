"""The terminal websocket's gate and its limits, against a real cluster over TLS.

A websocket is refused before it opens unless Origin, bearer token and cookie all
check out. Once open, frames a browser would never send close it with the code
RFC 6455 gives them: too big 1009, unmasked 1002, invalid UTF-8 1007.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio
import wsproto.events as wse

from tests.roles.proxy.cluster import LOGIN, Cluster, open_cluster
from tests.roles.proxy.webui.browser import (
    Browser,
    Login,
    RawSocket,
    Rejected,
    shell_ready,
    terminal,
    until_close_message,
)
from trioport.roles.proxy.webui import terminal as terminal_module

_TEXT, _BINARY = 0x1, 0x2


async def _refused(browser: Browser, login: Login | None, **kw: str | None) -> int:
    with pytest.raises(Rejected) as refused:
        async with terminal(browser, login, f"node=node1&login={LOGIN}", **kw):
            raise AssertionError("the websocket opened")
    return refused.value.status


async def test_a_websocket_without_our_origin_or_the_bearer_token_never_opens(
    tmp_path: Path,
) -> None:
    async with open_cluster(tmp_path) as cluster:
        alice = await cluster.add_user("alice")
        browser = Browser(cluster)
        login = await browser.login(alice)
        assert await _refused(browser, login, origin="https://evil.example") == 403
        assert await _refused(browser, login, origin=None) == 403
        assert await _refused(browser, login, bearer=None) == 403
        assert await _refused(browser, login, bearer="x" * 43) == 403
        assert await _refused(browser, None, bearer=login.csrf) == 403  # no cookie
        # A logged-out session's token and cookie open nothing either.
        await browser.request(
            "DELETE",
            "/v1/webapi/sessions/web",
            cookie=login.cookie,
            csrf=login.csrf,
            origin=browser.origin,
        )
        assert await _refused(browser, login) == 403
        # Nothing was started on anyone's behalf.
        assert not await cluster.events("session.start")


async def _open(cluster: Cluster) -> tuple[Browser, Login]:
    await cluster.add_node("node1")
    alice = await cluster.add_user("alice")
    browser = Browser(cluster)
    return browser, await browser.login(alice)


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("too-big", 1009),
        ("too-big-in-pieces", 1009),
        ("unmasked", 1002),
        ("bad-utf8", 1007),
        ("binary", 1003),
        ("not-json", 1008),
    ],
)
async def test_a_hostile_frame_closes_the_terminal_with_its_code(
    tmp_path: Path, frame: str, code: int
) -> None:
    async with open_cluster(tmp_path) as cluster:
        browser, login = await _open(cluster)
        async with RawSocket.open(browser, login, f"node=node1&login={LOGIN}") as raw:
            first = await raw.next_message()
            assert first["type"] == "session"
            await shell_ready(raw)
            big = json.dumps({"type": "input", "data": "x" * (64 * 1024)}).encode()
            if frame == "too-big":
                await raw.send_frame(_TEXT, big)
            elif frame == "too-big-in-pieces":
                for i in range(0, len(big), 8192):
                    piece = big[i : i + 8192]
                    opcode = _TEXT if i == 0 else 0x0  # then continuation frames
                    last = i + 8192 >= len(big)
                    await raw.send_frame(opcode, piece, fin=last)
            elif frame == "unmasked":
                await raw.send_frame(_TEXT, b'{"type":"input","data":"x"}', masked=False)
            elif frame == "bad-utf8":
                await raw.send_frame(_TEXT, b'{"type":"input","data":"\xff\xfe"}')
            elif frame == "binary":
                await raw.send_frame(_BINARY, b"\x00\x01")
            else:
                await raw.send_frame(_TEXT, b"echo hello")
            assert await raw.close_code() == code


async def test_a_silent_browser_is_cut_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(terminal_module, "PING_INTERVAL", 0.2)
    monkeypatch.setattr(terminal_module, "IDLE_TIMEOUT", 3.0)
    async with open_cluster(tmp_path) as cluster:
        browser, login = await _open(cluster)
        async with terminal(browser, login, f"node=node1&login={LOGIN}", pong=False) as raw:
            assert (await raw.next_message())["type"] == "session"
            await shell_ready(raw)
            # Pings come; this client never answers them.
            pings = 0
            with trio.fail_after(20):
                while True:
                    event = await raw.next_event()
                    if isinstance(event, wse.Ping):
                        pings += 1
                    if isinstance(event, wse.CloseConnection):
                        break
            assert pings >= 1 and event.code == 1001


async def test_a_browser_that_answers_pings_stays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(terminal_module, "PING_INTERVAL", 0.2)
    monkeypatch.setattr(terminal_module, "IDLE_TIMEOUT", 1.0)
    async with open_cluster(tmp_path) as cluster:
        browser, login = await _open(cluster)
        async with terminal(browser, login, f"node=node1&login={LOGIN}") as ws:
            assert (await ws.next_message())["type"] == "session"
            await shell_ready(ws)
            with trio.move_on_after(2.5):  # reading, and answering the pings
                while True:
                    await ws.next_event()
            await ws.send_json({"type": "input", "data": "echo h''i; exit 0\r"})
            with trio.fail_after(5):
                while (message := await ws.next_message())["type"] != "close":
                    pass
            assert message["exit_status"] == 0
            assert await ws.close_code() == 1000


async def test_logging_out_closes_the_terminal(tmp_path: Path) -> None:
    async with open_cluster(tmp_path) as cluster:
        browser, login = await _open(cluster)
        async with terminal(browser, login, f"node=node1&login={LOGIN}") as ws:
            assert (await ws.next_message())["type"] == "session"
            await shell_ready(ws)
            out = await browser.request(
                "DELETE",
                "/v1/webapi/sessions/web",
                cookie=login.cookie,
                csrf=login.csrf,
                origin=browser.origin,
            )
            assert out.status_code == 200
            message = await until_close_message(ws)
            assert message["reason"] == "the web session ended"
            assert await ws.close_code() == 1000


async def test_a_refused_node_is_explained_after_the_upgrade(tmp_path: Path) -> None:
    async with open_cluster(tmp_path) as cluster:
        browser, login = await _open(cluster)
        async with terminal(browser, login, "node=node1&login=nosuchlogin") as ws:
            message = await ws.next_message()
            assert message["type"] == "close"
            assert "refused login 'nosuchlogin'" in message["reason"]
            assert await ws.close_code() == 1000
        async with terminal(browser, login, f"node=nowhere&login={LOGIN}") as ws:
            message = await ws.next_message()
            assert message["type"] == "close" and "no node 'nowhere'" in message["reason"]
        rejected = await cluster.events("session.rejected")
        assert [e["target"] for e in rejected if e.get("user") == "alice"] == ["nowhere"]


async def test_a_browser_that_stops_reading_is_cut_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(terminal_module, "SEND_TIMEOUT", 1.0)
    async with open_cluster(tmp_path) as cluster:
        browser, login = await _open(cluster)
        async with terminal(browser, login, f"node=node1&login={LOGIN}") as raw:
            sid = (await raw.next_message())["sid"]
            await shell_ready(raw)
            await raw.send_json({"type": "input", "data": "yes\r"})
            # Not reading: the buffers fill, and the proxy's send waits past its deadline.
            await trio.sleep(4)
            with trio.fail_after(60):
                try:  # what was buffered, then the end (a dropped connection, no close frame)
                    while not isinstance(await raw.next_event(), wse.CloseConnection):
                        pass
                except trio.BrokenResourceError:
                    pass
        # The shell went with the connection.
        with trio.fail_after(30):
            while True:
                active = await browser.request(
                    "GET", "/v1/webapi/sessions/active", cookie=login.cookie
                )
                if sid not in [s["sid"] for s in active.json()["sessions"]]:
                    break
                await trio.sleep(0.2)
