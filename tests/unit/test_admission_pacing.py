"""How long the admission loop rests after a cycle: paced by the cycle's cost."""

from __future__ import annotations

import pytest

from gateway.db.admission import CycleResult
from gateway.domain.scheduling.queueing import AdmissionPlan
from gateway.loops.admission import IDLE_PACING, MIN_REST, PACING, rest_after

EMPTY = AdmissionPlan(admitted=(), waiting=())


def result(seconds: float, admitted: int) -> CycleResult:
    ids = tuple(f"job-{i}" for i in range(admitted))
    return CycleResult(considered=10_000, admitted=ids, seconds=seconds, plan=EMPTY)


def test_no_cycle_means_no_rest() -> None:
    assert rest_after(None) == 0.0


@pytest.mark.parametrize(
    ("seconds", "admitted", "rest"),
    [
        (0.001, 1, MIN_REST),  # short cycles: at most five a second
        (0.001, 0, MIN_REST),
        (0.5, 3, 0.5 * PACING),  # an admitting cycle: at most a fifth of the process
        (0.5, 0, 0.5 * IDLE_PACING),  # a stuck queue: at most a tenth
    ],
)
def test_rest_grows_with_the_cycle_and_more_when_it_admitted_nothing(
    seconds: float, admitted: int, rest: float
) -> None:
    assert rest_after(result(seconds, admitted)) == pytest.approx(rest)


def test_cycles_take_at_most_a_fifth_while_admitting_and_a_tenth_while_stuck() -> None:
    for seconds in (0.05, 0.2, 1.0, 5.0):
        admitting, stuck = result(seconds, 1), result(seconds, 0)
        assert seconds / (seconds + rest_after(admitting)) <= 0.2 + 1e-9
        assert seconds / (seconds + rest_after(stuck)) <= 0.1 + 1e-9
