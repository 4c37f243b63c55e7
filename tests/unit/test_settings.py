"""Settings: from the environment, overridden by flags, checked loudly."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from calls_server.settings import Settings, SettingsError


def test_defaults_work_on_a_fresh_machine():
    settings = Settings.load({})

    assert (settings.host, settings.port, settings.data_dir) == (
        "127.0.0.1",
        8080,
        Path("calls-data"),
    )
    assert settings.admin_token is None
    assert settings.livekit_rooms() is None


def test_environment_is_read_and_flags_win():
    environ = {"CALLS_PORT": "9000", "CALLS_HOST": "0.0.0.0", "CALLS_VALIDATE_RESPONSES": "yes"}

    settings = Settings.load(environ, port=9100)

    assert (settings.port, settings.host, settings.validate_responses) == (9100, "0.0.0.0", True)


POSTGRES = {"CALLS_DATABASE_URL": "postgresql://db.example.com/calls"}


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"CALLS_PORT": "eighty"}, "CALLS_PORT"),
        ({"CALLS_PORT": "70000"}, "CALLS_PORT"),
        ({"CALLS_VALIDATE_RESPONSES": "maybe"}, "CALLS_VALIDATE_RESPONSES"),
        ({"CALLS_ADMIN_TOKEN": "short"}, "CALLS_ADMIN_TOKEN"),
        ({"CALLS_MAX_BODY_BYTES": "10"}, "CALLS_MAX_BODY_BYTES"),
        ({"CALLS_LOG_LEVEL": "loud"}, "CALLS_LOG_LEVEL"),
        ({"CALLS_LIVEKIT_URL": "wss://x"}, "CALLS_LIVEKIT_API_KEY"),
        ({"CALLS_LIVEKIT_IDENTITY": "same-for-all"}, "CALLS_LIVEKIT_IDENTITY"),
        ({"CALLS_WORKERS": "0"}, "CALLS_WORKERS"),
        ({"CALLS_BATCH_CONCURRENCY": "0"}, "CALLS_BATCH_CONCURRENCY"),
        ({"CALLS_WORKERS": "2", "CALLS_METRICS_PORT": "8079", **POSTGRES}, "CALLS_METRICS_PORT"),
    ],
)
def test_a_bad_value_is_refused_naming_the_variable(environ, named):
    with pytest.raises(SettingsError, match=named):
        Settings.load(environ)


def test_a_complete_livekit_configuration_gives_rooms():
    environ = {
        "CALLS_LIVEKIT_URL": "wss://lk.example.test",
        "CALLS_LIVEKIT_API_KEY": "key",
        "CALLS_LIVEKIT_API_SECRET": "secret",
        "CALLS_LIVEKIT_TOKEN_TTL": "120",
        "CALLS_LIVEKIT_IDENTITY": "guest-{call_id}",
    }

    rooms = Settings.load(environ).livekit_rooms()

    assert rooms is not None
    assert (rooms.server_url, rooms.ttl_seconds, rooms.identity_template) == (
        "wss://lk.example.test",
        120,
        "guest-{call_id}",
    )


# A valid value, other than the default, for every setting (set together where they must be).
EVERY_SETTING = {
    "data_dir": "/srv/calls",
    "mcp_url": "http://calls.internal:8080/api",
    "mcp_api_key": "sk_mcp",
    "mcp_api_secret": "s3cr3t_mcp",
    "mcp_host": "0.0.0.0",
    "mcp_port": "9090",
    "mcp_token": "mcp-token-0123456789abcdef",
    "mcp_allowed_hosts": "mcp.example.com",
    "mcp_allowed_origins": "https://app.example.com",
    "mcp_read_only": "true",
    "host": "0.0.0.0",
    "port": "9000",
    "admin_token": "a-long-enough-admin-token",
    "max_body_bytes": "2048",
    "validate_responses": "true",
    "log_level": "DEBUG",
    "compact_every": "500",
    "livekit_url": "wss://livekit.example.com",
    "livekit_api_key": "APIkey",
    "livekit_api_secret": "secret-secret",
    "livekit_token_ttl": "600",
    "livekit_identity": "caller-{call_id}",
    "dialer_url": "https://dialer.example.com/jobs",
    "dialer_secret": "dialer-secret",
    "dialer_timeout": "2.5",
    "dialer_attempts": "5",
    "dialer_concurrency": "4",
    "dialer_deadline": "20",
    "dialer_idempotent": "true",
    "webhook_delivery": "false",
    "webhook_allow_http": "true",
    "webhook_allow_networks": "10.1.0.0/16, 127.0.0.0/8",
    "webhooks_per_organization": "4",
    "webhook_concurrency": "4",
    "webhook_connections_per_endpoint": "2",
    "webhook_timeout": "2",
    "webhook_retry_first_delay": "10",
    "webhook_retry_max_delay": "600",
    "webhook_retry_for": "86400",
    "webhook_disable_after": "172800",
    "webhook_event_retention": "3600",
    "scheduler_interval": "0.25",
    "batch_concurrency": "50",
    "quota_calls": "1000",
    "enum_case": "upper",
    "log_json": "true",
    "log_access": "false",
    "cors_origins": "https://app.example.com",
    "console": "false",
    "quota_bytes": "1048576",
    "sandbox_seed": "7",
    "sandbox_time_scale": "0.5",
    "idempotency_ttl": "3600",
    "rate_limit_per_key": "600",
    "rate_limit_per_organization": "6000",
    "rate_limit_auth_failures": "30",
    "max_header_bytes": "8192",
    "max_headers": "50",
    "header_timeout": "5",
    "body_timeout": "10",
    "max_connections": "500",
    "keep_alive_timeout": "15",
    "max_connections_per_address": "64",
    "send_timeout": "20",
    "max_buffered_bytes": "67108864",
    "tls_certfile": "/etc/calls/cert.pem",
    "tls_keyfile": "/etc/calls/key.pem",
    "forwarded_allow_ips": "10.0.0.1",
    "metrics_port": "9100",
    "metrics_host": "0.0.0.0",
    "database_url": "postgresql://calls@db.example.com:5432/calls",
    "database_pool_size": "20",
    "database_statement_timeout": "12.5",
    "workers": "4",
}
# Settings that exclude one of the above (the sandbox is the dialer): read on their own.
ON_THEIR_OWN = {"sandbox": "true"}


@pytest.mark.parametrize("values", [EVERY_SETTING, ON_THEIR_OWN], ids=["together", "alone"])
def test_every_setting_is_read_from_its_environment_variable(values):
    environ = {f"CALLS_{name.upper()}": text for name, text in values.items()}

    settings = Settings.load(environ)

    every = {**EVERY_SETTING, **ON_THEIR_OWN}
    assert set(every) == {field.name for field in dataclasses.fields(Settings)}
    defaults = Settings()
    for name in values:
        assert getattr(settings, name) != getattr(defaults, name), name


def test_several_workers_on_the_embedded_store_are_refused_saying_what_to_use():
    with pytest.raises(SettingsError) as refused:
        Settings.load({"CALLS_WORKERS": "2"})

    assert "CALLS_WORKERS above 1 needs CALLS_DATABASE_URL" in str(refused.value)
    assert "one process" in str(refused.value)


def test_the_database_url_must_be_postgresql():
    with pytest.raises(SettingsError, match="PostgreSQL connection URL"):
        Settings(database_url="mysql://db/calls")


def test_the_sandbox_and_a_real_dialer_exclude_each_other():
    with pytest.raises(SettingsError, match="exclude each other"):
        Settings(sandbox=True, dialer_url="https://dialer.example.com", dialer_secret="s")


def test_settings_read_together_are_what_they_say():
    settings = Settings.load({f"CALLS_{n.upper()}": t for n, t in EVERY_SETTING.items()})

    assert settings.log_level == "debug"
    assert settings.data_dir == Path("/srv/calls")
    assert settings.dialer_timeout == 2.5


@pytest.mark.parametrize(
    ("raw", "value"),
    [("true", True), ("1", True), ("yes", True), ("on", True),
     ("false", False), ("0", False), ("no", False), ("OFF", False)],
)  # fmt: skip
def test_booleans_take_the_usual_words(raw, value):
    assert Settings.load({"CALLS_WEBHOOK_DELIVERY": raw}).webhook_delivery is value


def test_an_empty_optional_setting_is_unset():
    assert Settings.load({"CALLS_ADMIN_TOKEN": ""}).admin_token is None
