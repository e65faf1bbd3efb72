"""Authentication on every request, and the authorization checks the handlers make.

Invariants:

- every route but the public ones (liveness, readiness, the OpenAPI document, the JWKS, the
  local issuer's proof, and /metrics when MUSTER_PUBLIC_METRICS is set) needs a valid bearer
  token, else 401 with ``WWW-Authenticate: Bearer``; unknown paths too, so routes cannot be
  probed without a token;
- a browser may authenticate with the dashboard's session cookie instead (it holds a bearer
  token, checked the same way); a cookie-authenticated request that may change something must
  carry the session's CSRF token and must not come from another site (``gateway.auth.sessions``),
  else 403. A dashboard page asked for without a session redirects to the sign-in page;
- an object of a tenant where the caller has no role answers exactly as an object that does not
  exist (404, same message); 403 is reserved for objects the caller can see but may not act on,
  for admin endpoints, and for callers whose token grants no role anywhere.
"""

from __future__ import annotations

from urllib.parse import urlencode, urlsplit

from aiohttp import web

from gateway.api.context import AUTHENTICATOR, SETTINGS
from gateway.api.problems import Handler
from gateway.auth.sessions import CSRF_HEADER, SAFE_METHODS, SESSION_COOKIE, csrf_matches
from gateway.domain.access import LEAST_ROLE, Access, Action
from gateway.domain.lifecycle.records import Job
from gateway.domain.names import DNS_1123_LABEL
from gateway.errors import Forbidden, NotFound, Unauthorized
from gateway.logs import bind

ACCESS = web.RequestKey("access", Access)
#: The Authorization header the request was authenticated with (a session cookie's token as a
#: bearer header), for rechecks of long-lived responses.
CREDENTIALS = web.RequestKey("credentials", str)
PUBLIC_PATHS = frozenset(
    {
        "/healthz",
        "/readyz",
        "/openapi.json",
        "/.well-known/jwks.json",
        "/v1/issuer/proof",
    }
)
#: The dashboard's sign-in pages, which a browser reaches before it has a session.
SIGN_IN_PATHS = frozenset({"/ui/login", "/ui/callback", "/ui/logout"})
#: The dashboard's assets: public, so the sign-in page has its style sheet.
PUBLIC_PREFIXES = ("/ui/static/",)
DASHBOARD_PREFIX = "/ui"


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    path = request.path
    if (
        path in PUBLIC_PATHS
        or path in SIGN_IN_PATHS
        or path.startswith(PUBLIC_PREFIXES)
        or (path == "/metrics" and request.app[SETTINGS].auth.public_metrics)
    ):
        return await handler(request)
    authorization = request.headers.get("Authorization")
    session = request.cookies.get(SESSION_COOKIE)
    if authorization is None and session:
        check_same_site(request, session)
        authorization = f"Bearer {session}"
    try:
        access = await request.app[AUTHENTICATOR].access(authorization)
    except Unauthorized:
        if _dashboard_page(request):
            raise web.HTTPSeeOther(sign_in_location(request)) from None
        raise
    request[ACCESS] = access
    if authorization is not None:
        request[CREDENTIALS] = authorization
    bind(user=access.principal.user)
    return await handler(request)


def check_same_site(request: web.Request, session: str) -> None:
    """403 for a cookie-authenticated request that may change something and lacks the session's
    CSRF token, or that the browser says another site sent."""
    if request.method in SAFE_METHODS:
        return
    if not from_this_site(request):
        origin = request.headers.get("Origin", "another site")
        raise Forbidden(f"a request from {origin[:100]} may not use the dashboard's session")
    if not csrf_matches(session, request.headers.get(CSRF_HEADER)):
        raise Forbidden(
            f"a request authenticated by the dashboard's session cookie needs its {CSRF_HEADER} "
            "header (the csrf-token of the page it came from)"
        )


def from_this_site(request: web.Request) -> bool:
    """Whether the browser says the request comes from the gateway's own pages (or the user
    typed it): Sec-Fetch-Site same-origin or none, and an Origin of this gateway. An Origin of
    "null" (a privacy setting's) counts only where Sec-Fetch-Site vouches for the page."""
    fetch_site = request.headers.get("Sec-Fetch-Site")
    if fetch_site is not None and fetch_site not in {"same-origin", "none"}:
        return False
    origin = request.headers.get("Origin")
    if origin is None or (origin == "null" and fetch_site == "same-origin"):
        return True
    return same_origin(request, origin)


def same_origin(request: web.Request, origin: str) -> bool:
    """Whether a browser's Origin header names this gateway: MUSTER_UI_PUBLIC_URL's origin when
    it is set, else the host the request was sent to, whatever the scheme (a TLS proxy in front
    turns the browser's https into the gateway's http)."""
    if request.app[SETTINGS].ui.public_url is not None:
        return origin == own_origin(request)
    parts = urlsplit(origin)
    return parts.scheme in {"http", "https"} and parts.netloc == request.host


def own_origin(request: web.Request) -> str:
    """This gateway's origin as browsers see it: MUSTER_UI_PUBLIC_URL's, else the request's."""
    public = request.app[SETTINGS].ui.public_url
    if public is not None:
        parts = urlsplit(public)
        return f"{parts.scheme}://{parts.netloc}"
    return f"{request.scheme}://{request.host}"


def _dashboard_page(request: web.Request) -> bool:
    """A browser navigating to a dashboard page (not a page's own script fetching it again,
    which is answered 401 and tells its user the session ended)."""
    return (
        request.method in {"GET", "HEAD"}
        and (request.path == DASHBOARD_PREFIX or request.path.startswith(DASHBOARD_PREFIX + "/"))
        and request.headers.get("Sec-Fetch-Mode", "navigate") == "navigate"
        and "X-Muster-Live" not in request.headers
    )


def sign_in_location(request: web.Request) -> str:
    """The sign-in page, asked to come back to this page afterwards."""
    return "/ui/login?" + urlencode({"next": request.path_qs})


def access(request: web.Request) -> Access:
    return request[ACCESS]


async def recheck(request: web.Request) -> Access | None:
    """The caller's access now, for a long-lived response (an event stream, a followed log):
    None once its token has expired or it holds no role any more, and the response should end.
    Cheap: the token and its access are cached."""
    try:
        current = await request.app[AUTHENTICATOR].access(request.get(CREDENTIALS))
    except Unauthorized:
        return None
    return current if current.anywhere else None


def actor(request: web.Request) -> str:
    """Who is making the request, as recorded on jobs, events and the audit log."""
    return request[ACCESS].principal.user


def require_admin(request: web.Request) -> Access:
    caller = request[ACCESS]
    if not caller.admin:
        groups = ", ".join(request.app[SETTINGS].auth.admin_groups) or "(none configured)"
        raise Forbidden(f"only platform admins may do this (members of: {groups})")
    return caller


def require_role(request: web.Request) -> Access:
    """The caller's access, when it has a role in some tenant (or is an admin); else 403."""
    caller = request[ACCESS]
    if not caller.anywhere:
        raise Forbidden(
            f"{caller.principal.user} has no role in any tenant; ask an admin to grant one of "
            "your groups (or you) a role"
        )
    return caller


def role_refusal(caller: Access, tenant: str, action: Action) -> Forbidden:
    """403 for a caller who can see ``tenant`` but whose role there is too small for ``action``."""
    return Forbidden(
        f"your role in tenant {tenant!r} is {caller.role(tenant)}; to {action.value} you need "
        f"{LEAST_ROLE[action].value}"
    )


def check_tenant(request: web.Request, tenant: str, action: Action = Action.READ) -> None:
    """404 for a tenant the caller cannot see, or whose name cannot be a tenant's (as for one that
    does not exist), 403 when it can see it but may not do ``action``."""
    caller = require_role(request)
    if not DNS_1123_LABEL.fullmatch(tenant) or not caller.sees(tenant):
        raise NotFound(f"tenant {tenant!r} does not exist")
    if not caller.may(tenant, action):
        raise role_refusal(caller, tenant, action)


def check_job(request: web.Request, job: Job, action: Action = Action.READ) -> None:
    """404 for a job of a tenant the caller cannot see, exactly as for a job that does not exist;
    403 when it can see the job but may not do ``action``."""
    caller = require_role(request)
    tenant = job.tenant
    if not caller.sees(tenant):
        raise NotFound(f"job {request.match_info.get('id', job.id)} does not exist")
    if not caller.may(tenant, action):
        raise role_refusal(caller, tenant, action)
