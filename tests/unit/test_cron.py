"""Cron schedules (server/services/cron): parsing, Vixie day rules, next_after in UTC, errors.

Nothing boots; every expected time below was worked out by hand from a calendar (2026-01-01 is
a Thursday) and one test checks next_after against a minute-by-minute scan."""

from __future__ import annotations

import itertools
import time
from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from gureum.server.services.cron import Cron, CronError


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


# -- syntax -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "attr", "expected"),
    [
        ("* * * * *", "minutes", set(range(60))),
        ("5 * * * *", "minutes", {5}),
        ("1-3 * * * *", "minutes", {1, 2, 3}),
        ("*/15 * * * *", "minutes", {0, 15, 30, 45}),
        ("10-20/5 * * * *", "minutes", {10, 15, 20}),
        ("50/3 * * * *", "minutes", {50, 53, 56, 59}),  # a/n runs to the field's max
        ("1,5-6,*/30 * * * *", "minutes", {0, 1, 5, 6, 30}),
        ("0,0,0 * * * *", "minutes", {0}),
        ("0 * * * *", "hours", set(range(24))),
        ("0 */6 * * *", "hours", {0, 6, 12, 18}),
        ("0 22-23,0-1 * * *", "hours", {22, 23, 0, 1}),
        ("0 0 * * *", "days", set(range(1, 32))),
        ("0 0 */10 * *", "days", {1, 11, 21, 31}),
        ("0 0 15,31 * *", "days", {15, 31}),
        ("0 0 1 * *", "months", set(range(1, 13))),
        ("0 0 1 jan,MAR-may *", "months", {1, 3, 4, 5}),
        ("0 0 1 */3 *", "months", {1, 4, 7, 10}),
        ("0 0 1 Jan/4 *", "months", {1, 5, 9}),
        ("0 0 1 dec *", "months", {12}),
        ("0 0 * * mon-fri", "weekdays", {1, 2, 3, 4, 5}),
        ("0 0 * * 7", "weekdays", {0}),
        ("0 0 * * 0,7", "weekdays", {0}),
        ("0 0 * * 5-7", "weekdays", {5, 6, 0}),
        ("0 0 * * SUN", "weekdays", {0}),
        ("0 0 * * sat,sun", "weekdays", {6, 0}),
        ("0 0 * * */2", "weekdays", {0, 2, 4, 6}),
        ("0 0 * * *", "weekdays", set(range(7))),
    ],
)
def test_each_syntax_form_gives_its_values(expr: str, attr: str, expected: set[int]) -> None:
    assert getattr(Cron.parse(expr), attr) == frozenset(expected)


def test_whitespace_between_and_around_fields_is_free() -> None:
    assert Cron.parse("  0\t3  *   * 1 ") == Cron.parse("0 3 * * 1")


@pytest.mark.parametrize(
    ("expr", "dom", "dow"),
    [
        ("0 0 * * *", False, False),
        ("0 0 1 * *", True, False),
        ("0 0 * * 1", False, True),
        ("0 0 1 * 1", True, True),
        ("0 0 1-31 * 0-7", True, True),  # the full range written out still counts as restricted
        ("0 0 */2 * 1", False, True),  # Vixie: a field starting with * is unrestricted
    ],
)
def test_restricted_flags_follow_vixie(expr: str, dom: bool, dow: bool) -> None:
    cron = Cron.parse(expr)
    assert (cron.dom_restricted, cron.dow_restricted) == (dom, dow)


@pytest.mark.parametrize(
    ("macro", "same_as"),
    [
        ("@hourly", "0 * * * *"),
        ("@daily", "0 0 * * *"),
        ("@midnight", "0 0 * * *"),
        ("@weekly", "0 0 * * 0"),
        ("@monthly", "0 0 1 * *"),
        ("@yearly", "0 0 1 1 *"),
        ("@annually", "0 0 1 1 *"),
        ("@DAILY", "0 0 * * *"),
    ],
)
def test_macros_are_their_five_field_forms(macro: str, same_as: str) -> None:
    assert Cron.parse(macro) == Cron.parse(same_as)


# -- next_after -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "after", "expected"),
    [
        # seconds are dropped and the answer is strictly after t
        ("* * * * *", utc(2026, 5, 10, 10, 0, 30), utc(2026, 5, 10, 10, 1)),
        ("* * * * *", utc(2026, 5, 10, 10, 0), utc(2026, 5, 10, 10, 1)),
        ("* * * * *", utc(2026, 5, 10, 10, 0, 59, 999999), utc(2026, 5, 10, 10, 1)),
        ("30 * * * *", utc(2026, 5, 10, 10, 30), utc(2026, 5, 10, 11, 30)),
        ("30 * * * *", utc(2026, 5, 10, 10, 29, 59), utc(2026, 5, 10, 10, 30)),
        ("*/15 9-17 * * *", utc(2026, 5, 10, 17, 45), utc(2026, 5, 11, 9, 0)),
        ("0,30 */6 * * *", utc(2026, 5, 10, 6, 0), utc(2026, 5, 10, 6, 30)),
        # day, month and year rollover
        ("0 0 * * *", utc(2026, 12, 31, 23, 59, 59), utc(2027, 1, 1, 0, 0)),
        ("0 0 1 * *", utc(2026, 1, 31, 12, 0), utc(2026, 2, 1, 0, 0)),
        ("15 14 1 * *", utc(2026, 2, 1, 14, 15), utc(2026, 3, 1, 14, 15)),
        ("0 0 31 * *", utc(2026, 4, 1), utc(2026, 5, 31)),  # April has no 31st
        ("0 12 * nov,dec,jan *", utc(2026, 3, 1), utc(2026, 11, 1, 12, 0)),
        ("0 0 1 jan *", utc(2026, 1, 1), utc(2027, 1, 1)),
        # weekdays (2026-05-08 is a Friday)
        ("0 9 * * mon-fri", utc(2026, 5, 8, 9, 0), utc(2026, 5, 11, 9, 0)),
        ("0 9 * * mon-fri", utc(2026, 5, 8, 8, 59), utc(2026, 5, 8, 9, 0)),
        ("0 0 * * 7", utc(2026, 1, 1), utc(2026, 1, 4)),
        ("0 0 * * 0", utc(2026, 1, 1), utc(2026, 1, 4)),
        # leap day
        ("0 0 29 2 *", utc(2027, 3, 1), utc(2028, 2, 29)),
        ("0 0 29 2 *", utc(2028, 2, 29), utc(2032, 2, 29)),
        ("0 0 29 2 *", utc(2096, 3, 1), utc(2104, 2, 29)),  # 2100 is not a leap year
        ("0 0 29 feb sun", utc(2026, 1, 1), utc(2026, 2, 1)),  # both restricted: either
        ("0 0 29 2 */7", utc(2033, 1, 1), utc(2060, 2, 29)),  # */7 = Sunday, both must match
    ],
)
def test_next_after(expr: str, after: datetime, expected: datetime) -> None:
    got = Cron.parse(expr).next_after(after)
    assert got == expected
    assert got.tzinfo is UTC


def test_day_or_weekday_when_both_are_restricted() -> None:
    """Vixie: "13th or Friday". 2026-01-02 is a Friday, the 13th a Tuesday."""
    cron = Cron.parse("0 0 13 * fri")
    assert cron.next_after(utc(2026, 1, 1)) == utc(2026, 1, 2)
    assert cron.next_after(utc(2026, 1, 10)) == utc(2026, 1, 13)
    assert cron.next_after(utc(2026, 1, 13)) == utc(2026, 1, 16)


def test_day_and_weekday_when_one_starts_with_a_star() -> None:
    """``*/2`` counts as unrestricted, so it is "odd days that are Mondays"; written as
    ``1-31/2`` it is restricted and means "odd days, and every Monday"."""
    both = Cron.parse("0 0 */2 * 1")
    assert both.next_after(utc(2026, 1, 1)) == utc(2026, 1, 5)
    assert both.next_after(utc(2026, 1, 5)) == utc(2026, 1, 19)  # the 12th is even
    either = Cron.parse("0 0 1-31/2 * 1")
    assert either.next_after(utc(2026, 1, 5)) == utc(2026, 1, 7)
    assert either.next_after(utc(2026, 1, 10)) == utc(2026, 1, 11)
    assert either.next_after(utc(2026, 1, 11)) == utc(2026, 1, 12)  # Monday, even day


def test_month_and_weekday_combine_with_and() -> None:
    """Only the day fields are OR-ed: the first Monday of February 2026 is the 2nd."""
    assert Cron.parse("0 0 31 2 mon").next_after(utc(2026, 1, 1)) == utc(2026, 2, 2)


@pytest.mark.parametrize(
    ("macro", "expected"),
    [
        ("@hourly", utc(2026, 5, 10, 11, 0)),
        ("@daily", utc(2026, 5, 11)),
        ("@midnight", utc(2026, 5, 11)),
        ("@weekly", utc(2026, 5, 17)),  # the 10th is itself a Sunday, but already past 00:00
        ("@monthly", utc(2026, 6, 1)),
        ("@yearly", utc(2027, 1, 1)),
        ("@annually", utc(2027, 1, 1)),
    ],
)
def test_macros_fire_when_expected(macro: str, expected: datetime) -> None:
    assert Cron.parse(macro).next_after(utc(2026, 5, 10, 10, 20)) == expected


def test_daylight_saving_changes_nothing_because_it_is_utc() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    # 2026-03-29: Berlin jumps from 02:00 to 03:00 local; 02:00 UTC still exists and comes once.
    spring = datetime(2026, 3, 29, 1, 30, tzinfo=berlin)  # 00:30 UTC
    assert Cron.parse("0 2 * * *").next_after(spring) == utc(2026, 3, 29, 2, 0)
    # 2026-10-25: Berlin repeats 02:00-03:00 local; hourly runs stay one hour apart in UTC.
    t = datetime(2026, 10, 24, 23, 0, tzinfo=UTC)
    hourly = Cron.parse("@hourly")
    runs = []
    for _ in range(5):
        t = hourly.next_after(t)
        runs.append(t)
    assert [b - a for a, b in itertools.pairwise(runs)] == [timedelta(hours=1)] * 4
    assert runs[0] == utc(2026, 10, 25, 0, 0)
    assert all(r.tzinfo is UTC for r in runs)


def test_an_aware_time_in_another_zone_is_read_as_its_utc_instant() -> None:
    seoul = timezone(timedelta(hours=9))
    got = Cron.parse("0 0 * * *").next_after(datetime(2026, 5, 10, 9, 0, tzinfo=seoul))
    assert got == utc(2026, 5, 11, 0, 0)  # 09:00+09:00 is midnight UTC itself: strictly after
    assert got.tzinfo is UTC


@pytest.mark.parametrize(
    "expr",
    ["*/7 */5 * * *", "0 0 13 * fri", "0 0 */2 * 1", "5 4 1-7 * mon", "0 9-17/4 * jan,jul 1-5"],
)
def test_next_after_agrees_with_a_minute_by_minute_scan(expr: str) -> None:
    cron = Cron.parse(expr)

    def matches(m: datetime) -> bool:
        dom = m.day in cron.days
        dow = m.isoweekday() % 7 in cron.weekdays
        day = (dom or dow) if cron.dom_restricted and cron.dow_restricted else (dom and dow)
        return day and m.minute in cron.minutes and m.hour in cron.hours and m.month in cron.months

    scanned = []
    m = utc(2025, 12, 20)
    while m < utc(2026, 2, 10):
        m += timedelta(minutes=1)
        if matches(m):
            scanned.append(m)
    walked = [cron.next_after(utc(2025, 12, 20))]
    for _ in scanned[1:]:  # bounded: a next_after that stood still would not hang the suite
        walked.append(cron.next_after(walked[-1]))
    assert walked == scanned


def test_a_rare_match_is_found_without_scanning_minutes() -> None:
    """A minute scan to 2060 would take ~18 million steps; months and days are skipped."""
    began = time.perf_counter()
    assert Cron.parse("0 0 29 2 */7").next_after(utc(2033, 1, 1)) == utc(2060, 2, 29)
    assert Cron.parse("0 0 29 2 *").next_after(utc(2027, 3, 1)) == utc(2028, 2, 29)
    assert time.perf_counter() - began < 0.5


# -- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("* * *", "expected five fields (minute hour day month weekday), got 3"),
        ("", "expected five fields (minute hour day month weekday), got 0"),
        ("* * * * * *", "expected five fields (minute hour day month weekday), got 6"),
        ("61 * * * *", "minute: 61 is out of range 0-59"),
        ("* 24 * * *", "hour: 24 is out of range 0-23"),
        ("* * 0 * *", "day: 0 is out of range 1-31"),
        ("* * 32 * *", "day: 32 is out of range 1-31"),
        ("* * * 13 *", "month: 13 is out of range 1-12"),
        ("* * * 0 *", "month: 0 is out of range 1-12"),
        ("* * * * 8", "weekday: 8 is out of range 0-7"),
        ("0-60 * * * *", "minute: 60 is out of range 0-59"),
        ("*/0 * * * *", "minute: step 0 in '*/0' must be at least 1"),
        ("* 1-5/0 * * *", "hour: step 0 in '1-5/0' must be at least 1"),
        ("* 1-5/x * * *", "hour: step 'x' in '1-5/x' is not a number"),
        ("*/ * * * *", "minute: step '' in '*/' is not a number"),
        ("*/5/2 * * * *", "minute: step '5/2' in '*/5/2' is not a number"),
        ("5-2 * * * *", "minute: range 5-2 is reversed (5 > 2)"),
        ("* * * * fri-mon", "weekday: range fri-mon is reversed (5 > 1)"),
        ("* * * dec-jan *", "month: range dec-jan is reversed (12 > 1)"),
        ("x * * * *", "minute: 'x' is not a number"),
        ("jan * * * *", "minute: 'jan' is not a number"),
        ("1.5 * * * *", "minute: '1.5' is not a number"),
        ("\u0663 * * * *", "minute: '\u0663' is not a number"),  # an Arabic-Indic digit
        ("-5 * * * *", "minute: '' in '-5' is not a number"),
        ("1-2-3 * * * *", "minute: '2-3' in '1-2-3' is not a number"),
        ("* * * foo *", "month: 'foo' is not a number or month name"),
        ("* * * * jan", "weekday: 'jan' is not a number or day name"),
        ("* * * * monday", "weekday: 'monday' is not a number or day name"),
        ("1,,2 * * * *", "minute: empty item in '1,,2'"),
        ("1, * * * *", "minute: empty item in '1,'"),
        (
            "@often",
            "unknown macro '@often' "
            "(expected @yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly)",
        ),
        (
            "@reboot",
            "unknown macro '@reboot' "
            "(expected @yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly)",
        ),
        ("0 0 31 2 *", "day: no day in '31' exists in month '2', so the expression never matches"),
        (
            "0 0 30,31 feb *",
            "day: no day in '30,31' exists in month 'feb', so the expression never matches",
        ),
        (
            "0 0 31 4,6,9,11 *",
            "day: no day in '31' exists in month '4,6,9,11', so the expression never matches",
        ),
        (
            "0 0 30 2 */7",
            "day: no day in '30' exists in month '2', so the expression never matches",
        ),
    ],
)
def test_bad_expressions_say_which_field_and_what(expr: str, message: str) -> None:
    with pytest.raises(CronError) as caught:
        Cron.parse(expr)
    assert str(caught.value) == message
    assert isinstance(caught.value, ValueError)  # callers may catch ValueError


def test_a_naive_datetime_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware") as caught:
        Cron.parse("* * * * *").next_after(datetime(2026, 5, 10, 10, 0))
    assert not isinstance(caught.value, CronError)  # the caller's mistake, not the schedule's


@pytest.mark.parametrize(
    "after",
    [utc(9999, 6, 1), datetime.max.replace(tzinfo=UTC)],
)
def test_no_match_before_the_calendar_ends_is_a_cron_error(after: datetime) -> None:
    with pytest.raises(CronError, match=r"'0 0 1 1 \*' has no matching minute after 9999-"):
        Cron.parse("0 0 1 1 *").next_after(after)
