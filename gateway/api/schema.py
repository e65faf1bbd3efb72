"""The OpenAPI document, and request bodies checked against its schemas.

Invariant: the document in ``openapi/openapi.yaml`` is the contract. Request bodies are validated
with its own component schemas (JSON Schema 2020-12), so the API cannot accept what the contract
refuses. Every violation becomes a ``FieldProblem`` with a JSON pointer to the offending field.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from importlib import resources
from typing import Any

import jsonschema_rs
import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from gateway.domain.problems import FieldProblem, pointer


@functools.cache
def openapi_document() -> Mapping[str, Any]:
    text = resources.files("gateway.openapi").joinpath("openapi.yaml").read_text("utf-8")
    document: Mapping[str, Any] = yaml.safe_load(text)
    return document


def _inline(node: Any, schemas: Mapping[str, Any]) -> Any:
    """Replace every ``$ref`` to a component schema by the schema itself (they never recurse).

    Validating against a ref-free schema skips the resolver on every request, which is most of
    what jsonschema otherwise spends.
    """
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
            target = _inline(schemas[ref.rsplit("/", 1)[-1]], schemas)
            rest = {k: _inline(v, schemas) for k, v in node.items() if k != "$ref"}
            return {**target, **rest} if rest else target
        return {key: _inline(value, schemas) for key, value in node.items()}
    if isinstance(node, list):
        return [_inline(item, schemas) for item in node]
    return node


@functools.cache
def _inlined(component: str) -> dict[str, Any]:
    schemas = openapi_document()["components"]["schemas"]
    inlined: dict[str, Any] = _inline(schemas[component], schemas)
    return inlined


@functools.cache
def validator(component: str) -> Draft202012Validator:
    """A validator for ``#/components/schemas/<component>``, built once with refs inlined."""
    return Draft202012Validator(_inlined(component))


@functools.cache
def _fast(component: str) -> Any:
    return jsonschema_rs.validator_for(_inlined(component))


#: Fields of jobs and tenants that only the server sets. A request that carries one (at the top
#: level) is refused with a message that says so, rather than a bare "unknown field".
SERVER_OWNED_FIELDS = frozenset(
    {
        "id",
        "state",
        "reason",
        "message",
        "attempt",
        "restarts",
        "placements",
        "queue_position",
        "tenant_queue_position",
        "submitted_by",
        "created_at",
        "updated_at",
        "queued_at",
        "admitted_at",
        "started_at",
        "finished_at",
        "usage",
        "webhook_secret",
    }
)
SERVER_OWNED = "is set by the server and cannot be given in a request"


def check(component: str, body: object) -> list[FieldProblem]:
    """Every schema violation in ``body``, innermost first, one problem per field.

    A compiled validator answers "valid" in microseconds; only an invalid body pays for the
    pure-Python validator, which explains every problem.
    """
    if _fast(component).is_valid(body):
        return []
    problems: list[FieldProblem] = []
    seen: set[tuple[str, str]] = set()
    errors = validator(component).iter_errors(body)
    for error in sorted(errors, key=lambda e: [str(part) for part in e.absolute_path]):
        for problem in _describe(error):
            key = (problem.pointer, problem.detail)
            if key not in seen:
                seen.add(key)
                problems.append(problem)
    return problems


def _describe(error: ValidationError) -> list[FieldProblem]:
    # A oneOf/anyOf failure says little; its closest sub-errors say what is wrong.
    if error.validator in ("oneOf", "anyOf") and error.context:
        best = [e for e in error.context if e.validator != "type"] or list(error.context)
        deepest = max(len(e.absolute_path) for e in best)
        return [p for e in best if len(e.absolute_path) == deepest for p in _describe(e)][:1] or [
            FieldProblem(pointer=pointer(*error.absolute_path), detail=_message(error))
        ]
    # absolute_path: errors nested in a oneOf carry paths relative to the oneOf's instance.
    base = [*error.absolute_path]
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = set(error.schema.get("properties", {}))
        extras = sorted(k for k in error.instance if k not in allowed)
        return [
            FieldProblem(
                pointer=pointer(*base, key),
                detail=SERVER_OWNED if not base and key in SERVER_OWNED_FIELDS else "unknown field",
            )
            for key in extras
        ]
    if error.validator == "required" and isinstance(error.validator_value, list):
        missing = [
            k
            for k in error.validator_value
            if isinstance(error.instance, dict) and k not in error.instance
        ]
        return [FieldProblem(pointer=pointer(*base, key), detail="is required") for key in missing]
    return [FieldProblem(pointer=pointer(*base), detail=_message(error))]


def _message(error: ValidationError) -> str:
    kind = error.validator
    value = error.validator_value
    if kind == "type":
        expected = value if isinstance(value, str) else " or ".join(value)
        return f"must be of type {expected}"
    if kind == "enum":
        return "must be one of " + ", ".join(str(v) for v in value)
    if kind == "minimum":
        return f"must be at least {value}"
    if kind == "maximum":
        return f"must be at most {value}"
    if kind == "exclusiveMinimum":
        return f"must be more than {value}"
    if kind == "maxLength":
        return f"must be at most {value} characters long"
    if kind == "minLength":
        return f"must be at least {value} characters long" if value > 1 else "must not be empty"
    if kind == "maxItems":
        return f"must have at most {value} items"
    if kind == "maxProperties":
        return f"must have at most {value} entries"
    if kind == "minProperties":
        return f"must have at least {value} entries"
    if kind == "pattern":
        return PATTERN_WORDS.get(value, f"must match {value}")
    return str(error.message)


QUANTITY_PATTERN = (
    r"^([0-9]+(\.[0-9]*)?|\.[0-9]+)(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E|[eE][+-]?[0-9]+)?$"
)
#: What the document's patterns ask for, in words (a regular expression is no message).
PATTERN_WORDS = {
    "^[ -~]{1,255}$": "must be 1 to 255 printable ASCII characters",
    "^[^\\x00]*$": "must not contain a NUL character (U+0000), which cannot be stored",
    "^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$": "must be a DNS-1035 label: lower-case letters, digits "
    "and '-', starting with a letter, at most 63 characters",
    "^[a-z]([-a-z0-9]{0,18}[a-z0-9])?$": "must be a DNS-1035 label of at most 20 characters",
    "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$": "must be a DNS-1123 label: lower-case letters, "
    "digits and '-', at most 63 characters",
    "^s[0-9]{1,18}$": "must be a cursor a page gave out (s and digits)",
    QUANTITY_PATTERN: 'must be a Kubernetes quantity such as "500m", "4" or "4Gi"',
}
