"""The local backend's replica supervisor: ``python -m gateway.backends.shim EXIT -- CMD ARGS``.

It runs the replica's command as its child, in the process group the backend gave it, and when
the command ends writes its exit status into the file EXIT, atomically. The gateway learns how a
replica ended from that file, so a replica that outlives a gateway restart can still be adopted
and its exit code read: a gateway cannot wait for a process that is not its child, but the shim
can.

Signals: SIGTERM and SIGINT sent to the group reach the command directly; the shim itself ignores
them and keeps waiting, so the exit status is recorded even on cancel. A command killed by signal
N is recorded as 128 + N, as a shell reports it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path


def record(path: Path, exit_code: int) -> None:
    partial = path.with_suffix(".partial")
    partial.write_text(str(exit_code), "utf-8")
    os.replace(partial, path)


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: python -m gateway.backends.shim EXIT -- COMMAND [ARGS...]", file=sys.stderr)
        return 2
    state, command = Path(argv[0]), argv[2:]
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        child = subprocess.Popen(
            command,
            # The command gets default signal handling back.
            preexec_fn=lambda: (
                signal.signal(signal.SIGTERM, signal.SIG_DFL),
                signal.signal(signal.SIGINT, signal.SIG_DFL),
            ),
        )
    except OSError as exc:
        print(f"muster: cannot start {command[0]!r}: {exc}", file=sys.stderr, flush=True)
        record(state, 127)
        return 127
    code = child.wait()
    record(state, code if code >= 0 else 128 - code)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
