"""Cohorts lend idle quota within limits (``gateway.domain.scheduling.cohorts``).

Scenarios for Kueue's documented borrowing behaviour, and a property test over random cohorts
and admission histories: no tenant goes above nominal plus its borrowing limit, a cohort's pool
is never overdrawn, no tenant lends more than its lending limit, and what is lent is what is
borrowed.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.domain.resources import Resources
from gateway.domain.scheduling.cohorts import (
    CohortBook,
    CohortTerms,
    Limits,
    Member,
    idle_quota,
    lendable,
    standings,
)
from gateway.domain.scheduling.quota import RESOURCES, Quota, TenantUsage

CPU = 1000  # millicores per CPU


def quota(cpus: int, *, running: int = 100) -> Quota:
    return Quota(
        cpu_millis=cpus * CPU,
        memory_bytes=2**40,
        gpu_shares=0,
        max_running_jobs=running,
        max_queued_jobs=100,
    )


def cpus(n: float) -> Resources:
    return Resources(cpu_millis=int(n * CPU), memory_bytes=0)


def member(
    nominal: int, *, cohort: str | None = "c", borrow: int | None = None, lend: int | None = None
) -> Member:
    terms = None
    if cohort is not None:
        terms = CohortTerms(
            cohort=cohort,
            borrowing_limit=Limits(cpu_millis=None if borrow is None else borrow * CPU),
            lending_limit=Limits(cpu_millis=None if lend is None else lend * CPU),
        )
    return Member(quota=quota(nominal), usage=TenantUsage(), terms=terms)


def admit_all(book: CohortBook, tenant: str, size: float, count: int) -> int:
    admitted = 0
    for _ in range(count):
        if not book.fits(tenant, cpus(size)):
            break
        book.take(tenant, cpus(size))
        admitted += 1
    return admitted


def test_a_tenant_borrows_what_the_rest_of_its_cohort_leaves_idle() -> None:
    book = CohortBook({"a": member(20), "b": member(20), "c": member(20)})
    # Alone in the cohort, a runs 60 CPUs of 1-CPU jobs: its 20 and the others' idle 40.
    assert admit_all(book, "a", 1, 100) == 60
    standing = book.standing("a")
    assert standing.borrowed == cpus(40)
    assert book.standing("b").lent == cpus(20)
    assert book.standing("c").lent == cpus(20)


def test_the_borrowing_limit_caps_a_tenant_above_its_nominal() -> None:
    book = CohortBook({"a": member(20, borrow=10), "b": member(20), "c": member(20)})
    assert admit_all(book, "a", 1, 100) == 30


def test_the_lending_limit_keeps_the_rest_for_its_owner() -> None:
    book = CohortBook({"a": member(20), "b": member(20, lend=5)})
    assert admit_all(book, "a", 1, 100) == 25
    # b's 15 unlent CPUs are b's: they stay free for it whatever a does.
    assert admit_all(book, "b", 1, 100) == 15


def test_a_tenant_in_no_cohort_holds_its_nominal_and_lends_nothing() -> None:
    book = CohortBook({"a": member(20, cohort=None), "b": member(20, cohort=None)})
    assert admit_all(book, "a", 1, 100) == 20
    assert book.standing("b").lent == cpus(0)


def test_cohorts_lend_only_to_their_own_members() -> None:
    book = CohortBook({"a": member(20, cohort="x"), "b": member(20, cohort="y")})
    assert admit_all(book, "a", 1, 100) == 20


def test_the_running_job_cap_is_never_borrowed() -> None:
    members = {
        "a": Member(quota=quota(20, running=2), usage=TenantUsage(), terms=CohortTerms(cohort="c")),
        "b": member(20),
    }
    book = CohortBook(members)
    assert admit_all(book, "a", 1, 100) == 2


def test_a_job_bigger_than_its_nominal_runs_on_borrowed_quota() -> None:
    book = CohortBook({"a": member(20), "b": member(20)})
    assert book.fits("a", cpus(30))
    assert book.borrows_for("a", cpus(30)) == cpus(10)


def test_a_resource_the_job_does_not_ask_for_never_stops_it() -> None:
    over = Member(
        quota=quota(20),
        usage=TenantUsage(cpu_millis=0, memory_bytes=2**41),  # memory lowered below use
        terms=CohortTerms(cohort="c"),
    )
    book = CohortBook({"a": over, "b": member(20)})
    assert book.fits("a", cpus(1))


def test_a_cohorts_idle_quota_is_its_idle_lendable_less_what_is_borrowed() -> None:
    members = {
        "a": Member(
            quota=quota(20),
            usage=TenantUsage(cpu_millis=30 * CPU, running_jobs=1),
            terms=CohortTerms(cohort="c"),
        ),
        "b": member(20),
        "c": member(20, lend=5),
    }
    assert idle_quota(members.values()).cpu_millis == (20 + 5 - 10) * CPU


# -- properties -------------------------------------------------------------------------------

limits = st.one_of(st.none(), st.integers(0, 30))


@st.composite
def cohorts(draw: st.DrawFn) -> dict[str, Member]:
    count = draw(st.integers(1, 6))
    members = {}
    for index in range(count):
        cohort = draw(st.sampled_from(["x", "y", None]))
        members[f"t{index}"] = member(
            draw(st.integers(0, 30)), cohort=cohort, borrow=draw(limits), lend=draw(limits)
        )
    return members


@settings(max_examples=300, deadline=None)
@given(
    members=cohorts(),
    jobs=st.lists(st.tuples(st.integers(0, 5), st.integers(1, 12)), max_size=60),
)
def test_random_histories_keep_every_limit(
    members: dict[str, Member], jobs: list[tuple[int, int]]
) -> None:
    book = CohortBook(members)
    names = sorted(members)
    for which, size in jobs:
        tenant = names[which % len(names)]
        if book.fits(tenant, cpus(size)):
            book.take(tenant, cpus(size))
    now = {n: Member(quota=m.quota, usage=book.usage(n), terms=m.terms) for n, m in members.items()}
    by_cohort: dict[str | None, list[str]] = {}
    for name, m in now.items():
        by_cohort.setdefault(None if m.terms is None else m.terms.cohort, []).append(name)
        held, nominal = m.usage.cpu_millis, m.quota.cpu_millis
        if m.terms is None:
            assert held <= nominal
        elif (limit := m.terms.borrowing_limit.cpu_millis) is not None:
            assert held <= nominal + limit
    stands = standings(now)
    for cohort, names_in in by_cohort.items():
        if cohort is None:
            continue
        for resource in RESOURCES:
            pool = sum(lendable(now[n], resource) for n in names_in)
            guaranteed = {
                n: getattr(now[n].quota, resource) - lendable(now[n], resource) for n in names_in
            }
            drawn = sum(max(0, getattr(now[n].usage, resource) - guaranteed[n]) for n in names_in)
            assert drawn <= pool
        lent = sum(stands[n].lent.cpu_millis for n in names_in)
        borrowed = sum(stands[n].borrowed.cpu_millis for n in names_in)
        assert lent == borrowed
        for n in names_in:
            assert stands[n].lent.cpu_millis <= lendable(now[n], "cpu_millis")
