"""Preemption: which running gangs make room for a waiting one, always whole.

Two kinds, found by one search (`admission.plan()` runs it for a job that does not fit):

- *reclaim* (``PreemptionReason.RECLAIM``): a cohort member whose job fits within its nominal
  quota gets that quota back. The candidates are the gangs of the other members of its cohort
  that run on borrowed quota: gangs with a borrowed placement, of tenants that hold more than
  their nominal quota now. Their priority does not matter: lent quota is lent until its owner
  needs it.
- *priority* (``PreemptionReason.PRIORITY``): a tenant whose preemption policy is
  ``lower_priority`` lets its job preempt its own running gangs of lower priority.

A candidate is never a gang of a non-preemptible priority class, nor one admitted less than the
minimum runtime ago (``Snapshot.min_runtime_seconds``): such a *young* gang only tells the
waiting job that it waits for a reclaim, and for how many victims (``PendingReason.
WAITING_FOR_RECLAIM``).

`choose` picks the victims among the candidates, in the order the issue asks for: fewest victims
first, then lowest priority, then most recently admitted (`victim_order`). It first secures a
valid answer cheaply (the shortest enough prefix of the candidates, by bisection), then looks for
a single candidate that is enough alone, in that order, and else drops from the prefix each
victim it can do without (last first). So, while the cycle can afford the trials, a one-victim
answer is found whenever one exists and a larger answer has no victim it could do without; when
it cannot, the answer is still valid.

Invariants:

- A preemption is never decided on its own: `admission.plan()` preempts only victims whose
  removal lets its preemptor fit (quota and real nodes), and admits the preemptor in the same
  cycle, in the same plan.
- A victim is always a whole gang, preemptible, past the minimum runtime, and, within a tenant,
  of lower priority than its preemptor.
- Pure and deterministic: candidates are ordered on (priority, newest admission, job id).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from gateway.domain.scheduling.queueing import RunningGang

#: A job preempted again waits this long before admission, doubling with each preemption after
#: the first, up to the cap: a gang that keeps being preempted stops taking capacity it loses.
PREEMPTION_BACKOFF_BASE_SECONDS = 30.0
PREEMPTION_BACKOFF_CAP_SECONDS = 1800.0


def victim_order(gang: RunningGang) -> tuple[int, float, str]:
    """Lowest priority first, then the most recently admitted."""
    return (gang.priority, -gang.admitted_at, gang.job_id)


T = TypeVar("T")
R = TypeVar("R")


def choose(
    candidates: Sequence[T], fits: Callable[[Sequence[T]], R | None]
) -> tuple[list[T], R] | None:
    """The victims among ``candidates`` (in preference order) whose removal lets the job fit,
    with what ``fits`` answered for them; None when even all of them are not enough.

    ``fits`` answers None when the job does not fit without the victims it is given; it may
    also answer None when it can no longer afford to look (a cycle's trials ran out), so every
    step after the first valid answer only improves on it:

    1. all candidates (if they are not enough, nothing is);
    2. the shortest prefix that is enough, by bisection: a valid answer in ``1 + log2(n)`` asks;
    3. each single candidate, in order: the first that is enough alone is the answer;
    4. else each victim of the prefix, last first, is dropped when the rest are enough.
    """
    if not candidates:
        return None
    found = fits(candidates)
    if found is None:
        return None
    best: tuple[list[T], R] = (list(candidates), found)
    low, high = 0, len(candidates)  # the prefix of length `high` is enough
    while low + 1 < high:
        middle = (low + high) // 2
        answer = fits(candidates[:middle])
        if answer is None:
            low = middle
        else:
            high, best = middle, (list(candidates[:middle]), answer)
    if len(best[0]) == 1:
        return best
    for candidate in candidates:
        answer = fits((candidate,))
        if answer is not None:
            return [candidate], answer
    chosen, result = best
    for candidate in reversed(chosen[:-1]):
        without = [c for c in chosen if c is not candidate]
        answer = fits(without)
        if answer is not None:
            chosen, result = without, answer
    return chosen, result


def preemption_backoff(preemptions_before: int) -> float:
    """Seconds a job preempted now waits before admission: none the first time, then 30 s
    doubling with each preemption after that, capped at 30 min."""
    if preemptions_before <= 0:
        return 0.0
    doubled = PREEMPTION_BACKOFF_BASE_SECONDS * 2.0 ** min(preemptions_before - 1, 32)
    return min(doubled, PREEMPTION_BACKOFF_CAP_SECONDS)
