"""Signing a browser in with `muster ui`'s one-time link, and what a signed-in page carries."""

from __future__ import annotations

import pytest

from tests.browser.dashboard import Dashboard

pytestmark = pytest.mark.slow


def test_a_muster_ui_link_signs_the_browser_in_once(dashboard: Dashboard) -> None:
    link = dashboard.gateway.sign_in_link("--tenant", "a", "--role", "viewer", "--user", "ann")

    dashboard.follow_link(link)

    dashboard.wait_until(lambda: dashboard.text("#whoami") == "ann", "the page to name ann")
    assert dashboard.driver.current_url == f"{dashboard.gateway.url}/ui/queue"
    assert dashboard.attribute('meta[name="csrf-token"]', "content")
    # The session is a cookie the page's script cannot read.
    assert dashboard.driver.execute_script("return document.cookie") == ""
    dashboard.wait_until(lambda: dashboard.text("#live-status") == "live", "the page to go live")

    dashboard.driver.delete_all_cookies()
    dashboard.follow_link(link)

    problem = dashboard.wait_until(lambda: dashboard.text("p.problem") or "", "the refusal")
    assert "used already" in problem, problem
    assert dashboard.find_all("#whoami") == []
    dashboard.screenshot("sign-in")


def test_a_page_without_a_session_asks_to_sign_in(dashboard: Dashboard) -> None:
    dashboard.open("/ui/jobs")

    problem = dashboard.wait_until(lambda: dashboard.text("p.problem") or "", "the sign-in page")
    assert "not signed in" in problem, problem
    assert "muster ui" in dashboard.content("main")
