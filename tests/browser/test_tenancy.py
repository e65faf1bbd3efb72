"""Tenants apart, and the GPU they share: a user of tenant a never sees tenant b's jobs, only
that b holds half of the device both use; a platform admin sees both halves, by tenant and job.

The module's jobs: one half-GPU job of each tenant, sharing device 0, and one more of each
queued behind them.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from tests.browser.dashboard import FOREVER, Dashboard, Gateway

pytestmark = pytest.mark.slow

DEVICE = 'section.node[data-node="local"] li.device[data-index="0"]'


@dataclass(frozen=True)
class Jobs:
    a_running: str
    b_running: str
    a_queued: str
    b_queued: str


@pytest.fixture(scope="module")
def jobs(gateway: Gateway) -> Jobs:
    a_running = gateway.submit("a", "mine", FOREVER, gpu=0.5)
    b_running = gateway.submit("b", "theirs", FOREVER, gpu=0.5)
    for job in (a_running, b_running):
        gateway.wait_for_state(job, "running")
    return Jobs(
        a_running=a_running,
        b_running=b_running,
        a_queued=gateway.submit("a", "mine-next", FOREVER, gpu=0.5),
        b_queued=gateway.submit("b", "theirs-next", FOREVER, gpu=0.5),
    )


def shares(dashboard: Dashboard) -> list[dict[str, str | None]]:
    """The holders of device 0, as the cluster page draws them."""
    return [
        {name: rect.get_attribute(f"data-{name}") for name in ("tenant", "job", "shares")}
        for rect in dashboard.find_all(f"{DEVICE} rect.share")
    ]


def job_ids(dashboard: Dashboard, table: str) -> set[str | None]:
    return {row.get_attribute("data-job-id") for row in dashboard.find_all(f"#{table} tr")[1:]}


def test_a_user_of_tenant_a_never_sees_tenant_bs_jobs(dashboard: Dashboard, jobs: Jobs) -> None:
    theirs = {jobs.b_running, jobs.b_queued}
    dashboard.sign_in("a", "viewer", "ann")

    dashboard.open("/ui/jobs")
    assert job_ids(dashboard, "jobs") >= {jobs.a_running, jobs.a_queued}
    assert not job_ids(dashboard, "jobs") & theirs
    dashboard.open("/ui/jobs?tenant=b")
    assert not {row.get_attribute("data-job-id") for row in dashboard.find_all("tr")} & theirs

    dashboard.open("/ui/queue")
    assert jobs.a_queued in job_ids(dashboard, "queue")
    assert not job_ids(dashboard, "queue") & theirs

    for job in theirs:
        dashboard.open(f"/ui/jobs/{job}")
        assert dashboard.attribute("p.problem", "data-status") == "404"
        assert "theirs" not in dashboard.content("main")

    dashboard.open("/ui/cluster")
    assert sorted(shares(dashboard), key=lambda share: share["tenant"] or "") == [
        {"tenant": "", "job": "", "shares": "50"},
        {"tenant": "a", "job": jobs.a_running, "shares": "50"},
    ]
    page = dashboard.driver.page_source
    assert "theirs" not in page
    assert not any(job in page for job in theirs)

    dashboard.open("/ui/tenants")
    assert [
        r.get_attribute("data-tenant") for r in dashboard.find_all("#tenants tr[data-tenant]")
    ] == ["a"]


def test_two_half_gpu_jobs_share_one_device_on_the_cluster_page(
    dashboard: Dashboard, gateway: Gateway, jobs: Jobs
) -> None:
    dashboard.sign_in()
    dashboard.open("/ui/tenants")
    assert {
        row.get_attribute("data-tenant") for row in dashboard.find_all("#tenants tr[data-tenant]")
    } >= {"a", "b"}
    dashboard.screenshot("tenants")

    dashboard.open("/ui/cluster")

    assert sorted(shares(dashboard), key=lambda share: share["tenant"] or "") == [
        {"tenant": "a", "job": jobs.a_running, "shares": "50"},
        {"tenant": "b", "job": jobs.b_running, "shares": "50"},
    ]
    assert dashboard.attribute(DEVICE, "data-free-shares") == "0"
    dashboard.screenshot("cluster")

    # Live: b's next job takes the half its first one leaves.
    dashboard.mark()
    gateway.cancel(jobs.b_running)
    dashboard.wait_until(
        lambda: {"tenant": "b", "job": jobs.b_queued, "shares": "50"} in shares(dashboard),
        "b's queued job to take its half of the device",
    )
    dashboard.assert_not_reloaded()
