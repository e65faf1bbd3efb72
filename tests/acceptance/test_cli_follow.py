"""The client commands a newcomer leans on, run as a user runs them against a real gateway whose
static backend simulates runs (``true`` succeeds, ``false`` fails, ``sleep N`` runs N seconds):

- a job id may be given by any start of it no other visible job's id shares, and an ambiguous
  start is refused saying so;
- every read command prints the API's answer with ``-o json`` or ``-o yaml``, which reads back
  to exactly what the API answers;
- ``muster submit --wait`` follows the job and exits 0, 1 or 3 for succeeded, failed or
  cancelled, and 4 when its ``--timeout`` passes first;
- memory is shown as people write it (``23.5Gi``);
- a second ``muster serve`` on a port in use says so in one line, without a traceback.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.acceptance.gateway_process import MUSTER, GatewayProcess, clean_env
from tests.acceptance.test_cli import muster
from tests.acceptance.test_serve import _request, _stop_leftover_postgres

NODES = 'nodes: [{name: n1, cpu: "64", memory: 1Ti, gpus: 0}]\n'
QUOTA = {"cpu": "64", "memory": "1Ti", "gpu": 0, "max_running_jobs": 100, "max_queued_jobs": 100}


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[str, Path]]:
    """A gateway that simulates runs, with tenant acme; its URL and data directory."""
    data_dir = Path(tempfile.mkdtemp(prefix="mf-", dir="/tmp"))
    nodes = data_dir / "nodes.yaml"
    nodes.write_text(NODES)
    process = GatewayProcess(
        {
            "MUSTER_DATA_DIR": str(data_dir),
            "MUSTER_BACKEND": "static",
            "MUSTER_NODES_FILE": str(nodes),
            "MUSTER_SIMULATE_RUNS": "true",
            "MUSTER_ADMISSION_INTERVAL": "0.2",
        }
    )
    try:
        url = process.start()
        status, tenant = _request("PUT", f"{url}/v1/admin/tenants/acme", {"quota": QUOTA})
        assert status == 201, tenant
        yield url, data_dir
    finally:
        process.close()
        _stop_leftover_postgres(data_dir)
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def gateway(served: tuple[str, Path]) -> str:
    return served[0]


def spec(name: str, command: list[str], memory: str = "1Gi") -> dict[str, Any]:
    return {
        "name": name,
        "tenant": "acme",
        "replicas": {
            "worker": {
                "image": "trainer:1",
                "command": command,
                "resources": {"cpu": "100m", "memory": memory},
            }
        },
    }


def submitted(url: str, body: dict[str, Any]) -> str:
    status, job = _request("POST", f"{url}/v1/jobs", body)
    assert status == 201, job
    return str(job["id"])


# -- ids -------------------------------------------------------------------------------------------


def test_a_unique_start_of_an_id_names_the_job(gateway: str) -> None:
    job_id = submitted(gateway, spec("prefix-one", ["sleep", "600"]))
    others = [j["id"] for j in _request("GET", f"{gateway}/v1/jobs?limit=500")[1]["items"]]
    short = next(
        job_id[:n]
        for n in range(4, 37)
        if sum(other.startswith(job_id[:n]) for other in others) == 1
    )
    shown = muster("status", short, "-o", "json", url=gateway)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["id"] == job_id
    cancelled = muster("cancel", short.upper(), url=gateway)
    assert cancelled.returncode == 0, cancelled.stderr
    assert job_id in cancelled.stdout


def test_an_ambiguous_start_is_refused_naming_two_jobs(gateway: str) -> None:
    for k in range(17):  # 17 ids over 16 hex digits: two share a first digit
        submitted(gateway, spec(f"many-{k}", ["sleep", "600"]))
    ids = [j["id"] for j in _request("GET", f"{gateway}/v1/jobs?limit=500")[1]["items"]]
    digit, _ = Counter(i[0] for i in ids).most_common(1)[0]
    refused = muster("status", digit, url=gateway)
    assert refused.returncode == 1
    assert f"'{digit}' is ambiguous" in refused.stderr
    assert "give more of the id" in refused.stderr
    missing = muster("status", "ffffffff-ffff", url=gateway)
    assert missing.returncode == 1
    assert "no job you may see has an id starting with" in missing.stderr


# -- machine-readable output -----------------------------------------------------------------------


@pytest.mark.parametrize("output", ["json", "yaml"])
def test_read_commands_print_the_apis_answer_in_json_or_yaml(gateway: str, output: str) -> None:
    job_id = submitted(gateway, spec(f"out-{output}", ["sleep", "600"]))
    load = json.loads if output == "json" else yaml.safe_load
    status = muster("status", job_id, "-o", output, url=gateway)
    assert status.returncode == 0, status.stderr
    assert load(status.stdout) == _request("GET", f"{gateway}/v1/jobs/{job_id}")[1]
    tenants = muster("tenants", "-o", output, url=gateway)
    assert tenants.returncode == 0, tenants.stderr
    assert [t["name"] for t in load(tenants.stdout)["items"]] == ["acme"]
    listed = muster("jobs", "-o", output, "--limit", "500", url=gateway)
    assert job_id in {j["id"] for j in load(listed.stdout)["items"]}


def test_memory_is_shown_as_people_write_it(gateway: str) -> None:
    job_id = submitted(gateway, spec("odd-memory", ["sleep", "600"], memory="24683792Ki"))
    shown = muster("status", job_id, url=gateway)
    assert re.search(r"worker\s+1\s+100m\s+23\.5Gi\s", shown.stdout), shown.stdout


# -- submit --wait ---------------------------------------------------------------------------------


def _submit_file(tmp_path: Path, body: dict[str, Any]) -> str:
    path = tmp_path / f"{body['name']}.json"
    path.write_text(json.dumps(body))
    return str(path)


@pytest.mark.parametrize(
    ("command", "code", "state"),
    [(["true"], 0, "succeeded"), (["false"], 1, "failed")],
    ids=["succeeded", "failed"],
)
def test_submit_wait_exits_with_the_jobs_outcome(
    gateway: str, tmp_path: Path, command: list[str], code: int, state: str
) -> None:
    path = _submit_file(tmp_path, spec(f"wait-{state}", command))
    result = muster("submit", path, "--wait", "--timeout", "15", url=gateway)
    assert result.returncode == code, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1].startswith(f"wait-{state}: {state}")


def test_submit_wait_exits_3_when_the_job_is_cancelled(gateway: str, tmp_path: Path) -> None:
    path = _submit_file(tmp_path, spec("wait-cancelled", ["sleep", "600"]))
    waiting = subprocess.Popen(
        [*MUSTER, "submit", path, "--wait", "--timeout", "15"],
        env=clean_env(MUSTER_URL=gateway),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert waiting.stdout is not None
    first = waiting.stdout.readline()
    job_id = re.search(r"as (\S+) ", first)
    assert job_id, first
    cancelled = muster("cancel", job_id.group(1), url=gateway)
    assert cancelled.returncode == 0, cancelled.stderr
    out, err = waiting.communicate(timeout=20)
    assert waiting.returncode == 3, first + out + err
    assert "wait-cancelled: cancelled" in out


def test_submit_wait_stops_at_its_timeout_and_leaves_the_job(gateway: str, tmp_path: Path) -> None:
    path = _submit_file(tmp_path, spec("wait-timeout", ["sleep", "600"]))
    started = time.monotonic()
    result = muster("submit", path, "--wait", "--timeout", "1", url=gateway)
    assert result.returncode == 4, result.stdout + result.stderr
    assert time.monotonic() - started < 15
    assert "not waiting any more" in result.stderr


# -- serve -----------------------------------------------------------------------------------------


def test_a_second_serve_on_a_taken_port_says_so_in_one_line(served: tuple[str, Path]) -> None:
    url, _ = served
    port = url.rsplit(":", 1)[1].rstrip("/")
    other = Path(tempfile.mkdtemp(prefix="mp-", dir="/tmp"))
    try:
        (other / "nodes.yaml").write_text(NODES)
        env = clean_env(
            MUSTER_DATA_DIR=str(other),
            MUSTER_BACKEND="static",
            MUSTER_NODES_FILE=str(other / "nodes.yaml"),
        )
        result = subprocess.run(
            [*MUSTER, "serve", "--port", port],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 2, result.stdout + result.stderr
        assert "Traceback" not in result.stdout + result.stderr
        errors = [line for line in result.stderr.splitlines() if line.startswith("muster:")]
        assert len(errors) == 1, result.stderr
        assert f"port {port}" in errors[0]
        assert "is taken" in errors[0]
    finally:
        _stop_leftover_postgres(other)
        shutil.rmtree(other, ignore_errors=True)


# -- submit --dry-run ------------------------------------------------------------------------------


def _tight_tenant(url: str) -> None:
    quota = {**QUOTA, "cpu": "500m", "max_running_jobs": 10}
    status, _ = _request("PUT", f"{url}/v1/admin/tenants/tight", {"quota": quota})
    assert status in (200, 201)


def _job_count(url: str) -> int:
    return len(_request("GET", f"{url}/v1/jobs?limit=500")[1]["items"])


def test_submit_dry_run_shows_a_job_that_fits_now_and_writes_nothing(
    gateway: str, tmp_path: Path
) -> None:
    before = _job_count(gateway)
    path = _submit_file(tmp_path, spec("dry-fits", ["sleep", "600"]))
    result = muster("submit", path, "--dry-run", url=gateway)
    assert result.returncode == 0, result.stderr
    assert "would store dry-fits for tenant acme:" in result.stdout
    assert "next admission cycle: would admit it now" in result.stdout
    assert _job_count(gateway) == before


def test_submit_dry_run_says_why_a_job_would_wait_for_quota(gateway: str, tmp_path: Path) -> None:
    _tight_tenant(gateway)
    holder = {**spec("tight-holder", ["sleep", "600"]), "tenant": "tight"}
    holder["replicas"]["worker"]["resources"]["cpu"] = "400m"
    submitted(gateway, holder)
    deadline = time.monotonic() + 15
    while _request("GET", f"{gateway}/v1/tenants/tight")[1]["usage"]["cpu"] in ("0", 0):
        assert time.monotonic() < deadline, "the holder was never admitted"
        time.sleep(0.2)
    waiting = {**spec("tight-second", ["sleep", "600"]), "tenant": "tight"}
    waiting["replicas"]["worker"]["resources"]["cpu"] = "400m"
    result = muster("submit", _submit_file(tmp_path, waiting), "--dry-run", url=gateway)
    assert result.returncode == 0, result.stderr
    assert "next admission cycle: would wait: WaitingForQuota: needs 0.4 CPUs" in result.stdout


def test_submit_dry_run_refuses_a_job_that_can_never_run(gateway: str, tmp_path: Path) -> None:
    _tight_tenant(gateway)
    before = _job_count(gateway)
    never = {**spec("tight-never", ["true"]), "tenant": "tight"}
    never["replicas"]["worker"]["resources"]["cpu"] = "2"
    result = muster("submit", _submit_file(tmp_path, never), "--dry-run", url=gateway)
    assert result.returncode == 1
    assert "the job can never run" in result.stderr
    assert _job_count(gateway) == before


# -- events, watch, completion ---------------------------------------------------------------------


def test_events_prints_a_jobs_events_recorded_so_far(gateway: str) -> None:
    job_id = submitted(gateway, spec("evented", ["true"]))
    printed = muster("events", "--job", job_id[:13], url=gateway)
    assert printed.returncode == 0, printed.stderr
    assert re.search(rf"{job_id[:8]}\s+acme\s+submitted", printed.stdout), printed.stdout
    as_json = muster("events", "--job", job_id, "-o", "json", url=gateway)
    first = json.loads(as_json.stdout.split("\n}\n")[0] + "\n}")
    assert (first["job_id"], first["type"]) == (job_id, "submitted")


def test_jobs_watch_prints_the_table_until_stopped(gateway: str) -> None:
    watching = subprocess.Popen(
        [*MUSTER, "jobs", "--watch"],
        env=clean_env(MUSTER_URL=gateway),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert watching.stdout is not None
        lines = [watching.stdout.readline() for _ in range(3)]
        assert lines[1].startswith("-- "), lines
        assert lines[2].split()[:4] == ["ID", "NAME", "TENANT", "STATE"], lines
    finally:
        watching.terminate()
        watching.communicate(timeout=10)  # closes its pipes


def test_status_as_json_reads_back_into_the_clients_model(gateway: str) -> None:
    job_id = submitted(gateway, spec("modelled", ["sleep", "600"]))
    shown = muster("status", job_id, "-o", "json", url=gateway)
    from gateway.client import Client
    from gateway.client_models import Job
    from gateway.settings import ClientSettings
    from tests.acceptance.gateway_process import admin_token

    read = Client(ClientSettings(url=gateway, token=admin_token())).job(job_id)
    assert Job.from_json(json.loads(shown.stdout)) == read


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_completion_scripts_cover_the_commands(shell: str) -> None:
    result = subprocess.run(
        [*MUSTER, "completion", shell],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    for word in ("submit", "--dry-run", "--wait", "events", "--follow", "status"):
        assert word in result.stdout
    if shell == "bash" and shutil.which("bash"):
        checked = subprocess.run(
            ["bash", "-n"], input=result.stdout, capture_output=True, text=True, check=False
        )
        assert checked.returncode == 0, checked.stderr
