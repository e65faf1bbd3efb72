"""Settings: defaults, environment variables, flags over variables, fast failure, and the table
read off the groups' fields."""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

import pytest

from gateway.errors import ConfigError
from gateway.settings import (
    GROUPS,
    SETTINGS,
    ApiSettings,
    BackendSettings,
    LocalSettings,
    Setting,
    Settings,
    WebhookSettings,
    add_flags,
)

DATA = {"XDG_DATA_HOME": "/srv/data"}

#: Every variable, as README.md and deploy/ name them: a public interface, never renamed.
VARIABLES = (
    "MUSTER_HOST",
    "MUSTER_PORT",
    "MUSTER_DATA_DIR",
    "MUSTER_DATABASE_URL",
    "MUSTER_DATABASE_POOL_TIMEOUT",
    "MUSTER_DATABASE_STATEMENT_TIMEOUT",
    "MUSTER_BACKEND",
    "MUSTER_NODES_FILE",
    "MUSTER_SIMULATE_RUNS",
    "MUSTER_TERMINATION_GRACE_SECONDS",
    "MUSTER_MAX_TERMINATION_GRACE_SECONDS",
    "MUSTER_LOCAL_CPUS",
    "MUSTER_LOCAL_MEMORY",
    "MUSTER_LOCAL_GPUS",
    "MUSTER_LOCAL_WORK_DIR",
    "MUSTER_LOCAL_RUN_AS",
    "MUSTER_LOCAL_TRUSTED_TENANTS",
    "MUSTER_LOCAL_PATH",
    "MUSTER_LOCAL_MAX_PIDS",
    "MUSTER_LOCAL_LOG_BYTES",
    "MUSTER_KUBECONFIG",
    "MUSTER_KUBE_QPS",
    "MUSTER_KUBE_BURST",
    "MUSTER_CLUSTER_DOMAIN",
    "MUSTER_OIDC_ISSUER",
    "MUSTER_OIDC_AUDIENCE",
    "MUSTER_OIDC_GROUPS_CLAIM",
    "MUSTER_OIDC_USER_CLAIM",
    "MUSTER_OIDC_ROLE_GROUPS",
    "MUSTER_OIDC_ALGORITHMS",
    "MUSTER_OIDC_LEEWAY",
    "MUSTER_ADMIN_GROUPS",
    "MUSTER_ISSUER_KEY",
    "MUSTER_PUBLIC_METRICS",
    "MUSTER_UI_CLIENT_ID",
    "MUSTER_UI_SCOPES",
    "MUSTER_UI_PUBLIC_URL",
    "MUSTER_UI_SESSION_SECONDS",
    "MUSTER_WEBHOOK_ALLOW_NETS",
    "MUSTER_WEBHOOK_ALLOW_HTTP",
    "MUSTER_WEBHOOK_TIMEOUT",
    "MUSTER_WEBHOOK_RETRY_SCHEDULE",
    "MUSTER_WEBHOOK_SECRET_OVERLAP",
    "MUSTER_MAX_BODY_BYTES",
    "MUSTER_MAX_BATCH_BODY_BYTES",
    "MUSTER_HEADER_TIMEOUT",
    "MUSTER_BODY_TIMEOUT",
    "MUSTER_JOB_TTL_SECONDS_AFTER_FINISHED",
    "MUSTER_KEEPALIVE_TIMEOUT",
    "MUSTER_MAX_CONNECTIONS",
    "MUSTER_MAX_REPLICAS",
    "MUSTER_ADMISSION_INTERVAL",
    "MUSTER_STARVATION_SECONDS",
    "MUSTER_ADMISSION_BACKFILL",
    "MUSTER_PREEMPTION_MIN_RUNTIME",
    "MUSTER_SHUTDOWN_GRACE",
    "MUSTER_LOG_LEVEL",
    "MUSTER_LOG_FORMAT",
)


def at(settings: Settings, path: str) -> object:
    """The value at ``path``, e.g. ``api.port``."""
    value: object = settings
    for name in path.split("."):
        value = getattr(value, name)
    return value


def test_defaults() -> None:
    settings = Settings.load(DATA)

    assert settings == Settings(data_dir=Path("/srv/data/muster"))
    assert settings.api.host == "127.0.0.1"
    assert settings.api.port == 8080
    assert settings.database.url is None
    assert settings.backend.kind == "local"
    assert settings.webhooks.allow_http is False
    assert settings.webhooks.allow_nets == ()
    assert settings.auth.admin_groups == ("muster-admins",)
    assert settings.api.max_body_bytes == 1024 * 1024
    assert settings.api.max_batch_body_bytes == 4 * 1024 * 1024
    assert settings.api.max_replicas == 512
    assert settings.api.header_timeout == 10.0
    assert settings.api.body_timeout == 30.0
    assert settings.api.keepalive_timeout == 75.0
    assert settings.api.max_connections == 1000
    assert settings.backend.termination_grace_seconds == 30
    assert settings.backend.max_termination_grace_seconds == 300
    assert settings.logging.level == "INFO"


def test_local_replicas_work_outside_the_data_dir_one_dir_per_data_dir() -> None:
    first = Settings(data_dir=Path("/srv/a")).work_dir
    assert first != Settings(data_dir=Path("/srv/b")).work_dir
    assert not first.is_relative_to("/srv/a")
    local = LocalSettings(work_dir=Path("/w"))
    assert Settings(data_dir=Path("/srv/a"), local=local).work_dir == Path("/w")


def test_the_issuer_key_defaults_into_the_data_dir() -> None:
    assert Settings(data_dir=Path("/srv/a")).issuer_key_file == Path("/srv/a/issuer-key.json")
    assert Settings.load({**DATA, "MUSTER_ISSUER_KEY": "/k.json"}).issuer_key_file == Path(
        "/k.json"
    )


def test_the_data_dir_defaults_under_the_home_without_xdg_data_home() -> None:
    home = Path.home() / ".local" / "share" / "muster"
    if os.geteuid() == 0 and not (home / "postgres").exists():
        # The embedded PostgreSQL then runs as a user of its own, who cannot enter /root.
        assert Settings.load({}).data_dir == Path("/var/lib/muster/data")
    else:
        assert Settings.load({}).data_dir == home


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.env)
def test_the_default_shown_is_the_fields_default_as_its_parser_reads_it(setting: Setting) -> None:
    """``muster serve --help`` shows the field's default, written as a user would write it."""
    if setting.default is None:
        assert setting.shown_default == ""
    elif setting.shown_default:
        assert setting.parse(setting.shown_default) == setting.default
    assert setting.value(Settings.load(DATA)) == setting.value(
        Settings(data_dir=Path("/srv/data/muster"))
    )


def test_help_shows_the_defaults_as_before() -> None:
    shown = {s.env: s.shown_default for s in SETTINGS if s.shown_default}
    assert shown["MUSTER_KUBE_QPS"] == "50"
    assert shown["MUSTER_OIDC_ALGORITHMS"] == "RS256,ES256"
    assert shown["MUSTER_WEBHOOK_RETRY_SCHEDULE"] == "0,5,300,1800,7200,18000,36000,36000"
    assert shown["MUSTER_WEBHOOK_SECRET_OVERLAP"] == "86400"
    assert shown["MUSTER_PUBLIC_METRICS"] == "false"
    assert "MUSTER_WEBHOOK_ALLOW_NETS" not in shown


@pytest.mark.parametrize(
    ("env", "path", "expected"),
    [
        ({"MUSTER_HOST": "0.0.0.0"}, "api.host", "0.0.0.0"),
        ({"MUSTER_PORT": "9000"}, "api.port", 9000),
        ({"MUSTER_PORT": "0"}, "api.port", 0),
        ({"MUSTER_DATA_DIR": "/var/lib/muster"}, "data_dir", Path("/var/lib/muster")),
        ({"MUSTER_DATABASE_URL": "postgresql://u@h/db"}, "database.url", "postgresql://u@h/db"),
        ({"MUSTER_BACKEND": "kubernetes"}, "backend.kind", "kubernetes"),
        ({"MUSTER_TERMINATION_GRACE_SECONDS": "0"}, "backend.termination_grace_seconds", 0),
        (
            {"MUSTER_MAX_TERMINATION_GRACE_SECONDS": "3600"},
            "backend.max_termination_grace_seconds",
            3600,
        ),
        ({"MUSTER_LOCAL_CPUS": "2.5"}, "local.cpus", 2.5),
        ({"MUSTER_LOCAL_MEMORY": "16Gi"}, "local.memory", "16Gi"),
        ({"MUSTER_LOCAL_GPUS": "2"}, "local.gpus", 2),
        ({"MUSTER_KUBECONFIG": "/k/config"}, "kubernetes.kubeconfig", Path("/k/config")),
        ({"MUSTER_KUBE_QPS": "20"}, "kubernetes.qps", 20.0),
        ({"MUSTER_KUBE_BURST": "40"}, "kubernetes.burst", 40),
        ({"MUSTER_OIDC_ISSUER": "https://dex.example"}, "auth.oidc_issuer", "https://dex.example"),
        ({"MUSTER_ADMIN_GROUPS": "ops, platform,,"}, "auth.admin_groups", ("ops", "platform")),
        ({"MUSTER_WEBHOOK_ALLOW_NETS": "10.0.0.0/8"}, "webhooks.allow_nets", ("10.0.0.0/8",)),
        ({"MUSTER_WEBHOOK_ALLOW_HTTP": "yes"}, "webhooks.allow_http", True),
        ({"MUSTER_WEBHOOK_ALLOW_HTTP": "TRUE"}, "webhooks.allow_http", True),
        ({"MUSTER_WEBHOOK_ALLOW_HTTP": "off"}, "webhooks.allow_http", False),
        ({"MUSTER_WEBHOOK_ALLOW_HTTP": ""}, "webhooks.allow_http", False),
        ({"MUSTER_MAX_BODY_BYTES": "2048"}, "api.max_body_bytes", 2048),
        ({"MUSTER_MAX_BATCH_BODY_BYTES": "8192"}, "api.max_batch_body_bytes", 8192),
        ({"MUSTER_MAX_REPLICAS": "64"}, "api.max_replicas", 64),
        ({"MUSTER_HEADER_TIMEOUT": "2.5"}, "api.header_timeout", 2.5),
        ({"MUSTER_BODY_TIMEOUT": "60"}, "api.body_timeout", 60.0),
        ({"MUSTER_KEEPALIVE_TIMEOUT": "5"}, "api.keepalive_timeout", 5.0),
        ({"MUSTER_MAX_CONNECTIONS": "20000"}, "api.max_connections", 20000),
        ({"MUSTER_STARVATION_SECONDS": "1.5"}, "admission.starvation_seconds", 1.5),
        ({"MUSTER_LOG_LEVEL": "debug"}, "logging.level", "DEBUG"),
        ({"MUSTER_LOG_FORMAT": "json"}, "logging.format", "json"),
    ],
)
def test_environment_variables_are_parsed(env: dict[str, str], path: str, expected: object) -> None:
    assert at(Settings.load({**DATA, **env}), path) == expected


def test_unrelated_variables_are_ignored() -> None:
    assert Settings.load({**DATA, "MUSTER_NO_SUCH_THING": "x", "PORT": "1"}) == Settings.load(DATA)


def test_flags_win_over_the_environment() -> None:
    env = {**DATA, "MUSTER_PORT": "8000", "MUSTER_HOST": "10.0.0.1"}

    settings = Settings.load(env, {"MUSTER_PORT": "9000", "MUSTER_HOST": None})

    assert settings.api.port == 9000
    assert settings.api.host == "10.0.0.1"  # a flag that was not given leaves the variable


def test_command_line_flags_map_to_settings() -> None:
    parser = argparse.ArgumentParser()
    add_flags(parser)

    flags = vars(parser.parse_args(["--port", "9001", "--webhook-allow-http", "true"]))
    settings = Settings.load({**DATA, "MUSTER_PORT": "8000"}, flags)

    assert settings.api.port == 9001
    assert settings.webhooks.allow_http is True


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"MUSTER_PORT": "abc"}, "MUSTER_PORT"),
        ({"MUSTER_PORT": "70000"}, "MUSTER_PORT"),
        ({"MUSTER_PORT": "-1"}, "MUSTER_PORT"),
        ({"MUSTER_BACKEND": "mars"}, "MUSTER_BACKEND"),
        ({"MUSTER_BACKEND": "Local"}, "MUSTER_BACKEND"),
        ({"MUSTER_WEBHOOK_ALLOW_HTTP": "maybe"}, "MUSTER_WEBHOOK_ALLOW_HTTP"),
        ({"MUSTER_MAX_BODY_BYTES": "0"}, "MUSTER_MAX_BODY_BYTES"),
        ({"MUSTER_MAX_BATCH_BODY_BYTES": "-1"}, "MUSTER_MAX_BATCH_BODY_BYTES"),
        ({"MUSTER_MAX_REPLICAS": "lots"}, "MUSTER_MAX_REPLICAS"),
        ({"MUSTER_HEADER_TIMEOUT": "0"}, "MUSTER_HEADER_TIMEOUT"),
        ({"MUSTER_BODY_TIMEOUT": "-1"}, "MUSTER_BODY_TIMEOUT"),
        ({"MUSTER_KEEPALIVE_TIMEOUT": "nan"}, "MUSTER_KEEPALIVE_TIMEOUT"),
        ({"MUSTER_MAX_CONNECTIONS": "0"}, "MUSTER_MAX_CONNECTIONS"),
        ({"MUSTER_LOCAL_CPUS": "-2"}, "MUSTER_LOCAL_CPUS"),
        ({"MUSTER_LOCAL_GPUS": "1.5"}, "MUSTER_LOCAL_GPUS"),
        ({"MUSTER_KUBE_QPS": "nan"}, "MUSTER_KUBE_QPS"),
        ({"MUSTER_KUBE_BURST": "0"}, "MUSTER_KUBE_BURST"),
        ({"MUSTER_TERMINATION_GRACE_SECONDS": "-1"}, "MUSTER_TERMINATION_GRACE_SECONDS"),
        ({"MUSTER_TERMINATION_GRACE_SECONDS": "2.5"}, "MUSTER_TERMINATION_GRACE_SECONDS"),
        ({"MUSTER_MAX_TERMINATION_GRACE_SECONDS": "x"}, "MUSTER_MAX_TERMINATION_GRACE_SECONDS"),
        ({"MUSTER_ADMISSION_INTERVAL": "0"}, "MUSTER_ADMISSION_INTERVAL"),
        ({"MUSTER_LOG_LEVEL": "loud"}, "MUSTER_LOG_LEVEL"),
        ({"MUSTER_LOG_FORMAT": "xml"}, "MUSTER_LOG_FORMAT"),
    ],
)
def test_a_malformed_variable_is_a_config_error_naming_it(
    env: dict[str, str], variable: str
) -> None:
    with pytest.raises(ConfigError, match=variable):
        Settings.load({**DATA, **env})


def test_a_malformed_flag_is_a_config_error_naming_its_variable() -> None:
    with pytest.raises(ConfigError, match="MUSTER_PORT"):
        Settings.load({**DATA, "MUSTER_PORT": "8080"}, {"MUSTER_PORT": "eighty"})


def test_the_static_backend_needs_a_nodes_file() -> None:
    with pytest.raises(ConfigError, match="MUSTER_NODES_FILE"):
        Settings.load({**DATA, "MUSTER_BACKEND": "static"})


def test_the_default_grace_period_may_not_exceed_the_maximum() -> None:
    env = {**DATA, "MUSTER_MAX_TERMINATION_GRACE_SECONDS": "20"}
    with pytest.raises(ConfigError, match="MUSTER_TERMINATION_GRACE_SECONDS=30 is more than"):
        Settings.load(env)
    settings = Settings.load({**env, "MUSTER_TERMINATION_GRACE_SECONDS": "20"})
    assert settings.backend.termination_grace_seconds == 20


def test_the_static_backend_with_a_nodes_file_loads() -> None:
    settings = Settings.load(
        {**DATA, "MUSTER_BACKEND": "static", "MUSTER_NODES_FILE": "/etc/muster/nodes.yaml"}
    )

    assert settings.backend.kind == "static"
    assert settings.backend.nodes_file == Path("/etc/muster/nodes.yaml")


def test_every_setting_maps_to_one_field_and_every_field_to_one_setting() -> None:
    own = {f.name for f in dataclasses.fields(Settings) if f.name not in GROUPS}
    fields = own | {
        f"{name}.{f.name}" for name, group in GROUPS.items() for f in dataclasses.fields(group)
    }
    paths = [setting.path for setting in SETTINGS]

    assert len(paths) == len(set(paths))
    assert set(paths) == fields


def test_the_variables_and_flags_are_the_documented_ones() -> None:
    assert sorted(s.env for s in SETTINGS) == sorted(VARIABLES)
    for setting in SETTINGS:
        assert setting.flag == "--" + setting.env.removeprefix("MUSTER_").lower().replace("_", "-")
        assert setting.help


def test_groups_are_built_alone_with_their_defaults() -> None:
    settings = Settings(
        data_dir=Path("/srv"),
        api=ApiSettings(port=9000),
        backend=BackendSettings(kind="static", nodes_file=Path("/n.yaml")),
        webhooks=WebhookSettings(allow_http=True),
    )

    assert settings.api.port == 9000
    assert settings.api.host == "127.0.0.1"
    assert settings.webhooks.timeout == 15.0
    assert settings == Settings.load(
        {
            "MUSTER_DATA_DIR": "/srv",
            "MUSTER_PORT": "9000",
            "MUSTER_BACKEND": "static",
            "MUSTER_NODES_FILE": "/n.yaml",
            "MUSTER_WEBHOOK_ALLOW_HTTP": "true",
        }
    )
    with pytest.raises(TypeError):
        ApiSettings(9000)  # type: ignore[misc]


def test_settings_are_immutable() -> None:
    settings = Settings.load(DATA)

    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.api.port = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.api = ApiSettings()  # type: ignore[misc]
