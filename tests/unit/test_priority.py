"""Who may use which priority: a job of a priority class granted to its tenant runs at the
class's value; a job without a class may have any priority up to its tenant's max_priority."""

from __future__ import annotations

import pytest

from gateway.domain.jobs.spec import PRIORITY_RANGE
from gateway.domain.problems import FieldProblem
from gateway.domain.scheduling.priority import (
    DEFAULT_MAX_PRIORITY,
    PriorityClass,
    Resolved,
    above_ceiling,
    resolve,
)

LOWEST, HIGHEST = PRIORITY_RANGE


@pytest.mark.parametrize(
    ("priority", "ceiling", "allowed"),
    [
        pytest.param(0, DEFAULT_MAX_PRIORITY, True, id="default-priority-at-default-ceiling"),
        pytest.param(1, DEFAULT_MAX_PRIORITY, False, id="one-above-the-default-ceiling"),
        pytest.param(HIGHEST, DEFAULT_MAX_PRIORITY, False, id="highest-at-default-ceiling"),
        pytest.param(-1, DEFAULT_MAX_PRIORITY, True, id="negative-below-the-default-ceiling"),
        pytest.param(LOWEST, DEFAULT_MAX_PRIORITY, True, id="the-spec-minimum"),
        pytest.param(100, 100, True, id="at-a-granted-ceiling"),
        pytest.param(101, 100, False, id="one-above-a-granted-ceiling"),
        pytest.param(HIGHEST, HIGHEST, True, id="highest-at-the-highest-ceiling"),
        pytest.param(0, -5, False, id="default-priority-above-a-negative-ceiling"),
        pytest.param(-5, -5, True, id="at-a-negative-ceiling"),
        pytest.param(LOWEST, LOWEST, True, id="lowest-at-the-lowest-ceiling"),
    ],
)
def test_a_job_may_have_any_priority_up_to_its_tenants_ceiling(
    priority: int, ceiling: int, allowed: bool
) -> None:
    problem = above_ceiling(priority, tenant="search", ceiling=ceiling)

    assert (problem is None) == allowed


def test_the_refusal_points_at_the_priority_and_names_the_ceiling_and_who_sets_it() -> None:
    assert above_ceiling(500, tenant="search", ceiling=0) == FieldProblem(
        pointer="/priority",
        detail="priority 500 is above tenant search's maximum priority 0 (an admin sets it)",
    )


def test_no_tenant_may_go_ahead_of_the_default_priority_unless_an_admin_says_so() -> None:
    assert DEFAULT_MAX_PRIORITY == 0


# -- priority classes ------------------------------------------------------------------------------

HIGH = PriorityClass(name="high", value=900, preemptible=False)
LOW = PriorityClass(name="batch", value=-100)


@pytest.mark.parametrize(
    ("priority", "named", "granted", "ceiling", "expected"),
    [
        pytest.param(
            None,
            "high",
            HIGH,
            0,
            Resolved(priority=900, priority_class="high", preemptible=False),
            id="a-granted-class-above-the-ceiling-gives-its-value",
        ),
        pytest.param(
            900,
            "high",
            HIGH,
            0,
            Resolved(priority=900, priority_class="high", preemptible=False),
            id="an-explicit-priority-equal-to-the-class-value",
        ),
        pytest.param(
            None,
            "batch",
            LOW,
            -500,
            Resolved(priority=-100, priority_class="batch"),
            id="a-class-above-a-negative-ceiling-and-preemptible",
        ),
        pytest.param(None, "high", None, 0, "/priority_class", id="a-class-not-granted-or-unknown"),
        pytest.param(
            900,
            "high",
            None,
            1000,
            "/priority_class",
            id="not-granted-even-with-the-right-value-and-a-high-ceiling",
        ),
        pytest.param(
            None, "high", LOW, 0, "/priority_class", id="a-grant-of-another-class-is-none"
        ),
        pytest.param(
            5, "high", HIGH, 1000, "/priority", id="an-explicit-priority-other-than-the-value"
        ),
        pytest.param(0, None, None, 0, Resolved(priority=0), id="no-class-at-the-ceiling"),
        pytest.param(1, None, HIGH, 0, "/priority", id="no-class-above-the-ceiling"),
        pytest.param(None, None, None, 0, Resolved(priority=0), id="no-class-no-priority-is-0"),
    ],
)
def test_a_job_of_a_granted_class_runs_at_its_value_else_within_the_ceiling(
    priority: int | None,
    named: str | None,
    granted: PriorityClass | None,
    ceiling: int,
    expected: Resolved | str,
) -> None:
    found = resolve(
        tenant="search", ceiling=ceiling, priority=priority, priority_class=named, granted=granted
    )

    if isinstance(expected, str):
        assert isinstance(found, FieldProblem)
        assert found.pointer == expected
    else:
        assert found == expected


def test_an_unknown_class_and_one_not_granted_get_the_same_answer_naming_the_class() -> None:
    unknown = resolve(
        tenant="search", ceiling=0, priority=None, priority_class="gold", granted=None
    )
    granted_elsewhere = resolve(
        tenant="search", ceiling=0, priority=900, priority_class="gold", granted=None
    )

    assert (
        unknown
        == granted_elsewhere
        == FieldProblem(
            pointer="/priority_class",
            detail="tenant search may not use priority class 'gold' "
            "(an admin grants classes to tenants)",
        )
    )


def test_a_mismatching_priority_names_the_class_value_only_once_the_class_is_granted() -> None:
    problem = resolve(tenant="search", ceiling=0, priority=5, priority_class="high", granted=HIGH)

    assert problem == FieldProblem(
        pointer="/priority",
        detail="priority 5 differs from the value of priority class 'high', 900: leave priority "
        "out, the class sets it",
    )


def test_a_job_without_a_class_is_refused_as_the_ceiling_always_refused_it() -> None:
    for priority in range(-3, 4):
        found = resolve(
            tenant="search", ceiling=0, priority=priority, priority_class=None, granted=HIGH
        )
        ceiling = above_ceiling(priority, tenant="search", ceiling=0)
        assert found == (ceiling if ceiling is not None else Resolved(priority=priority))
