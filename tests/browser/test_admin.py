"""The admin page: a platform admin edits a tenant's quota, and the audit log shows the change;
nobody else reaches the page."""

from __future__ import annotations

import pytest
from selenium.webdriver.common.by import By

from tests.acceptance.local_helpers import call
from tests.browser.dashboard import Dashboard, Gateway

pytestmark = pytest.mark.slow

AUDITED_B = '#audit tr[data-tenant="b"]'


def test_an_admin_edits_a_quota_and_the_audit_log_shows_it(
    dashboard: Dashboard, gateway: Gateway
) -> None:
    dashboard.sign_in()
    dashboard.open("/ui/admin")
    before = len(dashboard.find_all(AUDITED_B))
    form = dashboard.find('form.quota-edit[data-tenant="b"]')
    field = form.find_element(By.NAME, "quota.max_queued_jobs")
    field.clear()
    field.send_keys("77")
    dashboard.mark()

    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    question = dashboard.confirm()

    assert "b" in question, question
    assert dashboard.notice() == "Done."
    dashboard.wait_until(
        lambda: len(dashboard.find_all(AUDITED_B)) > before, "a new audit entry for tenant b"
    )
    changes = [cell.text for cell in dashboard.find_all(f"{AUDITED_B} td.change")]
    assert "max_queued_jobs: 100 → 77" in changes, changes
    dashboard.assert_not_reloaded()
    status, tenant = call("GET", f"{gateway.url}/v1/admin/tenants/b")
    assert status == 200, tenant
    assert tenant["quota"]["max_queued_jobs"] == 77
    dashboard.screenshot("admin")


def test_a_bad_quota_is_refused_with_the_apis_reason(dashboard: Dashboard) -> None:
    dashboard.sign_in()
    dashboard.open("/ui/admin")
    form = dashboard.find('form.quota-edit[data-tenant="b"]')
    field = form.find_element(By.NAME, "quota.cpu")
    field.clear()
    field.send_keys("lots")

    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    dashboard.confirm()

    notice = dashboard.notice()
    assert notice != "Done.", notice
    assert dashboard.attribute("#notice", "data-kind") == "error"


def test_only_a_platform_admin_reaches_the_admin_page(dashboard: Dashboard) -> None:
    dashboard.sign_in("a", "tenant-admin", "tess")
    assert not dashboard.find_all('nav a[href="/ui/admin"]')

    dashboard.open("/ui/admin")

    assert dashboard.attribute("p.problem", "data-status") == "403"
    assert not dashboard.find_all("form.quota-edit")
