"""Web sessions over real HTTPS: cookies, CSRF, Origin, logout, and what a session may see.

Each test runs a real cluster (auth, proxy; nodes where needed) on loopback and
talks to the proxy's HTTPS port as a browser would, with the cookie and headers
set explicitly so that a test can replay or forge them.
"""

from __future__ import annotations

import re
from pathlib import Path

import trio

from tests.roles.proxy.cluster import LOGIN, PASSWORD, Totp, open_cluster
from tests.roles.proxy.webui.browser import Browser, cookie_attributes
from trioport.roles.proxy.webui.http import PAGE_CSP
from trioport.roles.proxy.webui.sessions import COOKIE_NAME

_UNAUTHENTICATED = 401


async def test_login_sets_a_strict_cookie_and_a_new_one_each_time(tmp_path: Path) -> None:
    async with open_cluster(tmp_path) as cluster:
        alice = await cluster.add_user("alice")
        browser = Browser(cluster)
        first = await browser.login(alice)
        name, value, attrs = cookie_attributes(first.set_cookie)
        assert name == "__Host-trioport_session"
        assert re.fullmatch(r"[A-Za-z0-9_-]{43}", value)  # 32 random bytes, urlsafe base64
        assert attrs.keys() >= {"secure", "httponly", "path", "samesite", "max-age"}
        assert attrs["path"] == "/" and attrs["samesite"] == "Strict"
        assert "domain" not in attrs  # __Host-: the cookie stays on this host
        assert 0 < int(attrs["max-age"]) <= 12 * 3600
        doc = first.doc
        assert doc["user"] == "alice" and doc["roles"] == ["access"]
        assert doc["logins"] == [LOGIN]
        assert doc["expires"] > 0 and len(doc["csrf_token"]) >= 43

        # Logging in again from the same browser rotates the session: a new id and
        # token, and the old cookie stops working.
        second = await browser.login(alice, cookie=first.cookie)
        assert second.cookie != first.cookie and second.csrf != first.csrf
        old = await browser.request("GET", "/v1/webapi/sessions/web", cookie=first.cookie)
        assert old.status_code == _UNAUTHENTICATED
        assert old.json()["error"]["kind"] == "authentication_failed"
        now = await browser.request("GET", "/v1/webapi/sessions/web", cookie=second.cookie)
        assert now.status_code == 200
        assert now.json() == second.doc
        assert "set-cookie" not in now.headers


async def test_a_wrong_password_gets_one_message_and_no_cookie(tmp_path: Path) -> None:
    async with open_cluster(tmp_path) as cluster:
        alice = await cluster.add_user("alice")
        browser = Browser(cluster)
        body = {"user": "alice", "password": "wrong" * 4, "second_factor_token": "123456"}
        reply = await browser.request("POST", "/v1/webapi/sessions/web", json_body=body)
        assert reply.status_code == 401 and "set-cookie" not in reply.headers
        error = reply.json()["error"]
        assert error["kind"] == "access_denied"
        assert error["message"].startswith("invalid user name, password or code")
        body = {"user": "nobody", "password": alice.password, "second_factor_token": "123456"}
        other = await browser.request("POST", "/v1/webapi/sessions/web", json_body=body)
        assert other.json() == reply.json()  # an unknown user looks the same


async def test_a_cookie_replayed_after_logout_is_refused(tmp_path: Path) -> None:
    async with open_cluster(tmp_path) as cluster:
        alice = await cluster.add_user("alice")
        browser = Browser(cluster)
        login = await browser.login(alice)
        assert (
            await browser.request("GET", "/v1/webapi/nodes", cookie=login.cookie)
        ).status_code == 200
        out = await browser.request(
            "DELETE",
            "/v1/webapi/sessions/web",
            cookie=login.cookie,
            csrf=login.csrf,
            origin=browser.origin,
        )
        assert out.status_code == 200 and out.json() == {}
        name, value, attrs = cookie_attributes(out.headers["set-cookie"])
        assert name == COOKIE_NAME and value == "" and attrs["max-age"] == "0"
        for path in ("/v1/webapi/sessions/web", "/v1/webapi/nodes", "/v1/webapi/recordings"):
            replay = await browser.request("GET", path, cookie=login.cookie)
            assert replay.status_code == _UNAUTHENTICATED, path
        again = await browser.request(
            "DELETE", "/v1/webapi/sessions/web", cookie=login.cookie, csrf=login.csrf
        )
        assert again.status_code == _UNAUTHENTICATED


async def test_state_changes_need_the_csrf_token_and_our_origin(tmp_path: Path) -> None:
    async with open_cluster(tmp_path) as cluster:
        alice = await cluster.add_user("alice")
        browser = Browser(cluster)
        login = await browser.login(alice)
        attempts = [
            {"csrf": None},
            {"csrf": "x" * 43},
            {"csrf": login.csrf[:-1]},
            {"csrf": login.csrf, "origin": "https://evil.example"},
            {"csrf": login.csrf, "origin": f"http://{cluster.web_addr}"},
        ]
        for attempt in attempts:
            reply = await browser.request(
                "DELETE", "/v1/webapi/sessions/web", cookie=login.cookie, **attempt
            )
            assert reply.status_code == 403, attempt
            assert reply.json()["error"]["kind"] == "csrf"
        # None of them ended the session.
        alive = await browser.request("GET", "/v1/webapi/sessions/web", cookie=login.cookie)
        assert alive.status_code == 200
        # A login posted from another site is refused too (login CSRF).
        body = {
            "user": "alice",
            "password": alice.password,
            "second_factor_token": await alice.totp.code(),
        }
        forged = await browser.request(
            "POST", "/v1/webapi/sessions/web", json_body=body, origin="https://evil.example"
        )
        assert forged.status_code == 403 and "set-cookie" not in forged.headers


async def test_every_answer_carries_the_security_headers(tmp_path: Path) -> None:
    async with open_cluster(tmp_path) as cluster:
        alice = await cluster.add_user("alice")
        browser = Browser(cluster)
        login = await browser.login(alice)
        answers = {
            "/": await browser.request("GET", "/"),
            "/web/": await browser.request("GET", "/web/"),
            "/web/nodes": await browser.request("GET", "/web/nodes"),
            "nodes": await browser.request("GET", "/v1/webapi/nodes", cookie=login.cookie),
            "401": await browser.request("GET", "/v1/webapi/nodes"),
            "404": await browser.request("GET", "/v1/webapi/nothing"),
            "ping": await browser.request("GET", "/v1/webapi/ping"),
        }
        assert answers["/"].status_code == 302 and answers["/"].headers["location"] == "/web/"
        for what, reply in answers.items():
            h = reply.headers
            assert h["strict-transport-security"].startswith("max-age=31536000"), what
            assert h["x-content-type-options"] == "nosniff", what
            assert h["x-frame-options"] == "DENY", what
            assert h["referrer-policy"] == "no-referrer", what
            assert "frame-ancestors 'none'" in h["content-security-policy"], what
        for what in ("nodes", "401", "404", "ping"):
            assert answers[what].headers["cache-control"] == "no-store", what
            assert answers[what].headers["content-security-policy"].startswith("default-src 'none'")
        for what in ("/web/", "/web/nodes"):
            assert answers[what].headers["content-security-policy"] == PAGE_CSP
            assert answers[what].headers["content-type"].startswith("text/html")
            assert answers[what].status_code in (200, 503)  # built or not


async def test_nodes_are_those_her_roles_show_filtered_by_text_and_labels(tmp_path: Path) -> None:
    async with open_cluster(tmp_path) as cluster:
        await cluster.add_standin_node("web1", {"env": "prod", "team": "web"})
        await cluster.add_standin_node("db1", {"env": "prod", "team": "db"})
        await cluster.add_standin_node("dev1", {"env": "dev"})
        await cluster.add_role(
            {
                "kind": "role",
                "metadata": {"name": "prod-only"},
                "spec": {
                    "allow": {
                        "logins": [LOGIN],
                        "node_labels": {"env": "prod"},
                        "rules": [{"resources": ["node", "session"], "verbs": ["list", "read"]}],
                    }
                },
            }
        )
        alice = await cluster.add_user("alice")
        bob = await cluster.add_user("bob", roles=["prod-only"])
        browser = Browser(cluster)
        a, b = await browser.login(alice), await browser.login(bob)

        async def names(login: str, query: str = "") -> list[str]:
            reply = await browser.request("GET", f"/v1/webapi/nodes{query}", cookie=login)
            assert reply.status_code == 200, reply.text
            return [n["name"] for n in reply.json()["nodes"]]

        assert await names(a.cookie) == ["db1", "dev1", "web1"]
        assert await names(b.cookie) == ["db1", "web1"]  # asked as bob: his role decides
        assert await names(a.cookie, "?labels=env=prod,team=db") == ["db1"]
        assert await names(a.cookie, "?search=DEV") == ["dev1"]
        assert await names(a.cookie, "?search=team%3Dweb") == ["web1"]
        reply = await browser.request("GET", "/v1/webapi/nodes", cookie=a.cookie)
        doc = reply.json()
        assert doc["logins"] == [LOGIN]
        web1 = next(n for n in doc["nodes"] if n["name"] == "web1")
        assert web1["labels"] == {"env": "prod", "team": "web"}
        assert web1["addr"] == str(cluster.nodes["web1"].addr)
        assert web1["id"] == cluster.nodes["web1"].host_id
        # The audit log is for auditors: alice's role has no "event" rule.
        events = await browser.request("GET", "/v1/webapi/events", cookie=a.cookie)
        assert events.status_code == 403


async def test_an_invite_shows_a_qr_code_and_cannot_be_used_twice(tmp_path: Path) -> None:
    async with open_cluster(tmp_path) as cluster:
        async with cluster.admin_client() as admin:
            invite = await admin.add_user("carol", logins=[LOGIN])
        browser = Browser(cluster)
        token = invite["token"]
        reply = await browser.request("GET", f"/v1/webapi/users/password/token/{token}")
        assert reply.status_code == 200, reply.text
        doc = reply.json()
        assert doc["user"] == "carol"
        assert doc["totp"]["uri"].startswith("otpauth://totp/")
        assert doc["totp"]["secret"] and doc["qr_svg"].startswith("<svg")
        assert "<script" not in doc["qr_svg"]
        totp = Totp(doc["totp"]["secret"])
        body = {"token": token, "password": PASSWORD, "second_factor_token": await totp.code()}
        done = await browser.request(
            "PUT", "/v1/webapi/users/password/token", json_body=body, origin=browser.origin
        )
        assert done.status_code == 200, done.text
        # She lands logged in: the answer is the login document, with a cookie.
        landed = done.json()
        assert landed["user"] == "carol" and landed["logins"] == [LOGIN]
        _, cookie, _ = cookie_attributes(done.headers["set-cookie"])
        me = await browser.request("GET", "/v1/webapi/sessions/web", cookie=cookie)
        assert me.status_code == 200 and me.json()["csrf_token"] == landed["csrf_token"]
        used = await browser.request("GET", f"/v1/webapi/users/password/token/{token}")
        assert used.status_code == 410
        assert "expired or was already used" in used.json()["error"]["message"]
        # The account works: carol logs in with a fresh code.
        body = {"user": "carol", "password": PASSWORD, "second_factor_token": await totp.code()}
        login = await browser.request("POST", "/v1/webapi/sessions/web", json_body=body)
        assert login.status_code == 200 and login.json()["user"] == "carol"


async def test_the_auditor_searches_the_audit_log(tmp_path: Path) -> None:
    async with open_cluster(tmp_path) as cluster:
        alice = await cluster.add_user("alice")
        audrey = await cluster.add_user("audrey", roles=["auditor"])
        browser = Browser(cluster)
        await browser.login(alice)
        login = await browser.login(audrey)
        with trio.fail_after(20):
            while True:
                reply = await browser.request(
                    "GET", "/v1/webapi/events?type=user.login&user=alice", cookie=login.cookie
                )
                assert reply.status_code == 200, reply.text
                events = reply.json()["events"]
                if events:
                    break
                await trio.sleep(0.1)
        assert all(e["event"] == "user.login" and e["user"] == "alice" for e in events)
        everyone = await browser.request(
            "GET", "/v1/webapi/events?type=user.login&limit=1", cookie=login.cookie
        )
        newest = everyone.json()["events"]
        assert len(newest) == 1 and newest[0]["user"] == "audrey"  # newest first
        bad = await browser.request("GET", "/v1/webapi/events?from=yesterday", cookie=login.cookie)
        assert bad.status_code == 400
