"""Settings: one frozen object, built once from the environment and the flags of ``muster serve``.

Every setting is an environment variable ``MUSTER_*`` and a flag of the same name
(``MUSTER_PORT`` <-> ``--port``); a flag wins over the variable. ``SETTINGS`` below is the single
table of them: the parser, ``muster serve --help`` and the README's table all come from it.

The client commands (``muster submit``, ``jobs``, ...) need only where the gateway is and a token:
``ClientSettings``, from ``MUSTER_URL`` and ``MUSTER_TOKEN`` or ``--url`` and ``--token``.

Invariants: nothing else in Muster reads ``os.environ``; a malformed value stops startup with a
``ConfigError`` that names the variable; a ``Settings`` value is immutable and passed explicitly.
"""

from __future__ import annotations

import argparse
import hashlib
import ipaddress
import os
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

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


@dataclass(frozen=True, kw_only=True, slots=True)
class Setting:
    """One row of the settings table."""

    env: str
    help: str
    default: str | None
    parse: Callable[[str], Any] = str

    @property
    def flag(self) -> str:
        return "--" + self.env.removeprefix("MUSTER_").lower().replace("_", "-")

    @property
    def attr(self) -> str:
        return self.env.removeprefix("MUSTER_").lower()


def _default_work_dir(env: Mapping[str, str], data_dir: Path) -> Path:
    """Local replicas' work directories, outside the data directory and one per data directory
    (named after it), searchable by the jobs' users when the gateway runs as root."""
    if os.geteuid() == 0:
        base = Path("/var/lib/muster/work")
    else:
        base = Path(env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")) / "muster" / "work"
    return base / hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:12]


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


def _leeway(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 300:
        raise ValueError("must be 0 to 300 seconds")
    return value


SETTINGS: tuple[Setting, ...] = (
    Setting(env="MUSTER_HOST", default="127.0.0.1", help="address the API listens on"),
    Setting(env="MUSTER_PORT", default="8080", parse=_port, help="port the API listens on"),
    Setting(
        env="MUSTER_DATA_DIR",
        default=None,
        parse=Path,
        help="embedded database, local-backend logs, the local issuer's key (default: "
        "$XDG_DATA_HOME/muster, else ~/.local/share/muster; as root /var/lib/muster/data)",
    ),
    Setting(
        env="MUSTER_DATABASE_URL",
        default=None,
        help="an external PostgreSQL (postgresql://user:pass@host:5432/db); unset starts an "
        "embedded one in the data directory",
    ),
    Setting(
        env="MUSTER_BACKEND",
        default="local",
        parse=_backend,
        help="cluster backend: local, kubernetes, or static (a node list from MUSTER_NODES_FILE)",
    ),
    Setting(
        env="MUSTER_NODES_FILE",
        default=None,
        parse=Path,
        help="YAML node list for the static backend",
    ),
    Setting(
        env="MUSTER_LOCAL_CPUS",
        default=None,
        parse=_positive_float,
        help="CPUs the local node offers (default: this machine's count)",
    ),
    Setting(
        env="MUSTER_LOCAL_MEMORY",
        default=None,
        help="memory the local node offers, as a quantity like 16Gi (default: this machine's)",
    ),
    Setting(
        env="MUSTER_LOCAL_GPUS",
        default=None,
        parse=int,
        help="GPUs the local node offers (default: from nvidia-smi -L, else 0)",
    ),
    Setting(
        env="MUSTER_LOCAL_WORK_DIR",
        default=None,
        parse=Path,
        help="where local replicas work, a directory each, outside the data directory (default: "
        "/var/lib/muster/work/<digest of the data directory> as root, else the same under "
        "$XDG_CACHE_HOME/muster/work or ~/.cache/muster/work)",
    ),
    Setting(
        env="MUSTER_LOCAL_RUN_AS",
        default="1900000000-1900065535",
        parse=_run_as,
        help="whom local replicas run as when the gateway runs as root: a uid range (each job "
        "its own uid) or one user",
    ),
    Setting(
        env="MUSTER_LOCAL_TRUSTED_TENANTS",
        default="demo",
        parse=_csv,
        help="comma-separated tenants whose jobs may run on the local backend when the gateway "
        "cannot isolate them (not root); * trusts every tenant",
    ),
    Setting(
        env="MUSTER_LOCAL_PATH",
        default="/usr/local/bin:/usr/bin:/bin",
        help="PATH of local replicas (nothing else of the gateway's environment reaches them)",
    ),
    Setting(
        env="MUSTER_LOCAL_MAX_PIDS",
        default="4096",
        parse=_positive_int,
        help="most processes and threads one local replica may have (where cgroups allow)",
    ),
    Setting(
        env="MUSTER_KUBECONFIG",
        default=None,
        parse=Path,
        help="kubeconfig for the kubernetes backend; unset means in-cluster configuration",
    ),
    Setting(
        env="MUSTER_KUBE_QPS",
        default="50",
        parse=_positive_float,
        help="Kubernetes client request rate limit (requests per second)",
    ),
    Setting(
        env="MUSTER_KUBE_BURST",
        default="100",
        parse=_positive_int,
        help="Kubernetes client burst above the rate limit",
    ),
    Setting(
        env="MUSTER_CLUSTER_DOMAIN",
        default=None,
        help="cluster DNS domain appended to replica hosts in TF_CONFIG (as the training "
        "operator's CUSTOM_CLUSTER_DOMAIN), e.g. cluster.local",
    ),
    Setting(
        env="MUSTER_OIDC_ISSUER",
        default=None,
        parse=_issuer,
        help="external OIDC issuer URL (e.g. Dex); unset means the local issuer "
        "(tokens from `muster token`)",
    ),
    Setting(
        env="MUSTER_OIDC_AUDIENCE",
        default="muster",
        help="audience a token must name in aud (with Dex: the client id)",
    ),
    Setting(env="MUSTER_OIDC_GROUPS_CLAIM", default="groups", help="token claim holding groups"),
    Setting(
        env="MUSTER_OIDC_USER_CLAIM",
        default="email",
        help="token claim naming the user (recorded as the actor; user grants match it); "
        "tokens without it use sub",
    ),
    Setting(
        env="MUSTER_OIDC_ROLE_GROUPS",
        default="false",
        parse=_bool,
        help="let an external issuer's groups named muster:<tenant>:<role> grant that role "
        "(only if users cannot create groups of their own there; grants work either way)",
    ),
    Setting(
        env="MUSTER_OIDC_ALGORITHMS",
        default="RS256,ES256",
        parse=_algorithms,
        help="comma-separated signature algorithms accepted from the external issuer "
        "(asymmetric only)",
    ),
    Setting(
        env="MUSTER_OIDC_LEEWAY",
        default="30",
        parse=_leeway,
        help="seconds of clock skew tolerated on exp and nbf (0-300)",
    ),
    Setting(
        env="MUSTER_ADMIN_GROUPS",
        default="muster-admins",
        parse=_csv,
        help="comma-separated groups whose members are platform admins (with an external issuer: "
        "groups only admins can join)",
    ),
    Setting(
        env="MUSTER_ISSUER_KEY",
        default=None,
        parse=Path,
        help="the local issuer's private key file (JWKS), created if missing; share it between "
        "replicas (default: issuer-key.json in the data directory)",
    ),
    Setting(
        env="MUSTER_PUBLIC_METRICS",
        default="false",
        parse=_bool,
        help="serve /metrics without a token (otherwise it needs a platform admin's)",
    ),
    Setting(
        env="MUSTER_WEBHOOK_ALLOW_NETS",
        default="",
        parse=_networks,
        help="comma-separated networks exempt from the webhook SSRF guard (e.g. 10.0.0.0/8)",
    ),
    Setting(
        env="MUSTER_WEBHOOK_ALLOW_HTTP",
        default="false",
        parse=_bool,
        help="allow plain http webhook URLs",
    ),
    Setting(
        env="MUSTER_WEBHOOK_TIMEOUT",
        default="15",
        parse=_positive_float,
        help="seconds one webhook delivery attempt may take before it counts as failed",
    ),
    Setting(
        env="MUSTER_WEBHOOK_RETRY_SCHEDULE",
        default=",".join(f"{delay:g}" for delay in DEFAULT_RETRY_SCHEDULE),
        parse=_schedule,
        help="comma-separated seconds before each webhook delivery attempt (the first is "
        "usually 0); after the last, a failing delivery is dead",
    ),
    Setting(
        env="MUSTER_WEBHOOK_SECRET_OVERLAP",
        default="86400",
        parse=_non_negative_float,
        help="seconds after a webhook secret rotation during which deliveries are also signed "
        "with the previous secret",
    ),
    Setting(
        env="MUSTER_MAX_BODY_BYTES",
        default="1048576",
        parse=_positive_int,
        help="largest request body accepted (bytes)",
    ),
    Setting(
        env="MUSTER_HEADER_TIMEOUT",
        default="10",
        parse=_positive_float,
        help="seconds a client has to send a request's line and headers, from when it connects "
        "or from the request's first byte; then the connection is closed",
    ),
    Setting(
        env="MUSTER_BODY_TIMEOUT",
        default="30",
        parse=_positive_float,
        help="seconds a client has to send a request body (408 after); a body the gateway does "
        "not read is discarded for at most this long (10 s at most) before the connection closes",
    ),
    Setting(
        env="MUSTER_KEEPALIVE_TIMEOUT",
        default="75",
        parse=_positive_float,
        help="seconds an idle connection stays open after a response for the next request "
        "(longer than the 60 s idle timeout of common proxies)",
    ),
    Setting(
        env="MUSTER_MAX_CONNECTIONS",
        default="1000",
        parse=_positive_int,
        help="open connections per process; beyond it a new connection is answered 503 and "
        "closed (lowered at start to fit the open-file limit)",
    ),
    Setting(
        env="MUSTER_MAX_REPLICAS",
        default="512",
        parse=_positive_int,
        help="most pods one job may have",
    ),
    Setting(
        env="MUSTER_ADMISSION_INTERVAL",
        default="2",
        parse=_positive_float,
        help="seconds between admission cycles when no submit wakes the loop",
    ),
    Setting(
        env="MUSTER_STARVATION_SECONDS",
        default="300",
        parse=_positive_float,
        help="how long a blocked job at the head waits before nodes are reserved for it",
    ),
    Setting(
        env="MUSTER_SHUTDOWN_GRACE",
        default="10",
        parse=_positive_float,
        help="seconds to finish in-flight requests on SIGTERM",
    ),
    Setting(env="MUSTER_LOG_LEVEL", default="INFO", parse=_log_level, help="log level"),
    Setting(
        env="MUSTER_LOG_FORMAT", default="text", parse=_log_format, help="log format: text or json"
    ),
)


@dataclass(frozen=True, kw_only=True, slots=True)
class Settings:
    """Every setting, parsed. Build it with ``Settings.load``; tests build it directly."""

    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: Path = field(default_factory=lambda: _default_data_dir(os.environ))
    database_url: str | None = None
    backend: Backend = "local"
    nodes_file: Path | None = None
    local_cpus: float | None = None
    local_memory: str | None = None
    local_gpus: int | None = None
    local_work_dir: Path | None = None  # None: _default_work_dir (see work_dir)
    local_run_as: str = "1900000000-1900065535"
    local_trusted_tenants: tuple[str, ...] = ("demo",)
    local_path: str = "/usr/local/bin:/usr/bin:/bin"
    local_max_pids: int = 4096
    kubeconfig: Path | None = None
    kube_qps: float = 50.0
    kube_burst: int = 100
    cluster_domain: str | None = None
    oidc_issuer: str | None = None
    oidc_audience: str = "muster"
    oidc_groups_claim: str = "groups"
    oidc_user_claim: str = "email"
    oidc_role_groups: bool = False
    oidc_algorithms: tuple[str, ...] = ("RS256", "ES256")
    oidc_leeway: int = 30
    admin_groups: tuple[str, ...] = ("muster-admins",)
    issuer_key: Path | None = None
    public_metrics: bool = False
    webhook_allow_nets: tuple[str, ...] = ()
    webhook_allow_http: bool = False
    webhook_timeout: float = 15.0
    webhook_retry_schedule: tuple[float, ...] = DEFAULT_RETRY_SCHEDULE
    webhook_secret_overlap: float = 86400.0
    max_body_bytes: int = 1024 * 1024
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    keepalive_timeout: float = 75.0
    max_connections: int = 1000
    max_replicas: int = 512
    admission_interval: float = 2.0
    starvation_seconds: float = 300.0
    shutdown_grace: float = 10.0
    log_level: str = "INFO"
    log_format: str = "text"

    @property
    def work_dir(self) -> Path:
        """Where local replicas work: MUSTER_LOCAL_WORK_DIR, else one per data directory."""
        return self.local_work_dir or _default_work_dir(os.environ, self.data_dir)

    @property
    def issuer_key_file(self) -> Path:
        """The local issuer's key file."""
        return self.issuer_key or self.data_dir / "issuer-key.json"

    @classmethod
    def load(
        cls, env: Mapping[str, str], flags: Mapping[str, str | None] | None = None
    ) -> Settings:
        """Build settings from environment variables, overridden by flags (keyed by env name)."""
        values: dict[str, Any] = {}
        for setting in SETTINGS:
            raw = (flags or {}).get(setting.env)
            if raw is None:
                raw = env.get(setting.env)
            if raw is None:
                raw = setting.default
            if raw is None:
                continue
            try:
                values[setting.attr] = setting.parse(raw)
            except ValueError as exc:
                raise ConfigError(f"{setting.env}={raw!r}: {exc}") from exc
        if "data_dir" not in values:
            values["data_dir"] = _default_data_dir(env)
        settings = cls(**values)
        if settings.backend == "static" and settings.nodes_file is None:
            raise ConfigError("MUSTER_BACKEND=static needs MUSTER_NODES_FILE (a YAML node list)")
        return settings


def add_flags(parser: argparse.ArgumentParser, only: Collection[str] | None = None) -> None:
    """Give ``parser`` one flag per setting (or per setting named in ``only``); parsed values are
    keyed by the setting's env name."""
    for setting in SETTINGS:
        if only is not None and setting.env not in only:
            continue
        default = f" (default: {setting.default})" if setting.default not in (None, "") else ""
        parser.add_argument(
            setting.flag,
            dest=setting.env,
            metavar=setting.attr.upper(),
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
