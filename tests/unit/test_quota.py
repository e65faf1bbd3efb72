"""The quota rules, as tables: fits now, what it is short of, what it can never hold."""

from __future__ import annotations

import pytest

from gateway.domain.resources import Resources
from gateway.domain.scheduling.quota import Quota, Shortfall, TenantUsage

QUOTA = Quota(
    cpu_millis=8000, memory_bytes=16, gpu_shares=200, max_running_jobs=2, max_queued_jobs=10
)


@pytest.mark.parametrize(
    ("usage", "demand", "fits", "short"),
    [
        (TenantUsage(), Resources(cpu_millis=8000, memory_bytes=16, gpu_shares=200), True, None),
        (
            TenantUsage(cpu_millis=1),
            Resources(cpu_millis=8000, memory_bytes=0),
            False,
            Shortfall(resource="cpu_millis", need=8000, left=7999, limit=8000),
        ),
        # GPU is named first when several are short.
        (
            TenantUsage(cpu_millis=8000, gpu_shares=200),
            Resources(cpu_millis=1, memory_bytes=0, gpu_shares=1),
            False,
            Shortfall(resource="gpu_shares", need=1, left=0, limit=200),
        ),
        # A resource the job does not ask for never stops it, even past the quota.
        (TenantUsage(gpu_shares=900), Resources(cpu_millis=1, memory_bytes=1), True, None),
        # The running-job cap.
        (TenantUsage(running_jobs=2), Resources(cpu_millis=1, memory_bytes=1), False, None),
    ],
)
def test_a_job_fits_the_quota_now_when_every_resource_it_asks_stays_within(
    usage: TenantUsage, demand: Resources, fits: bool, short: Shortfall | None
) -> None:
    assert QUOTA.fits_now(usage, demand) is fits
    assert QUOTA.short_of(usage, demand) == short


def test_what_a_quota_can_never_hold() -> None:
    assert QUOTA.exceeded_by(Resources(cpu_millis=8001, memory_bytes=17, gpu_shares=200)) == (
        "cpu_millis",
        "memory_bytes",
    )
    assert QUOTA.could_ever_hold(Resources(cpu_millis=8000, memory_bytes=16, gpu_shares=200))
    closed = Quota(
        cpu_millis=8000, memory_bytes=16, gpu_shares=0, max_running_jobs=1, max_queued_jobs=0
    )
    assert closed.queues_no_jobs
    assert not closed.could_ever_hold(Resources(cpu_millis=1, memory_bytes=1))


def test_usage_grows_by_the_demand_and_one_job() -> None:
    grown = TenantUsage(cpu_millis=1).plus(Resources(cpu_millis=2, memory_bytes=3, gpu_shares=4))
    assert grown == TenantUsage(cpu_millis=3, memory_bytes=3, gpu_shares=4, running_jobs=1)
