"""The terminal websocket against a real cluster: a shell on a real node, in a "browser".

The node is the real node service, so the shell runs on a pty as the test's own
OS account, and the session is recorded and reported to the auth service.
"""

from __future__ import annotations

import json
from pathlib import Path

import trio

from tests.roles.proxy.cluster import LOGIN, open_cluster
from tests.roles.proxy.webui.browser import (
    Browser,
    RawSocket,
    frame,
    read_until,
    shell_ready,
    terminal,
    until_close_message,
)


async def test_a_terminal_runs_a_shell_resizes_and_is_recorded(tmp_path: Path) -> None:
    async with open_cluster(tmp_path) as cluster:
        await cluster.add_node("node1")
        alice = await cluster.add_user("alice")
        browser = Browser(cluster)
        login = await browser.login(alice)
        query = f"node=node1&login={LOGIN}&cols=100&rows=30"
        # The browser connects from 127.0.0.2; the proxy, to the node, from 127.0.0.1.
        async with terminal(browser, login, query, local_address="127.0.0.2") as ws:
            assert ws.subprotocol == "trioport.terminal.v1"
            first = await ws.next_message()
            assert first["type"] == "session"
            assert first["node"] == "node1" and first["login"] == LOGIN
            sid = first["sid"]
            assert sid
            await ws.send_json({"type": "input", "data": "stty size\r"})
            await read_until(ws, "30 100")
            await ws.send_json({"type": "resize", "cols": 120, "rows": 40})
            await ws.send_message(
                json.dumps({"type": "input", "data": "echo hel''lo; stty size\r"})
            )
            await read_until(ws, "40 120")
            active = await browser.request("GET", "/v1/webapi/sessions/active", cookie=login.cookie)
            assert active.status_code == 200
            mine = [s for s in active.json()["sessions"] if s["sid"] == sid]
            assert mine and mine[0]["user"] == "alice" and mine[0]["node_name"] == "node1"
            await ws.send_json({"type": "input", "data": "exit 3\r"})
            message = await until_close_message(ws)
            assert message["exit_status"] == 3 and message["reason"] == "exited"
            assert await ws.close_code() == 1000

        # The node knows where the user really is (the proxy's signed line).
        async with cluster.admin_client() as admin:
            with trio.fail_after(30):
                while True:
                    found = await admin.search_events(events=["session.start"])
                    starts = [e for e in found if e.get("sid") == sid]
                    if starts:
                        break
                    await trio.sleep(0.2)
        assert starts[0]["addr.remote"].startswith("127.0.0.2:"), starts[0]

        # The recording reaches the auth service, and plays back as events.
        with trio.fail_after(30):
            while True:
                listing = await browser.request("GET", "/v1/webapi/recordings", cookie=login.cookie)
                assert listing.status_code == 200, listing.text
                found = [r for r in listing.json()["recordings"] if r["sid"] == sid]
                if found:
                    break
                await trio.sleep(0.2)
        rec = found[0]
        assert rec["user"] == "alice" and rec["login"] == LOGIN and rec["node_name"] == "node1"
        assert rec["size"] > 0 and rec["duration_ms"] >= 0
        reply = await browser.request("GET", f"/v1/webapi/recordings/{sid}", cookie=login.cookie)
        assert reply.status_code == 200, reply.text
        events = reply.json()["events"]
        assert events[0] == {"t": 0, "type": "r", "data": "100x30"}
        assert {"type": "r", "data": "120x40"} in [
            {"type": e["type"], "data": e["data"]} for e in events
        ]
        played = "".join(e["data"] for e in events if e["type"] == "o")
        assert "hello" in played and "40 120" in played
        times = [e["t"] for e in events]
        assert times == sorted(times)


async def test_a_second_browser_joins_the_session_and_both_see_it(tmp_path: Path) -> None:
    async with open_cluster(tmp_path) as cluster:
        await cluster.add_node("node1")
        alice = await cluster.add_user("alice")
        bob = await cluster.add_user("bob")
        browser = Browser(cluster)
        a, b = await browser.login(alice), await browser.login(bob)
        async with terminal(browser, a, f"node=node1&login={LOGIN}") as owner:
            sid = (await owner.next_message())["sid"]
            await shell_ready(owner)
            active = await browser.request("GET", "/v1/webapi/sessions/active", cookie=b.cookie)
            assert sid in [s["sid"] for s in active.json()["sessions"]]  # bob can find it
            async with terminal(browser, b, f"node=node1&login={LOGIN}&sid={sid}") as guest:
                joined = await guest.next_message()
                assert joined["type"] == "session" and joined["sid"] == sid
                await owner.send_json({"type": "input", "data": "echo from-al''ice\r"})
                await read_until(guest, "from-alice")
                await guest.send_json({"type": "input", "data": "echo from-b''ob\r"})
                await read_until(owner, "from-bob")
                await guest.send_json({"type": "close"})
                assert (await until_close_message(guest))["reason"] == "closed by the browser"
            # The owner's shell goes on after the guest left.
            await owner.send_json({"type": "input", "data": "echo still-h''ere\r"})
            await read_until(owner, "still-here")


async def test_frames_sent_with_the_upgrade_request_reach_the_shell(tmp_path: Path) -> None:
    async with open_cluster(tmp_path) as cluster:
        await cluster.add_node("node1")
        alice = await cluster.add_user("alice")
        browser = Browser(cluster)
        login = await browser.login(alice)
        # The first message rides in the same TLS records as the HTTP request:
        # h11 has read it, and must hand it to the websocket, not drop it.
        early = frame(0x1, json.dumps({"type": "input", "data": "echo ea''rly\r"}).encode())
        query = f"node=node1&login={LOGIN}"
        async with RawSocket.open(browser, login, query, early=early) as ws:
            assert (await ws.next_message())["type"] == "session"
            await read_until(ws, "early\r\n")
            await shell_ready(ws)
