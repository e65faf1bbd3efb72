"""The ``muster`` command run as a user runs it: a subprocess, real HTTP, real signals.

With no ``MUSTER_DATABASE_URL`` the gateway starts an embedded PostgreSQL in its data directory;
these tests check that it comes up, keeps its data across a restart, and leaves no server behind.
Data directories live directly under /tmp because the server's Unix socket path must stay short.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import psutil

from gateway.settings import SETTINGS
from tests.acceptance.gateway_process import MUSTER, GatewayProcess, bearer, clean_env

COMMAND_TIMEOUT = 40.0
HTTP_TIMEOUT = 10.0

TENANT = {
    "quota": {
        "cpu": "8",
        "memory": "32Gi",
        "gpu": 0,
        "max_running_jobs": 2,
        "max_queued_jobs": 10,
    }
}
# The static backend with one node that is down: a job fits it one day but is never admitted now,
# so a submitted job stays queued whatever the admission loop does.
NODES = 'nodes: [{name: n1, cpu: "8", memory: 32Gi, gpus: 0, ready: false}]\n'
JOB = {
    "name": "train-1",
    "tenant": "acme",
    "framework": "tensorflow",
    "replicas": {
        "chief": {"image": "trainer:1", "resources": {"cpu": "1", "memory": "1Gi"}},
        "worker": {"count": 2, "image": "trainer:1"},
    },
}

# Requests go straight to 127.0.0.1, whatever proxy the environment names.
_http = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _env(data_dir: Path | None, **extra: str) -> dict[str, str]:
    """The caller's environment without any MUSTER_* variable, plus the given ones."""
    if data_dir is not None:
        extra["MUSTER_DATA_DIR"] = str(data_dir)
    return clean_env(**extra)


def _gateway(data_dir: Path) -> GatewayProcess:
    nodes = data_dir / "nodes.yaml"
    nodes.write_text(NODES)
    return GatewayProcess(_env(data_dir, MUSTER_BACKEND="static", MUSTER_NODES_FILE=str(nodes)))


def _request(method: str, url: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=bearer())
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with _http.open(request, timeout=HTTP_TIMEOUT) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read().decode(errors="replace")


def _postgres_processes(data_dir: Path) -> list[psutil.Process]:
    """Live processes whose command line names ``data_dir``: the embedded server and children."""
    marker = str(data_dir)
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        if proc.pid == os.getpid() or proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        if marker in " ".join(proc.info["cmdline"] or ()):
            found.append(proc)
    return found


def _stop_leftover_postgres(data_dir: Path) -> None:
    """Cleanup after a failed test: stop the embedded server the gateway left running, by pid."""
    pid_file = data_dir / "postgres" / "postmaster.pid"
    try:
        pid = int(pid_file.read_text().split("\n", 1)[0])
        postmaster = psutil.Process(pid)
        if str(data_dir) not in " ".join(postmaster.cmdline()):
            return
        postmaster.terminate()
        postmaster.wait(10)
    except (OSError, ValueError, psutil.Error):
        pass


def _stop_cleanly(gateway: GatewayProcess, data_dir: Path) -> None:
    code = gateway.stop()
    assert code == 0, gateway.transcript()
    assert "Muster stopped" in gateway.transcript()
    assert "Traceback" not in gateway.transcript(), gateway.transcript()
    left = _postgres_processes(data_dir)
    assert not left, f"processes still use {data_dir}: {[p.info['cmdline'] for p in left]}"


def test_serve_keeps_jobs_across_restart_and_stops_its_database(data_dir: Path) -> None:
    gateway = _gateway(data_dir)
    try:
        base = gateway.start()
        status, tenant = _request("PUT", f"{base}/v1/admin/tenants/acme", TENANT)
        assert status == 201, tenant
        status, job = _request("POST", f"{base}/v1/jobs", JOB)
        assert status == 201, job
        status, got = _request("GET", f"{base}/v1/jobs/{job['id']}")
        assert status == 200
        assert (got["id"], got["name"], got["state"]) == (job["id"], "train-1", "queued")
        # The check after the stop below can see the embedded server: here it runs.
        assert _postgres_processes(data_dir), "no process names the data directory"
        _stop_cleanly(gateway, data_dir)
    finally:
        gateway.close()

    again = _gateway(data_dir)
    try:
        base = again.start()
        status, got = _request("GET", f"{base}/v1/jobs/{job['id']}")
        assert status == 200
        assert (got["id"], got["tenant"], got["state"]) == (job["id"], "acme", "queued")
        _stop_cleanly(again, data_dir)
    finally:
        again.close()


def test_migrate_applies_migrations_and_exits(data_dir: Path) -> None:
    result = subprocess.run(
        [*MUSTER, "migrate"],
        env=_env(data_dir),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "migrations applied" in result.stdout
    assert not _postgres_processes(data_dir)


def test_malformed_setting_fails_fast_without_traceback(data_dir: Path) -> None:
    result = subprocess.run(
        [*MUSTER, "serve"],
        env=_env(data_dir, MUSTER_PORT="abc"),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        check=False,
    )
    assert result.returncode != 0
    assert "MUSTER_PORT" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert not (data_dir / "postgres").exists()


def test_serve_help_lists_every_setting() -> None:
    result = subprocess.run(
        [*MUSTER, "serve", "--help"],
        env=_env(None, NO_COLOR="1"),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    listed = set(re.findall(r"(?<![\w-])--[a-z][-a-z]*", result.stdout))
    missing = [s.flag for s in SETTINGS if s.flag not in listed]
    assert not missing, result.stdout
    # Each flag's help also names its environment variable.
    assert [s.env for s in SETTINGS if s.env not in result.stdout] == [], result.stdout


def _call(method: str, url: str, token: str | None, body: Any = None) -> tuple[int, Any, Any]:
    """One request with ``token`` (or none): status, parsed body and headers."""
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with _http.open(request, timeout=HTTP_TIMEOUT) as response:
            return response.status, json.loads(response.read()), response.headers
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read()), exc.headers


def _muster_token(data_dir: Path, *args: str) -> str:
    env = _env(data_dir)
    del env["MUSTER_ISSUER_KEY"]  # the default: the key in the data directory
    result = subprocess.run(
        [*MUSTER, "token", *args],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_a_fresh_install_is_its_own_token_issuer(data_dir: Path) -> None:
    gateway = _gateway(data_dir)
    del gateway.env["MUSTER_ISSUER_KEY"]  # no key given: the local issuer keeps one in the data dir
    try:
        base = gateway.start()
        key = data_dir / "issuer-key.json"
        assert key.stat().st_mode & 0o777 == 0o600
        status, problem, headers = _call("GET", f"{base}/v1/jobs", None)
        assert status == 401, problem
        assert headers["WWW-Authenticate"] == 'Bearer realm="muster"'
        status, _, _ = _call("GET", f"{base}/healthz", None)
        assert status == 200

        admin = _muster_token(data_dir, "--admin")
        status, tenant, _ = _call("PUT", f"{base}/v1/admin/tenants/acme", admin, TENANT)
        assert status == 201, tenant
        viewer = _muster_token(data_dir, "--tenant", "acme", "--role", "viewer", "--user", "v@x")
        status, problem, _ = _call("POST", f"{base}/v1/jobs", viewer, JOB)
        assert status == 403, problem
        status, listed, _ = _call("GET", f"{base}/v1/jobs", viewer)
        assert status == 200, listed

        # The published keys are the ones that sign muster token's tokens.
        status, jwks, _ = _call("GET", f"{base}/.well-known/jwks.json", None)
        header = json.loads(base64.urlsafe_b64decode(admin.split(".")[0] + "=="))
        assert status == 200
        assert [k["kid"] for k in jwks["keys"]] == [header["kid"]]
        assert all("d" not in k for k in jwks["keys"]), "the JWKS must hold public keys only"
        _stop_cleanly(gateway, data_dir)
    finally:
        gateway.close()
