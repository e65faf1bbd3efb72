"""A cohort member's quota outside admission: what it could ever hold (refused at submit), the
words of a refusal, and its standing as the tenant and cohort views show it."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from gateway.domain.resources import Resources
from gateway.domain.scheduling.cohorts import CohortTerms, Limits
from gateway.domain.scheduling.quota import Quota, TenantUsage
from gateway.domain.scheduling.reasons import never_fits_quota
from gateway.domain.tenants import Cohort, TenantSettings, cohort_status, standings_of

CPU = 1000
QUOTA = Quota(
    cpu_millis=4 * CPU, memory_bytes=16, gpu_shares=200, max_running_jobs=2, max_queued_jobs=10
)
NOTHING = Resources(cpu_millis=0, memory_bytes=0)


def terms(
    cohort: str = "pool", *, borrow_cpu: int | None = None, lend_cpu: int | None = None
) -> CohortTerms:
    return CohortTerms(
        cohort=cohort,
        borrowing_limit=Limits(cpu_millis=borrow_cpu),
        lending_limit=Limits(cpu_millis=lend_cpu),
    )


@pytest.mark.parametrize(
    ("cohort", "cpu", "exceeded"),
    [
        (None, 4 * CPU, ()),
        (None, 4 * CPU + 1, ("cpu_millis",)),
        (terms(borrow_cpu=2 * CPU), 6 * CPU, ()),
        (terms(borrow_cpu=2 * CPU), 6 * CPU + 1, ("cpu_millis",)),
        (terms(borrow_cpu=0), 4 * CPU + 1, ("cpu_millis",)),
        # No borrowing limit: the job is never refused at submit on that resource.
        (terms(), 10**9, ()),
    ],
)
def test_a_member_could_ever_hold_its_nominal_quota_plus_its_borrowing_limit(
    cohort: CohortTerms | None, cpu: int, exceeded: tuple[str, ...]
) -> None:
    demand = Resources(cpu_millis=cpu, memory_bytes=16)
    borrowing = None if cohort is None else cohort.borrowing_limit
    assert QUOTA.exceeded_by(demand, borrowing) == exceeded
    assert QUOTA.could_ever_hold(demand, borrowing) is (not exceeded)
    # Memory has no borrowing limit in any of these terms: only a tenant of no cohort is held
    # to its nominal memory.
    above = QUOTA.exceeded_by(Resources(cpu_millis=1, memory_bytes=17), borrowing)
    assert above == (("memory_bytes",) if cohort is None else ())


def test_a_refusal_names_the_nominal_quota_the_borrowing_limit_and_the_cohort() -> None:
    demand = Resources(cpu_millis=7 * CPU, memory_bytes=1)
    assert never_fits_quota(QUOTA, demand) == [
        ("cpu", "the job needs 7 CPUs but the tenant's quota is 4 CPUs")
    ]
    assert never_fits_quota(QUOTA, demand, terms(borrow_cpu=2 * CPU)) == [
        (
            "cpu",
            "the job needs 7 CPUs but the tenant may hold at most 6 CPUs (4 CPUs nominal and "
            "2 CPUs borrowed from cohort pool)",
        )
    ]
    assert never_fits_quota(QUOTA, demand, terms()) == []


def settings(cohort: CohortTerms | None, cpu: int = 4 * CPU) -> TenantSettings:
    quota = Quota(
        cpu_millis=cpu, memory_bytes=16, gpu_shares=0, max_running_jobs=9, max_queued_jobs=9
    )
    return TenantSettings(namespace="ns", quota=quota, weight=1.0, cohort=cohort)


def test_a_tenant_of_no_cohort_neither_borrows_nor_lends_even_above_a_lowered_quota() -> None:
    held = {
        "solo": (settings(None, cpu=1 * CPU), TenantUsage(cpu_millis=3 * CPU)),
        "search": (settings(terms()), TenantUsage(cpu_millis=6 * CPU)),
        "ads": (settings(terms()), TenantUsage()),
    }

    found = standings_of(held)

    assert (found["solo"].borrowed, found["solo"].lent) == (NOTHING, NOTHING)
    assert found["solo"].nominal.cpu_millis == 1 * CPU
    assert found["search"].borrowed.cpu_millis == 2 * CPU
    assert found["ads"].lent.cpu_millis == 2 * CPU


def test_a_cohorts_view_has_its_members_only_their_standing_and_its_idle_quota() -> None:
    now = datetime(2026, 12, 5, tzinfo=UTC)
    pool = Cohort(
        name="pool", description="", members=("ads", "search"), created_at=now, updated_at=now
    )
    held = {
        "search": (settings(terms(borrow_cpu=2 * CPU)), TenantUsage(cpu_millis=6 * CPU)),
        "ads": (settings(terms(lend_cpu=3 * CPU)), TenantUsage()),
        "other": (settings(terms("other")), TenantUsage()),
        "solo": (settings(None), TenantUsage()),
    }

    status = cohort_status(pool, held)

    assert [
        (m.name, m.standing.borrowed.cpu_millis, m.standing.lent.cpu_millis) for m in status.members
    ] == [("ads", 0, 2 * CPU), ("search", 2 * CPU, 0)]
    assert status.members[1].terms.borrowing_limit.cpu_millis == 2 * CPU
    # ads lends at most 3 CPUs, 2 of them are borrowed.
    assert status.idle.cpu_millis == 1 * CPU
