"""The priority ceiling: a job may have any priority up to its tenant's max_priority."""

from __future__ import annotations

import pytest

from gateway.domain.jobs.spec import PRIORITY_RANGE
from gateway.domain.problems import FieldProblem
from gateway.domain.scheduling.priority import DEFAULT_MAX_PRIORITY, above_ceiling

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
