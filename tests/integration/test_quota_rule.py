"""The quota rule has one definition: its SQL form answers as the Python rule does.

The group-commit submit skips, in SQL, a job that its tenant's quota could never hold
(``gateway.db.tenants.could_ever_hold_sql``); the careful path and the API ask
``Quota.could_ever_hold``. Random quotas and demands, with the edges (equal, zero, one over)
drawn often, are put to both.
"""

from __future__ import annotations

import random

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.db.mapping import QUOTA_COLUMNS
from gateway.db.tenants import could_ever_hold_sql
from gateway.domain.resources import Resources
from gateway.domain.scheduling.quota import RESOURCES, Quota

CASES = 2000


def _amount(rng: random.Random, near: int) -> int:
    return rng.choice([0, near, near + 1, max(near - 1, 0), rng.randint(0, 2 * near + 2)])


def _cases(seed: int) -> list[tuple[Quota, Resources]]:
    rng = random.Random(seed)
    cases = []
    for _ in range(CASES):
        quota = Quota(
            cpu_millis=rng.choice([0, 1000, 64_000]),
            memory_bytes=rng.choice([0, 2**30, 2**40]),
            gpu_shares=rng.choice([0, 50, 800]),
            max_running_jobs=rng.choice([0, 1, 10]),
            max_queued_jobs=rng.choice([0, 1, 100]),
        )
        demand = Resources(
            cpu_millis=_amount(rng, quota.cpu_millis),
            memory_bytes=_amount(rng, quota.memory_bytes),
            gpu_shares=_amount(rng, quota.gpu_shares),
        )
        cases.append((quota, demand))
    return cases


async def test_the_sql_and_the_python_quota_rule_agree_on_random_cases(
    engine: AsyncEngine,
) -> None:
    cases = _cases(7)
    columns = [*QUOTA_COLUMNS.values(), "max_running_jobs", "max_queued_jobs"]
    params: dict[str, list[int]] = {c: [] for c in columns}
    for resource in RESOURCES:
        params[resource] = []
    for quota, demand in cases:
        for resource, column in QUOTA_COLUMNS.items():
            params[column].append(getattr(quota, resource))
            params[resource].append(getattr(demand, resource))
        params["max_running_jobs"].append(quota.max_running_jobs)
        params["max_queued_jobs"].append(quota.max_queued_jobs)
    arrays = ", ".join(f"CAST(:{name} AS bigint[])" for name in params)
    names = ", ".join(params)
    sql = text(
        f"SELECT {could_ever_hold_sql('t', 't')} AS holds "
        f"FROM unnest({arrays}) WITH ORDINALITY AS t({names}, n) ORDER BY n"
    )
    async with engine.connect() as conn:
        answers = [row.holds for row in await conn.execute(sql, params)]
    expected = [quota.could_ever_hold(demand) for quota, demand in cases]
    disagree = [cases[i] for i, (a, b) in enumerate(zip(answers, expected, strict=True)) if a != b]
    assert disagree == []
    # Both answers occur often: the cases test the rule, not one side of it.
    assert 0.1 < sum(expected) / len(expected) < 0.9
