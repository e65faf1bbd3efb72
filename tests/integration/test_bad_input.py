"""Malformed requests: each is refused with the right status and an RFC 9457 problem, and writes
nothing.

Every case runs against a database that already holds the tenant ``search``, so a body that is
valid apart from the one thing a case breaks would be accepted. After each request the row counts
of jobs, job_events, tenants and audit_log must be what they were before it.

A case that exposes a gateway bug is marked ``xfail(strict=True)`` through ``Case.bug``, so the
bug stays visible and its fix shows up as an XPASS that asks for the mark to go.
"""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.integration.helpers import create_tenant, job_spec, row_counts, tenant_body
from tests.openapi_check import CheckedClient, Response

LIMIT = 1024 * 1024
UNKNOWN_ID = "5b0c8f4e-3d1a-4c55-9a7e-0f1e2d3c4b5a"
FALLBACK_DETAIL = "the job spec is invalid"  # check_job_spec's catch-all for the whole document
NO_BODY = object()


@dataclass(frozen=True)
class Case:
    """One malformed request and what the gateway must answer."""

    id: str
    status: int
    body: Any = NO_BODY  # a JSON value, sent as application/json
    raw: bytes | None = None  # or raw bytes, sent as they are
    method: str = "POST"
    path: str = "/v1/jobs"
    headers: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] | None = None
    chunked: bool = False  # send ``raw`` with chunked transfer encoding, without Content-Length
    pointer: str | None = None  # for 422: a JSON pointer that must be among the errors
    bug: str | None = None  # the request exposes a gateway bug: xfail(strict) with this reason

    def param(self) -> Any:
        marks = [pytest.mark.xfail(strict=True, reason=self.bug)] if self.bug else []
        return pytest.param(self, id=self.id, marks=marks)


def replica(**fields: Any) -> dict[str, Any]:
    """A worker replica with ``fields`` set on it."""
    return {"count": 2, "image": "reg/wd:1", **fields}


def with_worker(**fields: Any) -> dict[str, Any]:
    return job_spec(replicas={"worker": replica(**fields)})


def with_resources(**resources: Any) -> dict[str, Any]:
    return with_worker(resources={"cpu": "1", "memory": "1Gi", **resources})


def tensorflow(**replicas: dict[str, Any]) -> dict[str, Any]:
    return job_spec(framework="tensorflow", replicas=replicas)


def pytorch(**replicas: dict[str, Any]) -> dict[str, Any]:
    return job_spec(framework="pytorch", replicas=replicas)


def one(count: int = 1) -> dict[str, Any]:
    return {"count": count, "image": "reg/wd:1"}


def with_env(name: str, value: Any = "1") -> dict[str, Any]:
    return with_worker(env={name: value})


def with_callback(**callback: Any) -> dict[str, Any]:
    return job_spec(callback=callback)


def tenant_put(name: str = "fresh", **body: Any) -> dict[str, Any]:
    """Keyword arguments for a Case that PUTs tenant ``name`` with ``body`` as its JSON."""
    return {"method": "PUT", "path": f"/v1/admin/tenants/{name}", "body": body}


def quota(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = tenant_body(**fields)
    return body


VALID = job_spec()
VALID_BYTES = json.dumps(VALID).encode()
SYNTAX_CASES = [
    Case("malformed-json", 400, raw=b'{"name": "wd",'),
    Case("trailing-garbage-after-json", 400, raw=VALID_BYTES + b" x"),
    Case("single-quoted-json", 400, raw=b"{'name': 'wd'}"),
    Case("empty-body", 400, raw=b""),
    Case("whitespace-only-body", 400, raw=b" \r\n\t "),
    Case("no-body-at-all", 400),
    Case(
        "duplicate-top-level-key",
        400,
        raw=b'{"name": "a", "name": "b", "tenant": "search", "replicas": {}}',
    ),
    Case(
        "duplicate-nested-key",
        400,
        raw=b'{"name": "wd", "tenant": "search", "replicas": {"worker": {"image": "a", '
        b'"image": "b"}}}',
    ),
    Case("nan-literal", 400, raw=VALID_BYTES[:-1] + b', "priority": NaN}'),
    Case("negative-infinity-literal", 400, raw=VALID_BYTES[:-1] + b', "priority": -Infinity}'),
    Case("invalid-utf8", 400, raw=b'{"name": "w\xff\xfe", "tenant": "search"}'),
    Case("utf16-body", 400, raw=VALID_BYTES.decode().encode("utf-16")),
    Case("nested-too-deeply", 400, raw=b"[" * 100_000),
    Case(
        "integer-with-5000-digits",
        400,
        raw=VALID_BYTES[:-1] + b', "priority": ' + b"9" * 5000 + b"}",
    ),
    Case("idempotency-key-256-chars", 400, body=VALID, headers={"Idempotency-Key": "k" * 256}),
    Case("idempotency-key-not-printable", 400, body=VALID, headers={"Idempotency-Key": "a\tb"}),
]

SIZE_AND_MEDIA_CASES = [
    Case("body-over-1mib-with-content-length", 413, raw=b" " * (LIMIT + 1)),
    Case("json-over-1mib-with-content-length", 413, raw=b'{"a": "' + b"x" * LIMIT + b'"}'),
    Case("body-over-1mib-chunked", 413, raw=b" " * (LIMIT + 1), chunked=True),
    Case(
        "tenant-body-over-1mib",
        413,
        method="PUT",
        path="/v1/admin/tenants/fresh",
        raw=b" " * (LIMIT + 1),
    ),
    Case(
        "media-type-xml",
        415,
        raw=b"<job><name>wd</name></job>",
        headers={"Content-Type": "application/xml"},
    ),
    # Jobs may come as YAML (Kubernetes manifests), so broken YAML is a malformed body there ...
    Case("yaml-not-parsing", 400, raw=b"name: [wd\n", headers={"Content-Type": "application/yaml"}),
    # ... while tenants are JSON only.
    Case(
        "tenant-media-type-yaml",
        415,
        method="PUT",
        path="/v1/admin/tenants/fresh",
        raw=b"quota: {}\n",
        headers={"Content-Type": "application/yaml"},
    ),
    Case(
        "media-type-multipart",
        415,
        raw=VALID_BYTES,
        headers={"Content-Type": "multipart/form-data; boundary=x"},
    ),
    Case(
        "tenant-media-type-xml",
        415,
        method="PUT",
        path="/v1/admin/tenants/fresh",
        raw=b"<quota/>",
        headers={"Content-Type": "application/xml"},
    ),
]

ROUTE_CASES = [
    Case("get-unknown-job-id", 404, method="GET", path=f"/v1/jobs/{UNKNOWN_ID}"),
    Case("get-non-uuid-job-id", 404, method="GET", path="/v1/jobs/not-a-uuid"),
    Case("cancel-unknown-job-id", 404, path=f"/v1/jobs/{UNKNOWN_ID}/cancel"),
    Case("cancel-non-uuid-job-id", 404, path="/v1/jobs/12345/cancel"),
    Case("events-of-unknown-job", 404, method="GET", path=f"/v1/jobs/{UNKNOWN_ID}/events"),
    Case("events-of-non-uuid-job", 404, method="GET", path="/v1/jobs/x/events"),
    Case("unknown-route", 404, method="GET", path="/v1/nothing-here"),
    Case("unknown-route-post", 404, path="/v2/jobs", body=VALID),
    Case("get-unknown-tenant", 404, method="GET", path="/v1/admin/tenants/nobody"),
    Case("get-tenant-upper-case-name", 404, method="GET", path="/v1/admin/tenants/Search"),
    Case(
        "put-tenant-upper-case-name",
        404,
        **tenant_put("Search", **quota()),
    ),
    Case(
        "put-tenant-name-with-underscore",
        404,
        **tenant_put("a_b", **quota()),
    ),
    Case("delete-job-collection", 405, method="DELETE", path="/v1/jobs"),
    Case("put-job", 405, method="PUT", path=f"/v1/jobs/{UNKNOWN_ID}", body=VALID),
    Case("get-cancel", 405, method="GET", path=f"/v1/jobs/{UNKNOWN_ID}/cancel"),
    Case("post-healthz", 405, path="/healthz", body={}),
    Case("post-tenant", 405, path="/v1/admin/tenants/search", body=quota()),
]

QUERY_CASES = [
    Case("list-limit-zero", 400, method="GET", params={"limit": "0"}),
    Case("list-limit-not-a-number", 400, method="GET", params={"limit": "abc"}),
    Case("list-limit-over-500", 400, method="GET", params={"limit": "501"}),
    Case("list-limit-negative", 400, method="GET", params={"limit": "-3"}),
    Case("list-state-unknown", 400, method="GET", params={"state": "bogus"}),
    Case("list-cursor-garbage", 400, method="GET", params={"cursor": "garbage"}),
    Case("list-cursor-empty", 400, method="GET", params={"cursor": ""}),
    Case(
        "list-cursor-beyond-bigint",
        400,
        method="GET",
        # base64url("s" + 30 nines): a well-formed cursor whose number overflows bigint.
        params={"cursor": "czk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5OQ"},
    ),
    Case("list-unknown-query-parameter", 400, method="GET", params={"sort": "name"}),
    Case("list-label-selector-without-value", 400, method="GET", params={"label": "team"}),
    Case("list-label-selector-bad-key", 400, method="GET", params={"label": "-x=y"}),
]

JOB_SCHEMA_CASES = [
    Case("unknown-top-level-field", 422, body=job_spec(colour="red"), pointer="/colour"),
    Case(
        "unknown-replica-field",
        422,
        body=with_worker(gpus=1),
        pointer="/replicas/worker/gpus",
    ),
    Case(
        "unknown-resources-field",
        422,
        body=with_resources(disk="10Gi"),
        pointer="/replicas/worker/resources/disk",
    ),
    Case(
        "unknown-run-policy-field",
        422,
        body=job_spec(run_policy={"retries": 3}),
        pointer="/run_policy/retries",
    ),
    Case(
        "unknown-callback-field",
        422,
        body=with_callback(url="https://hooks.example.com/m", secret="s"),
        pointer="/callback/secret",
    ),
    Case(
        "missing-name",
        422,
        body={"tenant": "search", "replicas": VALID["replicas"]},
        pointer="/name",
    ),
    Case(
        "missing-image",
        422,
        body=job_spec(replicas={"worker": {"count": 1}}),
        pointer="/replicas/worker/image",
    ),
    Case("name-as-number", 422, body=job_spec() | {"name": 42}, pointer="/name"),
    Case("replicas-as-list", 422, body=job_spec(replicas=[replica()]), pointer="/replicas"),
    Case("replicas-empty", 422, body=job_spec(replicas={}), pointer="/replicas"),
    Case("count-as-string", 422, body=with_worker(count="2"), pointer="/replicas/worker/count"),
    Case(
        "count-as-float",
        422,
        body=with_worker(count=2.0),
        pointer="/replicas/worker/count",
    ),
    Case(
        "port-as-float",
        422,
        body=with_worker(port=2222.0),
        pointer="/replicas/worker/port",
    ),
    Case(
        "grace-as-float",
        422,
        body=with_worker(termination_grace_period_seconds=5.0),
        pointer="/replicas/worker/termination_grace_period_seconds",
    ),
    Case(
        "grace-as-string",
        422,
        body=with_worker(termination_grace_period_seconds="5"),
        pointer="/replicas/worker/termination_grace_period_seconds",
    ),
    Case(
        "grace-as-bool",
        422,
        body=with_worker(termination_grace_period_seconds=True),
        pointer="/replicas/worker/termination_grace_period_seconds",
    ),
    Case(
        "grace-negative",
        422,
        body=with_worker(termination_grace_period_seconds=-1),
        pointer="/replicas/worker/termination_grace_period_seconds",
    ),
    Case("env-value-as-number", 422, body=with_env("K", 1), pointer="/replicas/worker/env/K"),
    Case(
        "command-as-string",
        422,
        body=with_worker(command="python train.py"),
        pointer="/replicas/worker/command",
    ),
    Case("args-item-as-number", 422, body=with_worker(args=[1]), pointer="/replicas/worker/args/0"),
    Case(
        "exclusive-cpus-as-string",
        422,
        body=with_worker(exclusive_cpus="yes"),
        pointer="/replicas/worker/exclusive_cpus",
    ),
    Case("priority-as-string", 422, body=job_spec(priority="high"), pointer="/priority"),
    Case("priority-5000", 422, body=job_spec(priority=5000), pointer="/priority"),
    Case("framework-unknown", 422, body=job_spec(framework="jax"), pointer="/framework"),
    Case("body-is-a-json-array", 422, body=[VALID], pointer=""),
    Case("body-is-a-json-string", 422, body="wd", pointer=""),
    Case("body-is-null", 422, body=None, pointer=""),
    Case("body-is-an-empty-object", 422, body={}, pointer="/replicas"),
]

QUANTITY_CASES = [
    Case(
        "memory-4Gx",
        422,
        body=with_resources(memory="4Gx"),
        pointer="/replicas/worker/resources/memory",
    ),
    Case(
        "cpu-minus-1", 422, body=with_resources(cpu="-1"), pointer="/replicas/worker/resources/cpu"
    ),
    Case(
        "cpu-minus-1-as-number",
        422,
        body=with_resources(cpu=-1),
        pointer="/replicas/worker/resources/cpu",
    ),
    Case(
        "cpu-1.5.5", 422, body=with_resources(cpu="1.5.5"), pointer="/replicas/worker/resources/cpu"
    ),
    Case("cpu-empty", 422, body=with_resources(cpu=""), pointer="/replicas/worker/resources/cpu"),
    Case(
        "memory-4-space-Gi",
        422,
        body=with_resources(memory="4 Gi"),
        pointer="/replicas/worker/resources/memory",
    ),
    Case(
        "cpu-finer-than-1m",
        422,
        body=with_resources(cpu="0.0001"),
        pointer="/replicas/worker/resources/cpu",
    ),
    Case(
        "memory-fractional-byte",
        422,
        body=with_resources(memory="0.5"),
        pointer="/replicas/worker/resources/memory",
    ),
    Case("cpu-zero", 422, body=with_resources(cpu="0"), pointer="/replicas/worker/resources/cpu"),
    Case(
        "memory-zero",
        422,
        body=with_resources(memory=0),
        pointer="/replicas/worker/resources/memory",
    ),
    Case(
        "memory-8Ei-beyond-any-node",
        422,
        body=with_resources(memory="8Ei"),
        pointer="/replicas/worker/resources/memory",
    ),
    Case(
        "cpu-exponent-out-of-range",
        422,
        body=with_resources(cpu="1e40"),
        pointer="/replicas/worker/resources/cpu",
    ),
    Case("gpu-1.5", 422, body=with_resources(gpu=1.5), pointer="/replicas/worker/resources/gpu"),
    Case(
        "gpu-0.333", 422, body=with_resources(gpu=0.333), pointer="/replicas/worker/resources/gpu"
    ),
    Case("gpu-minus-1", 422, body=with_resources(gpu=-1), pointer="/replicas/worker/resources/gpu"),
    Case(
        "gpu-as-string", 422, body=with_resources(gpu="1"), pointer="/replicas/worker/resources/gpu"
    ),
    Case(
        "gpu-2000-beyond-any-node",
        422,
        body=with_resources(gpu=2000),
        pointer="/replicas/worker/resources/gpu",
    ),
]

MEANING_CASES = [
    Case("count-zero", 422, body=with_worker(count=0), pointer="/replicas/worker/count"),
    Case("count-above-cap", 422, body=with_worker(count=513), pointer="/replicas/worker/count"),
    Case(
        "grace-above-the-admins-maximum",
        422,
        body=with_worker(termination_grace_period_seconds=301),
        pointer="/replicas/worker/termination_grace_period_seconds",
    ),
    Case(
        "grace-beyond-int64",
        422,
        body=with_worker(termination_grace_period_seconds=10**30),
        pointer="/replicas/worker/termination_grace_period_seconds",
    ),
    Case(
        "total-pods-above-cap-across-roles",
        422,
        body=tensorflow(worker=one(300), ps=one(300)),
        pointer="/replicas",
    ),
    Case("name-upper-case", 422, body=job_spec(name="Wide"), pointer="/name"),
    Case("name-leading-dash", 422, body=job_spec(name="-x"), pointer="/name"),
    Case("name-underscore", 422, body=job_spec(name="a_b"), pointer="/name"),
    Case("name-64-chars", 422, body=job_spec(name="a" * 64), pointer="/name"),
    Case("name-starts-with-digit", 422, body=job_spec(name="1wide"), pointer="/name"),
    Case("tenant-not-a-dns-label", 422, body=job_spec(tenant="Search_1"), pointer="/tenant"),
    Case("tenant-does-not-exist", 422, body=job_spec(tenant="nobody"), pointer="/tenant"),
    Case(
        "role-not-a-dns-label",
        422,
        body=job_spec(replicas={"Worker": one()}),
        pointer="/replicas/Worker",
    ),
    Case(
        "role-longer-than-20",
        422,
        body=job_spec(replicas={"a" * 21: one()}),
        pointer="/replicas/" + "a" * 21,
    ),
    Case("tensorflow-only-ps", 422, body=tensorflow(ps=one(2)), pointer="/replicas"),
    Case(
        "tensorflow-role-driver",
        422,
        body=tensorflow(worker=one(), driver=one()),
        pointer="/replicas/driver",
    ),
    Case("pytorch-role-ps", 422, body=pytorch(master=one(), ps=one()), pointer="/replicas/ps"),
    Case("pytorch-without-master", 422, body=pytorch(worker=one(2)), pointer="/replicas"),
    Case(
        "two-chiefs",
        422,
        body=tensorflow(chief=one(2), worker=one()),
        pointer="/replicas/chief/count",
    ),
    Case(
        "chief-and-master",
        422,
        body=tensorflow(chief=one(), master=one(), worker=one()),
        pointer="/replicas/master",
    ),
    Case(
        "env-TF_CONFIG",
        422,
        body=with_env("TF_CONFIG", "{}"),
        pointer="/replicas/worker/env/TF_CONFIG",
    ),
    Case(
        "env-CUDA_VISIBLE_DEVICES",
        422,
        body=with_env("CUDA_VISIBLE_DEVICES", "0"),
        pointer="/replicas/worker/env/CUDA_VISIBLE_DEVICES",
    ),
    Case("env-PET_X", 422, body=with_env("PET_X"), pointer="/replicas/worker/env/PET_X"),
    Case(
        "env-MUSTER_prefix", 422, body=with_env("MUSTER_X"), pointer="/replicas/worker/env/MUSTER_X"
    ),
    Case("env-name-1X", 422, body=with_env("1X"), pointer="/replicas/worker/env/1X"),
    Case(
        "env-name-with-slash",
        422,
        body=with_env("A/B"),
        pointer="/replicas/worker/env/A~1B",
    ),
    Case(
        "label-key-reserved-muster-dev",
        422,
        body=job_spec(labels={"muster.dev/x": "y"}),
        pointer="/labels/muster.dev~1x",
    ),
    Case(
        "label-key-reserved-kubeflow",
        422,
        body=job_spec(labels={"training.kubeflow.org/job-name": "y"}),
        pointer="/labels/training.kubeflow.org~1job-name",
    ),
    Case("label-key-invalid", 422, body=job_spec(labels={"a b": "y"}), pointer="/labels/a b"),
    Case(
        "label-value-invalid",
        422,
        body=job_spec(labels={"team": "-ranking"}),
        pointer="/labels/team",
    ),
    Case(
        "node-selector-key-invalid",
        422,
        body=with_worker(node_selector={"not a key": "x"}),
        pointer="/replicas/worker/node_selector/not a key",
    ),
    Case(
        "exclusive-cpus-with-500m",
        422,
        body=with_worker(exclusive_cpus=True, resources={"cpu": "500m"}),
        pointer="/replicas/worker/exclusive_cpus",
    ),
    Case(
        "restart-policy-sometimes",
        422,
        body=with_worker(restart_policy="Sometimes"),
        pointer="/replicas/worker/restart_policy",
    ),
    Case(
        "clean-pod-policy-bogus",
        422,
        body=job_spec(run_policy={"clean_pod_policy": "Bogus"}),
        pointer="/run_policy/clean_pod_policy",
    ),
    Case(
        "backoff-limit-negative",
        422,
        body=job_spec(run_policy={"backoff_limit": -1}),
        pointer="/run_policy/backoff_limit",
    ),
    Case(
        "image-with-space",
        422,
        body=with_worker(image="reg/wd 1"),
        pointer="/replicas/worker/image",
    ),
    Case(
        "toleration-exists-with-value",
        422,
        body=with_worker(tolerations=[{"key": "gpu", "operator": "Exists", "value": "x"}]),
        pointer="/replicas/worker/tolerations/0/value",
    ),
    Case(
        "toleration-equal-without-key",
        422,
        body=with_worker(tolerations=[{"operator": "Equal", "value": "x"}]),
        pointer="/replicas/worker/tolerations/0/key",
    ),
    Case("callback-url-ftp", 422, body=with_callback(url="ftp://x"), pointer="/callback/url"),
    Case(
        "callback-url-with-credentials",
        422,
        body=with_callback(url="https://u:p@h/x"),
        pointer="/callback/url",
    ),
    Case("callback-url-relative", 422, body=with_callback(url="/hooks"), pointer="/callback/url"),
    Case(
        "callback-event-exploded",
        422,
        body=with_callback(url="https://h/x", events=["job.exploded"]),
        pointer="/callback/events/0",
    ),
]

# PostgreSQL stores neither a NUL character nor an unpaired surrogate in text or jsonb; a body
# holding one is refused, naming the field, before anything reaches the database.
UNSTORABLE_CASES = [
    Case(
        "toleration-seconds-beyond-64-bits",
        422,
        body=with_worker(
            tolerations=[{"key": "gpu", "operator": "Exists", "tolerationSeconds": 2**64}]
        ),
        pointer="/replicas/worker/tolerations/0/tolerationSeconds",
    ),
    Case(
        "deadline-beyond-64-bits",
        422,
        body=job_spec(run_policy={"active_deadline_seconds": 2**64}),
        pointer="/run_policy/active_deadline_seconds",
    ),
    Case(
        "string-with-nul-character",
        422,
        body=with_worker(args=["a\u0000b"]),
        pointer="/replicas/worker/args/0",
    ),
    Case(
        "string-with-lone-surrogate",
        422,
        body=with_env("K", "\ud800"),
        pointer="/replicas/worker/env/K",
    ),
    Case(
        "key-with-lone-surrogate",
        422,
        body=job_spec(labels={"\udc00": "x"}),
        pointer="/labels",
    ),
    Case(
        "tenant-namespace-with-nul",
        422,
        **tenant_put(**quota(), namespace="a\u0000"),
        pointer="/namespace",
    ),
]

IMPOSSIBLE_CASES = [
    Case(
        "job-bigger-than-the-tenant-quota",
        422,
        body=job_spec(replicas={"worker": replica(count=20, resources={"cpu": "8"})}),
        pointer="/replicas",
    ),
    Case(
        "pod-bigger-than-every-node",
        422,
        body=job_spec(replicas={"worker": replica(count=1, resources={"cpu": "65"})}),
        pointer="/replicas",
    ),
    # The tenant has the default priority ceiling, 0.
    Case("priority-above-the-tenant-ceiling", 422, body=job_spec(priority=1), pointer="/priority"),
    Case(
        "priority-1000-above-the-tenant-ceiling",
        422,
        body=job_spec(priority=1000),
        pointer="/priority",
    ),
]

TENANT_CASES = [
    Case(
        "tenant-negative-max-running-jobs",
        422,
        **tenant_put(**quota(max_running_jobs=-1)),
        pointer="/quota/max_running_jobs",
    ),
    Case("tenant-memory-lots", 422, **tenant_put(**quota(memory="lots")), pointer="/quota/memory"),
    Case(
        "tenant-memory-negative-number",
        422,
        **tenant_put(**quota(memory=-5)),
        pointer="/quota/memory",
    ),
    Case("tenant-cpu-minus-1", 422, **tenant_put(**quota(cpu="-1")), pointer="/quota/cpu"),
    Case("tenant-gpu-as-string", 422, **tenant_put(**quota(gpu="8")), pointer="/quota/gpu"),
    Case("tenant-gpu-0.333", 422, **tenant_put(**quota(gpu=0.333)), pointer="/quota/gpu"),
    Case("tenant-unknown-field", 422, **tenant_put(**quota(), owner="x"), pointer="/owner"),
    Case(
        "tenant-unknown-quota-field",
        422,
        **tenant_put(**quota(disk="1Ti")),
        pointer="/quota/disk",
    ),
    Case("tenant-missing-quota", 422, **tenant_put(weight=2), pointer="/quota"),
    Case(
        "tenant-quota-missing-cpu",
        422,
        **tenant_put(quota={k: v for k, v in quota()["quota"].items() if k != "cpu"}),
        pointer="/quota/cpu",
    ),
    Case("tenant-weight-zero", 422, **tenant_put(**quota(), weight=0), pointer="/weight"),
    Case(
        "tenant-max-priority-1001",
        422,
        **tenant_put(**quota(), max_priority=1001),
        pointer="/max_priority",
    ),
    Case(
        "tenant-max-priority-minus-1001",
        422,
        **tenant_put(**quota(), max_priority=-1001),
        pointer="/max_priority",
    ),
    Case(
        "tenant-max-priority-as-string",
        422,
        **tenant_put(**quota(), max_priority="high"),
        pointer="/max_priority",
    ),
    Case(
        "tenant-max-priority-fraction",
        422,
        **tenant_put(**quota(), max_priority=1.5),
        pointer="/max_priority",
    ),
    Case(
        "tenant-max-priority-in-the-quota",
        422,
        **tenant_put(**quota(max_priority=10)),
        pointer="/quota/max_priority",
    ),
    Case(
        "patch-tenant-max-priority-5000",
        422,
        method="PATCH",
        path="/v1/admin/tenants/search",
        body={"max_priority": 5000},
        pointer="/max_priority",
    ),
    Case(
        "patch-tenant-max-priority-true",
        422,
        method="PATCH",
        path="/v1/admin/tenants/search",
        body={"max_priority": True},
        pointer="/max_priority",
    ),
    Case(
        "patch-tenant-max-priority-null",
        422,
        method="PATCH",
        path="/v1/admin/tenants/search",
        body={"max_priority": None},
        pointer="/max_priority",
    ),
    Case(
        "tenant-namespace-not-a-label",
        422,
        **tenant_put(**quota(), namespace="Team_A"),
        pointer="/namespace",
    ),
    Case(
        "tenant-body-is-an-array",
        422,
        method="PUT",
        path="/v1/admin/tenants/fresh",
        body=[],
        pointer="",
    ),
]

CASES = (
    SYNTAX_CASES
    + SIZE_AND_MEDIA_CASES
    + ROUTE_CASES
    + QUERY_CASES
    + JOB_SCHEMA_CASES
    + QUANTITY_CASES
    + MEANING_CASES
    + UNSTORABLE_CASES
    + IMPOSSIBLE_CASES
    + TENANT_CASES
)


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(data), 64 * 1024):
        yield data[start : start + 64 * 1024]


async def send(api: CheckedClient, case: Case) -> Response:
    headers = dict(case.headers)
    kwargs: dict[str, Any] = {}
    if case.raw is not None:
        headers.setdefault("Content-Type", "application/json")
        # Large bodies go as a stream (aiohttp warns about large bytes); chunked ones without
        # a Content-Length at all.
        kwargs["data"] = _chunks(case.raw) if case.chunked else io.BytesIO(case.raw)
    elif case.body is not NO_BODY:
        headers.setdefault("Content-Type", "application/json")
        kwargs["data"] = json.dumps(case.body).encode()
    if case.params is not None:
        kwargs["params"] = case.params
    return await api.request(case.method, case.path, headers=headers, **kwargs)


def assert_problem(response: Response, status: int) -> None:
    assert response.status == status, response.text
    assert response.content_type == "application/problem+json", response.content_type
    problem = response.body
    assert isinstance(problem, dict), response.text
    for member in ("type", "title", "detail"):
        assert isinstance(problem.get(member), str), problem
        assert problem[member], problem
    assert problem.get("status") == status, problem


@pytest.fixture
async def tenant(api: CheckedClient) -> None:
    await create_tenant(api)


@pytest.mark.usefixtures("tenant")
@pytest.mark.parametrize("case", [case.param() for case in CASES])
async def test_malformed_request_is_refused_and_writes_nothing(
    api: CheckedClient, engine: AsyncEngine, case: Case
) -> None:
    before = await row_counts(engine)

    response = await send(api, case)

    assert_problem(response, case.status)
    if case.status == 405:
        assert response.headers.get("Allow"), "a 405 says which methods are allowed"
    if case.status == 422:
        pointers = [error["pointer"] for error in response.body.get("errors", [])]
        assert case.pointer in pointers, response.text
    assert await row_counts(engine) == before


def _resolves(document: Any, pointer: str) -> bool:
    """Whether ``pointer`` (RFC 6901) names a value that exists in ``document``."""
    node = document
    for part in pointer.split("/")[1:]:
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return False
    return True


POINTER_CASES = [case.param() for case in CASES if case.status == 422 and case.body is not NO_BODY]


@pytest.mark.usefixtures("tenant")
@pytest.mark.parametrize("case", POINTER_CASES)
async def test_every_error_pointer_locates_a_field_of_the_body(
    api: CheckedClient, case: Case
) -> None:
    """Pointers name a value of the body that was sent (its parent, for a missing field); ""
    is only for a body that is not an object, or check_job_spec's catch-all."""
    response = await send(api, case)

    assert response.status == 422, response.text
    for error in response.body["errors"]:
        where = error["pointer"]
        if where == "":
            assert not isinstance(case.body, dict) or error["detail"] == FALLBACK_DETAIL, error
        else:
            # An unknown field is in the body; a missing one is not, but its parent is.
            parent = where.rsplit("/", 1)[0]
            missing_ok = error["detail"] != "unknown field"
            assert _resolves(case.body, where) or (missing_ok and _resolves(case.body, parent)), (
                error
            )
