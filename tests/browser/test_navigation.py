"""Moving between pages as a person does, in a browser with its back/forward cache on (as
Chromium has it by default): the pages left behind must not starve the page shown."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.browser.dashboard import FOREVER, Dashboard, Gateway, headless_chromium

pytestmark = pytest.mark.slow

PROMPTLY = 5  # seconds: a page of the local gateway loads in a fraction of one


@pytest.fixture
def cached_pages(gateway: Gateway) -> Iterator[Dashboard]:
    """A dashboard in a browser that keeps the pages it leaves (Chromium's default)."""
    with headless_chromium(back_forward_cache=True) as browser:
        yield Dashboard(browser, gateway)


def test_pages_left_behind_do_not_hold_the_gateways_connections(
    cached_pages: Dashboard, gateway: Gateway
) -> None:
    job = gateway.submit("a", "followed", FOREVER)
    gateway.wait_for_state(job, "running")
    cached_pages.sign_in()
    for path in (f"/ui/jobs/{job}", "/ui/queue", f"/ui/jobs/{job}"):
        cached_pages.open(path)
    # Were those pages, kept in the cache, to keep their event and log streams open, they would
    # hold five of the browser's six connections to the gateway and the next page would wait
    # for a free one (a minute, before muster.js closed them on pagehide).
    cached_pages.driver.set_page_load_timeout(PROMPTLY)
    cached_pages.driver.set_script_timeout(PROMPTLY)

    cached_pages.driver.get(f"{gateway.url}/ui/cluster")

    cached_pages.wait_until(
        lambda: cached_pages.text("#live-status") == "live", "the page to go live", PROMPTLY
    )
    assert cached_pages.fetch_status("GET", "/v1/cluster") == 200

    # Back to the cached page: it reopens its stream (and its log) and is live again.
    cached_pages.driver.back()
    cached_pages.wait_until(
        lambda: cached_pages.text("#live-status") == "live", "the page to be live again", PROMPTLY
    )
