"""``muster submit`` with many jobs sends them in batches the API takes."""

from __future__ import annotations

import json

from gateway.cli_client import BATCH_BYTES, BATCH_SIZE, _batches


def test_batches_hold_at_most_a_thousand_jobs_and_keep_their_order() -> None:
    items = [{"job": {"name": f"j{i}"}} for i in range(2500)]
    batches = list(_batches(items))
    assert [len(b) for b in batches] == [BATCH_SIZE, BATCH_SIZE, 500]
    assert [item for batch in batches for item in batch] == items


def test_large_jobs_are_split_by_size_before_the_gateways_body_limit() -> None:
    big = "x" * (BATCH_BYTES // 3)
    items = [{"job": {"name": f"j{i}", "labels": {"blob": big}}} for i in range(7)]
    batches = list(_batches(items))
    assert all(len(json.dumps({"jobs": batch})) <= BATCH_BYTES for batch in batches)
    assert [item for batch in batches for item in batch] == items
    assert len(batches) == 4
