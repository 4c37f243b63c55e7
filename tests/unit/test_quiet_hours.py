"""Quiet hours of batch calling: windows on a zone's local wall clock, across midnight and
daylight-saving changes, and retries timed 'AT HH:MM' local time. All instants are Unix ms."""

from __future__ import annotations

from datetime import UTC, datetime, time
from zoneinfo import ZoneInfo

import pytest

from calls_server.domain.errors import BadRequest
from calls_server.domain.quiet_hours import QuietHours, local_time, next_local_time, zone

NEW_YORK = ZoneInfo("America/New_York")
LORD_HOWE = ZoneInfo("Australia/Lord_Howe")  # a DST change of 30 minutes
SANTIAGO = ZoneInfo("America/Santiago")  # DST changes at local midnight


def utc(*fields: int) -> int:
    """The Unix ms of a UTC date and time (year, month, day, hour, minute[, second])."""
    return int(datetime(*fields, tzinfo=UTC).timestamp()) * 1000


def quiet(start: str, end: str, zone: ZoneInfo = NEW_YORK) -> QuietHours:
    return QuietHours(local_time(start, "start"), local_time(end, "end"), zone)


# The window on an ordinary day (2026-05-05, EDT: UTC-4).


def test_an_instant_inside_a_plain_window_is_quiet():
    assert quiet("12:00", "14:00").holds(utc(2026, 5, 5, 17, 0))  # 13:00 EDT


def test_an_instant_outside_a_window_may_call_at_once():
    hours = quiet("12:00", "14:00")
    at = utc(2026, 5, 5, 19, 0)  # 15:00 EDT

    assert not hours.holds(at)
    assert hours.next_allowed(at) == at


def test_inside_a_plain_window_calls_resume_at_its_end():
    assert quiet("12:00", "14:00").next_allowed(utc(2026, 5, 5, 17, 0)) == utc(2026, 5, 5, 18, 0)


def test_the_start_time_is_inside_the_window():
    assert quiet("12:00", "14:00").holds(utc(2026, 5, 5, 16, 0))


def test_the_end_time_is_outside_the_window():
    assert not quiet("12:00", "14:00").holds(utc(2026, 5, 5, 18, 0))


def test_the_last_millisecond_before_the_end_is_inside():
    assert quiet("12:00", "14:00").holds(utc(2026, 5, 5, 18, 0) - 1)


def test_a_wrapped_window_before_midnight_ends_the_next_morning():
    at = utc(2026, 5, 6, 3, 0)  # 23:00 EDT on the 5th

    assert quiet("22:00", "08:00").next_allowed(at) == utc(2026, 5, 6, 12, 0)  # 08:00 EDT, 6th


def test_a_wrapped_window_after_midnight_ends_the_same_morning():
    at = utc(2026, 5, 6, 7, 0)  # 03:00 EDT on the 6th

    assert quiet("22:00", "08:00").next_allowed(at) == utc(2026, 5, 6, 12, 0)


def test_a_wrapped_window_leaves_the_day_between_end_and_start_free():
    hours = quiet("22:00", "08:00")

    assert not hours.holds(utc(2026, 5, 5, 16, 0))  # 12:00 EDT
    assert not hours.holds(utc(2026, 5, 6, 2, 0) - 1)  # 21:59:59.999 EDT


def test_a_half_hour_offset_zone_is_read_on_its_own_clock():
    hours = quiet("21:00", "09:00", ZoneInfo("Asia/Calcutta"))  # UTC+05:30
    at = utc(2026, 1, 15, 20, 0)  # 01:30 IST on the 16th

    assert hours.next_allowed(at) == utc(2026, 1, 16, 3, 30)  # 09:00 IST


# New York, 2026-03-08: at 02:00 EST (07:00 UTC) the clock jumps to 03:00 EDT.


def test_an_end_skipped_by_spring_forward_resumes_when_the_clock_jumps_past_it():
    at = utc(2026, 3, 8, 6, 0)  # 01:00 EST

    assert quiet("22:00", "02:30").next_allowed(at) == utc(2026, 3, 8, 7, 0)  # 03:00 EDT


def test_a_window_across_spring_forward_ends_at_its_local_end_time():
    at = utc(2026, 3, 8, 4, 0)  # 23:00 EST on the 7th

    assert quiet("22:00", "08:00").next_allowed(at) == utc(2026, 3, 8, 12, 0)  # 08:00 EDT


# New York, 2026-11-01: at 02:00 EDT (06:00 UTC) the clock turns back to 01:00 EST.


def test_an_end_repeated_by_fall_back_is_its_first_occurrence():
    at = utc(2026, 11, 1, 4, 0)  # 00:00 EDT

    assert quiet("22:00", "01:30").next_allowed(at) == utc(2026, 11, 1, 5, 30)  # 01:30 EDT


def test_in_the_repeated_hour_past_the_first_end_the_second_one_counts():
    at = utc(2026, 11, 1, 6, 10)  # 01:10 EST: the wall clock is back inside the window

    assert quiet("22:00", "01:30").next_allowed(at) == utc(2026, 11, 1, 6, 30)  # 01:30 EST


def test_a_window_across_fall_back_ends_at_its_local_end_time():
    at = utc(2026, 11, 1, 3, 0)  # 23:00 EDT on Oct 31

    assert quiet("22:00", "08:00").next_allowed(at) == utc(2026, 11, 1, 13, 0)  # 08:00 EST


def test_a_fall_back_turning_the_clock_back_out_of_the_window_ends_it():
    at = utc(2026, 11, 1, 5, 50)  # 01:50 EDT, in a window from 01:15

    assert quiet("01:15", "03:00").next_allowed(at) == utc(2026, 11, 1, 6, 0)  # 01:00 EST


# Lord Howe Island: +10:30 in winter, +11:00 in summer.


def test_an_end_skipped_by_a_half_hour_spring_forward_resumes_at_the_jump():
    hours = quiet("22:00", "02:15", LORD_HOWE)
    at = utc(2026, 10, 3, 15, 0)  # 01:30 +10:30 on Oct 4; at 02:00 the clock jumps to 02:30

    assert hours.next_allowed(at) == utc(2026, 10, 3, 15, 30)


def test_an_end_repeated_by_a_half_hour_fall_back_is_its_first_occurrence():
    hours = quiet("22:00", "01:45", LORD_HOWE)
    at = utc(2026, 4, 4, 14, 0)  # 01:00 +11 on Apr 5; at 02:00 the clock turns back to 01:30

    assert hours.next_allowed(at) == utc(2026, 4, 4, 14, 45)  # 01:45 +11


def test_an_end_at_a_skipped_midnight_resumes_when_the_clock_jumps_past_it():
    hours = quiet("22:00", "00:30", SANTIAGO)
    at = utc(2026, 9, 6, 2, 0)  # 22:00 -04 on Sep 5; at midnight the clock jumps to 01:00 -03

    assert hours.next_allowed(at) == utc(2026, 9, 6, 4, 0)


@pytest.mark.parametrize(
    ("hours", "first", "last"),
    [
        (quiet("22:00", "02:30"), utc(2026, 3, 7, 12, 0), utc(2026, 3, 9, 12, 0)),
        (quiet("22:00", "01:30"), utc(2026, 10, 31, 12, 0), utc(2026, 11, 2, 12, 0)),
        (quiet("01:15", "03:00"), utc(2026, 10, 31, 12, 0), utc(2026, 11, 2, 12, 0)),
        (quiet("01:45", "02:15", LORD_HOWE), utc(2026, 10, 2, 12, 0), utc(2026, 10, 4, 12, 0)),
        (quiet("01:40", "02:10", LORD_HOWE), utc(2026, 4, 3, 12, 0), utc(2026, 4, 5, 12, 0)),
        (quiet("23:30", "00:30", SANTIAGO), utc(2026, 4, 3, 12, 0), utc(2026, 4, 5, 12, 0)),
        (quiet("23:30", "00:30", SANTIAGO), utc(2026, 9, 5, 12, 0), utc(2026, 9, 7, 12, 0)),
    ],
    ids=[
        "ny-spring",
        "ny-fall",
        "ny-fall-start-repeated",
        "lhi-spring",
        "lhi-fall",
        "scl-fall",
        "scl-spring",
    ],
)
def test_next_allowed_is_the_first_minute_outside_the_window(hours, first, last):
    # Every change of the zone and every HH:MM falls on a whole minute: scanning the minutes
    # backwards finds, for each, the first minute at or after it outside the window.
    expected: dict[int, int] = {}
    outside = None
    for at in reversed(range(first, last, 60_000)):
        outside = outside if hours.holds(at) else at
        if outside is not None:
            expected[at] = outside

    assert {at: hours.next_allowed(at) for at in expected} == expected


# Retries 'AT HH:MM' local time.


def test_a_local_time_later_today_is_today():
    after = utc(2026, 5, 5, 14, 0)  # 10:00 EDT

    assert next_local_time(after, time(13, 0), NEW_YORK) == utc(2026, 5, 5, 17, 0)


def test_a_local_time_already_past_today_is_tomorrow():
    after = utc(2026, 5, 5, 18, 0)  # 14:00 EDT

    assert next_local_time(after, time(13, 0), NEW_YORK) == utc(2026, 5, 6, 17, 0)


def test_exactly_at_the_local_time_the_next_one_is_tomorrow():
    after = utc(2026, 5, 5, 17, 0)  # 13:00 EDT

    assert next_local_time(after, time(13, 0), NEW_YORK) == utc(2026, 5, 6, 17, 0)


def test_a_millisecond_before_the_local_time_it_is_the_local_time():
    after = utc(2026, 5, 5, 17, 0) - 1

    assert next_local_time(after, time(13, 0), NEW_YORK) == utc(2026, 5, 5, 17, 0)


def test_a_local_time_skipped_by_spring_forward_is_the_jump_past_it():
    after = utc(2026, 3, 7, 17, 0)  # 12:00 EST on the 7th

    assert next_local_time(after, time(2, 30), NEW_YORK) == utc(2026, 3, 8, 7, 0)  # 03:00 EDT


def test_a_local_time_repeated_by_fall_back_is_its_first_occurrence():
    after = utc(2026, 10, 31, 16, 0)  # 12:00 EDT on Oct 31

    assert next_local_time(after, time(1, 30), NEW_YORK) == utc(2026, 11, 1, 5, 30)  # 01:30 EDT


def test_between_the_occurrences_of_a_repeated_local_time_it_is_the_second():
    after = utc(2026, 11, 1, 5, 45)  # 01:45 EDT

    assert next_local_time(after, time(1, 30), NEW_YORK) == utc(2026, 11, 1, 6, 30)  # 01:30 EST


def test_a_local_time_repeated_from_the_day_before_by_a_fall_back_counts():
    # Goose Bay, 2009-11-01: at 00:01 ADT (03:01 UTC) the clock turned back to 23:01 AST, Oct 31.
    goose_bay = ZoneInfo("America/Goose_Bay")
    after = utc(2009, 11, 1, 3, 0)  # 00:00 ADT on Nov 1

    assert next_local_time(after, time(23, 30), goose_bay) == utc(2009, 11, 1, 3, 30)  # 23:30 AST


def test_a_skipped_local_midnight_is_the_jump_past_it():
    after = utc(2026, 9, 5, 16, 0)  # 12:00 -04 on Sep 5

    assert next_local_time(after, time(0, 0), SANTIAGO) == utc(2026, 9, 6, 4, 0)  # 01:00 -03


# What a batch's `quiet_hours` object may ask for.


def test_quiet_hours_are_read_from_the_request():
    request = {"enabled": True, "start_time": "22:00", "end_time": "08:00"}

    hours = QuietHours.from_request(request, "Europe/Berlin")

    assert hours == QuietHours(time(22, 0), time(8, 0), ZoneInfo("Europe/Berlin"))


def test_the_quiet_hours_timezone_overrides_the_batch_zone():
    request = {
        "enabled": True,
        "start_time": "22:00",
        "end_time": "08:00",
        "timezone": "Asia/Tokyo",
    }

    hours = QuietHours.from_request(request, "Europe/Berlin")

    assert hours is not None
    assert hours.zone == ZoneInfo("Asia/Tokyo")


def test_quiet_hours_without_enabled_apply():
    hours = QuietHours.from_request({"start_time": "22:00", "end_time": "08:00"}, "UTC")

    assert hours == QuietHours(time(22, 0), time(8, 0), ZoneInfo("UTC"))


def test_disabled_quiet_hours_are_none():
    request = {"enabled": False, "start_time": "22:00", "end_time": "08:00"}

    assert QuietHours.from_request(request, "UTC") is None


def test_absent_quiet_hours_are_none():
    assert QuietHours.from_request(None, "UTC") is None


@pytest.mark.parametrize("text", ["00:00", "09:05", "23:59"])
def test_a_local_time_is_hh_mm(text):
    assert local_time(text, "start_time").strftime("%H:%M") == text


@pytest.mark.parametrize(
    "value", ["24:00", "9:00", "12:60", "09:00:00", " 09:00", "0\uff19:00", "", 900, None]
)
def test_a_start_time_not_hh_mm_is_refused_naming_field_and_value(value):
    request = {"enabled": True, "start_time": value, "end_time": "08:00"}

    with pytest.raises(BadRequest) as refused:
        QuietHours.from_request(request, "UTC")

    assert refused.value.error == (
        f"quiet_hours.start_time must be a time as HH:MM (00:00 to 23:59), not {value!r}"
    )
    assert refused.value.message == "Validation error"


def test_an_end_time_not_hh_mm_is_refused_naming_its_field():
    request = {"enabled": True, "start_time": "22:00", "end_time": "8:00"}

    with pytest.raises(BadRequest, match=r"^quiet_hours\.end_time must be .*, not '8:00'$"):
        QuietHours.from_request(request, "UTC")


@pytest.mark.parametrize(
    "name", ["Mars/Olympus", "../x", "", "America", "America/", "/etc/localtime", "zone.tab", 5]
)
def test_an_unknown_zone_is_refused_naming_it(name):
    with pytest.raises(BadRequest) as refused:
        zone(name)

    assert refused.value.error == f"Unknown time zone {name!r}"
    assert refused.value.message == "Validation error"


def test_an_unknown_quiet_hours_timezone_is_refused():
    request = {"enabled": True, "start_time": "22:00", "end_time": "08:00", "timezone": "Nowhere"}

    with pytest.raises(BadRequest, match=r"^Unknown time zone 'Nowhere'$"):
        QuietHours.from_request(request, "UTC")


def test_an_unknown_batch_zone_is_refused():
    request = {"enabled": True, "start_time": "22:00", "end_time": "08:00"}

    with pytest.raises(BadRequest, match=r"^Unknown time zone 'Nowhere'$"):
        QuietHours.from_request(request, "Nowhere")


def test_equal_start_and_end_times_are_refused():
    request = {"enabled": True, "start_time": "09:00", "end_time": "09:00"}

    with pytest.raises(
        BadRequest, match=r"^quiet hours from 09:00 to 09:00 leave no calling time$"
    ):
        QuietHours.from_request(request, "UTC")
