"""The contract: Schemathesis runs every check (examples, fuzzing and the stateful phase that
follows the document's links) against a real ``muster serve`` with two tenants, and finds no
failure. The accepted exceptions are in ``schemathesis.toml``, each with its reason."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.acceptance.gateway_process import admin_token, served_with_tenants

ROOT = Path(__file__).resolve().parents[2]
QUOTA = {"cpu": "64", "memory": "256Gi", "gpu": 8, "max_running_jobs": 10, "max_queued_jobs": 50}


@pytest.fixture(scope="module")
def gateway() -> Iterator[str]:
    with served_with_tenants(
        {name: {"namespace": f"team-{name}", "quota": QUOTA} for name in ("search", "ads")}
    ) as url:
        yield url


def test_schemathesis_finds_no_failure_with_every_check(gateway: str) -> None:
    st = shutil.which("st") or str(Path(sys.executable).parent / "st")
    result = subprocess.run(
        [
            st,
            "--no-color",
            "--config-file",
            str(ROOT / "schemathesis.toml"),
            "run",
            f"{gateway}/openapi.json",
            "--checks",
            "all",
            "--phases",
            "examples,fuzzing,stateful",
            "--header",
            f"Authorization: Bearer {admin_token()}",
            "--workers",
            "2",
            "--max-time",
            "90",
            "--seed",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )
    report = result.stdout[-20000:] + result.stderr[-4000:]
    assert result.returncode == 0, report
    assert "Stateful" in result.stdout, report
