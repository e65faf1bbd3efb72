"""Fixtures of the browser tests: one `muster serve` (local backend, one GPU, tenants a and b)
for the whole package, one headless Chromium, and a clean cluster after each module.

Everything is skipped, with what to install, when Debian's chromium or chromium-driver is
missing. A failing test leaves a screenshot of the page it was on, named after it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
from selenium import webdriver

from tests.acceptance.local_helpers import call, local_dirs, start, wait_for
from tests.browser.dashboard import Dashboard, Gateway, chromium, headless_chromium, output_dir

TENANTS = ("a", "b")
QUOTA = {
    "cpu": "8",
    "memory": "16Gi",
    "gpu": 1,
    "max_running_jobs": 10,
    "max_queued_jobs": 100,
}
UNFINISHED = ("queued", "admitted", "running")


@pytest.fixture(scope="package")
def gateway() -> Iterator[Gateway]:
    chromium()  # skip before starting anything
    with local_dirs() as dirs:
        process = start(dirs, MUSTER_LOCAL_GPUS="1")
        try:
            for tenant in TENANTS:
                status, body = call(
                    "PUT", f"{process.url}/v1/admin/tenants/{tenant}", {"quota": QUOTA}
                )
                assert status == 201, body
            yield Gateway(url=process.url, dirs=dirs)
        finally:
            process.close()


@pytest.fixture(scope="package")
def driver() -> Iterator[webdriver.Chrome]:
    with headless_chromium() as browser:
        yield browser


@pytest.fixture
def dashboard(driver: webdriver.Chrome, gateway: Gateway) -> Dashboard:
    driver.delete_all_cookies()  # each test signs in as whom it needs
    return Dashboard(driver, gateway)


@pytest.fixture(scope="module", autouse=True)
def clean_cluster(gateway: Gateway) -> Iterator[None]:
    """After each module: every unfinished job cancelled and every GPU share released, so the
    next module starts on an empty cluster."""
    yield
    url = gateway.url
    for state in UNFINISHED:
        status, listed = call("GET", f"{url}/v1/jobs?state={state}&limit=200")
        assert status == 200, listed
        for job in listed["items"]:
            call("POST", f"{url}/v1/jobs/{job['id']}/cancel")

    def idle() -> bool:
        status, cluster = call("GET", f"{url}/v1/cluster")
        return status == 200 and cluster["free"] == cluster["capacity"]

    wait_for(idle, 30, "the cluster to be free again")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item) -> Any:
    report = yield
    page = item.funcargs.get("dashboard") if hasattr(item, "funcargs") else None
    if report.failed and report.when == "call" and isinstance(page, Dashboard):
        with contextlib.suppress(Exception):
            page.driver.save_screenshot(str(output_dir() / f"FAILED-{item.name}.png"))
    return report
