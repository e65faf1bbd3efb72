"""check_job_spec: the meaning of a job spec, every problem with a pointer, and never a crash."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.api.schema import check as schema_check
from gateway.domain.jobs.check import check_job_spec
from gateway.domain.jobs.spec import (
    CallbackEvent,
    CleanPodPolicy,
    Framework,
    JobSpec,
    RestartPolicy,
    SpecLimits,
    TerminationGrace,
    from_document,
    to_document,
)
from gateway.domain.problems import FieldProblem

GI = 2**30
PROPERTY = settings(database=None, max_examples=300, deadline=None)

# The example of DESIGN.md ("API conventions"), as a client sends it.
DESIGN_EXAMPLE: dict[str, Any] = {
    "name": "wide-deep",
    "tenant": "search",
    "framework": "tensorflow",
    "priority": 0,
    "replicas": {
        "chief": {
            "count": 1,
            "image": "reg/wd:1",
            "command": ["python", "train.py"],
            "args": [],
            "env": {"K": "V"},
            "resources": {"cpu": "4", "memory": "8Gi", "gpu": 0.5},
            "exclusive_cpus": False,
            "restart_policy": "OnFailure",
            "node_selector": {},
            "tolerations": [],
        },
        "worker": {
            "count": 10,
            "image": "reg/wd:1",
            "resources": {"cpu": "8", "memory": "16Gi", "gpu": 1},
        },
        "ps": {"count": 4, "image": "reg/wd:1", "resources": {"cpu": "4", "memory": "32Gi"}},
    },
    "run_policy": {
        "backoff_limit": 3,
        "active_deadline_seconds": None,
        "ready_timeout_seconds": 600,
        "clean_pod_policy": "Running",
        "success_policy": "Default",
    },
    "callback": {
        "url": "https://hooks.example.com/muster",
        "events": ["job.succeeded", "job.failed"],
    },
    "labels": {"team": "ranking"},
}


def accepted(raw: object, limits: SpecLimits | None = None) -> JobSpec:
    result = check_job_spec(raw, limits)
    assert isinstance(result, JobSpec), result
    return result


def pointers(raw: object, limits: SpecLimits | None = None) -> list[str]:
    result = check_job_spec(raw, limits)
    assert isinstance(result, list), result
    return [problem.pointer for problem in result]


def spec(**fields: Any) -> dict[str, Any]:
    """A minimal valid spec: one generic worker; ``fields`` replace top-level entries."""
    base: dict[str, Any] = {
        "name": "wd",
        "tenant": "search",
        "replicas": {"worker": {"image": "img"}},
    }
    base.update(copy.deepcopy(fields))
    return base


def worker(**fields: Any) -> dict[str, Any]:
    return spec(replicas={"worker": {"image": "img", **fields}})


def tf(**replicas: dict[str, Any]) -> dict[str, Any]:
    return spec(framework="tensorflow", replicas=replicas)


def one(count: int = 1) -> dict[str, Any]:
    return {"count": count, "image": "img"}


# -- the example of DESIGN.md ---------------------------------------------------------------------


def test_the_design_example_is_accepted_with_every_amount_in_muster_units() -> None:
    job = accepted(DESIGN_EXAMPLE)

    assert job.framework is Framework.TENSORFLOW
    assert [r.role for r in job.replicas] == ["chief", "ps", "worker"]
    assert job.pod_count == 15
    chief = job.replica("chief")
    assert chief is not None
    assert chief.resources.cpu_millis == 4000
    assert chief.resources.memory_bytes == 8 * GI
    assert chief.resources.gpu_shares == 50
    assert chief.restart_policy is RestartPolicy.ON_FAILURE
    assert chief.env == (("K", "V"),)
    assert chief.command == ("python", "train.py")
    total = job.total()
    assert total.cpu_millis == 4000 + 10 * 8000 + 4 * 4000
    assert total.memory_bytes == (8 + 10 * 16 + 4 * 32) * GI
    assert total.gpu_shares == 50 + 10 * 100
    assert job.callback is not None
    assert job.callback.events == (CallbackEvent.SUCCEEDED, CallbackEvent.FAILED)
    assert job.run_policy.clean_pod_policy is CleanPodPolicy.RUNNING
    assert job.labels == (("team", "ranking"),)


def test_the_design_example_stored_as_a_document_reads_back_equal() -> None:
    job = accepted(DESIGN_EXAMPLE)

    document = to_document(job)

    assert accepted(document) == job
    assert from_document(document) == job
    assert to_document(accepted(document)) == document
    assert schema_check("JobSpec", document) == []


def test_a_class_without_a_priority_leaves_it_to_the_submit_and_reads_back_so() -> None:
    job = accepted(spec(priority_class="high"))
    explicit = accepted(spec(priority_class="high", priority=900))

    assert (job.priority, job.priority_class) == (None, "high")
    assert (explicit.priority, explicit.priority_class) == (900, "high")
    document = to_document(job)
    assert "priority" not in document
    assert accepted(document) == from_document(document) == job
    assert schema_check("JobSpec", document) == []
    assert accepted(spec()).priority_class is None
    # A document stored before priority classes names none.
    stored = to_document(accepted(spec()))
    del stored["priority_class"]
    assert from_document(stored) == accepted(spec())


def test_defaults_are_filled_in() -> None:
    job = accepted(spec())

    assert job.framework is Framework.GENERIC
    assert job.priority == 0
    assert job.callback is None
    (replica,) = job.replicas
    assert replica.count == 1
    assert replica.resources.cpu_millis == 1000
    assert replica.resources.memory_bytes == GI
    assert replica.resources.gpu_shares == 0
    assert replica.restart_policy is RestartPolicy.NEVER
    assert replica.port == 2222
    assert replica.termination_grace_period_seconds is None  # the gateway's default
    assert to_document(job)["replicas"]["worker"]["resources"] == {
        "cpu": "1",
        "memory": "1Gi",
        "gpu": 0,
    }


def test_a_callback_without_events_gets_the_terminal_ones_and_duplicates_collapse() -> None:
    plain = accepted(spec(callback={"url": "https://h/x"}))
    doubled = accepted(spec(callback={"url": "https://h/x", "events": ["job.failed"] * 3}))

    assert plain.callback is not None
    assert set(plain.callback.events) == {
        CallbackEvent.SUCCEEDED,
        CallbackEvent.FAILED,
        CallbackEvent.CANCELLED,
    }
    assert doubled.callback is not None
    assert doubled.callback.events == (CallbackEvent.FAILED,)


def test_the_replica_cap_comes_from_the_limits() -> None:
    limits = SpecLimits(max_replicas=4)

    assert accepted(worker(count=4), limits).pod_count == 4
    assert pointers(worker(count=5), limits) == ["/replicas/worker/count"]
    assert pointers(tf(worker=one(3), ps=one(2)), limits) == ["/replicas"]


GRACE = "/replicas/worker/termination_grace_period_seconds"


@pytest.mark.parametrize("seconds", [0, 1, 45, 300])
def test_a_grace_period_from_0_to_the_maximum_is_the_replicas(seconds: int) -> None:
    (replica,) = accepted(worker(termination_grace_period_seconds=seconds)).replicas

    assert replica.termination_grace_period_seconds == seconds


@pytest.mark.parametrize("seconds", [-1, 301, 10**30])
def test_a_grace_period_below_0_or_above_the_maximum_is_refused_at_its_field(
    seconds: int,
) -> None:
    result = check_job_spec(worker(termination_grace_period_seconds=seconds))

    assert isinstance(result, list), result
    (problem,) = result
    assert problem.pointer == GRACE
    if seconds < 0:
        assert problem.detail == "must be 0 or more seconds"
    else:
        assert (
            problem.detail
            == "must be at most 300 seconds: the longest grace period an admin allows"
        )


def test_the_grace_period_cap_comes_from_the_limits() -> None:
    limits = SpecLimits(max_termination_grace_seconds=60)

    (replica,) = accepted(worker(termination_grace_period_seconds=60), limits).replicas
    refused = check_job_spec(worker(termination_grace_period_seconds=61), limits)

    assert replica.termination_grace_period_seconds == 60
    assert isinstance(refused, list)
    assert [(p.pointer, "at most 60 seconds" in p.detail) for p in refused] == [(GRACE, True)]


def test_a_stored_document_without_a_grace_period_reads_back_as_the_default() -> None:
    document = to_document(accepted(worker(termination_grace_period_seconds=45)))
    assert document["replicas"]["worker"]["termination_grace_period_seconds"] == 45
    del document["replicas"]["worker"]["termination_grace_period_seconds"]  # stored before it

    (replica,) = from_document(document).replicas

    assert replica.termination_grace_period_seconds is None


@pytest.mark.parametrize(
    ("asked", "grace", "expected"),
    [
        (None, TerminationGrace(), 30),
        (45, TerminationGrace(), 45),
        (0, TerminationGrace(), 0),
        (None, TerminationGrace(default_seconds=10, max_seconds=20), 10),
        # Submitted before an admin lowered the cap: capped as it starts.
        (45, TerminationGrace(default_seconds=10, max_seconds=20), 20),
        (None, TerminationGrace(default_seconds=30, max_seconds=5), 5),
    ],
)
def test_a_replicas_grace_is_its_own_else_the_default_never_above_the_cap(
    asked: int | None, grace: TerminationGrace, expected: int
) -> None:
    (replica,) = accepted(worker(termination_grace_period_seconds=asked)).replicas

    assert grace.of(replica) == expected


# -- problems and their pointers ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param([], [""], id="not-an-object"),
        pytest.param("wd", [""], id="a-string"),
        pytest.param(spec(name="Wide"), ["/name"], id="name-upper-case"),
        pytest.param(spec(name="1wd"), ["/name"], id="name-starts-with-digit"),
        pytest.param(spec(tenant="a_b"), ["/tenant"], id="tenant-underscore"),
        pytest.param(spec(framework="jax"), ["/framework"], id="framework-unknown"),
        pytest.param(spec(priority=1001), ["/priority"], id="priority-out-of-range"),
        pytest.param(spec(priority_class="High"), ["/priority_class"], id="class-upper-case"),
        pytest.param(spec(priority_class="a" * 64), ["/priority_class"], id="class-too-long"),
        pytest.param(spec(replicas={}), ["/replicas"], id="no-replicas"),
        pytest.param(tf(ps=one(2)), ["/replicas"], id="tensorflow-without-chief-or-worker"),
        pytest.param(
            tf(worker=one(), driver=one()), ["/replicas/driver"], id="tensorflow-role-driver"
        ),
        pytest.param(
            spec(framework="pytorch", replicas={"master": one(), "ps": one()}),
            ["/replicas/ps"],
            id="pytorch-role-ps",
        ),
        pytest.param(
            spec(framework="pytorch", replicas={"worker": one(2)}),
            ["/replicas"],
            id="pytorch-without-master",
        ),
        pytest.param(tf(chief=one(2), worker=one()), ["/replicas/chief/count"], id="two-chiefs"),
        pytest.param(tf(chief=one(), master=one()), ["/replicas/master"], id="chief-and-master"),
        pytest.param(worker(count=0), ["/replicas/worker/count"], id="count-zero"),
        pytest.param(
            worker(resources={"cpu": "0.0001"}),
            ["/replicas/worker/resources/cpu"],
            id="cpu-finer-than-1m",
        ),
        pytest.param(
            worker(resources={"cpu": "0"}), ["/replicas/worker/resources/cpu"], id="cpu-zero"
        ),
        pytest.param(
            worker(resources={"memory": "0.5"}),
            ["/replicas/worker/resources/memory"],
            id="fractional-byte",
        ),
        pytest.param(
            worker(resources={"gpu": 1.5}), ["/replicas/worker/resources/gpu"], id="gpu-1.5"
        ),
        pytest.param(
            worker(resources={"gpu": "1"}), ["/replicas/worker/resources/gpu"], id="gpu-string"
        ),
        pytest.param(
            worker(exclusive_cpus=True, resources={"cpu": "500m"}),
            ["/replicas/worker/exclusive_cpus"],
            id="exclusive-cpus-fraction",
        ),
        pytest.param(
            worker(env={"TF_CONFIG": "{}", "PET_RANK": "0", "1X": "", "OK": "1"}),
            [
                "/replicas/worker/env/1X",
                "/replicas/worker/env/PET_RANK",
                "/replicas/worker/env/TF_CONFIG",
            ],
            id="env-reserved-and-invalid",
        ),
        pytest.param(
            spec(labels={"muster.dev/x": "y", "team": "-bad"}),
            ["/labels/muster.dev~1x", "/labels/team"],
            id="labels-reserved-and-bad-value",
        ),
        pytest.param(
            worker(restart_policy="Sometimes"),
            ["/replicas/worker/restart_policy"],
            id="restart-policy-unknown",
        ),
        pytest.param(
            spec(run_policy={"clean_pod_policy": "Bogus"}),
            ["/run_policy/clean_pod_policy"],
            id="clean-pod-policy-unknown",
        ),
        pytest.param(spec(callback={"url": "ftp://x"}), ["/callback/url"], id="callback-ftp"),
        pytest.param(
            spec(callback={"url": "https://u:p@h/x"}),
            ["/callback/url"],
            id="callback-credentials",
        ),
        pytest.param(
            spec(callback={"url": "https://h/x", "events": ["job.exploded"]}),
            ["/callback/events/0"],
            id="callback-event-unknown",
        ),
        pytest.param(
            worker(tolerations=[{"operator": "Exists", "value": "x"}]),
            ["/replicas/worker/tolerations/0/value"],
            id="toleration-exists-with-value",
        ),
        pytest.param(
            spec(name="Wide", replicas={"worker": {"image": "a b", "count": 0}}),
            ["/name", "/replicas/worker/count", "/replicas/worker/image"],
            id="several-problems-at-once",
        ),
    ],
)
def test_problems_are_located_by_pointer(raw: object, expected: list[str]) -> None:
    assert sorted(pointers(raw)) == sorted(expected)


@pytest.mark.parametrize("field", ["count", "port", "termination_grace_period_seconds"])
def test_a_float_where_an_integer_belongs_is_a_problem_not_a_dropped_replica(field: str) -> None:
    """JSON Schema calls 2.0 an integer; the replica must not vanish from the accepted spec."""
    result = check_job_spec(worker(**{field: 2.0}))

    assert isinstance(result, list), result
    assert f"/replicas/worker/{field}" in [p.pointer for p in result]


def test_no_replica_is_dropped_without_a_problem() -> None:
    """Whatever makes a replica unusable is reported, even a shape the schema also reports."""
    result = check_job_spec(worker(command="python train.py"))

    assert isinstance(result, list), result
    assert any(p.pointer.startswith("/replicas/worker") for p in result)


# -- properties -----------------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)

quantities = st.sampled_from(
    ["1", "500m", "4Gi", "1.5Gi", "0", "-1", "1e3", "0.0001", "4Gx", "", "8Ei", "64"]
) | st.integers(min_value=-2, max_value=10**6)
gpus = st.sampled_from([0, 1, 2, 0.5, 0.01, 1.5, 0.333, -1, 1024, 2000])
resources = st.fixed_dictionaries(
    {}, optional={"cpu": quantities, "memory": quantities, "gpu": gpus}
)
tolerations = st.lists(
    st.fixed_dictionaries(
        {},
        optional={
            "key": st.sampled_from(["gpu", "", "dedicated"]),
            "operator": st.sampled_from(["Equal", "Exists"]),
            "value": st.sampled_from(["x", ""]),
            "effect": st.sampled_from(["NoSchedule", "NoExecute"]),
            "tolerationSeconds": st.integers(min_value=0, max_value=10**6),
        },
    ),
    max_size=2,
)
env_names = st.sampled_from(["K", "OMP", "TF_CONFIG", "PET_X", "1X", "A_B", "MUSTER_Y"])
label_keys = st.sampled_from(["team", "muster.dev/x", "a.b/c", "tier", "-x"])
label_values = st.sampled_from(["ranking", "gold", "", "-bad", "x" * 64])
replicas = st.fixed_dictionaries(
    {"image": st.sampled_from(["img", "reg/wd:1", "a b", ""])},
    optional={
        "count": st.integers(min_value=-1, max_value=600),
        "command": st.lists(st.text(max_size=6), max_size=3),
        "args": st.lists(st.text(max_size=6), max_size=3),
        "env": st.dictionaries(env_names, st.text(max_size=4), max_size=3),
        "resources": resources,
        "exclusive_cpus": st.booleans(),
        "restart_policy": st.sampled_from(["Never", "OnFailure", "Always", "ExitCode", "Bad"]),
        "node_selector": st.dictionaries(label_keys, label_values, max_size=2),
        "tolerations": tolerations,
        "port": st.integers(min_value=1, max_value=65535),
        "termination_grace_period_seconds": st.none() | st.integers(min_value=-2, max_value=400),
    },
)
roles = st.sampled_from(["chief", "master", "worker", "ps", "evaluator", "driver", "Bad", "x"])
well_typed_specs = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["wd", "wide-deep", "Wide", "1x", "a" * 63]),
        "tenant": st.sampled_from(["search", "ads", "Bad_T"]),
        "replicas": st.dictionaries(roles, replicas, min_size=0, max_size=4),
    },
    optional={
        "framework": st.sampled_from(["tensorflow", "pytorch", "generic", "jax"]),
        "priority": st.integers(min_value=-1200, max_value=1200),
        "priority_class": st.none() | st.sampled_from(["high", "batch", "Bad_Name", ""]),
        "run_policy": st.fixed_dictionaries(
            {},
            optional={
                "backoff_limit": st.integers(min_value=0, max_value=1000),
                "active_deadline_seconds": st.none() | st.integers(min_value=1, max_value=10**6),
                "ready_timeout_seconds": st.integers(min_value=1, max_value=604800),
                "clean_pod_policy": st.sampled_from(["Running", "All", "None", "Bogus"]),
                "success_policy": st.sampled_from(["Default", "AllWorkers", "Bogus"]),
            },
        ),
        "callback": st.none()
        | st.fixed_dictionaries(
            {"url": st.sampled_from(["https://h/x", "http://h", "ftp://x", "https://u:p@h/"])},
            optional={
                "events": st.lists(st.sampled_from([e.value for e in CallbackEvent]), max_size=3)
            },
        ),
        "labels": st.dictionaries(label_keys, label_values, max_size=3),
    },
)


def _mutate(base: dict[str, Any], path: list[str], value: Any) -> dict[str, Any]:
    """``base`` with the value at ``path`` (into nested objects) replaced by ``value``."""
    mutated = copy.deepcopy(base)
    node: Any = mutated
    for key in path[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[path[-1]] = value
    return mutated


field_paths = st.sampled_from(
    [
        ["name"],
        ["tenant"],
        ["framework"],
        ["priority"],
        ["priority_class"],
        ["replicas"],
        ["replicas", "worker"],
        ["replicas", "worker", "count"],
        ["replicas", "worker", "image"],
        ["replicas", "worker", "command"],
        ["replicas", "worker", "env"],
        ["replicas", "worker", "env", "K"],
        ["replicas", "worker", "resources"],
        ["replicas", "worker", "resources", "cpu"],
        ["replicas", "worker", "resources", "gpu"],
        ["replicas", "worker", "exclusive_cpus"],
        ["replicas", "worker", "restart_policy"],
        ["replicas", "worker", "node_selector"],
        ["replicas", "worker", "tolerations"],
        ["replicas", "worker", "port"],
        ["replicas", "worker", "termination_grace_period_seconds"],
        ["run_policy"],
        ["run_policy", "backoff_limit"],
        ["run_policy", "clean_pod_policy"],
        ["callback"],
        ["callback", "url"],
        ["callback", "events"],
        ["labels"],
        ["labels", "team"],
    ]
)


def _assert_result_shape(result: object) -> None:
    if isinstance(result, JobSpec):
        return
    assert isinstance(result, list)
    assert result, "a refusal names at least one problem"
    for problem in result:
        assert isinstance(problem, FieldProblem)
        assert problem.pointer == "" or problem.pointer.startswith("/")
        assert problem.detail


@PROPERTY
@given(json_values)
def test_check_job_spec_never_raises_on_any_json_value(raw: object) -> None:
    _assert_result_shape(check_job_spec(raw))


@PROPERTY
@given(field_paths, json_values)
def test_check_job_spec_never_raises_when_any_field_holds_any_json(
    path: list[str], value: object
) -> None:
    _assert_result_shape(check_job_spec(_mutate(DESIGN_EXAMPLE, path, value)))


@PROPERTY
@given(well_typed_specs)
def test_check_job_spec_never_raises_on_plausible_specs(raw: dict[str, Any]) -> None:
    _assert_result_shape(check_job_spec(raw))


@PROPERTY
@given(well_typed_specs)
@example(DESIGN_EXAMPLE)
def test_an_accepted_spec_stored_as_a_document_reads_back_equal(raw: dict[str, Any]) -> None:
    result = check_job_spec(raw)
    if not isinstance(result, JobSpec):
        return

    document = to_document(result)

    assert check_job_spec(document) == result
    assert from_document(document) == result  # the stored document's one reader
    assert to_document(result) == document
    assert [r.role for r in result.replicas] == sorted(raw["replicas"])


@PROPERTY
@given(well_typed_specs)
@example(DESIGN_EXAMPLE)
def test_what_the_api_accepts_is_stored_as_a_document_the_schema_accepts(
    raw: dict[str, Any],
) -> None:
    result = check_job_spec(raw)
    if schema_check("JobSpec", raw) or not isinstance(result, JobSpec):
        return

    assert schema_check("JobSpec", to_document(result)) == []
    assert {r.role for r in result.replicas} == set(raw["replicas"])
