"""Driving the dashboard in a real browser: the gateway the tests share, sign-in through
`muster ui`'s one-time links, pages that are followed live, and screenshots.

A page counts as open once its event stream is connected (``#live-status`` says "live"), so an
event that happens after ``Dashboard.open`` returns is never missed. Nothing here sleeps: every
wait polls with ``WebDriverWait``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from tests.acceptance.gateway_process import MUSTER, clean_env
from tests.acceptance.local_helpers import LocalDirs, call, submit, wait_for

NO_CHROMIUM = "no Chromium: install Debian's chromium and chromium-driver packages (.ci/run does)"
ROOT = Path(__file__).resolve().parents[2]
WAIT = 30.0  # seconds: a job's whole life here takes a few
T = TypeVar("T")

#: A replica that runs until it is stopped.
FOREVER = "import signal\nprint('holding', flush=True)\nwhile True: signal.pause()\n"


def waiting_for(release: Path, before: str = "started", after: str = "finished") -> str:
    """A replica that prints ``before``, waits until ``release`` exists, then prints ``after``
    and ends well."""
    return (
        "import pathlib, time\n"
        f"print({before!r}, flush=True)\n"
        f"while not pathlib.Path({str(release)!r}).exists(): time.sleep(0.05)\n"
        f"print({after!r}, flush=True)\n"
    )


def chromium() -> tuple[str, str]:
    """The paths of chromium and chromedriver; the tests are skipped without either."""
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if browser is None or driver is None:
        pytest.skip(NO_CHROMIUM)
    return browser, driver


@contextlib.contextmanager
def headless_chromium(*, back_forward_cache: bool = False) -> Iterator[webdriver.Chrome]:
    """A headless Chromium, quit afterwards."""
    binary, chromedriver = chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in (
        "--headless=new",
        "--no-sandbox",  # we run as root
        "--disable-dev-shm-usage",
        "--window-size=1280,900",
    ):
        options.add_argument(argument)
    if not back_forward_cache:
        # A page left behind stays in the back/forward cache with its event stream and log
        # streams open, and a few such pages fill the browser's six connections to the gateway
        # (test_navigation.py shows it): here each test begins with pages of its own.
        options.add_argument("--disable-features=BackForwardCache")
    browser = webdriver.Chrome(options=options, service=Service(chromedriver))
    try:
        yield browser
    finally:
        browser.quit()


def output_dir() -> Path:
    """Where this run's screenshots go: $MUSTER_TEST_OUTPUT/screenshots, else the checkout's
    test-output/screenshots (ignored by git)."""
    base = os.environ.get("MUSTER_TEST_OUTPUT")
    found = (Path(base) if base else ROOT / "test-output") / "screenshots"
    found.mkdir(parents=True, exist_ok=True)
    return found


@dataclass(frozen=True)
class Gateway:
    """The `muster serve` the browser tests share: local backend, one GPU, tenants a and b."""

    url: str
    dirs: LocalDirs

    def submit(self, tenant: str, name: str, code: str, *, gpu: float = 0, **extra: Any) -> str:
        """Submit a one-replica job running ``code`` (Python, unbuffered); its id."""
        resources: dict[str, Any] = {"cpu": "250m", "memory": "64Mi"}
        if gpu:
            resources["gpu"] = gpu
        replica = {
            "count": 1,
            "image": "python",
            "command": ["python3", "-u", "-c", code],
            "resources": resources,
            **extra.pop("replica", {}),
        }
        spec = {"tenant": tenant, "name": name, "replicas": {"worker": replica}, **extra}
        return str(submit(self.url, spec)["id"])

    def job(self, job_id: str) -> dict[str, Any]:
        status, body = call("GET", f"{self.url}/v1/jobs/{job_id}")
        assert status == 200, body
        return body  # type: ignore[no-any-return]

    def wait_for_state(self, job_id: str, state: str) -> None:
        wait_for(lambda: self.job(job_id)["state"] == state, WAIT, f"job {job_id} to be {state}")

    def cancel(self, job_id: str, reason: str | None = None) -> dict[str, Any]:
        body = None if reason is None else {"reason": reason}
        status, answer = call("POST", f"{self.url}/v1/jobs/{job_id}/cancel", body)
        assert status == 200, answer
        return answer  # type: ignore[no-any-return]

    def sign_in_link(self, *flags: str) -> str:
        """A one-time sign-in link, as `muster ui` prints it (a platform admin's without flags)."""
        result = subprocess.run(
            [*MUSTER, "ui", "--url", self.url, *flags],
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        lines = result.stdout.splitlines()
        assert len(lines) == 1, result.stdout
        assert lines[0].startswith(f"{self.url}/ui/login?code="), lines
        return lines[0]


class Dashboard:
    """One browser on the shared gateway's dashboard."""

    def __init__(self, driver: WebDriver, gateway: Gateway) -> None:
        self.driver = driver
        self.gateway = gateway

    # --- signing in ------------------------------------------------------------------------------

    def sign_in(self, tenant: str | None = None, role: str = "viewer", user: str = "") -> None:
        """Sign the browser in through a fresh `muster ui` link: as ``user`` with ``role`` in
        ``tenant``, or as a platform admin without a tenant."""
        flags = ("--tenant", tenant, "--role", role, "--user", user) if tenant else ()
        self.follow_link(self.gateway.sign_in_link(*flags))
        self.wait_until(
            lambda: (shown := self.text("#whoami")) and (not user or shown == user),
            "the page to name the signed-in user",
        )

    def follow_link(self, link: str) -> None:
        """Open a sign-in link and press its page's Sign in button (opening it signs no one in,
        so a link preview cannot use it up)."""
        self.driver.get(link)
        self.wait_until(lambda: self.find_all("#sign-in"), "the sign-in button")
        self.find_all("#sign-in")[0].click()

    # --- pages -----------------------------------------------------------------------------------

    def open(self, path: str) -> None:
        """Load ``path``, and wait until it follows the event stream if it follows one (error
        pages and the admin page do not)."""
        self.driver.get(self.gateway.url + path)
        if self.driver.execute_script("return document.body.dataset.events || ''"):
            self.wait_until(lambda: self.text("#live-status") == "live", f"{path} to go live")

    def mark(self) -> None:
        """Mark this document: `assert_not_reloaded` fails once another has replaced it."""
        self.driver.execute_script("window.__marker = 1")

    def assert_not_reloaded(self) -> None:
        assert self.driver.execute_script("return window.__marker") == 1, "the page was reloaded"

    def find(self, css: str) -> WebElement:
        return self.driver.find_element(By.CSS_SELECTOR, css)

    def find_all(self, css: str) -> list[WebElement]:
        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def text(self, css: str) -> str | None:
        """The text of the first element ``css`` matches; None when none does."""
        return self._read(lambda: self.find(css).text if self.find_all(css) else None)

    def attribute(self, css: str, name: str) -> str | None:
        found = self.find_all(css)
        return self._read(lambda: found[0].get_attribute(name)) if found else None

    def content(self, css: str) -> str:
        """The text content of the first element ``css`` matches, hidden or not ("" for none)."""
        return str(
            self.driver.execute_script(
                "const e = document.querySelector(arguments[0]); return e ? e.textContent : '';",
                css,
            )
        )

    def wait_until(self, condition: Callable[[], T], what: str, timeout: float = WAIT) -> T:
        """Poll ``condition`` (a live part may be swapped under it) until it is truthy."""
        found = WebDriverWait(self.driver, timeout, poll_frequency=0.1).until(
            lambda _: self._read(condition), message=f"timed out waiting for {what}"
        )
        assert found is not None  # until returns a truthy value only
        return found

    def wait_for_state(self, css: str, state: str, timeout: float = WAIT) -> None:
        """Wait until the element ``css`` says ``state`` in its data-state."""
        try:
            self.wait_until(
                lambda: self.attribute(css, "data-state") == state, f"{css} to be {state}", timeout
            )
        except TimeoutException as exc:
            shown = self.attribute(css, "data-state")
            raise AssertionError(f"{css} is {shown} after {timeout} s, not {state}") from exc

    @staticmethod
    def _read(condition: Callable[[], T]) -> T | None:
        try:
            return condition()
        except StaleElementReferenceException:  # swapped by a live update: read again
            return None

    # --- actions ---------------------------------------------------------------------------------

    def confirm(self) -> str:
        """Confirm the open dialog; the question it asked."""
        self.wait_until(lambda: self.find("#confirm").is_displayed(), "the confirmation dialog")
        question = self.find("#confirm-text").text
        self.find("#confirm-yes").click()
        return question

    def notice(self) -> str:
        """The result of the last action, once shown."""
        return self.wait_until(
            lambda: self.find("#notice").text if self.find("#notice").is_displayed() else "",
            "the notice",
        )

    def fetch_status(self, method: str, path: str, *, csrf: bool = True) -> int:
        """The status the gateway answers the page's own ``fetch`` of ``path``."""
        return int(
            self.driver.execute_async_script(
                """
                const [method, path, csrf, done] = arguments;
                const headers = {};
                if (csrf) {
                  headers["X-CSRF-Token"] =
                    document.querySelector("meta[name=csrf-token]").content;
                }
                fetch(path, {method, headers, credentials: "same-origin"})
                  .then((r) => done(r.status), () => done(-1));
                """,
                method,
                path,
                csrf,
            )
        )

    def screenshot(self, name: str) -> Path:
        path = output_dir() / f"{name}.png"
        assert self.driver.save_screenshot(str(path)), path
        assert path.read_bytes().startswith(b"\x89PNG"), path
        return path
