"""Who may do what: principals, tenant roles and the decisions of authorization.

A request is made by a ``Principal`` (from a verified token: subject, user name, email, groups).
``resolve`` turns it into an ``Access``: the principal's role in each tenant, from

- the admin-managed grants (``Grant``: a group or a single user gets a role in a tenant), and
- groups that name a role themselves, ``muster:<tenant>:<role>`` (what ``muster token`` mints;
  honoured for an external issuer's tokens only when the operator says so, since some providers
  let users create groups),

and whether the principal is a platform admin (a member of one of the admin groups).

Invariants:

- roles are ordered, viewer < submitter < tenant-admin; a principal holding several roles in one
  tenant has the highest of them;
- a platform admin acts as tenant-admin in every tenant and alone may use the admin endpoints;
- a tenant where the principal has no role is invisible to it: the shell answers 404 for its
  objects exactly as for objects that do not exist, and 403 only where the principal can see the
  object but its role does not allow the action.

Pure: no I/O, standard library only.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field


class Role(enum.StrEnum):
    VIEWER = "viewer"
    SUBMITTER = "submitter"
    TENANT_ADMIN = "tenant-admin"

    @property
    def rank(self) -> int:
        return _RANK[self]


_RANK = {Role.VIEWER: 0, Role.SUBMITTER: 1, Role.TENANT_ADMIN: 2}


class Action(enum.StrEnum):
    READ = "read"
    SUBMIT = "submit"
    CANCEL = "cancel"
    REDELIVER = "redeliver"
    ROTATE_WEBHOOK_SECRET = "rotate the webhook secret"


#: The least role that allows each action.
LEAST_ROLE: Mapping[Action, Role] = {
    Action.READ: Role.VIEWER,
    Action.SUBMIT: Role.SUBMITTER,
    Action.CANCEL: Role.SUBMITTER,
    Action.REDELIVER: Role.SUBMITTER,
    Action.ROTATE_WEBHOOK_SECRET: Role.TENANT_ADMIN,
}

ROLE_GROUP_PREFIX = "muster:"


class GrantKind(enum.StrEnum):
    GROUP = "group"
    USER = "user"


@dataclass(frozen=True, kw_only=True, slots=True)
class Grant:
    """An admin-managed mapping: members of ``name`` (a group or one user) get ``role`` in
    ``tenant``."""

    tenant: str
    kind: GrantKind
    name: str
    role: Role


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller, as its verified token describes it.

    ``user`` is what the gateway records as the actor (the configured user claim, else ``sub``);
    single-user grants match it.
    """

    subject: str
    user: str
    issuer: str
    email: str | None = None
    groups: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Access:
    """What one principal may do."""

    principal: Principal
    admin: bool = False
    roles: Mapping[str, Role] = field(default_factory=dict)

    def role(self, tenant: str) -> Role | None:
        if self.admin:
            return Role.TENANT_ADMIN
        return self.roles.get(tenant)

    def sees(self, tenant: str) -> bool:
        return self.role(tenant) is not None

    def may(self, tenant: str, action: Action) -> bool:
        role = self.role(tenant)
        return role is not None and role.rank >= LEAST_ROLE[action].rank

    def tenants(self, action: Action = Action.READ) -> frozenset[str] | None:
        """The tenants where the action is allowed; None means every tenant (a platform admin)."""
        if self.admin:
            return None
        least = LEAST_ROLE[action].rank
        return frozenset(t for t, role in self.roles.items() if role.rank >= least)

    @property
    def anywhere(self) -> bool:
        """Whether the principal has any role at all (or is an admin)."""
        return self.admin or bool(self.roles)


def role_group(tenant: str, role: Role) -> str:
    """The group name that grants ``role`` in ``tenant`` by itself."""
    return f"{ROLE_GROUP_PREFIX}{tenant}:{role.value}"


def _from_role_group(group: str) -> tuple[str, Role] | None:
    if not group.startswith(ROLE_GROUP_PREFIX):
        return None
    tenant, sep, role = group.removeprefix(ROLE_GROUP_PREFIX).rpartition(":")
    if not sep or not tenant:
        return None
    try:
        return tenant, Role(role)
    except ValueError:
        return None


def resolve(
    principal: Principal,
    grants: Iterable[Grant],
    admin_groups: Iterable[str],
    *,
    role_groups: bool = True,
) -> Access:
    """The principal's roles: the highest role per tenant over its matching grants and (when
    ``role_groups``) its role groups; admin when it belongs to an admin group."""
    roles: dict[str, Role] = {}

    def give(tenant: str, role: Role) -> None:
        held = roles.get(tenant)
        if held is None or role.rank > held.rank:
            roles[tenant] = role

    for grant in grants:
        if (grant.kind is GrantKind.GROUP and grant.name in principal.groups) or (
            grant.kind is GrantKind.USER and grant.name == principal.user
        ):
            give(grant.tenant, grant.role)
    for group in principal.groups if role_groups else ():
        named = _from_role_group(group)
        if named is not None:
            give(*named)
    admin = not principal.groups.isdisjoint(admin_groups)
    return Access(principal=principal, admin=admin, roles=roles)


def principal_from_claims(
    claims: Mapping[str, object], *, user_claim: str, groups_claim: str
) -> Principal | str:
    """A principal from verified token claims, or why the claims do not name one.

    ``sub`` is required. The user is the ``user_claim`` value when it is a non-empty string, else
    ``sub`` (client-credentials tokens carry no email). An email is used only when the issuer
    vouches for it (``email_verified: true``): some providers let users type any address, and
    the user is what single-user grants match. Groups may be a list of strings or a single
    string; anything else is refused rather than guessed at.
    """
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject:
        return "the token has no subject (sub)"
    verified = claims.get("email_verified") is True
    user = claims.get(user_claim) if verified or user_claim != "email" else None
    email = claims.get("email") if verified else None
    raw_groups = claims.get(groups_claim, [])
    if isinstance(raw_groups, str):
        raw_groups = [raw_groups]
    if not isinstance(raw_groups, list) or not all(isinstance(g, str) for g in raw_groups):
        return f"the token's {groups_claim!r} claim is not a list of group names"
    issuer = claims.get("iss")
    return Principal(
        subject=subject,
        user=user if isinstance(user, str) and user else subject,
        issuer=issuer if isinstance(issuer, str) else "",
        email=email if isinstance(email, str) and email else None,
        groups=frozenset(raw_groups),
    )
