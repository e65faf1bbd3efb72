"""Run ``muster serve`` as a subprocess, as a user or an operator would."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path

LISTENING = re.compile(r"Muster is listening on (http://\S+)")


class GatewayProcess:
    def __init__(self, env: Mapping[str, str], *, args: tuple[str, ...] = ()) -> None:
        self.env = {**os.environ, **env}
        self.args = args
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []

    def start(self, timeout: float = 60) -> str:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--port", "0", *self.args],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._pump_thread = threading.Thread(target=self._pump, daemon=True)
        self._pump_thread.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.1)
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            match = LISTENING.search(line)
            if match:
                self.url = match.group(1)
                return self.url
        self.kill()
        raise AssertionError("muster serve did not start:\n" + "".join(self.output))

    def _pump(self) -> None:
        assert self.proc is not None
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)
            self.lines.put(line)

    def stop(self, timeout: float = 30) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self._close()
        return code

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._close()

    def _close(self) -> None:
        if self.proc is not None and self.proc.stdout is not None and not self.proc.stdout.closed:
            self._pump_thread.join(10)
            self.proc.stdout.close()


def write_nodes(path: Path, count: int, cpu: int, memory_gi: int) -> Path:
    lines = ["nodes:"]
    for index in range(count):
        lines.append(f'  - {{name: node-{index}, cpu: "{cpu}", memory: {memory_gi}Gi}}')
    path.write_text("\n".join(lines) + "\n")
    return path
