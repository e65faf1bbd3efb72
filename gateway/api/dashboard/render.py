"""Templates, filters and the headers of every dashboard response.

Invariant: the Jinja2 environment autoescapes every template and refuses undefined names, so a
value reaches a page only as escaped text, and a template that names a missing value fails its
test instead of rendering blank.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web

from gateway.api.auth import ACCESS, CREDENTIALS
from gateway.auth.sessions import SESSION_COOKIE, csrf_token
from gateway.domain.resources import QuantityError, cpu_millis, memory_bytes

HERE = Path(__file__).parent
STATIC = HERE / "static"

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    )
)

ENVIRONMENT = jinja2.Environment(
    loader=jinja2.FileSystemLoader(HERE / "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def duration(seconds: float) -> str:
    """3d 4h, 2h 5m, 4m 10s, 12s."""
    seconds = max(int(seconds), 0)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"


def since(value: str | None, now: datetime) -> str:
    """How long ago ``value`` (an RFC 3339 time) was: "4m 10s"; "" for none."""
    moment = parse_time(value)
    return "" if moment is None else duration((now - moment).total_seconds())


def shown_time(value: str | None) -> str:
    """An RFC 3339 time as 2026-12-05 17:04:31 UTC; "" for none."""
    moment = parse_time(value)
    return "" if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def tenant_colour(tenant: str | None) -> str:
    """A colour of its own for each tenant (stable across pages and replicas); grey for a tenant
    the caller may not see."""
    if tenant is None:
        return "hsl(0, 0%, 62%)"
    hue = int.from_bytes(hashlib.sha256(tenant.encode()).digest()[:2], "big") % 360
    return f"hsl({hue}, 62%, 42%)"


def amount(kind: str, value: str | float | int) -> float:
    """A quota's or usage's amount as a number for a meter: cores, GiB, or GPUs."""
    try:
        if kind == "cpu":
            return cpu_millis(value) / 1000
        if kind == "memory":
            return memory_bytes(value) / 2**30
        return float(value)
    except (QuantityError, ValueError):
        return 0.0


def change(entry: Mapping[str, Any]) -> str:
    """An audit entry's change, one "key: before → after" per changed setting."""
    before, after = entry.get("before") or {}, entry.get("after") or {}
    parts = []
    for key in sorted(set(before) | set(after)):
        if before.get(key) != after.get(key):
            parts.append(f"{key}: {_brief(before.get(key))} → {_brief(after.get(key))}")
    return "; ".join(parts) or "(no change)"


def _brief(value: Any) -> str:
    text = "none" if value is None else json.dumps(value, sort_keys=True)
    return text if len(text) <= 200 else text[:199] + "…"


def reject_key(mapping: Mapping[str, str], key: str) -> dict[str, str]:
    return {k: v for k, v in mapping.items() if k != key}


def with_key(mapping: Mapping[str, str], key: str, value: str) -> dict[str, str]:
    return {**mapping, key: value}


ENVIRONMENT.filters["amount"] = amount
ENVIRONMENT.filters["change"] = change
ENVIRONMENT.filters["reject_key"] = reject_key
ENVIRONMENT.filters["with_key"] = with_key
ENVIRONMENT.filters["since"] = since
ENVIRONMENT.filters["shown_time"] = shown_time
ENVIRONMENT.filters["colour"] = tenant_colour
ENVIRONMENT.filters["duration"] = duration


def render(
    request: web.Request,
    template: str,
    context: Mapping[str, Any],
    *,
    status: int = 200,
) -> web.Response:
    """A page: ``template`` with ``context``, the caller, the CSRF token and the time."""
    access = request.get(ACCESS)
    credentials = request.get(CREDENTIALS, "")
    session = request.cookies.get(SESSION_COOKIE, "")
    # The CSRF token belongs to the cookie; a page reached with a bearer header needs none.
    from_cookie = bool(session) and credentials == f"Bearer {session}"
    html = ENVIRONMENT.get_template(template).render(
        {
            "user": None if access is None else access.principal.user,
            "admin": access is not None and access.admin,
            "csrf": csrf_token(session) if from_cookie else "",
            "now": datetime.now(UTC),
            "path": request.path,
            **context,
        }
    )
    return web.Response(text=html, status=status, content_type="text/html", charset="utf-8")


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """The dashboard's headers on every response under /ui (pages, assets, redirects, errors)."""
    if not (request.path == "/ui" or request.path.startswith("/ui/")):
        return
    headers = response.headers
    headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    headers["X-Content-Type-Options"] = "nosniff"
    headers["X-Frame-Options"] = "DENY"
    # Never sent to another site (a sign-in link's code stays home); sent to this one, so the
    # browser's Origin header names it on the pages' own POSTs (with no-referrer it is "null").
    headers["Referrer-Policy"] = "same-origin"
    headers["Cross-Origin-Opener-Policy"] = "same-origin"
    if not request.path.startswith("/ui/static/"):
        headers["Cache-Control"] = "no-store"
