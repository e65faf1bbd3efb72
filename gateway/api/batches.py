"""POST /v1/jobs:batch: up to 1,000 jobs in one request, each answered on its own, all of them
written in one transaction.

The body is ``{"jobs": [{"idempotency_key": "...", "job": <a job spec or manifest>}, ...]}``
(``JobBatch`` in the OpenAPI document, which bounds the count), at most
MUSTER_MAX_BATCH_BODY_BYTES. The answer is 200 with ``{"items": [...]}``, one item per job in the
request's order: its status and its Job, or its status and its problem.

Invariants:

- The envelope is the request's: a body that does not parse or is too large, one that breaks
  the ``JobBatch`` schema (more than 1,000 jobs, a job that is no object, an unknown field), a
  key that is no Idempotency-Key or is repeated within the batch, text that PostgreSQL cannot
  store anywhere in it, or a caller with no role at all, refuses the whole request (400, 403,
  413, 415, 422) and nothing is written.
- Each job is answered as POST /v1/jobs would answer it alone, with the batch's ``?tenant=`` and
  its own key, submitted in the batch's order: the same checks (``gateway.api.jobs``'s
  ``check_submit``), the same writer (``Submits.submit_together``), the same problem documents
  (``gateway.api.problems``'s ``client_problem``); a 429 carries the Retry-After header's seconds
  as ``retry_after``.
- The jobs a batch writes commit together, in one transaction: a failure while writing them
  (the database going away) writes none, and the request fails whole (503).
- Checking up to 1,000 jobs, each up to MUSTER_MAX_REPLICAS pods, takes a while: the handler
  lets the event loop serve other requests between two jobs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from aiohttp import web

from gateway.api import schema
from gateway.api.auth import actor, require_role
from gateway.api.body import read_document
from gateway.api.context import NOTIFIER, SETTINGS, SUBMITS
from gateway.api.jobs import CheckedSubmit, check_submit, check_submit_query, idempotency_key_ok
from gateway.api.problems import client_problem
from gateway.api.serializers import job_view, json_response
from gateway.db.submits import Submission, Submitted, request_hash
from gateway.domain.problems import FieldProblem
from gateway.errors import ClientError, TooManyRequests, ValidationFailed

routes = web.RouteTableDef()


@routes.post("/v1/jobs:batch")
async def submit_batch(request: web.Request) -> web.Response:
    body = await read_document(request, request.app[SETTINGS].api.max_batch_body_bytes)
    check_submit_query(request)
    problems = schema.check("JobBatch", body)
    if problems:
        raise ValidationFailed(problems)
    items: list[dict[str, Any]] = body["jobs"]
    _check_keys(items)
    require_role(request)
    submitter = actor(request)

    # 1. Each job's checks, in order; a refused job has its answer already.
    answers: list[dict[str, Any] | None] = [None] * len(items)
    checked: list[tuple[int, CheckedSubmit]] = []
    submissions: list[Submission] = []
    seen: dict[str, list[tuple[str, str]]] = {}  # the nodes' word on each set of pods checked
    for index, item in enumerate(items):
        job, key = item["job"], item.get("idempotency_key")
        try:
            one = await check_submit(request, job, seen=seen)
        except ClientError as exc:
            answers[index] = _refused(exc)
        else:
            checked.append((index, one))
            submissions.append(
                Submission(
                    spec=one.spec,
                    body_hash=request_hash(job) if key is not None else "",
                    idempotency_key=key,
                    actor=submitter,
                    pods=one.pods,
                )
            )
        await asyncio.sleep(0)  # other requests may run between two jobs' checks

    # 2. The jobs that passed, written in one transaction; each has its own answer.
    outcomes = await request.app[SUBMITS].submit_together(submissions)
    created = False
    for (index, one), outcome in zip(checked, outcomes, strict=True):
        if isinstance(outcome, Submitted):
            created = created or outcome.created
            answers[index] = {
                "status": 201 if outcome.created else 200,
                "job": job_view(outcome.job),
                "problem": None,
            }
        else:
            answers[index] = _refused(one.refusal(outcome))
    if created:
        request.app[NOTIFIER].poke()
    return json_response({"items": answers})


def _check_keys(items: Sequence[dict[str, Any]]) -> None:
    """422 for the whole batch when a job's Idempotency-Key is not one, or repeats another's:
    a key names one request, so two jobs of one batch with one key are a client's mistake (a
    retry of the batch sends each job with its own key again)."""
    problems: list[FieldProblem] = []
    first: dict[str, int] = {}
    for index, item in enumerate(items):
        key = item.get("idempotency_key")
        if key is None:
            continue
        where = f"/jobs/{index}/idempotency_key"
        if not idempotency_key_ok(key):
            problems.append(
                FieldProblem(pointer=where, detail="must be 1 to 255 printable ASCII characters")
            )
        elif key in first:
            problems.append(
                FieldProblem(
                    pointer=where,
                    detail=f"repeats the key of /jobs/{first[key]}: each job of a batch needs "
                    "its own",
                )
            )
        else:
            first[key] = index
    if problems:
        raise ValidationFailed(problems)


def _refused(exc: ClientError) -> dict[str, Any]:
    """One job's answer when it is not queued: its status and problem, as POST /v1/jobs's."""
    answer: dict[str, Any] = {"status": exc.status, "job": None, "problem": client_problem(exc)}
    if isinstance(exc, TooManyRequests):
        answer["retry_after"] = exc.retry_after_seconds
    return answer
