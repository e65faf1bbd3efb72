"""The client commands of ``muster``: ``submit``, ``jobs``, ``status``, ``logs``, ``cancel``,
``tenants``, ``cohorts``, ``cohort`` and ``priority-classes``, and how they print.

They talk to a running gateway over HTTP through ``gateway.client`` and import nothing of the
server. ``gateway.cli`` adds them to its parser (`add_client_commands`) and runs the one chosen
(`run_client`).

Invariants kept here:

- Output is plain aligned columns; ``--json`` prints the API's JSON instead, unchanged.
- Exit 0 on success, 1 when the gateway refuses (its problem's title and detail, one line per field
  for a 422) or the document cannot be read, and 2 when there is no gateway to talk to or the
  settings are wrong. Never a traceback for any of these.
- Without MUSTER_TOKEN a command signs a short-lived admin token of its own when it can read the
  local issuer's key (``cli_token.own_token``), so a newcomer's first commands just work; it
  sends it only to a server that first proves it holds that key, and otherwise exits 2 having
  sent nothing but the challenge.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from gateway.cli_token import own_token
from gateway.client import Client, load_documents
from gateway.domain.jobs.kubeflow import MANIFEST_KINDS
from gateway.domain.lifecycle.states import JobState
from gateway.domain.resources import QuantityError, memory_bytes
from gateway.errors import (
    ApiProblem,
    BadDocument,
    ConfigError,
    JobsRefused,
    Unproven,
    Unreachable,
)
from gateway.settings import DEFAULT_URL, ClientSettings

Command = Callable[[Client, argparse.Namespace], int | None]
ID_HELP = "the job's id, or any start of it that no other job's id shares (as `muster jobs` shows)"
#: What ``muster submit --wait`` exits with, by the job's end.
WAIT_CODES = {"succeeded": 0, "failed": 1, "cancelled": 3}
WAIT_TIMED_OUT = 4
WAIT_POLL_SECONDS = 0.5
JOBS_WATCH_SECONDS = 2.0


EVENTS_SHOWN = 10

#: Jobs sent in one POST /v1/jobs:batch (the API's bound), and the JSON they may take: well
#: under the gateway's default MUSTER_MAX_BATCH_BODY_BYTES (4 MiB).
BATCH_SIZE = 1000
BATCH_BYTES = 3 * 2**20
#: The longest Idempotency-Key the API takes.
MAX_KEY_LENGTH = 255


def add_client_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    connection = argparse.ArgumentParser(add_help=False)
    connection.add_argument(
        "--url", help=f"the gateway's base URL (default: {DEFAULT_URL}) [env MUSTER_URL]"
    )
    connection.add_argument(
        "--token", help="bearer token sent with every request [env MUSTER_TOKEN]"
    )
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument(
        "-o",
        "--output",
        choices=("table", "json", "yaml"),
        default="table",
        help="table (default), or the API's answer as json or yaml",
    )
    as_json.add_argument(
        "--json", dest="output", action="store_const", const="json", help="the same as -o json"
    )

    def command(
        name: str, handler: Command, summary: str, *, with_json: bool = False
    ) -> argparse.ArgumentParser:
        parents = [connection, as_json] if with_json else [connection]
        sub = commands.add_parser(name, parents=parents, help=summary, description=summary)
        sub.set_defaults(handler=handler)
        return sub

    submit = command(
        "submit",
        _submit,
        "submit Muster job specs, Kubeflow TFJobs or PyTorchJobs (several: in batches)",
    )
    submit.add_argument(
        "files",
        nargs="+",
        metavar="FILE",
        help="a spec, YAML (documents separated by ---) or JSON; - reads stdin",
    )
    submit.add_argument("--tenant", help="the tenant, for a spec or manifest that names none")
    submit.add_argument(
        "--wait",
        action="store_true",
        help="follow the job to its end, printing each change of state; exit 0 when it "
        "succeeded, 1 when it failed, 3 when it was cancelled, 4 when --timeout passed first",
    )
    submit.add_argument(
        "--dry-run",
        action="store_true",
        help="write nothing: show what would be stored and whether the next admission cycle "
        "would admit the job, and if not, why",
    )
    submit.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        help="with --wait, stop waiting after SECONDS (the job goes on)",
    )
    submit.add_argument(
        "--idempotency-key",
        metavar="KEY",
        help="resubmitting with the same key returns the job; with several jobs, job N gets "
        "KEY-N (from 1)",
    )

    jobs = command("jobs", _jobs, "list jobs, oldest first", with_json=True)
    jobs.add_argument("--tenant", help="only this tenant's jobs")
    states = [state.value for state in JobState]
    jobs.add_argument(
        "--state", choices=states, metavar="STATE", help="only jobs in STATE: " + ", ".join(states)
    )
    jobs.add_argument(
        "--label", action="append", metavar="KEY=VALUE", help="only jobs with this label (repeat)"
    )
    jobs.add_argument(
        "--limit",
        type=int,
        metavar="N",
        help="at most N jobs (1-500, default 50; with --all: a page)",
    )
    jobs.add_argument("--all", action="store_true", help="every job, page after page")
    jobs.add_argument(
        "--watch",
        "-w",
        action="store_true",
        help="print the table again whenever it changes (Ctrl-C stops)",
    )

    events = command(
        "events", _events, "print job events as they happen (GET /v1/events)", with_json=True
    )
    events.add_argument("--tenant", help="only this tenant's events")
    events.add_argument("--job", metavar="ID", help="only this job's events (" + ID_HELP + ")")
    events.add_argument(
        "--follow",
        "-f",
        action="store_true",
        help="keep printing new events (a dropped connection resumes where it was); without "
        "it, print the events recorded so far and stop",
    )

    status = command(
        "status", _status, "show one job: state, queue place, replicas, events", with_json=True
    )
    status.add_argument("id", metavar="ID", help=ID_HELP)

    logs_ = command("logs", _logs, "print a job's logs")
    logs_.add_argument("id", metavar="ID", help=ID_HELP)
    logs_.add_argument("--replica", metavar="REPLICA", help="one replica, such as worker-0")
    logs_.add_argument("--follow", "-f", action="store_true", help="keep printing as logs grow")

    cancel = command("cancel", _cancel, "cancel a job (its pods are deleted)")
    cancel.add_argument("id", metavar="ID", help=ID_HELP)

    about = "list tenants: quota, usage, priority ceiling, cohort, what they borrow and lend"
    command("tenants", _tenants, about, with_json=True)

    command("cohorts", _cohorts, "list cohorts and their members (platform admins)", with_json=True)
    cohort = command(
        "cohort",
        _cohort,
        "show one cohort: each member's nominal, borrowed and lent quota, and what is idle",
        with_json=True,
    )
    cohort.add_argument("name", metavar="NAME", help="the cohort's name")

    command(
        "priority-classes",
        _priority_classes,
        "list priority classes: value, preemptible, the tenants granted each (platform admins)",
        with_json=True,
    )


# --- the client commands ------------------------------------------------------------------------


def _submit(client: Client, args: argparse.Namespace) -> int | None:
    documents: list[tuple[str, dict[str, Any]]] = []
    for file in args.files:
        source = "standard input" if file == "-" else file
        try:
            text = sys.stdin.read() if file == "-" else Path(file).read_text("utf-8")
        except (OSError, ValueError) as exc:
            raise BadDocument(f"cannot read {source}: {exc}") from exc
        found = load_documents(text, source)
        for number, document in enumerate(found, start=1):
            where = source if len(found) == 1 else f"{source} (document {number})"
            documents.append((where, _with_tenant(document, args.tenant, where)))
    # A TFJob or PyTorchJob has no tenant field: it travels in the query.
    manifests = any(d.get("kind") in MANIFEST_KINDS for _, d in documents)
    query_tenant = args.tenant if manifests else None
    if (args.wait or args.dry_run) and len(documents) != 1:
        raise BadDocument("--wait and --dry-run take one job: give one spec or manifest")
    if args.dry_run:
        answer = client.submit_job(documents[0][1], tenant=query_tenant, dry_run=True)
        spec, cycle = answer["spec"], answer["next_cycle"]
        print(f"would store {spec['name']} for tenant {spec['tenant']}:")
        print(_indent(yaml.safe_dump(spec, sort_keys=False).rstrip()))
        if cycle["admitted"]:
            preempting = cycle.get("preempting")
            extra = f", preempting {preempting} running gang(s)" if preempting else ""
            print(f"next admission cycle: would admit it now{extra}")
        else:
            print(f"next admission cycle: would wait: {cycle['reason']}: {cycle['message']}")
        return None
    if len(documents) == 1:
        job = client.submit_job(
            documents[0][1], tenant=query_tenant, idempotency_key=args.idempotency_key
        )
        print(f"submitted {job['name']} as {job['id']} ({job['state']})")
        return _wait(client, job, args.timeout) if args.wait else None
    key = args.idempotency_key
    if key is not None and len(f"{key}-{len(documents)}") > MAX_KEY_LENGTH:
        raise BadDocument(
            f"--idempotency-key is too long for {len(documents)} jobs: job N's key is KEY-N, "
            f"at most {MAX_KEY_LENGTH} characters"
        )
    items = [
        {"job": document} | ({"idempotency_key": f"{key}-{n}"} if key is not None else {})
        for n, (_, document) in enumerate(documents, start=1)
    ]
    refused = 0
    start = 0
    for chunk in _batches(items):
        answer = client.submit_batch(chunk, tenant=query_tenant)
        sent, start = documents[start : start + len(chunk)], start + len(chunk)
        for (where, _), item in zip(sent, answer["items"], strict=True):
            if item["job"] is not None:
                job = item["job"]
                print(f"submitted {job['name']} as {job['id']} ({job['state']})")
                continue
            refused += 1
            problem = item["problem"]
            lines = [f"muster: {where}: {problem['title']}: {problem.get('detail', '')}"]
            lines += [
                f"  {error.get('pointer') or '(root)'}: {error.get('detail', '')}"
                for error in problem.get("errors", ())
            ]
            print("\n".join(lines), file=sys.stderr)
    if refused:
        raise JobsRefused(f"{refused} of {len(documents)} jobs were not submitted")
    return None


def _wait(client: Client, job: Mapping[str, Any], timeout: float | None) -> int:
    """Follow ``job`` to its end, printing each state it reaches (with its reason); the exit
    code of its outcome (``WAIT_CODES``), or ``WAIT_TIMED_OUT``."""
    deadline = None if timeout is None else time.monotonic() + timeout
    shown = (job["state"], job.get("reason"))
    while job["state"] not in WAIT_CODES:
        if deadline is not None and time.monotonic() >= deadline:
            print(
                f"muster: still {job['state']} after {timeout:g} s; not waiting any more",
                file=sys.stderr,
            )
            return WAIT_TIMED_OUT
        time.sleep(WAIT_POLL_SECONDS)
        job = client.get_job(job["id"])
        now = (job["state"], job.get("reason"))
        if now != shown:
            shown = now
            why = f" ({job['reason']}: {job['message']})" if job.get("reason") else ""
            print(f"{job['name']}: {job['state']}{why}", flush=True)
    return WAIT_CODES[job["state"]]


def _batches(items: Sequence[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    """``items`` in batches of at most BATCH_SIZE jobs and BATCH_BYTES of JSON each (a single
    job larger than that goes alone, and the gateway answers for it)."""
    batch: list[dict[str, Any]] = []
    size = 0
    for item in items:
        length = len(json.dumps(item)) + 2
        if batch and (len(batch) == BATCH_SIZE or size + length > BATCH_BYTES):
            yield batch
            batch, size = [], 0
        batch.append(item)
        size += length
    if batch:
        yield batch


def _with_tenant(document: dict[str, Any], tenant: str | None, where: str) -> dict[str, Any]:
    """A spec with ``--tenant`` filled in where it names none (a TFJob or PyTorchJob is left as
    it is)."""
    if document.get("kind") not in MANIFEST_KINDS and tenant is not None:
        named = document.setdefault("tenant", tenant)
        if named != tenant:
            raise BadDocument(f"{where} names tenant {named!r} but --tenant says {tenant!r}")
    return document


def _events(client: Client, args: argparse.Namespace) -> None:
    job_id = client.resolve_id(args.job) if args.job else None
    stream = client.events(tenant=args.tenant, job=job_id, follow=args.follow)
    for event in stream:
        if args.output != "table":
            _emit(args.output, {"id": event.stream_id, **event.raw})
            continue
        states = "->".join(filter(None, (event.from_state, event.to_state))) or "-"
        when = _when(str(event.raw.get("created_at"))) if event.raw.get("created_at") else "-"
        reason = event.reason or "-"
        print(f"{when}  {event.job_id[:8]}  {event.tenant}  {event.type:<10} {states}  {reason}")
        sys.stdout.flush()


def _jobs(client: Client, args: argparse.Namespace) -> None:
    if args.watch and args.output == "table":
        shown = None
        while True:
            table = _jobs_table(client, args)
            if table != shown:
                shown = table
                stamp = datetime.now(UTC).strftime("%H:%M:%S")
                print(f"\n-- {stamp}\n{table}", flush=True)
            time.sleep(JOBS_WATCH_SECONDS)
    _jobs_once(client, args)


def _jobs_query(args: argparse.Namespace) -> dict[str, Any]:
    label = ",".join(args.label) if args.label else None
    return {"tenant": args.tenant, "state": args.state, "label": label, "limit": args.limit}


def _jobs_table(client: Client, args: argparse.Namespace) -> str:
    return _jobs_rows(client.list_jobs(**_jobs_query(args))["items"])


def _jobs_rows(items: Iterable[Mapping[str, Any]]) -> str:
    """The jobs as the table ``muster jobs`` prints."""
    now = datetime.now(UTC)
    rows = [
        (
            job["id"][:8],
            job["name"],
            job["tenant"],
            job["state"],
            job["reason"] or "-",
            _age(job["created_at"], now),
            str(job["queue"]["position"]) if job.get("queue") else "-",
        )
        for job in items
    ]
    return _table(("ID", "NAME", "TENANT", "STATE", "REASON", "AGE", "QUEUE"), rows)


def _jobs_once(client: Client, args: argparse.Namespace) -> None:
    query = _jobs_query(args)
    page = client.list_jobs(**query)
    items = list(page["items"])
    while args.all and page["next_cursor"]:
        page = client.list_jobs(**query, cursor=page["next_cursor"])
        items += page["items"]
    if args.output != "table":
        _emit(args.output, {"items": items, "next_cursor": page["next_cursor"]})
        return
    print(_jobs_rows(items))
    if page["next_cursor"] and not args.all:
        print("(more jobs: add --all, or a larger --limit)", file=sys.stderr)


def _status(client: Client, args: argparse.Namespace) -> None:
    job = client.get_job(client.resolve_id(args.id))
    if args.output != "table":
        _emit(args.output, job)
        return
    events = client.job_events(job["id"])["items"]
    now = datetime.now(UTC)
    fields: list[tuple[str, str]] = [
        ("name", job["name"]),
        ("id", job["id"]),
        ("tenant", job["tenant"]),
        ("framework", job["framework"]),
        ("priority", str(job["priority"])),
        ("state", job["state"]),
    ]
    fields += [(key, job[key]) for key in ("reason", "message") if job.get(key)]
    if job["state"] == JobState.QUEUED:
        queue = job.get("queue")
        place = "not placed yet (the next admission cycle ranks it)"
        if queue:
            place = f"{queue['position']} overall, {queue['tenant_position']} in {job['tenant']}"
        fields.append(("queue", place))
    fields.append(("attempt", str(job["attempt"])))
    for key in ("created", "admitted", "started", "finished", "updated"):
        if stamp := job.get(f"{key}_at"):
            fields.append((key, f"{_when(stamp)} ({_age(stamp, now)} ago)"))
    width = max(len(key) for key, _ in fields) + 1
    print("\n".join(f"{key + ':':<{width}} {value}" for key, value in fields))

    replicas: Mapping[str, Any] = job["spec"].get("replicas", {})
    print("\nreplicas:")
    print(
        _indent(
            _table(
                ("ROLE", "COUNT", "CPU", "MEMORY", "GPU", "IMAGE"),
                map(_replica_row, replicas.items()),
            )
        )
    )

    shown = events[-EVENTS_SHOWN:]
    more = f" (last {len(shown)} of {len(events)})" if len(events) > len(shown) else ""
    print(f"\nevents{more}:")
    rows = [
        (
            _when(event["created_at"]),
            event["type"],
            "->".join(filter(None, (event["from_state"], event["to_state"]))) or "-",
            event["reason"] or "-",
        )
        for event in shown
    ]
    print(_indent(_table(("TIME", "TYPE", "FROM->TO", "REASON"), rows)))


def _replica_row(item: tuple[str, Mapping[str, Any]]) -> tuple[str, ...]:
    role, spec = item
    resources = spec.get("resources") or {}
    return (
        role,
        str(spec.get("count", 1)),
        _number(resources.get("cpu", "1")),
        _memory(resources.get("memory", "1Gi")),
        _number(resources.get("gpu", 0)),
        str(spec.get("image", "-")),
    )


def _logs(client: Client, args: argparse.Namespace) -> None:
    out = sys.stdout.buffer
    try:
        job_id = client.resolve_id(args.id)
        for chunk in client.job_logs(job_id, replica=args.replica, follow=args.follow):
            out.write(chunk)
            out.flush()
    except ApiProblem as exc:
        if exc.status == 404 and exc.detail.lower() == exc.title.lower():
            # The route itself is missing (a job that is not there has a detail naming it).
            raise ApiProblem(
                404, exc.title, "this gateway does not serve logs (GET /v1/jobs/{id}/logs)"
            ) from exc
        raise


def _cancel(client: Client, args: argparse.Namespace) -> None:
    job = client.cancel_job(client.resolve_id(args.id))
    print(f"cancelled {job['name']} ({job['id']})")


def _tenants(client: Client, args: argparse.Namespace) -> None:
    tenants = []
    for tenant in client.list_tenants()["items"]:
        try:
            tenants.append(client.tenant_status(tenant["name"]))
        except ApiProblem as exc:
            if exc.status != 404:  # 404: deleted since the list was read; leave it out
                raise
    if args.output != "table":
        _emit(args.output, {"items": tenants})
        return
    rows = []
    for tenant in tenants:
        quota, usage = tenant["quota"], tenant["usage"]
        rows.append(
            (
                tenant["name"],
                tenant["namespace"],
                *(
                    f"{_number(usage[key])}/{_number(quota[key])}"
                    for key in ("cpu", "memory", "gpu")
                ),
                f"{tenant['running_jobs']}/{quota['max_running_jobs']}",
                f"{tenant['queued_jobs']}/{quota['max_queued_jobs']}",
                str(tenant["max_priority"]),
                tenant.get("cohort") or "-",
                _amounts(tenant.get("borrowed")),
                _amounts(tenant.get("lent")),
            )
        )
    headers = (
        "NAME",
        "NAMESPACE",
        "CPU",
        "MEMORY",
        "GPU",
        "RUNNING",
        "QUEUED",
        "MAX_PRIORITY",
        "COHORT",
        "BORROWED",
        "LENT",
    )
    print(_table(headers, rows))


def _cohorts(client: Client, args: argparse.Namespace) -> None:
    cohorts = client.list_cohorts()
    if args.output != "table":
        _emit(args.output, cohorts)
        return
    rows = [
        (c["name"], ",".join(c["members"]) or "-", c.get("description") or "")
        for c in cohorts["items"]
    ]
    print(_table(("NAME", "MEMBERS", "DESCRIPTION"), rows))


def _cohort(client: Client, args: argparse.Namespace) -> None:
    status = client.cohort_status(args.name)
    if args.output != "table":
        _emit(args.output, status)
        return
    rows = [
        (
            member["name"],
            _amounts(member.get("nominal")),
            _amounts(member.get("borrowed")),
            _amounts(member.get("lent")),
            _amounts(member.get("borrowing_limit")),
            _amounts(member.get("lending_limit")),
        )
        for member in status["members"]
    ]
    headers = ("MEMBER", "NOMINAL", "BORROWED", "LENT", "BORROWING_LIMIT", "LENDING_LIMIT")
    print(_table(headers, rows))
    print(f"\nidle to lend: {_amounts(status.get('idle'))}")


def _priority_classes(client: Client, args: argparse.Namespace) -> None:
    classes = client.list_priority_classes()
    if args.output != "table":
        _emit(args.output, classes)
        return
    rows = [
        (
            c["name"],
            str(c["value"]),
            "yes" if c["preemptible"] else "no",
            ",".join(c["tenants"]) or "-",
            c.get("description") or "",
        )
        for c in classes["items"]
    ]
    print(_table(("NAME", "VALUE", "PREEMPTIBLE", "TENANTS", "DESCRIPTION"), rows))


def _amounts(amounts: dict[str, Any] | None) -> str:
    """``{"cpu": "2", "memory": "0", "gpu": 1}`` -> ``cpu=2,gpu=1``; ``-`` when none is held."""
    held = [
        f"{key}={_memory(amounts[key]) if key == 'memory' else _number(amounts[key])}"
        for key in ("cpu", "memory", "gpu")
        if amounts and amounts.get(key) not in (None, 0, "0")
    ]
    return ",".join(held) or "-"


# --- output ---------------------------------------------------------------------------------------


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = [list(headers), *(list(row) for row in rows)]
    widths = [max(len(line[column]) for line in lines) for column in range(len(headers))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


def _age(stamp: str, now: datetime) -> str:
    """``2024-05-01T12:00:00Z`` -> ``5s``, ``3m``, ``2h`` or ``4d`` before ``now``."""
    seconds = max(0, int((now - datetime.fromisoformat(stamp)).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _when(stamp: str) -> str:
    """``2024-05-01T12:00:00.123456Z`` -> ``2024-05-01T12:00:00Z``: seconds are enough to read."""
    return datetime.fromisoformat(stamp).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _memory(value: object) -> str:
    """A memory quantity as people write it: ``24683792Ki`` -> ``23.5Gi`` (one decimal at
    most, in the largest binary unit it reaches); what does not parse is shown as given."""
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        return str(value)
    try:
        amount = memory_bytes(value)
    except QuantityError:
        return str(value)
    for unit, size in (("Ti", 2**40), ("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
        if amount >= size:
            shown = f"{amount / size:.1f}".removesuffix(".0")
            return f"{shown}{unit}"
    return str(amount)


def _number(value: object) -> str:
    """A quantity as the API gave it, with ``2.0`` shown as ``2``."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _emit(output: str, value: object) -> None:
    """The API's answer as it is, in JSON or YAML (the client's models read either back)."""
    if output == "yaml":
        print(yaml.safe_dump(value, sort_keys=False, allow_unicode=True), end="")
    else:
        print(json.dumps(value, indent=2))


def run_client(args: argparse.Namespace) -> int:
    """Run one client command; every failure becomes one message on stderr and an exit code."""
    try:
        settings = ClientSettings.load(os.environ, url=args.url, token=args.token)
        if settings.token is None:
            settings = dataclasses.replace(settings, token=own_token(settings.url))
        code = args.handler(Client(settings), args)
    except (ConfigError, Unproven) as exc:
        print(f"muster: {exc}", file=sys.stderr)
        return 2
    except (BadDocument, JobsRefused) as exc:
        print(f"muster: {exc}", file=sys.stderr)
        return 1
    except ApiProblem as exc:
        lines = [f"muster: {exc.title}: {exc.detail}"]
        lines += [f"  {pointer or '(root)'}: {detail}" for pointer, detail in exc.errors]
        if exc.status == 401:
            lines.append(
                "  set MUSTER_TOKEN (or --token) to a token from your issuer, or, for the local "
                "issuer, from `muster token`"
            )
        print("\n".join(lines), file=sys.stderr)
        return 1
    except Unreachable as exc:
        if exc.refused:
            print(
                f"muster: cannot reach Muster at {exc.url} (is `muster serve` running?)",
                file=sys.stderr,
            )
        else:
            print(f"muster: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (``muster jobs | head``): stop quietly. Point stdout at devnull so
        # the interpreter's final flush does not complain again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return code or 0
