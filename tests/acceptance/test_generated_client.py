"""The OpenAPI document serves generated clients: openapi-python-client (the usual Python
generator) builds a client from a running gateway's document with no warning, and that client
submits, reads and cancels a job through its typed models.

The one setting given to the generator maps the YAML request body (``application/yaml``, which
``POST /v1/jobs`` also takes) to JSON: a generated client sends JSON.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.acceptance.gateway_process import admin_token, served_with_tenants

QUOTA = {"cpu": "64", "memory": "256Gi", "gpu": 8, "max_running_jobs": 10, "max_queued_jobs": 50}
SCRIPT = textwrap.dedent(
    """
    import json, sys
    from muster_client import AuthenticatedClient
    from muster_client.api.jobs import cancel_job, get_job, submit_job
    from muster_client.models import CancelRequest, Job, JobSpec

    url, token = sys.argv[1], sys.argv[2]
    client = AuthenticatedClient(base_url=url, token=token)
    spec = JobSpec.from_dict(
        {"name": "generated", "tenant": "search",
         "replicas": {"worker": {"count": 2, "image": "reg/x:1"}}}
    )
    created = submit_job.sync(client=client, body=spec, idempotency_key="gen-1")
    assert isinstance(created, Job), created
    read = get_job.sync(id=created.id, client=client)
    assert isinstance(read, Job), read
    cancelled = cancel_job.sync(id=created.id, client=client, body=CancelRequest(reason="done"))
    assert isinstance(cancelled, Job), cancelled
    print(json.dumps({"id": str(created.id), "read": read.state, "after": cancelled.state,
                      "replicas": sorted(read.spec.replicas.to_dict())}))
    """
)


@pytest.fixture(scope="module")
def gateway() -> Iterator[str]:
    with served_with_tenants({"search": {"namespace": "team-search", "quota": QUOTA}}) as url:
        yield url


def test_a_generated_client_submits_reads_and_cancels_a_job(gateway: str, tmp_path: Path) -> None:
    with urllib.request.urlopen(f"{gateway}/openapi.json", timeout=30) as answer:
        (tmp_path / "openapi.json").write_bytes(answer.read())
    (tmp_path / "config.yaml").write_text(
        "content_type_overrides:\n  application/yaml: application/json\n"
    )
    bin_dir = Path(sys.executable).parent
    generator = shutil.which("openapi-python-client") or str(bin_dir / "openapi-python-client")
    site = tmp_path / "site"
    site.mkdir()
    generated = subprocess.run(
        [
            generator,
            "generate",
            "--path",
            str(tmp_path / "openapi.json"),
            "--meta",
            "none",
            "--output-path",
            str(site / "muster_client"),
            "--config",
            str(tmp_path / "config.yaml"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={"PATH": f"{bin_dir}:/usr/bin:/bin"},
    )
    output = generated.stdout + generated.stderr
    assert generated.returncode == 0, output
    assert "warning" not in output.lower(), output
    used = subprocess.run(
        [sys.executable, "-c", SCRIPT, gateway, admin_token()],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PYTHONPATH": str(site), "PATH": f"{bin_dir}:/usr/bin:/bin"},
    )
    assert used.returncode == 0, used.stdout + used.stderr
    result = json.loads(used.stdout)
    assert (result["read"], result["after"], result["replicas"]) == (
        "queued",
        "cancelled",
        ["worker"],
    )
