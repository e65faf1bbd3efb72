"""The dashboard's small pure pieces: PKCE, CSRF tokens, where a sign-in may return to, and the
filters its templates use."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from gateway.api.dashboard.render import ENVIRONMENT, amount, change, duration, tenant_colour
from gateway.api.dashboard.signin import HOME, safe_next
from gateway.auth.sessions import csrf_matches, csrf_token, pkce_challenge


def test_the_pkce_challenge_is_rfc_7636s_s256() -> None:
    # RFC 7636, appendix B.
    verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
    assert pkce_challenge(verifier) == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


def test_a_csrf_token_belongs_to_one_session() -> None:
    token = csrf_token("session-a")
    assert csrf_matches("session-a", token)
    assert not csrf_matches("session-b", token)
    assert not csrf_matches("session-a", None)
    assert not csrf_matches("session-a", token[:-1])
    assert "session-a" not in token


@pytest.mark.parametrize(
    ("wanted", "landed"),
    [
        (None, HOME),
        ("/ui/jobs?state=failed", "/ui/jobs?state=failed"),
        ("/ui/jobs/1234", "/ui/jobs/1234"),
        ("//evil.example", HOME),
        ("/\\evil.example", HOME),
        ("https://evil.example/ui", HOME),
        ("/ui/../v1/jobs", HOME),
        ("/ui/%2e%2e/v1/jobs", HOME),
        ("/ui/login?code=x", HOME),
        ("/ui/jobs\r\nSet-Cookie: x=1", HOME),
        ("/v1/jobs", HOME),
    ],
)
def test_a_sign_in_returns_only_to_a_dashboard_page(wanted: str | None, landed: str) -> None:
    assert safe_next(wanted) == landed


def test_durations_read_as_people_say_them() -> None:
    assert [duration(s) for s in (0, 12, 250, 7500, 3 * 86400 + 4 * 3600)] == [
        "0s",
        "12s",
        "4m 10s",
        "2h 5m",
        "3d 4h",
    ]
    assert duration(-5) == "0s"  # a clock a little ahead of the database's


def test_each_tenant_keeps_its_colour_and_a_hidden_one_is_grey() -> None:
    assert tenant_colour("search") == tenant_colour("search")
    assert tenant_colour("search") != tenant_colour("ads")
    assert tenant_colour(None) == "hsl(0, 0%, 62%)"


def test_amounts_for_meters_and_changes_for_the_audit_log() -> None:
    assert amount("cpu", "500m") == 0.5
    assert amount("memory", "16Gi") == 16
    assert amount("gpu", 1.5) == 1.5
    assert amount("cpu", "lots") == 0.0
    entry = {
        "before": {"quota_gpu_shares": 200, "weight": 1},
        "after": {"quota_gpu_shares": 300, "weight": 1},
    }
    assert change(entry) == "quota_gpu_shares: 200 → 300"
    assert change({"before": None, "after": None}) == "(no change)"


def test_templates_escape_what_they_are_given() -> None:
    template = ENVIRONMENT.from_string("<p title='{{ text }}'>{{ text }}</p>")
    html = template.render(text="<script>x()</script>'\"")
    assert "<script>" not in html
    assert "&lt;script&gt;" in html
    assert "&#39;&#34;" in html


def test_an_undefined_name_fails_instead_of_rendering_blank() -> None:
    import jinja2

    with pytest.raises(jinja2.UndefinedError):
        ENVIRONMENT.from_string("{{ missing }}").render(now=datetime.now(UTC))
