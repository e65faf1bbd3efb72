"""Query-string helpers shared by list endpoints."""

from __future__ import annotations

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
