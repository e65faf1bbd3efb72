"""Settings: one frozen object, built once from the environment and the flags of ``muster serve``.

Every setting is an environment variable ``MUSTER_*`` and a flag of the same name
(``MUSTER_PORT`` <-> ``--port``); a flag wins over the variable. ``Settings`` holds them in small
frozen groups, one per concern (``api``, ``database``, ``backend``, ``local``, ``kubernetes``,
``auth``, ``webhooks``, ``admission``, ``logging``), next to the data directory that several of
them share. Each part of Muster is handed the settings it reads, explicitly: the whole object,
or the one group it needs.

Each setting is declared once, as a field of its group: its type and its default in the field,
its variable, parser and help in the field's metadata (``_env``). ``SETTINGS``, the table that
the parser, ``muster serve --help`` and the README's table follow, is read off those fields, so a
default is written in one place only, and typed; ``--help`` shows it as its parser reads it back.
Defaults that depend on the machine (the data directory, the local node's size, the work and key
paths) are None in their field and computed where the help says.

The client commands (``muster submit``, ``jobs``, ...) need only where the gateway is and a token:
``ClientSettings``, from ``MUSTER_URL`` and ``MUSTER_TOKEN`` or ``--url`` and ``--token``.

Invariants: nothing else in Muster reads ``os.environ``; a malformed value stops startup with a
``ConfigError`` that names the variable; a ``Settings`` value and its groups are immutable and
passed explicitly; every variable belongs to exactly one field.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import ipaddress
import os
import typing
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from gateway.domain.jobs.spec import (
    DEFAULT_TERMINATION_GRACE_SECONDS,
    DEFAULT_TTL_SECONDS_AFTER_FINISHED,
    MAX_TERMINATION_GRACE_SECONDS,
)
from gateway.domain.scheduling.queueing import DEFAULT_BACKFILL
from gateway.domain.webhooks import DEFAULT_RETRY_SCHEDULE
from gateway.errors import ConfigError

Backend = Literal["local", "kubernetes", "static"]
BACKENDS: tuple[Backend, ...] = ("local", "kubernetes", "static")


ROOT_DATA_DIR = Path("/var/lib/muster/data")


def _default_data_dir(env: Mapping[str, str]) -> Path:
    """A per-user data directory; as root, /var/lib/muster/data, because the embedded
    PostgreSQL then runs as a user of its own, who cannot enter root's home (a data directory
    an earlier Muster made there is kept)."""
    if env.get("XDG_DATA_HOME"):
        return Path(env["XDG_DATA_HOME"]) / "muster"
    own = Path.home() / ".local" / "share" / "muster"
    if os.geteuid() == 0 and not (own / "postgres").exists():
        return ROOT_DATA_DIR
    return own


def _default_work_dir(env: Mapping[str, str], data_dir: Path) -> Path:
    """Local replicas' work directories, outside the data directory and one per data directory
    (named after it), searchable by the jobs' users when the gateway runs as root."""
    if os.geteuid() == 0:
        base = Path("/var/lib/muster/work")
    else:
        base = Path(env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")) / "muster" / "work"
    return base / hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:12]


# --- parsers: text of a variable or flag -> value (ValueError says what is wrong) -----------------


def _run_as(text: str) -> str:
    """A uid range FIRST-LAST or a user name or uid (resolved when the backend starts)."""
    first, dash, last = text.partition("-")
    if dash and first.isdigit() and last.isdigit():
        if not 1000 <= int(first) <= int(last) < 2**32 - 1:
            raise ValueError("a uid range must lie within 1000-4294967294, first to last")
        return text
    if not text or not all(c.isalnum() or c in "._-" for c in text):
        raise ValueError("must be a uid range such as 1900000000-1900065535, or a user")
    return text


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise ValueError("must be a positive integer")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError("must be a whole number, 0 or more")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError("must be a TCP port (0-65535; 0 picks a free one)")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError("must be a positive number")
    return value


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError("must be true or false")


def _backend(text: str) -> Backend:
    for backend in BACKENDS:
        if text == backend:
            return backend
    raise ValueError("must be one of " + ", ".join(BACKENDS))


def _log_format(text: str) -> str:
    if text not in {"text", "json"}:
        raise ValueError("must be text or json")
    return text


def _log_level(text: str) -> str:
    upper = text.upper()
    if upper not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise ValueError("must be DEBUG, INFO, WARNING or ERROR")
    return upper


def _csv(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _networks(text: str) -> tuple[str, ...]:
    """Networks (or single addresses), each checked now so a typo stops startup."""
    networks = []
    for part in _csv(text):
        try:
            networks.append(str(ipaddress.ip_network(part, strict=False)))
        except ValueError as exc:
            raise ValueError(f"{part!r} is not a network such as 10.0.0.0/8") from exc
    return tuple(networks)


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise ValueError("must be a number of seconds, 0 or more")
    return value


def _schedule(text: str) -> tuple[float, ...]:
    delays = tuple(_non_negative_float(part) for part in _csv(text))
    if not 1 <= len(delays) <= 50:
        raise ValueError("must list 1 to 50 delays in seconds")
    return delays


#: JWS algorithms that may be allowed: asymmetric only. ``none`` and the HMAC algorithms are never
#: accepted, so a public key can never serve as an HMAC secret.
ASYMMETRIC_ALGORITHMS = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)


def _algorithms(text: str) -> tuple[str, ...]:
    algorithms = _csv(text)
    refused = [a for a in algorithms if a not in ASYMMETRIC_ALGORITHMS]
    if refused or not algorithms:
        raise ValueError(
            f"must list algorithms among {', '.join(ASYMMETRIC_ALGORITHMS)} "
            f"(refused: {', '.join(refused) or 'an empty list'})"
        )
    return algorithms


def _issuer(text: str) -> str:
    parts = urlsplit(text)
    if parts.scheme not in {"https", "http"} or not parts.hostname or parts.query:
        raise ValueError("must be the issuer's URL, e.g. https://dex.example.com")
    return text


def _session_seconds(text: str) -> int:
    value = int(text)
    if not 60 <= value <= 30 * 86400:
        raise ValueError("must be 60 seconds to 30 days (2592000)")
    return value


def _leeway(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 300:
        raise ValueError("must be 0 to 300 seconds")
    return value


# --- declaring a setting ------------------------------------------------------------------------

_SETTING = "muster.setting"


@dataclass(frozen=True, kw_only=True, slots=True)
class _Declared:
    """What a settings field's metadata says: its variable, its help, its parser."""

    env: str
    help: str
    parse: Callable[[str], Any]


def _env(env: str, help: str, parse: Callable[[str], Any] = str) -> dict[str, _Declared]:
    """A settings field's metadata: the variable ``env`` that sets the field, the parser of that
    variable's text, and the help that ``--help`` and the README show."""
    return {_SETTING: _Declared(env=env, help=help, parse=parse)}


# --- the groups ---------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class ApiSettings:
    """Where the API listens, and the limits it puts on clients and requests."""

    host: str = field(
        default="127.0.0.1", metadata=_env("MUSTER_HOST", "address the API listens on")
    )
    port: int = field(
        default=8080, metadata=_env("MUSTER_PORT", "port the API listens on", parse=_port)
    )
    max_body_bytes: int = field(
        default=1024 * 1024,
        metadata=_env(
            "MUSTER_MAX_BODY_BYTES", "largest request body accepted (bytes)", parse=_positive_int
        ),
    )
    max_batch_body_bytes: int = field(
        default=4 * 1024 * 1024,
        metadata=_env(
            "MUSTER_MAX_BATCH_BODY_BYTES",
            "largest body of a batch of jobs (POST /v1/jobs:batch, up to 1,000 jobs) accepted "
            "(bytes)",
            parse=_positive_int,
        ),
    )
    header_timeout: float = field(
        default=10.0,
        metadata=_env(
            "MUSTER_HEADER_TIMEOUT",
            "seconds a client has to send a request's line and headers, from when it connects "
            "or from the request's first byte; then the connection is closed",
            parse=_positive_float,
        ),
    )
    body_timeout: float = field(
        default=30.0,
        metadata=_env(
            "MUSTER_BODY_TIMEOUT",
            "seconds a client has to send a request body (408 after); a body the gateway does "
            "not read is discarded for at most this long (10 s at most) before the connection "
            "closes",
            parse=_positive_float,
        ),
    )
    keepalive_timeout: float = field(
        default=75.0,
        metadata=_env(
            "MUSTER_KEEPALIVE_TIMEOUT",
            "seconds an idle connection stays open after a response for the next request "
            "(longer than the 60 s idle timeout of common proxies)",
            parse=_positive_float,
        ),
    )
    max_connections: int = field(
        default=1000,
        metadata=_env(
            "MUSTER_MAX_CONNECTIONS",
            "open connections per process; beyond it a new connection is answered 503 and "
            "closed (lowered at start to fit the open-file limit)",
            parse=_positive_int,
        ),
    )
    max_replicas: int = field(
        default=512,
        metadata=_env("MUSTER_MAX_REPLICAS", "most pods one job may have", parse=_positive_int),
    )
    shutdown_grace: float = field(
        default=10.0,
        metadata=_env(
            "MUSTER_SHUTDOWN_GRACE",
            "seconds to finish in-flight requests on SIGTERM",
            parse=_positive_float,
        ),
    )


@dataclass(frozen=True, kw_only=True, slots=True)
class DatabaseSettings:
    """Which PostgreSQL holds Muster's state."""

    url: str | None = field(
        default=None,
        metadata=_env(
            "MUSTER_DATABASE_URL",
            "an external PostgreSQL (postgresql://user:pass@host:5432/db); unset starts an "
            "embedded one in the data directory",
        ),
    )
    pool_timeout: float = field(
        default=10.0,
        metadata=_env(
            "MUSTER_DATABASE_POOL_TIMEOUT",
            "seconds a request waits for a free database connection before it is answered 503 "
            "with Retry-After (a slow or stuck database sheds load instead of queueing it)",
            parse=_positive_float,
        ),
    )
    statement_timeout: float = field(
        default=30.0,
        metadata=_env(
            "MUSTER_DATABASE_STATEMENT_TIMEOUT",
            "seconds one SQL statement may run before PostgreSQL cancels it (the request gets "
            "503 with Retry-After); 0 for no limit. Migrations and tenant deletes run without "
            "it. Sent as a connection parameter: a pooler in between must pass it on",
            parse=_non_negative_float,
        ),
    )


@dataclass(frozen=True, kw_only=True, slots=True)
class BackendSettings:
    """Where nodes come from, where pods run, and how long a stopped pod has to end."""

    kind: Backend = field(
        default="local",
        metadata=_env(
            "MUSTER_BACKEND",
            "cluster backend: local, kubernetes, or static (a node list from MUSTER_NODES_FILE)",
            parse=_backend,
        ),
    )
    nodes_file: Path | None = field(
        default=None,
        metadata=_env(
            "MUSTER_NODES_FILE",
            "YAML node list for the static backend (read again on SIGHUP)",
            parse=Path,
        ),
    )
    simulate_runs: bool = field(
        default=False,
        metadata=_env(
            "MUSTER_SIMULATE_RUNS",
            "static backend: simulate each replica instead of only planning (`sleep N` runs N "
            "seconds and succeeds; `true`/`false` exit at once; anything else runs until "
            "deleted), for benchmarks and demos",
            parse=_bool,
        ),
    )
    job_ttl_seconds_after_finished: int = field(
        default=DEFAULT_TTL_SECONDS_AFTER_FINISHED,
        metadata=_env(
            "MUSTER_JOB_TTL_SECONDS_AFTER_FINISHED",
            "seconds after a job finished when what its clean-pod policy kept is removed "
            "(Kubernetes: its parent ConfigMap, and with it the pods and Services; local: the "
            "kept replicas' records and work directories, their logs stay), when its spec gives "
            "no run_policy.ttl_seconds_after_finished (a TFJob's or PyTorchJob's "
            "runPolicy.ttlSecondsAfterFinished); the job's record stays",
            parse=_non_negative_int,
        ),
    )
    termination_grace_seconds: int = field(
        default=DEFAULT_TERMINATION_GRACE_SECONDS,
        metadata=_env(
            "MUSTER_TERMINATION_GRACE_SECONDS",
            "seconds a stopped replica (cancelled, preempted, evicted, ended with its job) has "
            "between SIGTERM and SIGKILL when its spec gives no "
            "termination_grace_period_seconds (a pod's terminationGracePeriodSeconds)",
            parse=_non_negative_int,
        ),
    )
    max_termination_grace_seconds: int = field(
        default=MAX_TERMINATION_GRACE_SECONDS,
        metadata=_env(
            "MUSTER_MAX_TERMINATION_GRACE_SECONDS",
            "the longest grace period a replica may ask for (a submit above it is refused with "
            "422); lowering it also caps replicas of jobs submitted before, as they start",
            parse=_non_negative_int,
        ),
    )


@dataclass(frozen=True, kw_only=True, slots=True)
class LocalSettings:
    """The local backend: the node this machine offers and how its replicas are contained."""

    cpus: float | None = field(
        default=None,
        metadata=_env(
            "MUSTER_LOCAL_CPUS",
            "CPUs the local node offers (default: this machine's count)",
            parse=_positive_float,
        ),
    )
    memory: str | None = field(
        default=None,
        metadata=_env(
            "MUSTER_LOCAL_MEMORY",
            "memory the local node offers, as a quantity like 16Gi (default: this machine's)",
        ),
    )
    gpus: int | None = field(
        default=None,
        metadata=_env(
            "MUSTER_LOCAL_GPUS",
            "GPUs the local node offers (default: from nvidia-smi -L, else 0)",
            parse=int,
        ),
    )
    work_dir: Path | None = field(
        default=None,
        metadata=_env(
            "MUSTER_LOCAL_WORK_DIR",
            "where local replicas work, a directory each, outside the data directory (default: "
            "/var/lib/muster/work/<digest of the data directory> as root, else the same under "
            "$XDG_CACHE_HOME/muster/work or ~/.cache/muster/work)",
            parse=Path,
        ),
    )
    run_as: str = field(
        default="1900000000-1900065535",
        metadata=_env(
            "MUSTER_LOCAL_RUN_AS",
            "whom local replicas run as when the gateway runs as root: a uid range (each job "
            "its own uid) or one user",
            parse=_run_as,
        ),
    )
    trusted_tenants: tuple[str, ...] = field(
        default=("demo",),
        metadata=_env(
            "MUSTER_LOCAL_TRUSTED_TENANTS",
            "comma-separated tenants whose jobs may run on the local backend when the gateway "
            "cannot isolate them (not root); * trusts every tenant",
            parse=_csv,
        ),
    )
    path: str = field(
        default="/usr/local/bin:/usr/bin:/bin",
        metadata=_env(
            "MUSTER_LOCAL_PATH",
            "PATH of local replicas (nothing else of the gateway's environment reaches them)",
        ),
    )
    max_pids: int = field(
        default=4096,
        metadata=_env(
            "MUSTER_LOCAL_MAX_PIDS",
            "most processes and threads one local replica may have (where cgroups allow)",
            parse=_positive_int,
        ),
    )
    log_bytes: int = field(
        default=100 * 2**20,
        metadata=_env(
            "MUSTER_LOCAL_LOG_BYTES",
            "bytes of a local replica's log file before it is rotated (the part before is "
            "kept as <pod>.log.1, so at most twice this is on disk per replica)",
            parse=_positive_int,
        ),
    )


@dataclass(frozen=True, kw_only=True, slots=True)
class KubernetesSettings:
    """The Kubernetes backend: how to reach the API server and how replicas find each other."""

    kubeconfig: Path | None = field(
        default=None,
        metadata=_env(
            "MUSTER_KUBECONFIG",
            "kubeconfig for the kubernetes backend; unset means in-cluster configuration",
            parse=Path,
        ),
    )
    qps: float = field(
        default=50.0,
        metadata=_env(
            "MUSTER_KUBE_QPS",
            "Kubernetes client request rate limit (requests per second)",
            parse=_positive_float,
        ),
    )
    burst: int = field(
        default=100,
        metadata=_env(
            "MUSTER_KUBE_BURST", "Kubernetes client burst above the rate limit", parse=_positive_int
        ),
    )
    cluster_domain: str | None = field(
        default=None,
        metadata=_env(
            "MUSTER_CLUSTER_DOMAIN",
            "cluster DNS domain appended to replica hosts in TF_CONFIG (as the training "
            "operator's CUSTOM_CLUSTER_DOMAIN), e.g. cluster.local",
        ),
    )


@dataclass(frozen=True, kw_only=True, slots=True)
class AuthSettings:
    """Who issues tokens, what a token must say, and who is a platform admin."""

    oidc_issuer: str | None = field(
        default=None,
        metadata=_env(
            "MUSTER_OIDC_ISSUER",
            "external OIDC issuer URL (e.g. Dex); unset means the local issuer "
            "(tokens from `muster token`)",
            parse=_issuer,
        ),
    )
    oidc_audience: str = field(
        default="muster",
        metadata=_env(
            "MUSTER_OIDC_AUDIENCE", "audience a token must name in aud (with Dex: the client id)"
        ),
    )
    oidc_groups_claim: str = field(
        default="groups", metadata=_env("MUSTER_OIDC_GROUPS_CLAIM", "token claim holding groups")
    )
    oidc_user_claim: str = field(
        default="email",
        metadata=_env(
            "MUSTER_OIDC_USER_CLAIM",
            "token claim naming the user (recorded as the actor; user grants match it); "
            "tokens without it use sub",
        ),
    )
    oidc_role_groups: bool = field(
        default=False,
        metadata=_env(
            "MUSTER_OIDC_ROLE_GROUPS",
            "let an external issuer's groups named muster:<tenant>:<role> grant that role "
            "(only if users cannot create groups of their own there; grants work either way)",
            parse=_bool,
        ),
    )
    oidc_algorithms: tuple[str, ...] = field(
        default=("RS256", "ES256"),
        metadata=_env(
            "MUSTER_OIDC_ALGORITHMS",
            "comma-separated signature algorithms accepted from the external issuer "
            "(asymmetric only)",
            parse=_algorithms,
        ),
    )
    oidc_leeway: int = field(
        default=30,
        metadata=_env(
            "MUSTER_OIDC_LEEWAY",
            "seconds of clock skew tolerated on exp and nbf (0-300)",
            parse=_leeway,
        ),
    )
    admin_groups: tuple[str, ...] = field(
        default=("muster-admins",),
        metadata=_env(
            "MUSTER_ADMIN_GROUPS",
            "comma-separated groups whose members are platform admins (with an external issuer: "
            "groups only admins can join)",
            parse=_csv,
        ),
    )
    issuer_key: Path | None = field(
        default=None,
        metadata=_env(
            "MUSTER_ISSUER_KEY",
            "the local issuer's private key file (JWKS), created if missing; share it between "
            "replicas (default: issuer-key.json in the data directory)",
            parse=Path,
        ),
    )
    public_metrics: bool = field(
        default=False,
        metadata=_env(
            "MUSTER_PUBLIC_METRICS",
            "serve /metrics without a token (otherwise it needs a platform admin's)",
            parse=_bool,
        ),
    )


@dataclass(frozen=True, kw_only=True, slots=True)
class WebhookSettings:
    """Where webhooks may go, and how deliveries are timed, retried and signed."""

    allow_nets: tuple[str, ...] = field(
        default=(),
        metadata=_env(
            "MUSTER_WEBHOOK_ALLOW_NETS",
            "comma-separated networks exempt from the webhook SSRF guard (e.g. 10.0.0.0/8)",
            parse=_networks,
        ),
    )
    allow_http: bool = field(
        default=False,
        metadata=_env("MUSTER_WEBHOOK_ALLOW_HTTP", "allow plain http webhook URLs", parse=_bool),
    )
    timeout: float = field(
        default=15.0,
        metadata=_env(
            "MUSTER_WEBHOOK_TIMEOUT",
            "seconds one webhook delivery attempt may take before it counts as failed",
            parse=_positive_float,
        ),
    )
    retry_schedule: tuple[float, ...] = field(
        default=DEFAULT_RETRY_SCHEDULE,
        metadata=_env(
            "MUSTER_WEBHOOK_RETRY_SCHEDULE",
            "comma-separated seconds before each webhook delivery attempt (the first is "
            "usually 0); after the last, a failing delivery is dead",
            parse=_schedule,
        ),
    )
    secret_overlap: float = field(
        default=86400.0,
        metadata=_env(
            "MUSTER_WEBHOOK_SECRET_OVERLAP",
            "seconds after a webhook secret rotation during which deliveries are also signed "
            "with the previous secret",
            parse=_non_negative_float,
        ),
    )


@dataclass(frozen=True, kw_only=True, slots=True)
class AdmissionSettings:
    """How often the leader's admission loop runs, how far it looks past the heads, and when a
    blocked job gets reservations."""

    interval: float = field(
        default=2.0,
        metadata=_env(
            "MUSTER_ADMISSION_INTERVAL",
            "seconds between admission cycles when no submit wakes the loop",
            parse=_positive_float,
        ),
    )
    starvation_seconds: float = field(
        default=300.0,
        metadata=_env(
            "MUSTER_STARVATION_SECONDS",
            "how long a blocked job at the head waits before nodes are reserved for it",
            parse=_positive_float,
        ),
    )
    backfill: int = field(
        default=DEFAULT_BACKFILL,
        metadata=_env(
            "MUSTER_ADMISSION_BACKFILL",
            "blocked jobs one admission cycle looks at past each tenant's first (the backfill "
            "window); a cycle's cost follows the tenants and this, not the queue's length",
            parse=_non_negative_int,
        ),
    )
    preemption_min_runtime: float = field(
        default=120.0,
        metadata=_env(
            "MUSTER_PREEMPTION_MIN_RUNTIME",
            "seconds a gang runs after its admission before it may be preempted (by reclaim "
            "or by a higher priority of its tenant); a job that would preempt a younger gang "
            "waits for a reclaim until then",
            parse=_non_negative_float,
        ),
    )


@dataclass(frozen=True, kw_only=True, slots=True)
class LogSettings:
    """What the gateway logs, and how."""

    level: str = field(
        default="INFO", metadata=_env("MUSTER_LOG_LEVEL", "log level", parse=_log_level)
    )
    format: str = field(
        default="text",
        metadata=_env("MUSTER_LOG_FORMAT", "log format: text or json", parse=_log_format),
    )


# --- all of them --------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class UiSettings:
    """The web dashboard at /ui: how browsers sign in, and for how long."""

    client_id: str | None = field(
        default=None,
        metadata=_env(
            "MUSTER_UI_CLIENT_ID",
            "public OIDC client id the dashboard signs in with (authorization code flow with "
            "PKCE) when MUSTER_OIDC_ISSUER is set; unset: the dashboard is signed in only by "
            "`muster ui` links (local issuer)",
        ),
    )
    scopes: tuple[str, ...] = field(
        default=("openid", "profile", "email", "groups"),
        metadata=_env(
            "MUSTER_UI_SCOPES",
            "comma-separated scopes the dashboard asks the external issuer for",
            parse=_csv,
        ),
    )
    public_url: str | None = field(
        default=None,
        metadata=_env(
            "MUSTER_UI_PUBLIC_URL",
            "the gateway's URL as browsers reach it (e.g. https://muster.example.com), for the "
            "OIDC redirect URI and secure cookies; unset: taken from each request",
            parse=_issuer,
        ),
    )
    session_seconds: int = field(
        default=8 * 3600,
        metadata=_env(
            "MUSTER_UI_SESSION_SECONDS",
            "how long a dashboard sign-in of the local issuer lasts (an external issuer's "
            "lasts as long as its token)",
            parse=_session_seconds,
        ),
    )


@dataclass(frozen=True, kw_only=True, slots=True)
class Settings:
    """Every setting, parsed, by group. ``Settings.load`` builds it from the environment and the
    flags; tests build it directly, naming only the groups (and fields) they change, e.g.
    ``Settings(data_dir=tmp, backend=BackendSettings(kind="static", nodes_file=nodes))``."""

    data_dir: Path = field(
        default_factory=lambda: _default_data_dir(os.environ),
        metadata=_env(
            "MUSTER_DATA_DIR",
            "embedded database, local-backend logs, the local issuer's key (default: "
            "$XDG_DATA_HOME/muster, else ~/.local/share/muster; as root /var/lib/muster/data)",
            parse=Path,
        ),
    )
    api: ApiSettings = field(default_factory=ApiSettings)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    backend: BackendSettings = field(default_factory=BackendSettings)
    local: LocalSettings = field(default_factory=LocalSettings)
    kubernetes: KubernetesSettings = field(default_factory=KubernetesSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    webhooks: WebhookSettings = field(default_factory=WebhookSettings)
    admission: AdmissionSettings = field(default_factory=AdmissionSettings)
    logging: LogSettings = field(default_factory=LogSettings)
    ui: UiSettings = field(default_factory=UiSettings)

    @property
    def work_dir(self) -> Path:
        """Where local replicas work: MUSTER_LOCAL_WORK_DIR, else one per data directory."""
        return self.local.work_dir or _default_work_dir(os.environ, self.data_dir)

    @property
    def issuer_key_file(self) -> Path:
        """The local issuer's key file: MUSTER_ISSUER_KEY, else one in the data directory."""
        return self.auth.issuer_key or self.data_dir / "issuer-key.json"

    @classmethod
    def load(
        cls, env: Mapping[str, str], flags: Mapping[str, str | None] | None = None
    ) -> Settings:
        """Build settings from environment variables, overridden by flags (keyed by env name);
        what neither sets keeps its field's default."""
        own: dict[str, Any] = {}
        grouped: dict[str, dict[str, Any]] = {}
        for setting in SETTINGS:
            raw = (flags or {}).get(setting.env)
            if raw is None:
                raw = env.get(setting.env)
            if raw is None:
                continue
            try:
                value = setting.parse(raw)
            except ValueError as exc:
                raise ConfigError(f"{setting.env}={raw!r}: {exc}") from exc
            if setting.group is None:
                own[setting.name] = value
            else:
                grouped.setdefault(setting.group, {})[setting.name] = value
        own.setdefault("data_dir", _default_data_dir(env))
        groups = {name: GROUPS[name](**values) for name, values in grouped.items()}
        settings = cls(**own, **groups)
        if settings.backend.kind == "static" and settings.backend.nodes_file is None:
            raise ConfigError("MUSTER_BACKEND=static needs MUSTER_NODES_FILE (a YAML node list)")
        backend = settings.backend
        if backend.termination_grace_seconds > backend.max_termination_grace_seconds:
            raise ConfigError(
                f"MUSTER_TERMINATION_GRACE_SECONDS={backend.termination_grace_seconds} is more "
                f"than MUSTER_MAX_TERMINATION_GRACE_SECONDS={backend.max_termination_grace_seconds}"
            )
        return settings


#: The groups of ``Settings``, by field name.
GROUPS: dict[str, type[Any]] = {
    name: kind
    for name, kind in typing.get_type_hints(Settings).items()
    if isinstance(kind, type) and dataclasses.is_dataclass(kind)
}


# --- the table ----------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class Setting:
    """One row of the settings table: a variable, and the field of ``Settings`` it sets."""

    env: str
    help: str
    parse: Callable[[str], Any]
    #: The field of ``Settings`` holding the setting's group; None for a field of its own.
    group: str | None
    #: The setting's field in its group (or in ``Settings``).
    name: str
    #: The field's default; None where it has none or it is computed (the help says how).
    default: object

    @property
    def flag(self) -> str:
        return "--" + self.env.removeprefix("MUSTER_").lower().replace("_", "-")

    @property
    def path(self) -> str:
        """Where the value lives, e.g. ``api.port``."""
        return self.name if self.group is None else f"{self.group}.{self.name}"

    @property
    def shown_default(self) -> str:
        """The default as a user would write it (its parser reads it back); "" for none."""
        return _shown(self.default)

    def value(self, settings: Settings) -> Any:
        """This setting's value in ``settings``."""
        holder = settings if self.group is None else getattr(settings, self.group)
        return getattr(holder, self.name)


def _shown(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(_shown(part) for part in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _rows(holder: type[Any], group: str | None) -> Iterator[Setting]:
    for item in dataclasses.fields(holder):
        declared = item.metadata.get(_SETTING)
        if declared is None:
            continue
        yield Setting(
            env=declared.env,
            help=declared.help,
            parse=declared.parse,
            group=group,
            name=item.name,
            default=None if item.default is dataclasses.MISSING else item.default,
        )


#: Every setting, read off the fields: ``Settings``' own, then each group's, in field order.
SETTINGS: tuple[Setting, ...] = (
    *_rows(Settings, None),
    *(row for name, group in GROUPS.items() for row in _rows(group, name)),
)


def add_flags(parser: argparse.ArgumentParser, only: Collection[str] | None = None) -> None:
    """Give ``parser`` one flag per setting (or per setting named in ``only``); parsed values are
    keyed by the setting's env name."""
    for setting in SETTINGS:
        if only is not None and setting.env not in only:
            continue
        shown = setting.shown_default
        default = f" (default: {shown})" if shown else ""
        parser.add_argument(
            setting.flag,
            dest=setting.env,
            metavar=setting.env.removeprefix("MUSTER_"),
            default=None,
            help=f"{setting.help}{default} [env {setting.env}]",
        )


DEFAULT_URL = "http://127.0.0.1:8080"


@dataclass(frozen=True, kw_only=True, slots=True)
class ClientSettings:
    """Where the client commands send requests, and the bearer token they send (if any)."""

    url: str = DEFAULT_URL
    token: str | None = None

    @classmethod
    def load(
        cls, env: Mapping[str, str], *, url: str | None = None, token: str | None = None
    ) -> ClientSettings:
        """``MUSTER_URL`` and ``MUSTER_TOKEN``, each overridden by its flag when given."""
        source = "--url" if url else "MUSTER_URL"
        url = url or env.get("MUSTER_URL") or DEFAULT_URL
        parts = urlsplit(url)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise ConfigError(f"{source}={url!r}: must be an http:// or https:// URL")
        return cls(url=url.rstrip("/"), token=token or env.get("MUSTER_TOKEN") or None)
