"""What a simulated replica's command means (``gateway.backends.simulated.run_seconds``)."""

from __future__ import annotations

import pytest

from gateway.backends.simulated import run_seconds


@pytest.mark.parametrize(
    ("argv", "runs"),
    [
        (("sleep", "0.5"), (0.5, 0)),
        (("sleep", "3"), (3.0, 0)),
        (("sh", "-c", "sleep .25"), (0.25, 0)),
        (("/bin/sh", "-c", "  sleep 2 "), (2.0, 0)),
        (("true",), (0.0, 0)),
        (("false",), (0.0, 1)),
        (("sh", "-c", "false"), (0.0, 1)),
    ],
)
def test_sleep_true_and_false_end_as_they_would(
    argv: tuple[str, ...], runs: tuple[float, int]
) -> None:
    assert run_seconds(argv) == runs


@pytest.mark.parametrize(
    "argv",
    [
        ("python", "train.py"),
        ("sleep", "-1"),
        ("sleep", "1e3"),
        ("sh", "-c", '"'),  # unbalanced quote: not a command this runner knows
        ("sh", "-c", ""),
        ("sleep", "9" * 400),  # not a finite number of seconds
        (),
    ],
)
def test_anything_else_runs_until_it_is_deleted(argv: tuple[str, ...]) -> None:
    assert run_seconds(argv) is None
