"""The pure core of authorization: roles, grants, role groups, admin groups, and principals read
from verified token claims (gateway.domain.access)."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.domain.access import (
    LEAST_ROLE,
    Access,
    Action,
    Grant,
    GrantKind,
    Principal,
    Role,
    principal_from_claims,
    resolve,
    role_group,
)

ADMINS = ("muster-admins",)


def principal(
    user: str = "ada@example.com", groups: tuple[str, ...] = (), subject: str = "sub-ada"
) -> Principal:
    return Principal(subject=subject, user=user, issuer="urn:test", groups=frozenset(groups))


def group_grant(tenant: str, name: str, role: Role) -> Grant:
    return Grant(tenant=tenant, kind=GrantKind.GROUP, name=name, role=role)


def user_grant(tenant: str, name: str, role: Role) -> Grant:
    return Grant(tenant=tenant, kind=GrantKind.USER, name=name, role=role)


# --- roles ----------------------------------------------------------------------------------


def test_roles_are_ordered_viewer_submitter_tenant_admin() -> None:
    assert Role.VIEWER.rank < Role.SUBMITTER.rank < Role.TENANT_ADMIN.rank
    assert sorted(Role, key=lambda r: r.rank) == [Role.VIEWER, Role.SUBMITTER, Role.TENANT_ADMIN]


def test_each_action_needs_its_least_role_and_every_higher_role_allows_it() -> None:
    for action, least in LEAST_ROLE.items():
        for role in Role:
            access = Access(principal=principal(), roles={"a": role})
            assert access.may("a", action) is (role.rank >= least.rank), (action, role)


def test_reading_needs_viewer_submitting_and_cancelling_need_submitter_rotation_needs_admin() -> (
    None
):
    assert LEAST_ROLE[Action.READ] is Role.VIEWER
    assert LEAST_ROLE[Action.SUBMIT] is Role.SUBMITTER
    assert LEAST_ROLE[Action.CANCEL] is Role.SUBMITTER
    assert LEAST_ROLE[Action.REDELIVER] is Role.SUBMITTER
    assert LEAST_ROLE[Action.ROTATE_WEBHOOK_SECRET] is Role.TENANT_ADMIN


@pytest.mark.parametrize("order", [1, -1], ids=["grants-first", "groups-first"])
def test_the_highest_role_wins_whatever_its_source_and_order(order: int) -> None:
    grants = [
        group_grant("a", "ml", Role.VIEWER),
        user_grant("a", "ada@example.com", Role.TENANT_ADMIN),
        group_grant("a", "ops", Role.SUBMITTER),
    ][::order]
    groups = ("ml", "ops", role_group("a", Role.VIEWER))
    access = resolve(principal(groups=groups), grants, ADMINS)

    assert access.role("a") is Role.TENANT_ADMIN


def test_a_lower_grant_does_not_lower_a_role_group() -> None:
    access = resolve(
        principal(groups=("ml", role_group("a", Role.SUBMITTER))),
        [group_grant("a", "ml", Role.VIEWER)],
        ADMINS,
    )
    assert access.role("a") is Role.SUBMITTER


def test_roles_in_different_tenants_are_independent() -> None:
    access = resolve(
        principal(groups=(role_group("a", Role.TENANT_ADMIN), role_group("b", Role.VIEWER))),
        [],
        ADMINS,
    )
    assert access.role("a") is Role.TENANT_ADMIN
    assert access.role("b") is Role.VIEWER
    assert access.role("c") is None
    assert access.may("a", Action.SUBMIT)
    assert not access.may("b", Action.SUBMIT)
    assert not access.sees("c")
    assert not access.may("c", Action.READ)


# --- role groups ----------------------------------------------------------------------------


def test_role_group_names_are_muster_tenant_role() -> None:
    assert role_group("search", Role.VIEWER) == "muster:search:viewer"
    assert role_group("search", Role.TENANT_ADMIN) == "muster:search:tenant-admin"


@pytest.mark.parametrize("role", list(Role))
def test_a_role_group_grants_its_role_without_any_grant(role: Role) -> None:
    access = resolve(principal(groups=(role_group("search", role),)), [], ADMINS)
    assert access.roles == {"search": role}


@pytest.mark.parametrize(
    "group",
    [
        "muster:search:owner",  # no such role
        "muster:search",  # no role
        "muster::viewer",  # no tenant
        "muster:",
        "Muster:search:viewer",  # the prefix is case-sensitive
        "search:viewer",
        "xmuster:search:viewer",
        "muster:search:Viewer",
        "muster:search:viewer ",
    ],
)
def test_malformed_role_groups_grant_nothing(group: str) -> None:
    access = resolve(principal(groups=(group,)), [], ADMINS)
    assert access.roles == {}
    assert not access.anywhere


# --- grants ---------------------------------------------------------------------------------


def test_a_group_grant_applies_to_members_of_the_group_only() -> None:
    grants = [group_grant("a", "ml", Role.SUBMITTER)]

    assert resolve(principal(groups=("ml",)), grants, ADMINS).role("a") is Role.SUBMITTER
    assert resolve(principal(groups=("ml-team",)), grants, ADMINS).role("a") is None
    assert resolve(principal(groups=()), grants, ADMINS).role("a") is None


def test_a_user_grant_matches_the_principals_user_not_its_subject_or_groups() -> None:
    grants = [user_grant("a", "ada@example.com", Role.VIEWER)]
    ada = principal(user="ada@example.com")
    group_named_ada = principal(user="bob@example.com", groups=("ada@example.com",))
    subject_named_ada = principal(user="bob@example.com", subject="ada@example.com")

    assert resolve(ada, grants, ADMINS).role("a") is Role.VIEWER
    assert resolve(group_named_ada, grants, ADMINS).role("a") is None
    assert resolve(subject_named_ada, grants, ADMINS).role("a") is None


def test_a_group_grant_does_not_match_a_user_of_the_same_name() -> None:
    grants = [group_grant("a", "ada@example.com", Role.VIEWER)]
    assert resolve(principal(user="ada@example.com"), grants, ADMINS).role("a") is None


def test_grants_of_other_tenants_give_nothing_here() -> None:
    access = resolve(principal(groups=("ml",)), [group_grant("b", "ml", Role.TENANT_ADMIN)], ADMINS)
    assert access.role("a") is None
    assert access.role("b") is Role.TENANT_ADMIN


# --- admins ---------------------------------------------------------------------------------


def test_a_member_of_an_admin_group_is_an_admin_and_tenant_admin_everywhere() -> None:
    access = resolve(principal(groups=("platform",)), [], ("muster-admins", "platform"))

    assert access.admin
    assert access.anywhere
    assert access.role("any-tenant") is Role.TENANT_ADMIN
    assert access.sees("any-tenant")
    assert all(access.may("any-tenant", action) for action in Action)
    assert access.tenants(Action.SUBMIT) is None  # every tenant


def test_an_admin_group_grant_or_role_group_does_not_make_an_admin() -> None:
    access = resolve(
        principal(groups=("ml", role_group("a", Role.TENANT_ADMIN))),
        [group_grant("a", "ml", Role.TENANT_ADMIN)],
        ADMINS,
    )
    assert not access.admin
    assert access.tenants() == frozenset({"a"})


def test_no_admin_groups_configured_means_no_admins() -> None:
    access = resolve(principal(groups=("muster-admins",)), [], ())
    assert not access.admin
    assert not access.anywhere


def test_a_principal_without_groups_or_grants_has_no_role_anywhere() -> None:
    access = resolve(principal(), [], ADMINS)
    assert not access.admin
    assert not access.anywhere
    assert access.tenants() == frozenset()


# --- tenants(action) ------------------------------------------------------------------------


def test_tenants_lists_where_the_action_is_allowed() -> None:
    access = resolve(
        principal(
            groups=(
                role_group("v", Role.VIEWER),
                role_group("s", Role.SUBMITTER),
                role_group("t", Role.TENANT_ADMIN),
            )
        ),
        [],
        ADMINS,
    )
    assert access.tenants() == frozenset({"v", "s", "t"})
    assert access.tenants(Action.READ) == frozenset({"v", "s", "t"})
    assert access.tenants(Action.SUBMIT) == frozenset({"s", "t"})
    assert access.tenants(Action.CANCEL) == frozenset({"s", "t"})
    assert access.tenants(Action.ROTATE_WEBHOOK_SECRET) == frozenset({"t"})


# --- principals from claims -----------------------------------------------------------------


def claims(**extra: Any) -> dict[str, Any]:
    return {"iss": "https://idp.example", "sub": "sub-1", **extra}


def from_claims(
    found: dict[str, Any], user_claim: str = "email", groups_claim: str = "groups"
) -> Principal | str:
    return principal_from_claims(found, user_claim=user_claim, groups_claim=groups_claim)


def test_a_principal_carries_subject_user_issuer_email_and_groups() -> None:
    found = from_claims(claims(email="ada@example.com", email_verified=True, groups=["ml", "ops"]))

    assert found == Principal(
        subject="sub-1",
        user="ada@example.com",
        issuer="https://idp.example",
        email="ada@example.com",
        groups=frozenset({"ml", "ops"}),
    )


@pytest.mark.parametrize("subject", [None, "", 42, ["sub-1"]], ids=repr)
def test_claims_without_a_string_subject_name_no_principal(subject: object) -> None:
    found = claims()
    if subject is None:
        del found["sub"]
    else:
        found["sub"] = subject
    refusal = from_claims(found)
    assert isinstance(refusal, str)
    assert "sub" in refusal


@pytest.mark.parametrize(
    "email", [None, "", 42, ["ada@example.com"]], ids=["missing", "empty", "number", "list"]
)
def test_the_user_falls_back_to_the_subject_without_a_usable_user_claim(email: object) -> None:
    found = claims() if email is None else claims(email=email)
    principal = from_claims(found)
    assert isinstance(principal, Principal)
    assert principal.user == "sub-1"
    assert principal.email is None


def test_the_user_claim_is_configurable() -> None:
    principal = from_claims(
        claims(email="ada@example.com", email_verified=True, preferred_username="ada"),
        user_claim="preferred_username",
    )
    assert isinstance(principal, Principal)
    assert principal.user == "ada"
    assert principal.email == "ada@example.com"


def test_the_user_claim_sub_is_the_subject() -> None:
    principal = from_claims(claims(email="ada@example.com"), user_claim="sub")
    assert isinstance(principal, Principal)
    assert principal.user == "sub-1"


def test_groups_may_be_a_single_string() -> None:
    principal = from_claims(claims(groups="ml"))
    assert isinstance(principal, Principal)
    assert principal.groups == frozenset({"ml"})


def test_missing_groups_are_no_groups() -> None:
    principal = from_claims(claims())
    assert isinstance(principal, Principal)
    assert principal.groups == frozenset()


def test_the_groups_claim_is_configurable() -> None:
    principal = from_claims(
        claims(groups=["ignored"], roles=["muster:a:viewer"]), groups_claim="roles"
    )
    assert isinstance(principal, Principal)
    assert principal.groups == frozenset({"muster:a:viewer"})


@pytest.mark.parametrize(
    "groups",
    [42, None, {"ml": True}, ["ml", 7], [["ml"]], [None], True],
    ids=["number", "null", "object", "mixed-list", "nested-list", "list-of-null", "bool"],
)
def test_groups_that_are_not_names_are_refused_not_guessed_at(groups: object) -> None:
    refusal = from_claims(claims(groups=groups))
    assert isinstance(refusal, str)
    assert "'groups'" in refusal


def test_a_non_string_issuer_claim_becomes_an_empty_issuer() -> None:
    principal = from_claims(claims(iss=7))
    assert isinstance(principal, Principal)
    assert principal.issuer == ""


def test_an_unverified_email_is_never_the_user() -> None:
    claims = {"sub": "CiQ1", "email": "boss@example.com", "email_verified": False}
    principal = principal_from_claims(claims, user_claim="email", groups_claim="groups")
    assert isinstance(principal, Principal)
    assert (principal.user, principal.email) == ("CiQ1", None)


def test_a_verified_email_is_the_user() -> None:
    claims = {"sub": "CiQ1", "email": "me@example.com", "email_verified": True}
    principal = principal_from_claims(claims, user_claim="email", groups_claim="groups")
    assert isinstance(principal, Principal)
    assert principal.user == "me@example.com"


@pytest.mark.parametrize("verified", [None, "true", 1, False], ids=repr)
def test_an_email_the_issuer_does_not_vouch_for_is_not_the_user(verified: object) -> None:
    found = claims(email="boss@example.com")
    if verified is not None:
        found["email_verified"] = verified
    principal = from_claims(found)
    assert isinstance(principal, Principal)
    assert (principal.user, principal.email) == ("sub-1", None)


def test_role_groups_can_be_ignored() -> None:
    principal = Principal(
        subject="s", user="u", issuer="i", groups=frozenset({role_group("a", Role.SUBMITTER)})
    )
    assert resolve(principal, [], ["admins"]).role("a") is Role.SUBMITTER
    assert resolve(principal, [], ["admins"], role_groups=False).role("a") is None
