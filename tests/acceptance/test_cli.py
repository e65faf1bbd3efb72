"""The client commands (``muster submit``, ``jobs``, ``status``, ``logs``, ``cancel``, ``tenants``)
run as a user runs them: a subprocess talking HTTP to a real ``muster serve``.

One gateway serves the whole module. Its static backend has one node that is down, so every job
stays queued and gets a queue position from the admission loop; each test submits its own jobs.
"""

from __future__ import annotations

import http.server
import json
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.acceptance.gateway_process import MUSTER, GatewayProcess, clean_env
from tests.acceptance.test_serve import NODES, TENANT, _request, _stop_leftover_postgres

COMMAND_TIMEOUT = 20.0
QUEUE_TIMEOUT = 10.0
ID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


def _spec(name: str, **fields: Any) -> dict[str, Any]:
    return {
        "name": name,
        "tenant": "acme",
        "framework": "pytorch",
        "replicas": {
            "master": {"image": "trainer:1", "resources": {"cpu": "2", "memory": "4Gi"}},
            "worker": {"count": 3, "image": "trainer:1"},
        },
        **fields,
    }


@pytest.fixture(scope="module")
def gateway() -> Iterator[str]:
    """A gateway's URL, with tenant acme; its data directory is gone afterwards."""
    data_dir = Path(tempfile.mkdtemp(prefix="mc-", dir="/tmp"))
    nodes = data_dir / "nodes.yaml"
    nodes.write_text(NODES)
    process = GatewayProcess(
        {
            "MUSTER_DATA_DIR": str(data_dir),
            "MUSTER_BACKEND": "static",
            "MUSTER_NODES_FILE": str(nodes),
            "MUSTER_ADMISSION_INTERVAL": "0.5",
        }
    )
    try:
        url = process.start()
        status, tenant = _request("PUT", f"{url}/v1/admin/tenants/acme", TENANT)
        assert status == 201, tenant
        yield url
    finally:
        process.close()
        _stop_leftover_postgres(data_dir)
        shutil.rmtree(data_dir, ignore_errors=True)


def muster(
    *args: str, url: str, stdin: str | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run ``muster ARGS`` against ``url`` (as MUSTER_URL) and return what it printed."""
    result = subprocess.run(
        [*MUSTER, *args],
        env=clean_env(MUSTER_URL=url, **env),
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        check=False,
    )
    assert "Traceback" not in result.stdout + result.stderr, result.stdout + result.stderr
    return result


def _submitted(url: str, spec: dict[str, Any]) -> str:
    status, job = _request("POST", f"{url}/v1/jobs", spec)
    assert status == 201, job
    return str(job["id"])


def test_submit_yaml_file(gateway: str, tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(
        "name: yaml-job\n"
        "tenant: acme\n"
        "replicas:\n"
        "  worker: {count: 2, image: 'trainer:1', resources: {cpu: '1', memory: 1Gi}}\n"
        "labels: {team: ranking}\n"
    )
    result = muster("submit", str(path), url=gateway)
    assert result.returncode == 0, result.stderr
    match = re.fullmatch(rf"submitted yaml-job as ({ID}) \(queued\)\n", result.stdout)
    assert match, result.stdout
    status, job = _request("GET", f"{gateway}/v1/jobs/{match.group(1)}")
    assert (status, job["labels"]) == (200, {"team": "ranking"})


def test_submit_json_from_stdin_takes_the_tenant_flag(gateway: str) -> None:
    spec = _spec("json-job")
    del spec["tenant"]
    result = muster("submit", "-", "--tenant", "acme", url=gateway, stdin=json.dumps(spec))
    assert result.returncode == 0, result.stderr
    match = re.fullmatch(rf"submitted json-job as ({ID}) \(queued\)\n", result.stdout)
    assert match, result.stdout
    status, job = _request("GET", f"{gateway}/v1/jobs/{match.group(1)}")
    assert (status, job["tenant"], job["framework"]) == (200, "acme", "pytorch")


def test_submit_invalid_spec_prints_each_pointer(gateway: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: Bad_Name\ntenant: acme\nreplicas:\n  worker: {count: 0, image: x}\n")
    result = muster("submit", str(path), url=gateway)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert lines[0].startswith("muster: The request is invalid: "), result.stderr
    pointers = {line.split(":")[0].strip() for line in lines[1:]}
    assert pointers == {"/name", "/replicas/worker/count"}, result.stderr
    assert all(line.startswith("  /") for line in lines[1:]), result.stderr
    assert result.stdout == ""


def test_submit_unreadable_or_unparsable_file(gateway: str, tmp_path: Path) -> None:
    missing = muster("submit", str(tmp_path / "nope.yaml"), url=gateway)
    assert missing.returncode == 1
    assert missing.stderr.startswith(f"muster: cannot read {tmp_path / 'nope.yaml'}: ")
    listed = muster("submit", "-", url=gateway, stdin="- a\n- b\n")
    assert listed.returncode == 1
    assert "must hold one job spec or TFJob (a mapping), not a list" in listed.stderr


def test_submit_several_files_and_documents_answers_each_job_in_one_batch(
    gateway: str, tmp_path: Path
) -> None:
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(
        "\n---\n".join(json.dumps(_spec(name)) for name in ("sweep-a", "Bad_Name", "sweep-c"))
        + "\n---\n"
    )
    single = tmp_path / "single.json"
    single.write_text(json.dumps(_spec("sweep-d")))
    args = ("submit", str(sweep), str(single), "--idempotency-key", f"sweep-{uuid.uuid4()}")
    result = muster(*args, url=gateway)
    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    names = [re.fullmatch(rf"submitted (\S+) as {ID} \(queued\)", line) for line in lines]
    assert [m.group(1) for m in names if m] == ["sweep-a", "sweep-c", "sweep-d"], result.stdout
    errors = result.stderr.splitlines()
    assert errors[0].startswith(f"muster: {sweep} (document 2): The request is invalid: ")
    assert errors[1].startswith("  /name: "), result.stderr
    assert errors[-1] == "muster: 1 of 4 jobs were not submitted"
    # The same keys again: the same jobs, nothing new written.
    again = muster(*args, url=gateway)
    assert again.stdout == result.stdout
    assert again.returncode == 1


def test_jobs_table_and_json(gateway: str) -> None:
    first = _submitted(gateway, _spec("list-a", labels={"suite": "jobs"}))
    second = _submitted(gateway, _spec("list-b", labels={"suite": "jobs"}))
    result = muster("jobs", "--label", "suite=jobs", url=gateway)
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["ID", "NAME", "TENANT", "STATE", "REASON", "AGE", "QUEUE"]
    assert [row.split()[:4] for row in rows] == [
        [first[:8], "list-a", "acme", "queued"],
        [second[:8], "list-b", "acme", "queued"],
    ]
    assert all(re.fullmatch(r"\d+[smhd]", row.split()[-2]) for row in rows), result.stdout
    # Columns line up: every row starts its NAME where the header does.
    assert {row.index("list-") for row in rows} == {header.index("NAME")}

    paged = muster("jobs", "--label", "suite=jobs", "--limit", "1", "--all", "--json", url=gateway)
    assert paged.returncode == 0, paged.stderr
    assert [job["id"] for job in json.loads(paged.stdout)["items"]] == [first, second]
    one = muster("jobs", "--label", "suite=jobs", "--limit", "1", url=gateway)
    assert len(one.stdout.splitlines()) == 2
    assert "--all" in one.stderr


def test_status_shows_queue_position_replicas_and_events(gateway: str) -> None:
    job_id = _submitted(gateway, _spec("status-job"))
    deadline = time.monotonic() + QUEUE_TIMEOUT
    while True:
        result = muster("status", job_id, url=gateway)
        assert result.returncode == 0, result.stderr
        if re.search(r"^queue: +\d+ overall, \d+ in acme$", result.stdout, re.MULTILINE):
            break
        assert time.monotonic() < deadline, f"no queue position:\n{result.stdout}"
        time.sleep(0.3)
    out = result.stdout
    assert re.search(rf"^id: +{job_id}$", out, re.MULTILINE), out
    assert re.search(r"^state: +queued$", out, re.MULTILINE), out
    assert re.search(r"^reason: +InsufficientCapacity$", out, re.MULTILINE), out
    assert re.search(r"^  master +1 +2 +4Gi +0 +trainer:1$", out, re.MULTILINE), out
    assert re.search(r"^  worker +3 +1 +1Gi +0 +trainer:1$", out, re.MULTILINE), out
    assert re.search(r"^  \S+Z +submitted +queued +-$", out, re.MULTILINE), out

    raw = muster("status", job_id, "--json", url=gateway)
    assert raw.returncode == 0, raw.stderr
    assert json.loads(raw.stdout)["queue"]["tenant_position"] >= 1


def test_cancel(gateway: str) -> None:
    job_id = _submitted(gateway, _spec("cancel-me"))
    result = muster("cancel", job_id, url=gateway)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"cancelled cancel-me ({job_id})\n"
    status = muster("status", job_id, url=gateway)
    assert re.search(r"^state: +cancelled$", status.stdout, re.MULTILINE), status.stdout
    assert re.search(r"queued->cancelled +Cancelled$", status.stdout, re.MULTILINE), status.stdout


def test_unknown_job_prints_the_api_message(gateway: str) -> None:
    missing = str(uuid.uuid4())
    for command in ("status", "cancel", "logs"):
        result = muster(command, missing, url=gateway)
        assert result.returncode == 1, (command, result.stderr)
        assert result.stderr == f"muster: Not found: job {missing} does not exist\n", command


def test_logs_on_a_backend_without_replicas_prints_the_detail(gateway: str) -> None:
    job_id = _submitted(gateway, _spec("no-logs"))
    result = muster("logs", job_id, "--replica", "worker-0", url=gateway)
    assert result.returncode == 1
    assert result.stderr.startswith("muster: Not found: "), result.stderr
    assert result.stdout == ""


def test_tenants_table_and_json(gateway: str) -> None:
    result = muster("tenants", url=gateway)
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split() == [
        "NAME",
        "NAMESPACE",
        "CPU",
        "MEMORY",
        "GPU",
        "RUNNING",
        "QUEUED",
        "MAX_PRIORITY",
        "COHORT",
        "BORROWED",
        "LENT",
    ]
    acme = next(row.split() for row in rows if row.startswith("acme "))
    assert acme[:6] == ["acme", "acme", "0/8", "0/32Gi", "0/0", "0/2"], result.stdout
    assert re.fullmatch(r"\d+/10", acme[6]), result.stdout
    assert acme[7] == "0", result.stdout  # no admin has raised its priority ceiling
    assert acme[8:] == ["-", "-", "-"], result.stdout  # in no cohort: borrows and lends nothing

    raw = muster("tenants", "--json", url=gateway)
    assert raw.returncode == 0, raw.stderr
    (tenant,) = json.loads(raw.stdout)["items"]
    assert (tenant["name"], tenant["quota"]["max_queued_jobs"]) == ("acme", 10)
    assert tenant["queued_jobs"] >= 0


@pytest.fixture(scope="module")
def closed_url() -> Iterator[str]:
    """A loopback URL where nothing listens: the port stays bound (so no one takes it), unheard."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.mark.parametrize(
    "args",
    [
        ("jobs",),
        ("jobs", "--json"),
        ("status", "00000000-0000-0000-0000-000000000000"),
        ("cancel", "00000000-0000-0000-0000-000000000000"),
        ("logs", "00000000-0000-0000-0000-000000000000", "--follow"),
        ("tenants",),
        ("submit", "-"),
    ],
)
def test_no_gateway_exits_2_with_a_hint(closed_url: str, args: tuple[str, ...]) -> None:
    result = muster(*args, url=closed_url, stdin=json.dumps(_spec("orphan")))
    assert result.returncode == 2
    assert result.stderr == (
        f"muster: cannot reach Muster at {closed_url} (is `muster serve` running?)\n"
    )
    assert result.stdout == ""


def test_malformed_url_is_a_config_error() -> None:
    result = muster("jobs", url="ftp://example.org")
    assert result.returncode == 2
    assert (
        result.stderr
        == "muster: MUSTER_URL='ftp://example.org': must be an http:// or https:// URL\n"
    )


class _Recorder(http.server.BaseHTTPRequestHandler):
    """Answers every GET with no tenants and keeps each request's Authorization header."""

    seen: list[str | None] = []

    def do_GET(self) -> None:
        self.seen.append(self.headers.get("Authorization"))
        body = b'{"items": []}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_token_and_url_flags_win_and_loopback_skips_the_proxy(closed_url: str) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        # A proxy that refuses every connection: a request through it would exit 2.
        proxies = {"http_proxy": closed_url, "HTTP_PROXY": closed_url, "no_proxy": ""}
        from_env = muster("tenants", url=url, MUSTER_TOKEN="env-token", **proxies)
        from_flags = muster(
            "tenants", "--url", url, "--token", "flag-token", url=closed_url, MUSTER_TOKEN="x"
        )
        without = muster("tenants", url=url, MUSTER_ISSUER_KEY="/nonexistent/issuer-key.json")
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    for result in (from_env, from_flags, without):
        assert result.returncode == 0, result.stderr
    # The command's own token goes only to a server that proves it holds the issuer's key: see
    # test_cli_own_token.py.
    assert _Recorder.seen == ["Bearer env-token", "Bearer flag-token", None]


def test_cohorts_and_one_cohorts_members_with_what_they_borrow_and_lend(gateway: str) -> None:
    # After every other test of the gateway's tenants: two more tenants, in one cohort.
    status, body = _request("PUT", f"{gateway}/v1/admin/cohorts/team", {"description": "ml"})
    assert status == 201, body
    for name, lend in (("beta", None), ("gamma", {"cpu": "2"})):
        tenant = {**TENANT, "cohort": "team"}
        if lend is not None:
            tenant = {**tenant, "quota": {**TENANT["quota"], "lending_limit": lend}}
        status, body = _request("PUT", f"{gateway}/v1/admin/tenants/{name}", tenant)
        assert status == 201, body

    listed = muster("cohorts", url=gateway)
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    assert header.split() == ["NAME", "MEMBERS", "DESCRIPTION"]
    assert rows[0].split() == ["team", "beta,gamma", "ml"], listed.stdout

    shown = muster("cohort", "team", url=gateway)
    assert shown.returncode == 0, shown.stderr
    header, *rows = shown.stdout.splitlines()
    assert header.split() == [
        "MEMBER",
        "NOMINAL",
        "BORROWED",
        "LENT",
        "BORROWING_LIMIT",
        "LENDING_LIMIT",
    ]
    assert rows[0].split() == ["beta", "cpu=8,memory=32Gi", "-", "-", "-", "-"], shown.stdout
    assert rows[1].split() == ["gamma", "cpu=8,memory=32Gi", "-", "-", "-", "cpu=2"]
    assert rows[-1] == "idle to lend: cpu=10,memory=64Gi", shown.stdout

    missing = muster("cohort", "nope", url=gateway)
    assert missing.returncode == 1
    assert missing.stderr.startswith("muster: "), missing.stderr


def test_priority_classes_with_their_values_and_the_tenants_granted_each(gateway: str) -> None:
    for name, body in (
        ("serving", {"value": 900, "preemptible": False, "description": "online retrains"}),
        ("batch", {"value": -100}),
    ):
        status, created = _request("PUT", f"{gateway}/v1/admin/priority-classes/{name}", body)
        assert status == 201, created
    status, tenant = _request(
        "PATCH", f"{gateway}/v1/admin/tenants/acme", {"priority_classes": ["serving"]}
    )
    assert status == 200, tenant

    listed = muster("priority-classes", url=gateway)
    as_json = muster("priority-classes", "--json", url=gateway)

    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    assert header.split() == ["NAME", "VALUE", "PREEMPTIBLE", "TENANTS", "DESCRIPTION"]
    assert [row.split() for row in rows] == [
        ["serving", "900", "no", "acme", "online", "retrains"],
        ["batch", "-100", "yes", "-"],
    ], listed.stdout
    assert as_json.returncode == 0, as_json.stderr
    assert [c["name"] for c in json.loads(as_json.stdout)["items"]] == ["serving", "batch"]
