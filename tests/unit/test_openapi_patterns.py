"""The OpenAPI document states the server's own rules: each pattern it gives for a value the
server checks by hand is the server's regular expression, not a copy that could drift."""

from __future__ import annotations

import re

from gateway.api.events import AFTER
from gateway.api.schema import PATTERN_WORDS, openapi_document
from gateway.db.jobs import CURSOR, QUEUE_CURSOR
from gateway.domain.names import IDEMPOTENCY_KEY, LABEL_SELECTOR


def schema(name: str) -> dict[str, object]:
    found: dict[str, object] = openapi_document()["components"]["schemas"][name]
    return found


def test_the_label_selector_and_cursor_patterns_are_the_servers() -> None:
    assert schema("LabelSelector")["pattern"] == LABEL_SELECTOR.pattern
    assert schema("Cursor")["pattern"] == f"^{CURSOR.pattern}$"


def test_the_queue_cursor_and_event_stream_after_patterns_are_the_servers() -> None:
    assert schema("QueueCursor")["pattern"] == f"^{QUEUE_CURSOR.pattern}$"
    parameters = openapi_document()["paths"]["/v1/events"]["get"]["parameters"]
    after = next(p for p in parameters if p["name"] == "after")
    assert after["schema"]["pattern"] == f"^({AFTER.pattern})$"


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


def _patterns(node: object) -> set[str]:
    if isinstance(node, dict):
        found = {node["pattern"]} if isinstance(node.get("pattern"), str) else set()
        return found.union(*(_patterns(value) for value in node.values()))
    if isinstance(node, list):
        return set().union(*(_patterns(value) for value in node))
    return set()


def test_every_pattern_put_in_words_is_one_the_document_uses() -> None:
    assert set(PATTERN_WORDS) <= _patterns(openapi_document())
