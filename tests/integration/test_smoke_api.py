from __future__ import annotations

from tests.openapi_check import CheckedClient

TENANT = {"quota": {"cpu": "100", "memory": "1Ti", "gpu": 8, "max_running_jobs": 10,
                    "max_queued_jobs": 100}}


async def test_submitted_job_reads_back(api: CheckedClient) -> None:
    assert (await api.put("/v1/admin/tenants/search", json=TENANT)).status == 201
    job = {"name": "wd", "tenant": "search", "framework": "tensorflow",
           "replicas": {"worker": {"count": 2, "image": "img"}}}
    created = await api.post("/v1/jobs", json=job)
    assert created.status == 201, created.text
    got = await api.get(created.headers["Location"])
    assert got.body["state"] == "queued"
