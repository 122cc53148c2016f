"""What the proxy's HTTPS endpoints answer for each of our errors (tsh's and the web UI's)."""

from __future__ import annotations

import json

import pytest

from trioport.authclient import APIError, AuthServiceUnavailable
from trioport.errors import (
    AccessDenied,
    AuthenticationFailed,
    BackendUnavailable,
    KeyFormatError,
    NotFound,
    TrioportError,
)
from trioport.roles.proxy.webui.app import error_response


@pytest.mark.parametrize(
    ("exc", "status", "kind"),
    [
        (AuthenticationFailed("wrong"), 401, "authentication_failed"),
        (AccessDenied("no"), 403, "access_denied"),
        (NotFound("gone"), 404, "not_found"),
        (AuthServiceUnavailable("cannot reach the auth service"), 503, "unavailable"),
        # The auth service answered, but its storage (every etcd member) did not.
        (BackendUnavailable("etcdserver: leader changed"), 503, "unavailable"),
        (KeyFormatError("bad key"), 400, "bad_key"),
        (APIError("slow down", status=429, kind="rate_limited"), 429, "rate_limited"),
        (TrioportError("something of ours"), 500, "internal"),
    ],
)
def test_each_error_has_its_status_and_kind(exc: BaseException, status: int, kind: str) -> None:
    response = error_response(exc)
    assert response.status == status
    body = json.loads(response.body)
    assert body["error"]["kind"] == kind
    assert body["error"]["message"] == str(exc)
