"""A tenant's text is shown as text: HTML and script in a job's command, environment, log and
cancel reason appear literally on the dashboard and never run; names and label values cannot
carry HTML at all (the API refuses them).

The page's Content-Security-Policy would also stop an injected inline script, so these tests
look for the injected elements themselves, not only for their effect.
"""

from __future__ import annotations

import pytest

from tests.acceptance.local_helpers import call
from tests.browser.dashboard import Dashboard, Gateway

pytestmark = pytest.mark.slow

PAYLOADS = (
    "<script>window.__xss=1</script>",
    '<img src=x onerror="window.__xss=1">',
    '"><svg onload=window.__xss=1>',
)
ENV_PAYLOAD = "</pre><img src=x onerror=window.__xss=1>"
REASON = " ".join(PAYLOADS)
#: Prints its arguments and its environment's payload, one a line, then runs until stopped.
ECHO = (
    "import os, signal, sys\n"
    "for arg in sys.argv[1:]: print(arg, flush=True)\n"
    "print(os.environ['PAYLOAD'], flush=True)\n"
    "while True: signal.pause()\n"
)
#: Elements that only the payloads could have made.
INJECTED = "img, main script, svg[onload], [onerror], [onload]"


def assert_inert(dashboard: Dashboard) -> None:
    assert dashboard.driver.execute_script("return typeof window.__xss") == "undefined"
    found = dashboard.driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0]), (e) => e.outerHTML)",
        INJECTED,
    )
    assert found == []


@pytest.mark.parametrize(
    "field",
    [
        {"name": "<script>x</script>"},
        {"name": '"><svg onload=alert(1)>'},
        {"labels": {"team": "<img src=x onerror=alert(1)>"}},
        {"labels": {"<b>team</b>": "vision"}},
    ],
    ids=["script-name", "svg-name", "img-label-value", "html-label-key"],
)
def test_the_api_refuses_html_in_names_and_labels(
    gateway: Gateway, field: dict[str, object]
) -> None:
    replica = {
        "count": 1,
        "image": "python",
        "command": ["python3", "-c", "pass"],
        "resources": {"cpu": "250m", "memory": "64Mi"},
    }
    spec = {"tenant": "a", "name": "fine", "replicas": {"worker": replica}, **field}

    status, problem = call("POST", f"{gateway.url}/v1/jobs", spec)

    assert status == 422, problem


def test_html_in_a_jobs_command_env_log_and_cancel_reason_is_shown_as_text(
    dashboard: Dashboard, gateway: Gateway
) -> None:
    job = gateway.submit(
        "a",
        "hostile",
        ECHO,
        labels={"team": "vision"},
        replica={
            "command": ["python3", "-u", "-c", ECHO, *PAYLOADS],
            "env": {"PAYLOAD": ENV_PAYLOAD},
        },
    )
    gateway.wait_for_state(job, "running")
    dashboard.sign_in("a", "submitter", "sam")
    dashboard.open(f"/ui/jobs/{job}")
    dashboard.mark()

    # The log, streamed while the job runs.
    dashboard.wait_until(
        lambda: all(text in dashboard.content("pre.log") for text in (*PAYLOADS, ENV_PAYLOAD)),
        "every payload in the log",
    )
    assert_inert(dashboard)
    # The cancel reason, in the events swapped in live.
    gateway.cancel(job, reason=REASON)
    dashboard.wait_until(
        lambda: REASON in dashboard.content('#events li[data-type="cancelled"] .message'),
        "the cancel reason in the events",
    )
    dashboard.wait_for_state("#job-state", "cancelled")
    dashboard.assert_not_reloaded()
    assert_inert(dashboard)

    # The same page as the server renders it for a finished job.
    dashboard.open(f"/ui/jobs/{job}")
    spec = dashboard.content("pre.spec")
    for text in (*PAYLOADS, ENV_PAYLOAD):
        assert text in spec, spec
    assert REASON in dashboard.content("#job-message")
    assert REASON in dashboard.content('#events li[data-type="cancelled"] .message')
    dashboard.wait_until(
        lambda: dashboard.attribute("pre.log", "data-ended") == "done", "the whole log"
    )
    log = dashboard.content("pre.log")
    for text in (*PAYLOADS, ENV_PAYLOAD):
        assert text in log, log
    assert_inert(dashboard)
    dashboard.screenshot("job-hostile-text")

    dashboard.open("/ui/jobs")
    assert dashboard.find_all(f'#jobs tr[data-job-id="{job}"]')
    assert_inert(dashboard)
