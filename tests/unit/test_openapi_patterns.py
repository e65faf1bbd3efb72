"""The OpenAPI document states the server's own rules: each pattern it gives for a value the
server checks by hand is the server's regular expression, not a copy that could drift."""

from __future__ import annotations

import re

from gateway.api.schema import openapi_document
from gateway.db.jobs import CURSOR
from gateway.domain.names import IDEMPOTENCY_KEY, LABEL_SELECTOR


def schema(name: str) -> dict[str, object]:
    found: dict[str, object] = openapi_document()["components"]["schemas"][name]
    return found


def test_the_label_selector_and_cursor_patterns_are_the_servers() -> None:
    assert schema("LabelSelector")["pattern"] == LABEL_SELECTOR.pattern
    assert schema("Cursor")["pattern"] == f"^{CURSOR.pattern}$"


def test_the_idempotency_key_pattern_is_the_servers() -> None:
    parameters = openapi_document()["paths"]["/v1/jobs"]["post"]["parameters"]
    header = next(p for p in parameters if p["name"] == "Idempotency-Key")
    assert header["schema"]["pattern"] == f"^{IDEMPOTENCY_KEY.pattern}$"


def test_the_label_selector_pattern_means_equality_terms() -> None:
    pattern = re.compile(str(schema("LabelSelector")["pattern"]))
    assert pattern.fullmatch("team=ranking,tier==gold,empty=")
    assert pattern.fullmatch("example.com/team=a")
    assert pattern.fullmatch("")
    assert not pattern.fullmatch(" team=ranking")
    assert not pattern.fullmatch("team!=ranking")
    assert not pattern.fullmatch("team=ranking,")
