"""Settings: from the environment, overridden by flags, checked loudly."""

from __future__ import annotations

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
