"""The job spec check: what a client submits, checked for meaning and turned into a ``JobSpec``.

The JSON Schema in ``openapi/openapi.yaml`` checks the shape of a body (types, required and unknown
fields). This check says what a schema cannot say well: Kubernetes quantities, GPU fractions,
which roles a framework allows, DNS names, the replica cap, the cap on grace periods (both set
by an admin, passed in as ``SpecLimits``), and the names Muster itself owns.
The job's own fields (name, tenant, framework, priority and priority class, run policy, callback,
labels) are checked here; each replica in ``gateway.domain.jobs.check_replicas``. Whether the
tenant may use the priority class, and so the priority, is the submit's to say (it needs the
tenant's grants: ``gateway.domain.scheduling.priority.resolve``).

Invariants:
- ``check_job_spec`` never raises on any JSON value; it returns every problem it finds, each with a
  JSON pointer, and returns a ``JobSpec`` only when there is none.
- A callback URL is an absolute http(s) URL without credentials; its events are listed once each.
- A job's labels never use a prefix Muster reserves.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from gateway.domain.jobs.check_replicas import check_replicas
from gateway.domain.jobs.collector import Checker, check_enum, check_labels, is_mapping
from gateway.domain.jobs.spec import (
    DEFAULT_CALLBACK_EVENTS,
    PRIORITY_RANGE,
    Callback,
    CallbackEvent,
    CleanPodPolicy,
    Framework,
    JobSpec,
    RunPolicy,
    SpecLimits,
    SuccessPolicy,
)
from gateway.domain.names import DNS_1035_LABEL, DNS_1123_LABEL
from gateway.domain.problems import FieldProblem, pointer


def check_job_spec(raw: object, limits: SpecLimits | None = None) -> JobSpec | list[FieldProblem]:
    """Check a spec's meaning. Returns the typed spec, or every problem found (never both)."""
    checker = Checker(limits or SpecLimits())
    if not is_mapping(raw):
        return [FieldProblem(pointer="", detail="the job spec must be a JSON object")]
    spec = _check_spec(checker, raw)
    if checker.problems or spec is None:
        return checker.problems or [FieldProblem(pointer="", detail="the job spec is invalid")]
    return spec


def _check_spec(c: Checker, raw: Mapping[str, Any]) -> JobSpec | None:
    name = raw.get("name")
    if isinstance(name, str) and not DNS_1035_LABEL.fullmatch(name):
        c.add(
            pointer("name"),
            f"{name!r} is not a DNS-1035 label: lower-case letters, digits and '-', "
            "starting with a letter, at most 63 characters",
        )
    tenant = raw.get("tenant")
    if isinstance(tenant, str) and not DNS_1123_LABEL.fullmatch(tenant):
        c.add(pointer("tenant"), f"{tenant!r} is not a DNS-1123 label")
    framework_raw = raw.get("framework", Framework.GENERIC.value)
    framework: Framework | None = None
    if isinstance(framework_raw, str):
        try:
            framework = Framework(framework_raw)
        except ValueError:
            c.add(
                pointer("framework"),
                f"unknown framework {framework_raw!r}; use one of "
                + ", ".join(f.value for f in Framework),
            )
    priority_class = raw.get("priority_class")
    if isinstance(priority_class, str) and not DNS_1123_LABEL.fullmatch(priority_class):
        c.add(pointer("priority_class"), f"{priority_class!r} is not a DNS-1123 label")
    # A job that names a class and no priority gets the class's value when it is submitted.
    priority = raw.get("priority", 0 if priority_class is None else None)
    low, high = PRIORITY_RANGE
    if isinstance(priority, int) and not isinstance(priority, bool) and not low <= priority <= high:
        c.add(pointer("priority"), f"must be between {low} and {high}")
    replicas = check_replicas(c, raw.get("replicas"), framework)
    run_policy = _check_run_policy(c, raw.get("run_policy", {}))
    callback = _check_callback(c, raw.get("callback"))
    labels = check_labels(c, raw.get("labels", {}), ("labels",))
    if c.problems or framework is None or replicas is None or run_policy is None:
        return None
    if not isinstance(name, str) or not isinstance(tenant, str):
        return None
    if priority_class is not None and not isinstance(priority_class, str):
        return None
    if not isinstance(priority, int) and (priority is not None or priority_class is None):
        return None
    if labels is None:
        return None
    return JobSpec(
        name=name,
        tenant=tenant,
        framework=framework,
        priority=priority,
        priority_class=priority_class,
        replicas=replicas,
        run_policy=run_policy,
        callback=callback,
        labels=labels,
    )


def _check_run_policy(c: Checker, raw: object) -> RunPolicy | None:
    if not is_mapping(raw):
        return None
    where = ("run_policy",)
    clean = check_enum(
        c, CleanPodPolicy, raw.get("clean_pod_policy", "Running"), (*where, "clean_pod_policy")
    )
    success = check_enum(
        c, SuccessPolicy, raw.get("success_policy", "Default"), (*where, "success_policy")
    )
    backoff = raw.get("backoff_limit", 3)
    deadline = raw.get("active_deadline_seconds")
    ready = raw.get("ready_timeout_seconds", 600)
    ttl = raw.get("ttl_seconds_after_finished")
    if not (
        clean
        and success
        and isinstance(backoff, int)
        and isinstance(ready, int)
        and (deadline is None or isinstance(deadline, int))
        and (ttl is None or isinstance(ttl, int))
    ):
        return None
    return RunPolicy(
        backoff_limit=backoff,
        active_deadline_seconds=deadline,
        ready_timeout_seconds=ready,
        clean_pod_policy=clean,
        success_policy=success,
        ttl_seconds_after_finished=ttl,
    )


def _check_callback(c: Checker, raw: object) -> Callback | None:
    if not is_mapping(raw):
        return None
    url = raw.get("url")
    events_raw = raw.get("events", [e.value for e in DEFAULT_CALLBACK_EVENTS])
    if not isinstance(url, str) or not isinstance(events_raw, list):
        return None
    if not re.fullmatch(r"https?://[^\s/?#@]+(/[^\s]*)?", url, flags=re.IGNORECASE):
        c.add(pointer("callback", "url"), "must be an absolute http(s) URL without credentials")
        return None
    events: list[CallbackEvent] = []
    for index, event in enumerate(events_raw):
        value = check_enum(c, CallbackEvent, event, ("callback", "events", index))
        if value is None:
            return None
        if value not in events:
            events.append(value)
    return Callback(url=url, events=tuple(events))
