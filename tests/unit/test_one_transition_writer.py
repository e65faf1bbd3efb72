"""Job states change in one place: gateway/db/transitions.py is the only module that writes a
job's state or a job_events row, and it asks the domain's state machine before it does."""

from __future__ import annotations

import re
from pathlib import Path

GATEWAY = Path(__file__).resolve().parents[2] / "gateway"
WRITER = GATEWAY / "db" / "transitions.py"

# SQL that writes an event, makes a job, or sets a job's state: an UPDATE of jobs whose SET
# clause (up to its WHERE, FROM or RETURNING) assigns state.
EVENT_WRITE = re.compile(r"INSERT\s+INTO\s+job_events", re.I)
JOB_INSERT = re.compile(r"INSERT\s+INTO\s+jobs\s*\(", re.I)
JOB_UPDATE = re.compile(
    r"UPDATE\s+jobs\b(?:\s+\w+)?\s+SET\b(?P<set>(?:(?!\b(?:WHERE|FROM|RETURNING)\b).)*)",
    re.I | re.S,
)
SETS_STATE = re.compile(r"(?:^|,)\s*(?:\w+\.)?state\s*=", re.I)


def _writes(text: str) -> list[str]:
    found = [m.group(0) for m in EVENT_WRITE.finditer(text)]
    found += [m.group(0) for m in JOB_INSERT.finditer(text)]
    found += [
        m.group(0)[:60] for m in JOB_UPDATE.finditer(text) if SETS_STATE.search(m.group("set"))
    ]
    return found


def test_no_module_but_the_transition_writer_writes_a_job_state_or_event() -> None:
    elsewhere = {
        str(path.relative_to(GATEWAY)): writes
        for path in sorted(GATEWAY.rglob("*.py"))
        if path != WRITER and (writes := _writes(path.read_text("utf-8")))
    }
    assert elsewhere == {}


def test_the_writer_is_found_by_the_check_and_asks_the_state_machine() -> None:
    text = WRITER.read_text("utf-8")
    assert _writes(text), "the patterns no longer match the writer's own SQL"
    assert "can_transition(" in text
    assert "INITIAL_STATE" in text
