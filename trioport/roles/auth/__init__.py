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
  logging in) and is what the auth API calls.

``docs/auth.md`` describes the rules for users and administrators.
"""
