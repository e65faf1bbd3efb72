"""Settings.load: defaults, environment variables, flags over variables, and fast failure."""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

import pytest

from gateway.errors import ConfigError
from gateway.settings import SETTINGS, Setting, Settings, add_flags

DATA = {"XDG_DATA_HOME": "/srv/data"}


def test_defaults() -> None:
    settings = Settings.load(DATA)

    assert settings == Settings(data_dir=Path("/srv/data/muster"))
    assert settings.host == "127.0.0.1"
    assert settings.port == 8080
    assert settings.database_url is None
    assert settings.backend == "local"
    assert settings.webhook_allow_http is False
    assert settings.webhook_allow_nets == ()
    assert settings.admin_groups == ("muster-admins",)
    assert settings.max_body_bytes == 1024 * 1024
    assert settings.max_replicas == 512
    assert settings.header_timeout == 10.0
    assert settings.body_timeout == 30.0
    assert settings.keepalive_timeout == 75.0
    assert settings.max_connections == 1000
    assert settings.log_level == "INFO"


def test_local_replicas_work_outside_the_data_dir_one_dir_per_data_dir() -> None:
    first = Settings(data_dir=Path("/srv/a")).work_dir
    assert first != Settings(data_dir=Path("/srv/b")).work_dir
    assert not first.is_relative_to("/srv/a")
    assert Settings(data_dir=Path("/srv/a"), local_work_dir=Path("/w")).work_dir == Path("/w")


def test_the_data_dir_defaults_under_the_home_without_xdg_data_home() -> None:
    home = Path.home() / ".local" / "share" / "muster"
    if os.geteuid() == 0 and not (home / "postgres").exists():
        # The embedded PostgreSQL then runs as a user of its own, who cannot enter /root.
        assert Settings.load({}).data_dir == Path("/var/lib/muster/data")
    else:
        assert Settings.load({}).data_dir == home


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.env)
def test_the_table_default_is_the_dataclass_default(setting: Setting) -> None:
    """``muster serve --help`` shows the table's default; the dataclass must agree with it."""
    built = Settings(data_dir=Path("/srv/data/muster"))
    loaded = Settings.load(DATA)

    assert getattr(loaded, setting.attr) == getattr(built, setting.attr)


@pytest.mark.parametrize(
    ("env", "attr", "expected"),
    [
        ({"MUSTER_HOST": "0.0.0.0"}, "host", "0.0.0.0"),
        ({"MUSTER_PORT": "9000"}, "port", 9000),
        ({"MUSTER_PORT": "0"}, "port", 0),
        ({"MUSTER_DATA_DIR": "/var/lib/muster"}, "data_dir", Path("/var/lib/muster")),
        ({"MUSTER_DATABASE_URL": "postgresql://u@h/db"}, "database_url", "postgresql://u@h/db"),
        ({"MUSTER_BACKEND": "kubernetes"}, "backend", "kubernetes"),
        ({"MUSTER_LOCAL_CPUS": "2.5"}, "local_cpus", 2.5),
        ({"MUSTER_LOCAL_MEMORY": "16Gi"}, "local_memory", "16Gi"),
        ({"MUSTER_LOCAL_GPUS": "2"}, "local_gpus", 2),
        ({"MUSTER_KUBECONFIG": "/k/config"}, "kubeconfig", Path("/k/config")),
        ({"MUSTER_KUBE_QPS": "20"}, "kube_qps", 20.0),
        ({"MUSTER_KUBE_BURST": "40"}, "kube_burst", 40),
        ({"MUSTER_OIDC_ISSUER": "https://dex.example"}, "oidc_issuer", "https://dex.example"),
        ({"MUSTER_ADMIN_GROUPS": "ops, platform,,"}, "admin_groups", ("ops", "platform")),
        ({"MUSTER_WEBHOOK_ALLOW_NETS": "10.0.0.0/8"}, "webhook_allow_nets", ("10.0.0.0/8",)),
        ({"MUSTER_WEBHOOK_ALLOW_HTTP": "yes"}, "webhook_allow_http", True),
        ({"MUSTER_WEBHOOK_ALLOW_HTTP": "TRUE"}, "webhook_allow_http", True),
        ({"MUSTER_WEBHOOK_ALLOW_HTTP": "off"}, "webhook_allow_http", False),
        ({"MUSTER_WEBHOOK_ALLOW_HTTP": ""}, "webhook_allow_http", False),
        ({"MUSTER_MAX_BODY_BYTES": "2048"}, "max_body_bytes", 2048),
        ({"MUSTER_MAX_REPLICAS": "64"}, "max_replicas", 64),
        ({"MUSTER_HEADER_TIMEOUT": "2.5"}, "header_timeout", 2.5),
        ({"MUSTER_BODY_TIMEOUT": "60"}, "body_timeout", 60.0),
        ({"MUSTER_KEEPALIVE_TIMEOUT": "5"}, "keepalive_timeout", 5.0),
        ({"MUSTER_MAX_CONNECTIONS": "20000"}, "max_connections", 20000),
        ({"MUSTER_STARVATION_SECONDS": "1.5"}, "starvation_seconds", 1.5),
        ({"MUSTER_LOG_LEVEL": "debug"}, "log_level", "DEBUG"),
        ({"MUSTER_LOG_FORMAT": "json"}, "log_format", "json"),
    ],
)
def test_environment_variables_are_parsed(env: dict[str, str], attr: str, expected: object) -> None:
    assert getattr(Settings.load({**DATA, **env}), attr) == expected


def test_unrelated_variables_are_ignored() -> None:
    assert Settings.load({**DATA, "MUSTER_NO_SUCH_THING": "x", "PORT": "1"}) == Settings.load(DATA)


def test_flags_win_over_the_environment() -> None:
    env = {**DATA, "MUSTER_PORT": "8000", "MUSTER_HOST": "10.0.0.1"}

    settings = Settings.load(env, {"MUSTER_PORT": "9000", "MUSTER_HOST": None})

    assert settings.port == 9000
    assert settings.host == "10.0.0.1"  # a flag that was not given leaves the variable


def test_command_line_flags_map_to_settings() -> None:
    parser = argparse.ArgumentParser()
    add_flags(parser)

    flags = vars(parser.parse_args(["--port", "9001", "--webhook-allow-http", "true"]))
    settings = Settings.load({**DATA, "MUSTER_PORT": "8000"}, flags)

    assert settings.port == 9001
    assert settings.webhook_allow_http is True


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
        ({"MUSTER_MAX_REPLICAS": "lots"}, "MUSTER_MAX_REPLICAS"),
        ({"MUSTER_HEADER_TIMEOUT": "0"}, "MUSTER_HEADER_TIMEOUT"),
        ({"MUSTER_BODY_TIMEOUT": "-1"}, "MUSTER_BODY_TIMEOUT"),
        ({"MUSTER_KEEPALIVE_TIMEOUT": "nan"}, "MUSTER_KEEPALIVE_TIMEOUT"),
        ({"MUSTER_MAX_CONNECTIONS": "0"}, "MUSTER_MAX_CONNECTIONS"),
        ({"MUSTER_LOCAL_CPUS": "-2"}, "MUSTER_LOCAL_CPUS"),
        ({"MUSTER_LOCAL_GPUS": "1.5"}, "MUSTER_LOCAL_GPUS"),
        ({"MUSTER_KUBE_QPS": "nan"}, "MUSTER_KUBE_QPS"),
        ({"MUSTER_KUBE_BURST": "0"}, "MUSTER_KUBE_BURST"),
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


def test_the_static_backend_with_a_nodes_file_loads() -> None:
    settings = Settings.load(
        {**DATA, "MUSTER_BACKEND": "static", "MUSTER_NODES_FILE": "/etc/muster/nodes.yaml"}
    )

    assert settings.backend == "static"
    assert settings.nodes_file == Path("/etc/muster/nodes.yaml")


def test_every_setting_maps_to_a_settings_field_and_back() -> None:
    fields = {field.name for field in dataclasses.fields(Settings)}
    attrs = [setting.attr for setting in SETTINGS]

    assert len(attrs) == len(set(attrs))
    assert set(attrs) == fields


def test_every_setting_is_a_muster_variable_with_a_matching_flag() -> None:
    for setting in SETTINGS:
        assert setting.env.startswith("MUSTER_")
        assert setting.env == setting.env.upper()
        assert setting.flag == "--" + setting.attr.replace("_", "-")
        assert setting.help


def test_settings_are_immutable() -> None:
    settings = Settings.load(DATA)

    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.port = 1  # type: ignore[misc]
