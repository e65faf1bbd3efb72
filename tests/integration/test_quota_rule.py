"""The quota rule has one definition: its SQL form answers as the Python rule does.

The group-commit submit skips, in SQL, a job that its tenant's quota could never hold
(``gateway.db.tenants.could_ever_hold_sql``); the careful path and the API ask
``Quota.could_ever_hold``. Random quotas and demands, with the edges (equal, zero, one over)
drawn often, are put to both, for tenants in no cohort and for cohort members with and without
borrowing limits (a member may hold its nominal quota plus its borrowing limit; with no limit,
anything), with limits on extended resources (never borrowed; a name without a limit is not
limited) and demands of them.
"""

from __future__ import annotations

import json
import random

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.db.mapping import BORROWING_COLUMNS, QUOTA_COLUMNS
from gateway.db.tenants import could_ever_hold_sql
from gateway.domain.resources import MAX_MEMORY_BYTES, Resources
from gateway.domain.scheduling.cohorts import CohortTerms, Limits
from gateway.domain.scheduling.quota import RESOURCES, Quota

CASES = 2000
EXTENDED = ("hugepages-2Mi", "rdma/hca")
Case = tuple[Quota, CohortTerms | None, Resources]
BIGINT = 2**63 - 1  # a demand's column; quotas and limits stop at 2**62 (MAX_MEMORY_BYTES)


def _amount(rng: random.Random, near: int) -> int:
    drawn = rng.choice([0, near, near + 1, max(near - 1, 0), rng.randint(0, 2 * near + 2)])
    return min(drawn, BIGINT)


def _limit(rng: random.Random, near: int) -> int | None:
    drawn = rng.choice([None, 0, near, rng.randint(0, 2 * near + 2)])
    return None if drawn is None else min(drawn, MAX_MEMORY_BYTES)


def _cases(seed: int) -> list[Case]:
    rng = random.Random(seed)
    cases: list[Case] = []
    for _ in range(CASES):
        quota = Quota(
            cpu_millis=rng.choice([0, 1000, 64_000]),
            memory_bytes=rng.choice([0, 2**30, 2**40, 2**62]),
            gpu_shares=rng.choice([0, 50, 800]),
            max_running_jobs=rng.choice([0, 1, 10]),
            max_queued_jobs=rng.choice([0, 1, 100]),
            extended=tuple(
                (name, rng.choice([0, 1, 8])) for name in EXTENDED if rng.random() < 0.3
            ),
        )
        cohort = None
        if rng.random() < 0.6:
            borrowing = Limits(**{r: _limit(rng, getattr(quota, r)) for r in RESOURCES})
            cohort = CohortTerms(cohort=rng.choice(["a", "b"]), borrowing_limit=borrowing)
        # Demands near the quota, or near the quota plus the borrowing limit.
        near = {
            r: getattr(quota, r)
            + (0 if cohort is None or rng.random() < 0.5 else cohort.borrowing_limit.of(r) or 0)
            for r in RESOURCES
        }
        extended = tuple(
            (name, _amount(rng, quota.limit_of(name) or 4))
            for name in EXTENDED
            if rng.random() < 0.3
        )
        demand = Resources(
            cpu_millis=_amount(rng, near["cpu_millis"]),
            memory_bytes=_amount(rng, near["memory_bytes"]),
            gpu_shares=_amount(rng, near["gpu_shares"]),
            extended=tuple((name, amount) for name, amount in extended if amount),
        )
        cases.append((quota, cohort, demand))
    return cases


async def test_the_sql_and_the_python_quota_rule_agree_on_random_cases(
    engine: AsyncEngine,
) -> None:
    cases = _cases(7)
    bigints = [
        *QUOTA_COLUMNS.values(),
        "max_running_jobs",
        "max_queued_jobs",
        *BORROWING_COLUMNS.values(),
        *RESOURCES,
    ]
    jsons = ["quota_extended", "extended"]
    params: dict[str, list[int | str | None]] = {c: [] for c in [*bigints, "cohort", *jsons]}
    for quota, cohort, demand in cases:
        for resource in RESOURCES:
            params[QUOTA_COLUMNS[resource]].append(getattr(quota, resource))
            limit = None if cohort is None else cohort.borrowing_limit.of(resource)
            params[BORROWING_COLUMNS[resource]].append(limit)
            params[resource].append(getattr(demand, resource))
        params["max_running_jobs"].append(quota.max_running_jobs)
        params["max_queued_jobs"].append(quota.max_queued_jobs)
        params["cohort"].append(None if cohort is None else cohort.cohort)
        params["quota_extended"].append(json.dumps(dict(quota.extended)))
        params["extended"].append(json.dumps(dict(demand.extended)))
    arrays = ", ".join(
        [
            *(f"CAST(:{name} AS bigint[])" for name in bigints),
            "CAST(:cohort AS text[])",
            *(f"CAST(CAST(:{name} AS text[]) AS jsonb[])" for name in jsons),
        ]
    )
    names = ", ".join([*bigints, "cohort", *jsons])
    sql = text(
        f"SELECT {could_ever_hold_sql('t', 't')} AS holds "
        f"FROM unnest({arrays}) WITH ORDINALITY AS t({names}, n) ORDER BY n"
    )
    async with engine.connect() as conn:
        answers = [row.holds for row in await conn.execute(sql, params)]
    expected = [
        quota.could_ever_hold(demand, None if cohort is None else cohort.borrowing_limit)
        for quota, cohort, demand in cases
    ]
    disagree = [cases[i] for i, (a, b) in enumerate(zip(answers, expected, strict=True)) if a != b]
    assert disagree == []
    # Both answers occur often, in and out of cohorts: the cases test the rule, not one side.
    assert 0.1 < sum(expected) / len(expected) < 0.9
    members = [holds for holds, (_, cohort, _) in zip(expected, cases, strict=True) if cohort]
    assert 0.1 < sum(members) / len(members) < 0.9
    # Members hold jobs bigger than their nominal quota: the cohort half of the rule is tested.
    assert any(
        holds and quota.exceeded_by(demand)
        for holds, (quota, _, demand) in zip(expected, cases, strict=True)
    )
    # Extended limits keep jobs out, in and out of cohorts, and names without a limit do not.
    exceeded = [quota.exceeded_by(demand) for quota, _, demand in cases]
    assert any(set(names) & set(EXTENDED) for names in exceeded)
    assert any(
        holds and demand.extended and not quota.extended
        for holds, (quota, _, demand) in zip(expected, cases, strict=True)
    )
