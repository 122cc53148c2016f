"""Role-based access control: what a set of roles allows, as pure functions.

Nothing here does I/O or keeps state, so every rule is a table test. The callers
(the auth service signing certificates, a node deciding a login, the proxy
listing nodes, the API checking a request) pass in the user's roles, her traits
and the node's labels.

The semantics follow Teleport's:

- **Deny always wins.** A role's ``deny.node_labels`` that match a node hide the
  node entirely; a login in any ``deny.logins`` is refused on every node; a
  ``deny`` rule refuses that verb on that resource whatever else allows it.
- **Allow is per role.** A role's ``allow.logins`` apply only on the nodes its own
  ``allow.node_labels`` match; two roles do not combine into more than either gives.
- **Label selectors** (``node_labels``) match a node when *every* key in the
  selector matches: the node has that label and its value matches *any* of the
  listed values. A value is ``*`` (anything), ``^...$`` (a regular expression that
  must match the whole value) or an exact string. The key ``'*'`` with value
  ``'*'`` matches every node. An empty selector matches nothing.
- **Logins** may be templates: ``{{internal.logins}}`` expands to the user's
  ``logins`` trait (``{{internal.X}}`` to trait ``X``). Expanded values that are not
  valid login names are dropped.
- **Options** combine as the safest across roles for limits (the smallest
  ``max_session_ttl`` and ``client_idle_timeout``; ``disconnect_expired_cert`` if any
  role asks; ``record_session.ssh`` is ``strict`` if any role asks) and as "any role
  allows" for forwarding (off by default).
"""

from __future__ import annotations

import functools
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence

import attrs

from trioport.resources import LOGIN_NAME, Role, Rule

__all__ = [
    "DEFAULT_CERT_TTL",
    "MAX_CERT_TTL",
    "MIN_CERT_TTL",
    "NOLOGIN_PREFIX",
    "Decision",
    "allowed_logins",
    "can_access_node",
    "can_forward_agent",
    "can_port_forward",
    "can_see_node",
    "cert_extensions",
    "cert_ttl",
    "check_rule",
    "client_idle_timeout",
    "decide_node_access",
    "disconnect_expired_cert",
    "expand_logins",
    "match_label_value",
    "match_labels",
    "max_session_ttl",
    "principals_for",
    "record_session_mode",
]

#: Certificate lifetimes, in seconds: the clamp every user certificate goes through.
MIN_CERT_TTL = 60
MAX_CERT_TTL = 30 * 3600
DEFAULT_CERT_TTL = 23 * 3600

#: A user whose roles give no logins still gets one principal, never an empty list
#: (an OpenSSH certificate with no principals is valid for *every* login). It
#: starts with "-" so that it can never be a real OS login.
NOLOGIN_PREFIX = "-trioport-nologin-"

_TEMPLATE = re.compile(r"\{\{\s*internal\.([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")

Traits = Mapping[str, Sequence[str]]
Labels = Mapping[str, str]
Selector = Mapping[str, Sequence[str]]


# --- labels -----------------------------------------------------------------------


@functools.lru_cache(maxsize=1024)
def _compiled(pattern: str) -> re.Pattern[str] | None:
    try:
        return re.compile(pattern)
    except re.error:
        return None


def match_label_value(pattern: str, value: str) -> bool:
    """Whether a label ``value`` matches one selector ``pattern``.

    ``*`` matches anything; ``^...$`` is a regular expression that must match the
    whole value; anything else must be equal. A broken regular expression matches
    nothing (the loader refuses them, so this only guards hand-built roles).
    """
    if pattern == "*":
        return True
    if len(pattern) >= 2 and pattern.startswith("^") and pattern.endswith("$"):
        rx = _compiled(pattern)
        return rx is not None and rx.fullmatch(value) is not None
    return pattern == value


def match_labels(selector: Selector, labels: Labels) -> bool:
    """Whether a ``node_labels`` selector matches a node's labels.

    Every key must match (a value of that label matching any listed pattern);
    ``{'*': ['*']}`` matches every node, including one without labels; an empty
    selector matches nothing.
    """
    if not selector:
        return False
    for key, patterns in selector.items():
        if key == "*":
            if "*" in patterns:
                continue
            return False
        value = labels.get(key)
        if value is None or not any(match_label_value(p, value) for p in patterns):
            return False
    return True


# --- logins -----------------------------------------------------------------------


def expand_logins(logins: Iterable[str], traits: Traits) -> list[str]:
    """Expand ``{{internal.TRAIT}}`` templates; keep order, drop duplicates and bad names."""
    out: list[str] = []
    for login in logins:
        m = _TEMPLATE.fullmatch(login)
        values: Iterable[str] = traits.get(m.group(1), ()) if m else (login,)
        if isinstance(values, str):
            values = (values,)
        for v in values:
            if isinstance(v, str) and LOGIN_NAME.fullmatch(v) and v not in out:
                out.append(v)
    return out


def _denied_logins(roles: Sequence[Role], traits: Traits) -> set[str]:
    denied: set[str] = set()
    for role in roles:
        denied.update(expand_logins(role.spec.deny.logins, traits))
    return denied


def _deny_role_for_node(roles: Sequence[Role], node_labels: Labels) -> Role | None:
    for role in roles:
        if match_labels(role.spec.deny.node_labels, node_labels):
            return role
    return None


def allowed_logins(roles: Sequence[Role], user_traits: Traits, node_labels: Labels) -> set[str]:
    """The OS logins the roles allow on a node with these labels.

    Empty when any role's ``deny.node_labels`` match the node. Otherwise the union of
    the ``allow.logins`` of each role whose ``allow.node_labels`` match, minus every
    role's ``deny.logins``.
    """
    if _deny_role_for_node(roles, node_labels) is not None:
        return set()
    allowed: set[str] = set()
    for role in roles:
        if match_labels(role.spec.allow.node_labels, node_labels):
            allowed.update(expand_logins(role.spec.allow.logins, user_traits))
    return allowed - _denied_logins(roles, user_traits)


@attrs.frozen
class Decision:
    """An access decision and the reason, phrased for the user who was refused."""

    allowed: bool
    reason: str

    def __bool__(self) -> bool:
        return self.allowed


def decide_node_access(
    roles: Sequence[Role], traits: Traits, node_labels: Labels, login: str
) -> Decision:
    """Whether ``login`` is allowed on a node with ``node_labels``, and why (not)."""
    names = ", ".join(r.metadata.name for r in roles) or "none"
    deny_role = _deny_role_for_node(roles, node_labels)
    if deny_role is not None:
        return Decision(False, f"role {deny_role.metadata.name!r} denies access to this node")
    for role in roles:
        if login in expand_logins(role.spec.deny.logins, traits):
            return Decision(False, f"role {role.metadata.name!r} denies login {login!r}")
    for role in roles:
        if match_labels(role.spec.allow.node_labels, node_labels) and login in expand_logins(
            role.spec.allow.logins, traits
        ):
            return Decision(True, f"role {role.metadata.name!r} allows login {login!r}")
    return Decision(False, f"no role allows login {login!r} on this node (roles: {names})")


def can_access_node(roles: Sequence[Role], traits: Traits, node_labels: Labels, login: str) -> bool:
    """Whether ``login`` is allowed on a node with ``node_labels``."""
    return decide_node_access(roles, traits, node_labels, login).allowed


def can_see_node(roles: Sequence[Role], node_labels: Labels) -> bool:
    """Whether a node shows up for the user at all (``tsh ls``, the proxy's routing).

    Visible when some role's ``allow.node_labels`` match it and no role's
    ``deny.node_labels`` do, whatever the logins.
    """
    if _deny_role_for_node(roles, node_labels) is not None:
        return False
    return any(match_labels(r.spec.allow.node_labels, node_labels) for r in roles)


def principals_for(
    roles: Sequence[Role], traits: Traits, *, placeholder_id: str | None = None
) -> list[str]:
    """The principals of a user certificate: every login any role allows on some node.

    Never empty: with no logins it is one placeholder, ``-trioport-nologin-<uuid>``,
    which no OS account can have. Sorted, so certificates are reproducible.

    Args:
        roles: the user's roles.
        traits: the user's traits (``logins``, ...).
        placeholder_id: the suffix of the placeholder (a fresh UUID if not given).
    """
    allowed: set[str] = set()
    for role in roles:
        allowed.update(expand_logins(role.spec.allow.logins, traits))
    allowed -= _denied_logins(roles, traits)
    if not allowed:
        return [NOLOGIN_PREFIX + (placeholder_id or str(uuid.uuid4()))]
    return sorted(allowed)


# --- rules ------------------------------------------------------------------------


def _rule_matches(rules: Iterable[Rule], resource: str, verb: str) -> bool:
    for rule in rules:
        resources: Sequence[str] = rule.resources
        verbs: Sequence[str] = rule.verbs
        if (resource in resources or "*" in resources) and (verb in verbs or "*" in verbs):
            return True
    return False


def check_rule(roles: Sequence[Role], resource: str, verb: str) -> bool:
    """Whether the roles allow ``verb`` (list/read/create/update/delete) on ``resource``.

    A matching deny rule in any role refuses it; otherwise one matching allow rule
    is enough.
    """
    if any(_rule_matches(r.spec.deny.rules, resource, verb) for r in roles):
        return False
    return any(_rule_matches(r.spec.allow.rules, resource, verb) for r in roles)


# --- options ----------------------------------------------------------------------


def max_session_ttl(roles: Sequence[Role]) -> int:
    """The smallest ``max_session_ttl`` of the roles, in whole seconds (23 h with none)."""
    if not roles:
        return DEFAULT_CERT_TTL
    return min(int(r.spec.options.max_session_ttl.total_seconds()) for r in roles)


def cert_ttl(requested: float | None, roles: Sequence[Role]) -> int:
    """The lifetime of a user certificate, in whole seconds.

    The requested TTL (23 h when None) is clamped to [1 minute, 30 hours], then cut
    to the smallest ``max_session_ttl`` of the roles: a role's limit wins over the
    one-minute floor.
    """
    ttl = DEFAULT_CERT_TTL if requested is None else int(requested)
    ttl = max(MIN_CERT_TTL, min(MAX_CERT_TTL, ttl))
    return max(1, min(ttl, max_session_ttl(roles)))


def can_forward_agent(roles: Sequence[Role]) -> bool:
    """Whether any role allows agent forwarding."""
    return any(r.spec.options.forward_agent for r in roles)


def can_port_forward(roles: Sequence[Role]) -> bool:
    """Whether any role allows port forwarding."""
    return any(r.spec.options.port_forwarding for r in roles)


def cert_extensions(roles: Sequence[Role]) -> dict[str, None]:
    """The OpenSSH certificate extensions (PROTOCOL.certkeys §"Extensions") to grant.

    ``permit-pty`` always; ``permit-port-forwarding`` and ``permit-agent-forwarding``
    when a role allows them. X11 and user rc are never granted. Every value is
    ``None``: these are flags with empty data, which is what
    :func:`trioport.sshproto.certs.sign_certificate` writes for ``None``.
    """
    ext: dict[str, None] = {"permit-pty": None}
    if can_port_forward(roles):
        ext["permit-port-forwarding"] = None
    if can_forward_agent(roles):
        ext["permit-agent-forwarding"] = None
    return dict(sorted(ext.items()))


def client_idle_timeout(roles: Sequence[Role]) -> int | None:
    """The smallest non-zero ``client_idle_timeout`` in seconds, or None for no timeout."""
    values = [
        int(r.spec.options.client_idle_timeout.total_seconds())
        for r in roles
        if r.spec.options.client_idle_timeout.total_seconds() > 0
    ]
    return max(1, min(values)) if values else None


def disconnect_expired_cert(roles: Sequence[Role]) -> bool:
    """Whether sessions end when the certificate expires (any role asking is enough)."""
    return any(r.spec.options.disconnect_expired_cert for r in roles)


def record_session_mode(roles: Sequence[Role]) -> str:
    """``strict`` if any role asks for it, else ``best_effort`` (the default)."""
    strict = any(r.spec.options.record_session.ssh == "strict" for r in roles)
    return "strict" if strict else "best_effort"
