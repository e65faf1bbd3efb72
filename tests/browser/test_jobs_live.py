"""A job's life on the dashboard, followed live: queued behind a job that fills the GPU, then
running, then succeeded; its log; cancelled from the page by a submitter, and not by a viewer.

The pages are never reloaded: each test marks the document and checks the mark at the end.
"""

from __future__ import annotations

import pytest

from tests.browser.dashboard import FOREVER, Dashboard, Gateway, waiting_for

pytestmark = pytest.mark.slow


def row(job_id: str, table: str = "jobs") -> str:
    return f'#{table} tr[data-job-id="{job_id}"]'


def test_a_queued_job_shows_in_the_queue_then_runs_and_succeeds_without_a_reload(
    dashboard: Dashboard, gateway: Gateway
) -> None:
    release = gateway.dirs.shared / "release-queued"
    blocker = gateway.submit("b", "blocker", FOREVER, gpu=1)
    gateway.wait_for_state(blocker, "running")
    dashboard.sign_in("a", "submitter", "sam")
    dashboard.open("/ui/queue")
    dashboard.mark()

    target = gateway.submit("a", "target", waiting_for(release), gpu=0.5)

    dashboard.wait_for_state(row(target, "queue"), "queued")
    assert dashboard.find_all(row(blocker, "queue")) == []  # running, and b's
    dashboard.assert_not_reloaded()
    dashboard.screenshot("queue")

    dashboard.open("/ui/jobs")
    dashboard.mark()
    dashboard.wait_for_state(row(target), "queued")
    gateway.cancel(blocker)

    dashboard.wait_for_state(row(target), "running")
    assert dashboard.attribute(f"{row(target)} span.state", "data-state") == "running"
    release.touch()
    dashboard.wait_for_state(row(target), "succeeded")
    dashboard.assert_not_reloaded()
    assert gateway.job(target)["state"] == "succeeded"
    assert dashboard.find_all(row(blocker)) == []  # tenant b's
    dashboard.screenshot("jobs")


def test_a_jobs_log_is_streamed_into_its_page(dashboard: Dashboard, gateway: Gateway) -> None:
    release = gateway.dirs.shared / "release-logs"
    job = gateway.submit(
        "a", "chatty", waiting_for(release, "hello from the job", "goodbye from the job"), gpu=0.5
    )
    dashboard.sign_in("a", "viewer", "vic")
    dashboard.open(f"/ui/jobs/{job}")
    dashboard.mark()

    dashboard.wait_for_state("#job-state", "running")
    log = 'details.log-box[open] pre.log[data-replica="worker-0"]'
    dashboard.wait_until(
        lambda: "hello from the job" in dashboard.content(log), "the first line of the log"
    )
    release.touch()

    dashboard.wait_until(
        lambda: "goodbye from the job" in dashboard.content(log), "the last line of the log"
    )
    dashboard.wait_for_state("#job-state", "succeeded")
    dashboard.assert_not_reloaded()
    assert dashboard.text("#job-name") == "chatty"
    # The replica table names the pod (chatty-worker-0); the log boxes the replica (worker-0).
    assert dashboard.attribute("#replicas tr[data-replica]", "data-replica") == "chatty-worker-0"
    devices = dashboard.find_all("#replicas tr[data-replica] .device-ref")
    assert [d.get_attribute("data-index") for d in devices] == ["0"]
    dashboard.screenshot("job")


def test_a_submitter_cancels_a_job_from_its_page(dashboard: Dashboard, gateway: Gateway) -> None:
    job = gateway.submit("a", "to-cancel", FOREVER)
    dashboard.sign_in("a", "submitter", "sam")
    dashboard.open(f"/ui/jobs/{job}")
    dashboard.wait_for_state("#job-state", "running")
    dashboard.mark()

    dashboard.find("#cancel").click()
    question = dashboard.confirm()

    assert "to-cancel" in question, question
    assert dashboard.notice() == "Done."
    dashboard.wait_for_state("#job-state", "cancelled")
    dashboard.wait_until(lambda: not dashboard.find_all("#cancel"), "the cancel button to go")
    dashboard.wait_until(
        lambda: "sam" in dashboard.content('#events li[data-type="cancelled"]'),
        "the cancellation by sam in the events",
    )
    dashboard.assert_not_reloaded()
    assert gateway.job(job)["state"] == "cancelled"


def test_going_back_in_the_dialog_cancels_nothing(dashboard: Dashboard, gateway: Gateway) -> None:
    job = gateway.submit("a", "kept", FOREVER)
    dashboard.sign_in("a", "submitter", "sam")
    dashboard.open(f"/ui/jobs/{job}")
    dashboard.wait_for_state("#job-state", "running")

    dashboard.find("#cancel").click()
    dashboard.wait_until(lambda: dashboard.find("#confirm").is_displayed(), "the dialog")
    dashboard.find("#confirm-no").click()

    dashboard.wait_until(lambda: not dashboard.find("#confirm").is_displayed(), "it to close")
    assert not dashboard.find("#notice").is_displayed()
    assert gateway.job(job)["state"] == "running"
    assert dashboard.find_all("#cancel")


def test_a_viewer_has_no_cancel_button_and_a_forged_cancel_is_refused(
    dashboard: Dashboard, gateway: Gateway
) -> None:
    job = gateway.submit("a", "watched", FOREVER)
    dashboard.sign_in("a", "viewer", "vic")
    dashboard.open(f"/ui/jobs/{job}")
    dashboard.wait_for_state("#job-state", "running")

    assert dashboard.find_all("#cancel") == []
    assert dashboard.fetch_status("POST", f"/v1/jobs/{job}/cancel") == 403
    assert dashboard.fetch_status("POST", f"/v1/jobs/{job}/cancel", csrf=False) == 403

    assert gateway.job(job)["state"] == "running"
    assert dashboard.attribute("#job-state", "data-state") == "running"
