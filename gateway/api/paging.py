"""Query-string helpers shared by list endpoints."""

from __future__ import annotations

from collections.abc import Mapping

from gateway.domain.names import DNS_1123_LABEL
from gateway.errors import BadRequest

MAX_PAGE = 500
DEFAULT_PAGE = 50


def page_limit(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_PAGE
    try:
        limit = int(raw)
    except ValueError as exc:
        raise BadRequest("limit must be an integer") from exc
    if not 1 <= limit <= MAX_PAGE:
        raise BadRequest(f"limit must be between 1 and {MAX_PAGE}")
    return limit


def tenant_filter(query: Mapping[str, str]) -> str | None:
    """The ``tenant`` query parameter, which must name a tenant (a DNS-1123 label) if given."""
    tenant = query.get("tenant")
    if tenant is not None and not DNS_1123_LABEL.fullmatch(tenant):
        raise BadRequest("tenant must be a tenant name (a DNS-1123 label)")
    return tenant
