"""Tokens for tests, minted by the local issuer with one key shared by the whole session.

Generating an RSA key costs tens of milliseconds, so every test's settings point
``issuer_key`` at the session's key file instead of making one per data directory.
"""

from __future__ import annotations

from pathlib import Path

from gateway.auth.keys import local_key_set
from gateway.auth.tokens import mint
from gateway.domain.access import Role, role_group
from gateway.settings import Settings


def token(
    settings: Settings,
    *,
    user: str = "tester@example.com",
    roles: dict[str, Role | str] | None = None,
    admin: bool = False,
    groups: tuple[str, ...] = (),
    ttl_seconds: float = 3600,
    now: float | None = None,
) -> str:
    """A token for ``user`` with a role per tenant (through role groups), optionally an admin."""
    granted = [role_group(tenant, Role(role)) for tenant, role in (roles or {}).items()]
    if admin:
        granted.append(settings.auth.admin_groups[0])
    return mint(
        local_key_set(settings.issuer_key_file),
        audience=settings.auth.oidc_audience,
        subject=user,
        email=user,
        groups=[*granted, *groups],
        ttl_seconds=ttl_seconds,
        now=now,
    )


def admin_token(settings: Settings) -> str:
    return token(settings, user="admin@example.com", admin=True)


def shared_key(directory: Path) -> Path:
    path = directory / "issuer-key.json"
    local_key_set(path)
    return path
