"""How long the admission loop rests after a cycle woken by the queue: paced by the cycle's cost.

(A cycle woken by capacity coming free does not rest at all: see
tests/integration/test_admission_wakeup.py.)
"""

from __future__ import annotations

import pytest

from gateway.db.admission import CycleResult
from gateway.domain.scheduling.queueing import AdmissionPlan, Snapshot
from gateway.loops.admission import IDLE_PACING, PACING, rest_after

EMPTY = AdmissionPlan(admitted=(), waiting=())
SNAPSHOT = Snapshot(now=0.0, nodes=(), tenants={}, starvation_seconds=60.0)


def result(seconds: float, admitted: int) -> CycleResult:
    ids = tuple(f"job-{i}" for i in range(admitted))
    return CycleResult(
        queued=10_000, considered=50, admitted=ids, seconds=seconds, plan=EMPTY, snapshot=SNAPSHOT
    )


def test_no_cycle_means_no_rest() -> None:
    assert rest_after(None) == 0.0


@pytest.mark.parametrize(
    ("seconds", "admitted", "rest"),
    [
        (0.001, 1, 0.001 * PACING),  # a cheap cycle rests briefly: submits are admitted soon
        (0.5, 3, 0.5 * PACING),  # an admitting cycle: at most half of the process
        (0.5, 0, 0.5 * IDLE_PACING),  # a stuck queue: at most a fifth
    ],
)
def test_rest_grows_with_the_cycle_and_more_when_it_admitted_nothing(
    seconds: float, admitted: int, rest: float
) -> None:
    assert rest_after(result(seconds, admitted)) == pytest.approx(rest)


def test_cycles_take_at_most_half_while_admitting_and_a_fifth_while_stuck() -> None:
    for seconds in (0.005, 0.2, 1.0, 5.0):
        admitting, stuck = result(seconds, 1), result(seconds, 0)
        assert seconds / (seconds + rest_after(admitting)) <= 0.5 + 1e-9
        assert seconds / (seconds + rest_after(stuck)) <= 0.2 + 1e-9
