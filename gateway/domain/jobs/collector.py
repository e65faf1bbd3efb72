"""The problem collector both levels of the job spec check share, and the checks both use.

``check`` (the job's own fields) and ``check_replicas`` (each replica) walk a raw spec
with one ``Checker``: a check adds what it finds and returns a typed value or ``None``.

Invariants:
- Every check here tolerates any JSON value and never raises: a value of the wrong type is left
  to the JSON Schema to report, and the check returns ``None``.
- A check returns ``None`` whenever it added a problem, so a spec with a problem never becomes a
  typed value.
- Every problem carries a JSON pointer into the spec.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Any, TypeGuard, TypeVar

from gateway.domain.jobs.spec import SpecLimits
from gateway.domain.names import LABEL_KEY, LABEL_VALUE, MUSTER_LABEL_PREFIXES
from gateway.domain.problems import FieldProblem, pointer

_E = TypeVar("_E", bound=StrEnum)


def is_mapping(value: object) -> TypeGuard[Mapping[Any, Any]]:
    # Parsed JSON is made of dicts: skip the slower ABC check for them.
    return type(value) is dict or isinstance(value, Mapping)


class Checker:
    """Collects problems while walking a spec; every check tolerates any JSON value."""

    def __init__(self, limits: SpecLimits) -> None:
        self.limits = limits
        self.problems: list[FieldProblem] = []

    def add(self, where: str, detail: str) -> None:
        self.problems.append(FieldProblem(pointer=where, detail=detail))


def check_enum(c: Checker, kind: type[_E], value: object, where: Sequence[str | int]) -> _E | None:
    if not isinstance(value, str):
        return None
    try:
        return kind(value)
    except ValueError:
        c.add(pointer(*where), f"{value!r} is not one of " + ", ".join(m.value for m in kind))
        return None


def check_labels(
    c: Checker, raw: object, where: tuple[str, ...], *, allow_reserved: bool = False
) -> tuple[tuple[str, str], ...] | None:
    if not is_mapping(raw):
        return None
    ok = True
    for key in sorted(raw):
        value = raw[key]
        if not LABEL_KEY.fullmatch(key) or len(key) > 253:
            c.add(pointer(*where, key), f"{key!r} is not a valid Kubernetes label key")
            ok = False
        elif not allow_reserved and key.startswith(MUSTER_LABEL_PREFIXES):
            c.add(pointer(*where, key), f"labels under {key.split('/')[0]}/ are set by Muster")
            ok = False
        if not isinstance(value, str):
            ok = False
        elif not LABEL_VALUE.fullmatch(value):
            c.add(pointer(*where, key), f"{value!r} is not a valid Kubernetes label value")
            ok = False
    return tuple((k, raw[k]) for k in sorted(raw)) if ok else None
