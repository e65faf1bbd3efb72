"""The programs of hostile jobs, shared by the root and the unprivileged tiers.

``SPY`` tries everything a job should not be able to do and prints one JSON report line
(``SPY REPORT {...}``) of what it saw; its environment names the paths to try (SPY_*).
``VICTIM`` leaves secrets in its log, its work directory and /tmp, and waits. ``SLEEPERS`` starts
two sleepers that escape its session (setsid, and a double-forked daemon). ``HOG`` takes up to
512 MiB, 16 MiB at a time.
"""

from __future__ import annotations

# The spy: every probe is a function whose result (or exception) goes into one JSON report.
SPY = r"""
import json, os, socket, subprocess, sys, urllib.request
env = os.environ
data, work, victim = env["SPY_DATA"], env["SPY_WORK"], env["SPY_VICTIM"]

def probe(attempt):
    try:
        return {"ok": True, "saw": repr(attempt())[:400]}
    except Exception as exc:
        return {"ok": False, "saw": f"{type(exc).__name__}: {exc}"[:400]}

def token(python):
    done = subprocess.run(
        [python, "-m", "gateway", "token", "--admin"],
        capture_output=True, text=True, timeout=60,
        env={"PATH": env["PATH"], "PYTHONPATH": env["SPY_PYTHONPATH"],
             "MUSTER_DATA_DIR": data, "MUSTER_ISSUER_KEY": env["SPY_KEY"]},
    )
    if done.returncode != 0 or "eyJ" not in done.stdout:
        raise RuntimeError(f"exit {done.returncode}: {done.stderr.strip()[-300:]}")
    # A token signed with a key of its own making is worth nothing: only the gateway's answer
    # tells whether the job became an admin.
    request = urllib.request.Request(
        env["SPY_URL"] + "/v1/admin/tenants",
        headers={"Authorization": "Bearer " + done.stdout.strip()},
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        return f"the gateway answered {answer.status} to the admin API"

def unix(path):
    sock = socket.socket(socket.AF_UNIX)
    sock.settimeout(5)
    sock.connect(path)
    return "connected"

report = {
    "uid": os.getuid(),
    "environment": dict(env),
    "read the issuer key": probe(lambda: open(env["SPY_KEY"]).read()),
    "read the data dir's issuer key": probe(lambda: open(data + "/issuer-key.json").read()),
    "read the database password": probe(lambda: open(data + "/postgres-password").read()),
    "list the data directory": probe(lambda: os.listdir(data)),
    "read the other tenant's log": probe(
        lambda: open(f"{data}/logs/{victim}/victim-w-0.log").read()),
    "list the other job's work directory": probe(lambda: os.listdir(f"{work}/{victim}/victim-w-0")),
    "read the other job's file": probe(
        lambda: open(f"{work}/{victim}/victim-w-0/secret.txt").read()),
    "list the work directory": probe(lambda: os.listdir(work)),
    "mint an admin token with the gateway's python": probe(lambda: token(env["SPY_PYTHON"])),
    "mint an admin token with the system python": probe(lambda: token("/usr/bin/python3")),
    "connect to the database's socket": probe(lambda: unix(data + "/postgres/.s.PGSQL.5432")),
    "connect to PostgreSQL over TCP": probe(
        lambda: socket.create_connection(("127.0.0.1", 5432), timeout=5)),
    "signal the gateway": probe(lambda: os.kill(int(env["SPY_GATEWAY"]), 0)),
    "see other processes": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
    "read the gateway's environment": probe(
        lambda: open(f"/proc/{env['SPY_GATEWAY']}/environ").read()),
    "see the machine's /tmp": probe(lambda: os.listdir("/tmp")),
}
print("SPY REPORT " + json.dumps(report), flush=True)
"""

VICTIM = r"""
import pathlib, time
print("VICTIM-SECRET-LOG-LINE", flush=True)
pathlib.Path("secret.txt").write_text("VICTIM-SECRET-FILE")
pathlib.Path("/tmp/victim-tmp.txt").write_text("VICTIM-SECRET-TMP")
while True:
    time.sleep(1)
"""

SLEEPERS = r"""
import os, subprocess, sys, time
marker = sys.argv[1]
subprocess.Popen(["setsid", "sleep", marker])                  # a new session
if os.fork() == 0:                                             # a classic daemon: double fork
    os.setsid()
    if os.fork() == 0:
        os.execvp("sleep", ["sleep", marker])
    os._exit(0)
print("sleepers started", flush=True)
time.sleep(3600)
"""

HOG = r"""
held = []
for step in range(1, 33):
    held.append(bytearray(16 * 2**20))
    print(f"holding {16 * step} MiB", flush=True)
print("never stopped", flush=True)
"""

# A tree deeper than Python 3.11's recursive shutil.rmtree can remove: the supervisor and the
# gateway must remove it anyway, and no other job may wait for it.
DEEP_TREE = r"""
import os
for _ in range(2000):
    os.mkdir("d")
    os.chdir("d")
print("left a tree 2000 deep", flush=True)
"""

# Tries to grow, cut and rewrite its own log through its standard output.
LOG_TAMPER = r"""
import os
def attempt(name, call):
    try:
        call()
        print(f"{name}: done", flush=True)
    except OSError as exc:
        print(f"{name}: refused ({exc.strerror})", flush=True)
attempt("preallocate a gigabyte", lambda: os.posix_fallocate(1, 0, 1 << 30))
attempt("truncate the log", lambda: os.ftruncate(1, 0))
attempt("rewrite the log", lambda: (os.lseek(1, 0, os.SEEK_SET), os.write(1, b"forged")))
"""

# Leaves a secret in its uid's kernel keyring and in /run/lock (both shared by every process of a
# uid, outliving them); KEYRING_READER looks for both. x86_64 and aarch64 syscall numbers.
_KEYCTL = r"""
import ctypes, os, platform
libc = ctypes.CDLL(None, use_errno=True)
ADD_KEY, KEYCTL = {"x86_64": (248, 250), "aarch64": (217, 219)}[platform.machine()]
USER_KEYRING = -4
"""
KEYRING_WRITER = (
    _KEYCTL
    + r"""
key = libc.syscall(ADD_KEY, b"user", b"muster-test", b"KEYRING-SECRET", 14, USER_KEYRING)
print("stored key", key, flush=True)
if os.path.isdir("/run/lock"):
    open("/run/lock/muster-test", "w").write("RUNLOCK-SECRET")
"""
)
KEYRING_READER = (
    _KEYCTL
    + r"""
found = libc.syscall(KEYCTL, 10, USER_KEYRING, b"user", b"muster-test", 0)
print("keyring: " + ("FOUND" if found > 0 else "empty"), flush=True)
print("run lock: " + ("FOUND" if os.path.exists("/run/lock/muster-test") else "empty"), flush=True)
"""
)
