"""Five-field cron schedules, evaluated in UTC: when a retrain pipeline's ``--schedule`` fires.

Fields are ``minute hour day month weekday``; each is a comma list of ``*``, ``n``, ``a-b``,
``*/n``, ``a-b/n`` or ``a/n`` (a up to the field's maximum). Months and weekdays may be English
names (``jan``, ``Mon``); weekday 0 and 7 are both Sunday. The macros ``@hourly``, ``@daily``
(``@midnight``), ``@weekly``, ``@monthly`` and ``@yearly`` (``@annually``) are accepted.

Day and weekday follow Vixie cron: when both fields are restricted a day matches if either
matches, otherwise it must match both. As in Vixie cron, a field is unrestricted when it
starts with ``*``, so ``*/2`` counts as unrestricted: ``0 0 */2 * 1`` is "odd days that are
Mondays", while ``0 0 1-31/2 * 1`` is "odd days, and every Monday".

An expression whose day never occurs in its months (``0 0 31 2 *``) is refused at parse time,
so ``next_after`` always finds a minute within one 400-year Gregorian cycle (it fails only
past the year 9999). Written here rather than depending on croniter: the grammar is small and
the server needs nothing but ``parse`` and ``next_after``.
"""

from __future__ import annotations

from bisect import bisect_left
from calendar import monthrange
from dataclasses import dataclass, field
from datetime import MAXYEAR, UTC, date, datetime, timedelta

MACROS: dict[str, str] = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_MONTH_NAMES = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_MONTH_MAX_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
# The Gregorian calendar repeats every 400 years: a pattern that matches at all does so within.
_SEARCH_YEARS = 400


class CronError(ValueError):
    """A schedule that is not valid cron; the message names the field and the bad part."""


@dataclass(frozen=True)
class _Field:
    name: str
    lo: int
    hi: int
    names: tuple[str, ...] = ()
    name_base: int = 0  # the number of names[0]
    what: str = ""  # "month name" / "day name"

    def parse(self, text: str) -> frozenset[int]:
        values: set[int] = set()
        for item in text.split(","):
            if not item:
                raise CronError(f"{self.name}: empty item in {text!r}")
            values.update(self._item(item))
        return frozenset(values)

    def _item(self, item: str) -> range:
        base, slash, step_text = item.partition("/")
        step = 1
        if slash:
            if not (step_text.isascii() and step_text.isdigit()):
                raise CronError(f"{self.name}: step {step_text!r} in {item!r} is not a number")
            step = int(step_text)
            if step == 0:
                raise CronError(f"{self.name}: step 0 in {item!r} must be at least 1")
        if base == "*":
            lo, hi = self.lo, self.hi
        elif "-" in base:
            first, _, last = base.partition("-")
            lo, hi = self._value(first, item), self._value(last, item)
            if lo > hi:
                raise CronError(f"{self.name}: range {base} is reversed ({lo} > {hi})")
        else:
            lo = self._value(base, item)
            hi = self.hi if slash else lo
        return range(lo, hi + 1, step)

    def _value(self, token: str, item: str) -> int:
        if token.isascii() and token.isdigit():
            number = int(token)
            if not self.lo <= number <= self.hi:
                raise CronError(f"{self.name}: {number} is out of range {self.lo}-{self.hi}")
            return number
        if token.lower() in self.names:
            return self.names.index(token.lower()) + self.name_base
        where = "" if token == item else f" in {item!r}"
        what = f"a number or {self.what}" if self.what else "a number"
        raise CronError(f"{self.name}: {token!r}{where} is not {what}")


_FIELDS = (
    _Field("minute", 0, 59),
    _Field("hour", 0, 23),
    _Field("day", 1, 31),
    _Field("month", 1, 12, _MONTH_NAMES, 1, "month name"),
    _Field("weekday", 0, 7, _DAY_NAMES, 0, "day name"),
)


@dataclass(frozen=True)
class Cron:
    """A parsed schedule: the allowed values of each field (weekday 7 stored as 0)."""

    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    dom_restricted: bool
    dow_restricted: bool
    expr: str = field(default="", compare=False)

    @classmethod
    def parse(cls, expr: str) -> Cron:
        text = expr.strip()
        if text.startswith("@"):
            if text.lower() not in MACROS:
                raise CronError(f"unknown macro {text!r} (expected {', '.join(MACROS)})")
            text = MACROS[text.lower()]
        parts = text.split()
        if len(parts) != 5:
            raise CronError(
                f"expected five fields (minute hour day month weekday), got {len(parts)}"
            )
        minutes, hours, days, months, weekdays = (
            spec.parse(part) for spec, part in zip(_FIELDS, parts, strict=True)
        )
        cron = cls(
            minutes=minutes,
            hours=hours,
            days=days,
            months=months,
            weekdays=frozenset(d % 7 for d in weekdays),
            dom_restricted=not parts[2].startswith("*"),
            dow_restricted=not parts[4].startswith("*"),
            expr=expr.strip(),
        )
        either = cron.dom_restricted and cron.dow_restricted
        if not either and not any(d <= _MONTH_MAX_DAYS[m - 1] for m in months for d in days):
            raise CronError(
                f"day: no day in {parts[2]!r} exists in month {parts[3]!r}, "
                "so the expression never matches"
            )
        return cron

    def matches_day(self, day: date) -> bool:
        dom = day.day in self.days
        dow = day.isoweekday() % 7 in self.weekdays
        if self.dom_restricted and self.dow_restricted:
            return dom or dow
        return dom and dow

    def next_after(self, t: datetime) -> datetime:
        """The first matching minute strictly after ``t`` (aware; the answer is in UTC)."""
        if t.tzinfo is None or t.utcoffset() is None:
            raise ValueError("next_after needs a timezone-aware datetime (UTC), got a naive one")
        utc = t.astimezone(UTC).replace(second=0, microsecond=0, tzinfo=None)
        if utc.year == MAXYEAR and utc >= datetime(MAXYEAR, 12, 31, 23, 59):
            raise CronError(f"{self.expr!r} has no matching minute after {t.isoformat()}")
        start = utc + timedelta(minutes=1)
        hours, minutes = sorted(self.hours), sorted(self.minutes)
        for year in range(start.year, min(start.year + _SEARCH_YEARS, MAXYEAR) + 1):
            for month in sorted(self.months):
                if (year, month) < (start.year, start.month):
                    continue
                first = start.day if (year, month) == (start.year, start.month) else 1
                for day_number in range(first, monthrange(year, month)[1] + 1):
                    day = date(year, month, day_number)
                    if not self.matches_day(day):
                        continue
                    floor = (start.hour, start.minute) if day == start.date() else (0, 0)
                    found = _first_time(hours, minutes, floor)
                    if found is not None:
                        return datetime(year, month, day_number, *found, tzinfo=UTC)
        raise CronError(f"{self.expr!r} has no matching minute after {t.isoformat()}")


def _first_time(
    hours: list[int], minutes: list[int], floor: tuple[int, int]
) -> tuple[int, int] | None:
    """The first (hour, minute) of the allowed ones at or after ``floor`` on one day."""
    for hour in hours[bisect_left(hours, floor[0]) :]:
        i = bisect_left(minutes, floor[1] if hour == floor[0] else 0)
        if i < len(minutes):
            return hour, minutes[i]
    return None
