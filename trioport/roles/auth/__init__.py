"""The auth service: the cluster's certificate authority and its only stateful part.

Modules, each usable on its own over any :class:`~trioport.store.backend.Backend`:

- :mod:`.ca`: the user and host CAs (made on first start) and certificate signing;
- :mod:`.tokens`: join tokens (static and dynamic, single-use, 15 minutes at most);
- :mod:`.users`: invites, bcrypt passwords, TOTP enrolment, the login check, lockout;
- :mod:`.roles`: roles in the store, with the presets;
- :mod:`.nodes`: host identities (which names a host may have) and heartbeats;
- :mod:`.audit_log`: the JSON-lines audit log with Teleport's event names and codes;
- :mod:`.recordings`: session recordings uploaded in ordered chunks;
- :mod:`.server`: :class:`~.server.AuthServer`, which ties them together (joining,
  logging in) and is what the auth API calls;
- :mod:`.api`: the auth API, JSON over HTTP/1.1, and who may call what
  (:class:`~.api.AuthAPI`, :class:`~.api.Identity`); :mod:`._http` is its plumbing
  (router, h11 over a stream, the per-source rate limiter);
- :mod:`.service`: :func:`~.service.serve`, the auth service itself: the SSH port
  that carries the API, who each caller is, and the administrator's identity for
  ``tctl``. :mod:`trioport.authclient` is the client side.

``docs/auth.md`` describes the rules for users and administrators, and
``docs/http-api.md`` the auth API.
"""
