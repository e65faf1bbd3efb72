"""``muster tenants`` shows each tenant's cohort and what it borrows and lends."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from gateway.cli_client import _tenants

NOTHING = {"cpu": "0", "memory": "0", "gpu": 0}


def status(name: str, **fields: Any) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": name,
        "quota": {
            "cpu": "4",
            "memory": "16Gi",
            "gpu": 2,
            "max_running_jobs": 5,
            "max_queued_jobs": 10,
        },
        "usage": {"cpu": "6", "memory": "1Gi", "gpu": 0},
        "running_jobs": 1,
        "queued_jobs": 0,
        "max_priority": 0,
        "cohort": None,
        "borrowed": NOTHING,
        "lent": NOTHING,
        **fields,
    }


class Tenants:
    """The two calls ``muster tenants`` makes, answered from a list."""

    def __init__(self, statuses: list[dict[str, Any]]) -> None:
        self.statuses = {s["name"]: s for s in statuses}

    def list_tenants(self) -> dict[str, Any]:
        return {"items": [{"name": name} for name in self.statuses]}

    def tenant_status(self, name: str) -> dict[str, Any]:
        return self.statuses[name]


def test_the_table_shows_the_cohort_and_what_each_tenant_borrows_and_lends(
    capsys: pytest.CaptureFixture[str],
) -> None:
    client = Tenants(
        [
            status("search", cohort="pool", borrowed={"cpu": "2", "memory": "0", "gpu": 0.5}),
            status("ads", cohort="pool", lent={"cpu": "2", "memory": "512Mi", "gpu": 0}),
            status("solo"),
        ]
    )

    _tenants(client, argparse.Namespace(output="table"))  # type: ignore[arg-type]

    header, *rows = capsys.readouterr().out.splitlines()
    assert header.split()[-3:] == ["COHORT", "BORROWED", "LENT"]
    assert [row.split()[-3:] for row in rows] == [
        ["pool", "cpu=2,gpu=0.5", "-"],
        ["pool", "-", "cpu=2,memory=512Mi"],
        ["-", "-", "-"],
    ]
