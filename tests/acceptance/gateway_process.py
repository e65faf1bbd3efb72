"""Run ``muster serve`` as a subprocess, as a user or an operator would.

The process's stdout and stderr are read line by line in a thread, so a test can wait for the
"listening" line and keep the whole transcript for its failure messages.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from gateway.auth.keys import local_key_set
from gateway.auth.tokens import mint

MUSTER = (sys.executable, "-m", "gateway")
LISTENING = re.compile(r"Muster is listening on (http://\S+)")
START_TIMEOUT = 60.0  # the first start runs initdb
STOP_TIMEOUT = 15.0  # an idle gateway stops well within MUSTER_SHUTDOWN_GRACE (10 s)


#: One local issuer key for every gateway and client command of the session: gateways that share
#: a database must share the key (as replicas do through MUSTER_ISSUER_KEY), and generating an
#: RSA key per process would be slow.
ISSUER_KEY = Path(tempfile.gettempdir()) / f"muster-tests-issuer-{os.getpid()}.json"
atexit.register(ISSUER_KEY.unlink, missing_ok=True)


def clean_env(**settings: str) -> dict[str, str]:
    """The caller's environment without any MUSTER_* variable, plus the session's issuer key and
    the given settings. Client commands run with it sign their own admin token with that key."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("MUSTER_")}
    env["MUSTER_ISSUER_KEY"] = str(ISSUER_KEY)
    env.update(settings)
    return env


@functools.cache
def admin_token() -> str:
    """A platform admin's token of the session's issuer key."""
    return mint(
        local_key_set(ISSUER_KEY),
        audience="muster",
        subject="admin@example.com",
        email="admin@example.com",
        groups=["muster-admins"],
        ttl_seconds=4 * 3600,
    )


def bearer() -> dict[str, str]:
    """The Authorization header of ``admin_token``."""
    return {"Authorization": f"Bearer {admin_token()}"}


# Requests go straight to 127.0.0.1, whatever proxy the environment names.
_http = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def call(
    method: str, url: str, body: Any = None, timeout: float = 30.0
) -> tuple[int, Any, dict[str, str]]:
    """One request as a platform admin: the status, the decoded answer (the text when it is not
    JSON) and the headers; an HTTP error status is an answer, not an exception."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=bearer())
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with _http.open(request, timeout=timeout) as response:
            return response.status, _decoded(response.read()), dict(response.headers)
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, _decoded(exc.read()), dict(exc.headers)


def _decoded(raw: bytes) -> Any:
    try:
        return json.loads(raw or b"null")
    except ValueError:
        return raw.decode(errors="replace")


class GatewayProcess:
    """One ``muster serve --port 0`` process. ``close()`` is always safe to call."""

    def __init__(
        self,
        env: Mapping[str, str],
        *,
        args: tuple[str, ...] = (),
        command: tuple[str, ...] = MUSTER,
    ) -> None:
        self.env = clean_env(**env)
        self.args = args
        self.command = command
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._output: list[str] = []
        self._reader: threading.Thread | None = None

    def transcript(self) -> str:
        """Everything the process has printed so far."""
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                break
            if line is None:
                self._lines.put(None)  # keep the end marker for stop()
                break
            self._output.append(line)
        return "".join(self._output)

    def start(self, timeout: float = START_TIMEOUT) -> str:
        """Start the process; return the base URL it printed once it listens."""
        self.proc = subprocess.Popen(
            [*self.command, "serve", "--port", "0", *self.args],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + timeout
        try:
            while (line := self._next_line(deadline)) is not None:
                if match := LISTENING.search(line):
                    self.url = match.group(1)
                    return self.url
        except (TimeoutError, queue.Empty):
            self.close()
            raise AssertionError(
                f"muster serve did not listen within {timeout} s:\n{self.transcript()}"
            ) from None
        code = self.proc.wait(STOP_TIMEOUT)
        self.close()
        raise AssertionError(
            f"muster serve exited with {code} before listening:\n{self.transcript()}"
        )

    def _read(self) -> None:
        assert self.proc is not None
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _next_line(self, deadline: float) -> str | None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        line = self._lines.get(timeout=remaining)
        if line is not None:
            self._output.append(line)
        return line

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM, then wait for the exit status and the rest of the output."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"muster serve did not stop within {timeout} s of SIGTERM:\n{self.transcript()}"
            ) from None
        deadline = time.monotonic() + timeout
        try:
            while self._next_line(deadline) is not None:
                pass
        except (TimeoutError, queue.Empty):
            raise AssertionError(
                f"muster serve's output did not end:\n{self.transcript()}"
            ) from None
        self.close()
        return code

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to clean up, as after a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(STOP_TIMEOUT)
        self.close()

    def close(self) -> None:
        """Stop the process if it still runs (gracefully first) and release the pipe."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT)
        if self._reader is not None:
            self._reader.join(STOP_TIMEOUT)
        if self.proc.stdout is not None and not self.proc.stdout.closed:
            self.proc.stdout.close()


def write_nodes(path: Path, count: int, cpu: int, memory_gi: int) -> Path:
    lines = ["nodes:"]
    for index in range(count):
        lines.append(f'  - {{name: node-{index}, cpu: "{cpu}", memory: {memory_gi}Gi}}')
    path.write_text("\n".join(lines) + "\n")
    return path


@contextlib.contextmanager
def served_with_tenants(
    tenants: Mapping[str, Mapping[str, object]], *, nodes: int = 2, prefix: str = "mt-"
) -> Iterator[str]:
    """A static-backend ``muster serve`` (its data directory under /tmp, which the embedded
    PostgreSQL's own user can reach) with ``tenants`` (name -> PUT body) made by an admin; its
    URL. Everything is gone afterwards."""
    data = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    data.chmod(0o755)
    node_list = write_nodes(data / "nodes.yaml", count=nodes, cpu=32, memory_gi=128)
    process = GatewayProcess(
        {
            "MUSTER_DATA_DIR": str(data / "data"),
            "MUSTER_BACKEND": "static",
            "MUSTER_NODES_FILE": str(node_list),
        }
    )
    try:
        url = process.start()
        for name, body in tenants.items():
            request = urllib.request.Request(
                f"{url}/v1/admin/tenants/{name}",
                data=json.dumps(body).encode(),
                method="PUT",
                headers={**bearer(), "Content-Type": "application/json"},
            )
            with urllib.request.urlopen(request, timeout=30) as answer:
                assert answer.status == 201
        yield url
    finally:
        process.close()
        shutil.rmtree(data, ignore_errors=True)
