"""Submit throughput: POST /v1/jobs of the real gateway next to a bare aiohttp + asyncpg handler.

    python bench/api.py                  # 2 rounds of (muster, bare), 2 s warm-up + 10 s each
    python bench/api.py --quick          # 1 round, 0.5 s warm-up + 2 s each
    python bench/api.py --tenants 32     # spread the jobs over 32 tenants instead of one
    python bench/api.py --database-url postgresql://...   # a scratch database instead

Three kinds of process take part, all started by this script:

- ``muster serve`` (the real application, static backend with one 64-CPU, 8-GPU node) and a bare
  aiohttp app whose only handler reads the JSON body and does one asyncpg INSERT
  (``--bare-server PORT DSN``); both use the same PostgreSQL database and pools of 10;
- one load process (``--load``): fixed concurrency of keep-alive aiohttp clients posting the same
  realistic TensorFlow job (chief + 4 workers + 2 ps, a unique name each time) to each target in
  turn, alternating targets round by round.

Only 2xx answers count as requests. The load process prints one row per target and round, the
totals, and the ratio of the two rates. Goal: muster/bare >= 0.5.

The cpu columns say who was busy during a measured phase (100 % = one core): the server under
test, the PostgreSQL server with all its backends (approximate: backends that exit are not
counted), and the load process itself. If the client's figure nears 100 % the rate is the
client's, not the server's. "server cpu/req" is the server's CPU time per counted request, the
figure least disturbed by other work on the machine.

Muster's admission loop runs in ``muster serve`` throughout, also while the bare server is
measured, and its cycles grow with the queue that the run builds up.

Without ``--database-url`` an embedded PostgreSQL runs in a temporary directory under /tmp and is
removed afterwards. With it, the database gets ``bench`` tenants, queued jobs and a ``bare_jobs``
table that stay behind: point it at a scratch database.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp
import asyncpg
import psutil
from aiohttp import web
from sqlalchemy.engine import make_url

POOL_SIZE = 10  # gateway.db.engine.make_engine's default pool_size
TENANT = "bench"
PRIORITY = 10  # the jobs' priority; an admin grants it as the tenant's max_priority
TENANT_BODY = {
    "quota": {
        "cpu": "100000",
        "memory": "100Ti",
        "gpu": 1000,
        "max_running_jobs": 100000,
        "max_queued_jobs": 1000000,  # the schema's maximum
    },
    "max_priority": PRIORITY,
}
NODES_YAML = 'nodes: [{name: n1, cpu: "64", memory: 256Gi, gpus: 8, gpu_mode: device-plugin}]\n'
BARE_TABLE = """
CREATE TABLE IF NOT EXISTS bare_jobs (
    id uuid PRIMARY KEY,
    body jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
)
"""
GOAL = 0.5
START_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0
NAME_PLACEHOLDER = "@@NAME@@"


def tenant_names(count: int) -> list[str]:
    return [TENANT] if count == 1 else [f"{TENANT}-{i}" for i in range(count)]


def job_body(name: str, tenant: str = TENANT) -> dict[str, Any]:
    """A TensorFlow parameter-server job as a team would submit it."""
    image = "registry.example.com/ranking/trainer:2024.06.1"
    env = {"DATA_DIR": "/data/ranking", "LOG_LEVEL": "info", "EPOCHS": "20"}
    command = ["python", "-m", "ranking.train"]
    return {
        "name": name,
        "tenant": tenant,
        "framework": "tensorflow",
        "priority": PRIORITY,
        "labels": {"team": "ranking", "experiment": "wide-deep-v3"},
        "replicas": {
            "chief": {
                "count": 1,
                "image": image,
                "command": command,
                "args": ["--role=chief", "--batch-size=1024"],
                "env": env,
                "resources": {"cpu": "4", "memory": "16Gi", "gpu": 1},
            },
            "worker": {
                "count": 4,
                "image": image,
                "command": command,
                "args": ["--role=worker", "--batch-size=1024"],
                "env": env,
                "resources": {"cpu": "8", "memory": "32Gi", "gpu": 1},
                "restart_policy": "OnFailure",
            },
            "ps": {
                "count": 2,
                "image": image,
                "command": command,
                "args": ["--role=ps"],
                "env": env,
                "resources": {"cpu": "4", "memory": "24Gi"},
            },
        },
        "run_policy": {"backoff_limit": 3, "clean_pod_policy": "Running"},
    }


# --------------------------------------------------------------------------------------------
# Server B: the bare handler.


def run_bare_server(port: int, dsn: str) -> None:
    # The same event loop as `muster serve` (uvloop where installed), so the two compare fairly.
    from gateway.cli import run

    run(_bare_server(port, dsn))


async def _bare_server(port: int, dsn: str) -> None:
    pool = await asyncpg.create_pool(dsn, min_size=POOL_SIZE, max_size=POOL_SIZE)
    insert = "INSERT INTO bare_jobs (id, body) VALUES ($1, $2)"

    async def submit(request: web.Request) -> web.Response:
        body = await request.json()
        ident = uuid.uuid4()
        await pool.execute(insert, ident, json.dumps(body))
        return web.json_response({"id": str(ident)}, status=201)

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_post("/bare", submit)
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        await stop.wait()
    finally:
        await runner.cleanup()
        await pool.close()


# --------------------------------------------------------------------------------------------
# The load process.


@dataclass(kw_only=True)
class Phase:
    target: str
    round: int
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)  # of 2xx answers, seconds
    errors: int = 0
    first_error: str | None = None
    cpu: dict[str, float] = field(default_factory=dict)  # who -> CPU seconds used in the phase

    @property
    def requests(self) -> int:
        return len(self.latencies)


def _cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """CPU time used so far by this process and by each named process (with its children)."""
    times = os.times()
    used = {"client": times.user + times.system}
    for name, pid in pids.items():
        try:
            proc = psutil.Process(pid)
            total = 0.0
            for p in [proc, *proc.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    t = p.cpu_times()
                    total += t.user + t.system
            used[name] = total
        except psutil.Error:
            continue
    return used


async def _drive(
    session: aiohttp.ClientSession,
    url: str,
    templates: list[str],
    prefix: str,
    counter: list[int],
    concurrency: int,
    seconds: float,
    phase: Phase | None,
    token: str,
) -> None:
    """``concurrency`` clients posting to ``url`` for ``seconds``; results go into ``phase``.

    Both targets get the same headers, a bearer token included (the bare server ignores it)."""
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
    end = time.perf_counter() + seconds

    async def client() -> None:
        while time.perf_counter() < end:
            counter[0] += 1
            template = templates[counter[0] % len(templates)]
            data = template.replace(NAME_PLACEHOLDER, f"{prefix}{counter[0]}").encode()
            started = time.perf_counter()
            try:
                async with session.post(url, data=data, headers=headers) as response:
                    await response.read()
                    status = response.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                status, error = 0, repr(exc)
            else:
                error = f"HTTP {status}"
            elapsed = time.perf_counter() - started
            if phase is None:
                continue
            if 200 <= status < 300:
                phase.latencies.append(elapsed)
            else:
                phase.errors += 1
                phase.first_error = phase.first_error or error

    began = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    if phase is not None:
        phase.seconds = time.perf_counter() - began


async def _load(args: argparse.Namespace) -> list[Phase]:
    targets = [_pair(item) for item in args.target]
    pids = {name: int(pid) for name, pid in map(_pair, args.pid or ())}

    def watched(target: str) -> dict[str, int]:
        """``who -> pid`` for one target: ``server:<target>`` becomes ``server``."""
        chosen = {}
        for name, pid in pids.items():
            who, _, only = name.partition(":")
            if not only or only == target:
                chosen[who] = pid
        return chosen

    templates = [json.dumps(job_body(NAME_PLACEHOLDER, t)) for t in tenant_names(args.tenants)]
    # Live job names are unique per tenant; a fresh prefix keeps reruns on one database apart.
    prefix = "b" + secrets.token_hex(3) + "-"
    counter = [0]
    phases: list[Phase] = []
    for round_ in range(1, args.rounds + 1):
        for name, url in targets:
            phase = Phase(target=name, round=round_)
            # The warm-up opens the keep-alive connections that the measured part then uses.
            connector = aiohttp.TCPConnector(limit=args.concurrency)
            timeout = aiohttp.ClientTimeout(total=30)
            async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
                drive = (session, url, templates, prefix, counter, args.concurrency)
                if args.warmup > 0:
                    await _drive(*drive, args.warmup, None, args.token)
                before = _cpu_seconds(watched(name))
                await _drive(*drive, args.duration, phase, args.token)
                after = _cpu_seconds(watched(name))
            phase.cpu = {who: after[who] - before[who] for who in after if who in before}
            phases.append(phase)
    return phases


def _percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _report(phases: list[Phase], args: argparse.Namespace) -> float | None:
    who = [w for w in ("server", "postgres", "client") if any(w in p.cpu for p in phases)]
    per_request = "server" in who
    header = (
        f"{'target':<8} {'round':>5} {'requests':>9} {'rps':>9} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'errors':>6}"
        + "".join(f" {w + ' cpu':>12}" for w in who)
        + (f" {'server cpu/req':>15}" if per_request else "")
    )
    print(
        f"\nPOST load: concurrency {args.concurrency}, {args.tenants} tenant(s), "
        f"{args.duration:g} s per target and round after {args.warmup:g} s warm-up, "
        f"{args.rounds} round(s); cpu: 100% = one core busy"
    )
    print(header)
    print("-" * len(header))

    def row(target: str, label: str, group: list[Phase]) -> None:
        latencies = [x for p in group for x in p.latencies]
        seconds = sum(p.seconds for p in group)
        requests = len(latencies)
        used = {w: sum(p.cpu.get(w, 0.0) for p in group) for w in who}
        cpu = "".join(f" {used[w] / seconds * 100 if seconds else 0:>11.0f}%" for w in who)
        if per_request:
            ms = used["server"] / requests * 1000 if requests else float("nan")
            cpu += f" {ms:>12.2f} ms"
        rps = requests / seconds if seconds else 0.0
        p50, p99 = (_percentile(latencies, q) * 1000 for q in (0.50, 0.99))
        print(
            f"{target:<8} {label:>5} {requests:>9} {rps:>9.1f} {p50:>8.1f} {p99:>8.1f} "
            f"{sum(p.errors for p in group):>6}{cpu}"
        )

    for phase in phases:
        row(phase.target, str(phase.round), [phase])
    names = list(dict.fromkeys(p.target for p in phases))
    print("-" * len(header))
    rates = {}
    for name in names:
        group = [p for p in phases if p.target == name]
        row(name, "all", group)
        seconds = sum(p.seconds for p in group)
        rates[name] = sum(p.requests for p in group) / seconds if seconds else 0.0
    for phase in phases:
        if phase.first_error:
            print(f"first error from {phase.target} (round {phase.round}): {phase.first_error}")
    if "muster" in rates and rates.get("bare"):
        ratio = rates["muster"] / rates["bare"]
        verdict = "met" if ratio >= GOAL else "MISSED"
        print(f"\nratio muster/bare = {ratio:.2f} (goal >= {GOAL}; {verdict})")
        return ratio
    return None


def run_load(args: argparse.Namespace) -> int:
    phases = asyncio.run(_load(args))
    ratio = _report(phases, args)
    sys.stdout.flush()
    return 0 if ratio is not None else 1


def _pair(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep:
        raise SystemExit(f"expected NAME=VALUE, got {text!r}")
    return name, value


# --------------------------------------------------------------------------------------------
# The orchestrator.


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


_http = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # 127.0.0.1 only, no proxy


def _http_json(method: str, url: str, token: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    request.add_header("Authorization", f"Bearer {token}")
    try:
        with _http.open(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read().decode(errors="replace")


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "".join(path.read_text(errors="replace").splitlines(keepends=True)[-lines:])
    except OSError:
        return ""


def _wait_ready(proc: subprocess.Popen[bytes], url: str, log: Path, what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode}:\n{_tail(log)}")
        with contextlib.suppress(OSError):
            status, _ = _http_json("GET", url, "")
            if status == 200:
                return
        time.sleep(0.1)
    raise SystemExit(f"{what} did not answer {url} within {START_TIMEOUT} s:\n{_tail(log)}")


def _stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(STOP_TIMEOUT)


async def _prepare_database(url: str, dsn: str) -> None:
    from gateway.db.engine import make_engine
    from gateway.db.migrate import upgrade

    engine = make_engine(url, pool_size=1)
    try:
        await upgrade(engine)
    finally:
        await engine.dispose()
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(BARE_TABLE)
    finally:
        await connection.close()


def _asyncpg_dsn(url: str) -> str:
    from gateway.db.engine import normalize_url

    return make_url(normalize_url(url)).set(drivername="postgresql").render_as_string(False)


def orchestrate(args: argparse.Namespace) -> int:
    from gateway.db.embedded import EmbeddedPostgres

    root = Path(tempfile.mkdtemp(prefix="mb-", dir="/tmp"))
    embedded: EmbeddedPostgres | None = None
    muster: subprocess.Popen[bytes] | None = None
    bare: subprocess.Popen[bytes] | None = None
    load: subprocess.Popen[bytes] | None = None
    logs: list[Any] = []
    try:
        if args.database_url:
            url = args.database_url
            print(f"database: {make_url(url).render_as_string(hide_password=True)}", flush=True)
        else:
            embedded = EmbeddedPostgres(root)
            url = asyncio.run(embedded.start())
            print(f"database: embedded PostgreSQL in {embedded.pgdata}", flush=True)
        dsn = _asyncpg_dsn(url)
        asyncio.run(_prepare_database(url, dsn))

        nodes = root / "nodes.yaml"
        nodes.write_text(NODES_YAML)
        muster_port, bare_port = _free_port(), _free_port()
        env = {key: value for key, value in os.environ.items() if not key.startswith("MUSTER_")}
        env.update(
            MUSTER_DATABASE_URL=url,
            MUSTER_HOST="127.0.0.1",
            MUSTER_PORT=str(muster_port),
            MUSTER_DATA_DIR=str(root / "data"),
            MUSTER_BACKEND="static",
            MUSTER_NODES_FILE=str(nodes),
            MUSTER_ISSUER_KEY=str(root / "issuer-key.json"),
        )
        token = _admin_token(root / "issuer-key.json")
        muster_log, bare_log = root / "muster.log", root / "bare.log"
        logs += [muster_log.open("wb"), bare_log.open("wb")]
        muster = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=logs[0],
            stderr=subprocess.STDOUT,
        )
        bare = subprocess.Popen(
            [sys.executable, __file__, "--bare-server", str(bare_port), dsn],
            stdin=subprocess.DEVNULL,
            stdout=logs[1],
            stderr=subprocess.STDOUT,
        )
        muster_base = f"http://127.0.0.1:{muster_port}"
        bare_base = f"http://127.0.0.1:{bare_port}"
        _wait_ready(muster, f"{muster_base}/readyz", muster_log, "muster serve")
        _wait_ready(bare, f"{bare_base}/healthz", bare_log, "the bare server")
        for tenant in tenant_names(args.tenants):
            status, answer = _http_json(
                "PUT", f"{muster_base}/v1/admin/tenants/{tenant}", token, TENANT_BODY
            )
            if status not in (200, 201):
                raise SystemExit(f"could not create tenant {tenant!r}: HTTP {status} {answer}")

        postmaster = _postmaster_pid(embedded)
        command = [
            sys.executable,
            __file__,
            "--load",
            "--target",
            f"muster={muster_base}/v1/jobs",
            "--target",
            f"bare={bare_base}/bare",
            "--concurrency",
            str(args.concurrency),
            "--duration",
            str(args.duration),
            "--warmup",
            str(args.warmup),
            "--rounds",
            str(args.rounds),
            "--tenants",
            str(args.tenants),
            "--token",
            token,
        ]
        # "server" is the muster process in muster phases and the bare one in bare phases.
        command += ["--pid", f"server:muster={muster.pid}", "--pid", f"server:bare={bare.pid}"]
        if postmaster is not None:
            command += ["--pid", f"postgres={postmaster}"]
        budget = args.rounds * 2 * (args.duration + args.warmup) + 120
        load = subprocess.Popen(command, stdin=subprocess.DEVNULL)
        try:
            code = load.wait(budget)
        except subprocess.TimeoutExpired:
            raise SystemExit(f"the load process ran over {budget:.0f} s") from None
        for server, log, what in ((muster, muster_log, "muster"), (bare, bare_log, "bare")):
            if server.poll() is not None:
                print(f"{what} server died during the run:\n{_tail(log)}", file=sys.stderr)
                code = code or 1
        return code
    finally:
        for proc in (load, muster, bare):
            _stop(proc)
        for handle in logs:
            handle.close()
        if embedded is not None:
            asyncio.run(embedded.stop())
        shutil.rmtree(root, ignore_errors=True)


def _admin_token(key_file: Path) -> str:
    """A platform admin's token of the local issuer whose key ``muster serve`` will read."""
    from gateway.auth.keys import local_key_set
    from gateway.auth.tokens import mint

    return mint(
        local_key_set(key_file),
        audience="muster",
        subject="bench@example.com",
        groups=["muster-admins"],
        ttl_seconds=6 * 3600,
    )


def _postmaster_pid(embedded: Any) -> int | None:
    if embedded is None:
        return None
    with contextlib.suppress(OSError, ValueError):
        return int((embedded.pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
    return None


# --------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--database-url", help="a scratch PostgreSQL instead of an embedded one")
    parser.add_argument("--concurrency", type=int, default=32, help="clients at once (32)")
    parser.add_argument("--duration", type=float, help="measured seconds per target (10)")
    parser.add_argument("--warmup", type=float, help="unmeasured seconds before each (2)")
    parser.add_argument("--rounds", type=int, help="rounds of (muster, bare) (2)")
    parser.add_argument(
        "--tenants",
        type=int,
        default=1,
        help="spread the jobs over this many tenants (1: all in 'bench')",
    )
    parser.add_argument("--quick", action="store_true", help="1 round of 0.5 s + 2 s")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--bare-server", nargs=2, metavar=("PORT", "DSN"), help=argparse.SUPPRESS)
    mode.add_argument("--load", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--target", action="append", metavar="NAME=URL", help=argparse.SUPPRESS)
    parser.add_argument("--pid", action="append", metavar="NAME=PID", help=argparse.SUPPRESS)
    parser.add_argument("--token", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    quick = args.quick
    args.duration = args.duration if args.duration is not None else (2.0 if quick else 10.0)
    args.warmup = args.warmup if args.warmup is not None else (0.5 if quick else 2.0)
    args.rounds = args.rounds if args.rounds is not None else (1 if quick else 2)
    if (
        min(args.concurrency, args.rounds, args.tenants) < 1
        or args.duration <= 0
        or args.warmup < 0
    ):
        parser.error("--concurrency, --duration, --rounds and --tenants must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.bare_server:
        run_bare_server(int(args.bare_server[0]), args.bare_server[1])
        return 0
    if args.load:
        return run_load(args)
    return orchestrate(args)


if __name__ == "__main__":
    raise SystemExit(main())
