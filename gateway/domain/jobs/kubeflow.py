"""The Kubeflow job manifests ``POST /v1/jobs`` accepts besides Muster job specs, and the
translator of each kind: TFJob (``tfjob.py``) and PyTorchJob (``pytorchjob.py``).

Invariants: ``manifest_kind`` names a kind only for a manifest whose kind and apiVersion that
kind's translator takes, so a body is a job spec or exactly one kind of manifest; the translation
of a manifest and the relocation of problems into it are its kind's own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from gateway.domain.jobs import pytorchjob, tfjob
from gateway.domain.jobs.tfjob_fields import KIND as TFJOB
from gateway.domain.problems import FieldProblem


class _Translate(Protocol):
    def __call__(
        self, document: Mapping[str, Any], *, tenant: str | None
    ) -> dict[str, Any] | list[FieldProblem]: ...


class _Relocate(Protocol):
    def __call__(
        self, document: Mapping[str, Any], problems: Sequence[FieldProblem], *, tenant: str | None
    ) -> list[FieldProblem]: ...


_KINDS: Mapping[str, tuple[_Translate, _Relocate]] = {
    TFJOB: (tfjob.translate_tfjob, tfjob.relocate_problems),
    pytorchjob.KIND: (pytorchjob.translate_pytorchjob, pytorchjob.relocate_problems),
}
#: The kinds of manifest accepted; a manifest names its tenant by namespace, not in a field.
MANIFEST_KINDS = frozenset(_KINDS)


def manifest_kind(document: object) -> str | None:
    """The kind of Kubeflow manifest a request body is (``TFJob``, ``PyTorchJob``), or None."""
    if tfjob.is_tfjob(document):
        return TFJOB
    if pytorchjob.is_pytorchjob(document):
        return pytorchjob.KIND
    return None


def translate_manifest(
    kind: str, document: Mapping[str, Any], *, tenant: str | None
) -> dict[str, Any] | list[FieldProblem]:
    """The Muster job spec equivalent to a manifest of ``kind``, or every problem, pointing into
    it; ``tenant`` None takes the tenant from metadata.namespace."""
    translate, _ = _KINDS[kind]
    return translate(document, tenant=tenant)


def relocate_problems(
    kind: str,
    document: Mapping[str, Any],
    problems: Sequence[FieldProblem],
    *,
    tenant: str | None,
) -> list[FieldProblem]:
    """Problems found in the translated spec, re-pointed at the manifest fields they came from."""
    _, relocate = _KINDS[kind]
    return relocate(document, problems, tenant=tenant)
