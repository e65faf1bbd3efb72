"""The web dashboard at /ui: server-rendered pages over the API, with a little JavaScript.

Each page is the API's answer rendered as HTML: a page asks the API's own handlers, with the
caller's own access (``views.api_get``), so it shows exactly what the caller's roles let it read,
answers 404 where the API would, and has no rules of its own to drift from the API's. Actions
(cancel, redeliver, quota edits) are the API's requests, sent by the page's script with the
session's CSRF token.

Invariants:

- every response under /ui carries a strict Content-Security-Policy (scripts and styles only from
  /ui/static, no inline script or style, ``frame-ancestors 'none'``), nosniff, a referrer only
  to this origin (a sign-in link's one-time code never leaks to another site), and pages are
  never cached;
- templates escape everything (Jinja2 autoescaping, strict undefined): names, labels, messages,
  specs and logs are text, never markup; logs are added by the script as text nodes;
- the assets are files of this package: nothing is built, nothing is fetched from elsewhere.
"""

from __future__ import annotations

from aiohttp import web

from gateway.api.dashboard import pages, signin
from gateway.api.dashboard.render import STATIC, security_headers


def setup(app: web.Application) -> None:
    """Add the dashboard's routes, assets and headers to ``app``."""
    app[signin.SIGN_IN_VERIFIER] = {}
    app[signin.DISCOVERY] = {}
    app.add_routes(signin.routes)
    app.add_routes(pages.routes)
    app.router.add_static("/ui/static/", STATIC, name="dashboard-static", append_version=False)
    app.on_response_prepare.append(security_headers)
