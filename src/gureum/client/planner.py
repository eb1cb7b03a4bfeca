"""SDK for the capacity planner, and the strict reader of CSV traces it sends.

A trace is a CSV with the header ``hour,cpus,gpus`` (optionally followed by
``preemptible_cpus,preemptible_gpus``): one row per hour, ISO 8601 hours on the hour (UTC when
no offset is given), strictly increasing; hours left out used nothing. It is read here, so a
bad file is refused with its line number before anything is sent.
"""

from __future__ import annotations

import _csv
import csv
import io
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

from gureum.client.base import Transport
from gureum.client.errors import GureumError
from gureum.schemas.planner import (
    MAX_HOURS,
    MAX_UNITS,
    DemandSeries,
    PlanReport,
    PriceOverrides,
    TraceIn,
)

COLUMNS = ("hour", "cpus", "gpus")
PREEMPTIBLE = ("preemptible_cpus", "preemptible_gpus")
HOUR = timedelta(hours=1)


class TraceError(GureumError):
    """A trace file that is not a valid hourly CSV (which line, and why)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="invalid_trace")


def _hour(text: str, where: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise TraceError(f"{where}: hour {text!r} is not an ISO 8601 time") from None
    value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    if (value.minute, value.second, value.microsecond) != (0, 0, 0):
        raise TraceError(f"{where}: hour {text!r} is not on the hour")
    return value


def _amount(text: str, column: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise TraceError(f"{where}: {column} {text!r} is not a number") from None
    if not math.isfinite(value) or not 0 <= value <= MAX_UNITS:
        raise TraceError(f"{where}: {column} {text!r} must be a number from 0 to {MAX_UNITS:g}")
    return value


def parse_trace(text: str, source: str = "trace") -> DemandSeries:
    """A CSV trace as a dense hourly series; :class:`TraceError` names the first bad line."""
    reader = csv.reader(io.StringIO(text), strict=True)
    try:
        return _parse(reader, source)
    except csv.Error as e:  # an unclosed quote, a field past the size limit
        raise TraceError(f"{source} line {reader.line_num}: not CSV ({e})") from None


def _parse(reader: _csv.Reader, source: str) -> DemandSeries:
    header = next(reader, None)
    names = tuple(h.strip().lower() for h in header or ())
    if names not in (COLUMNS, COLUMNS + PREEMPTIBLE):
        raise TraceError(
            f"{source}: the first line must be the header {','.join(COLUMNS)} (optionally "
            f"followed by {','.join(PREEMPTIBLE)}), not {','.join(names) or 'empty'!r}"
        )
    rows: list[tuple[datetime, list[float]]] = []
    for fields in reader:
        where = f"{source} line {reader.line_num}"
        if not fields or all(not f.strip() for f in fields):
            continue
        if len(fields) != len(names):
            raise TraceError(f"{where}: {len(fields)} fields, the header has {len(names)}")
        hour = _hour(fields[0].strip(), where)
        values = [_amount(f.strip(), n, where) for f, n in zip(fields[1:], names[1:], strict=True)]
        if rows and hour <= rows[-1][0]:
            raise TraceError(f"{where}: hour {fields[0].strip()} is not after the line before")
        if len(values) == 4 and (values[2] > values[0] or values[3] > values[1]):
            raise TraceError(f"{where}: a preemptible column exceeds its total")
        if rows and (hour - rows[0][0]) / HOUR >= MAX_HOURS:
            raise TraceError(f"{where}: the trace spans more than {MAX_HOURS} hours")
        rows.append((hour, values))
    if not rows:
        raise TraceError(f"{source}: no hours after the header")
    start = rows[0][0]
    n = int((rows[-1][0] - start) / HOUR) + 1
    columns = [[0.0] * n for _ in names[1:]]
    for hour, values in rows:
        i = int((hour - start) / HOUR)
        for column, value in zip(columns, values, strict=True):
            column[i] = value
    if not any(columns[0]) and not any(columns[1]):
        raise TraceError(f"{source}: no CPU or GPU is used in any hour")
    pre = {k: v for k, v in zip(PREEMPTIBLE, columns[2:], strict=False)}
    return DemandSeries(start=start, cpus=columns[0], gpus=columns[1], **pre)


def read_trace(path: Path) -> DemandSeries:
    """:func:`parse_trace` of a file (UTF-8)."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise TraceError(f"{path}: not a UTF-8 text file ({e.reason})") from None
    return parse_trace(text, str(path))


class PlannerAPI:
    def __init__(self, t: Transport) -> None:
        self._t = t

    def replay(
        self,
        period: str | None = None,
        months: int = 12,
        prices: PriceOverrides | None = None,
    ) -> PlanReport:
        """The workspace's recorded usage of ``months`` months ending with ``period``
        (YYYY-MM, default this month) on elastic cloud and on a fleet for its peak."""
        params = {
            **(prices or PriceOverrides()).model_dump(exclude_none=True),
            "months": months,
            **({"period": period} if period else {}),
        }
        return PlanReport.model_validate(self._t.json("GET", "/v1/plan", params=params))

    def trace(self, trace: DemandSeries | Path, prices: PriceOverrides | None = None) -> PlanReport:
        """The same comparison over a given trace: a series, or a CSV file (see above)."""
        series = read_trace(trace) if isinstance(trace, Path) else trace
        body = TraceIn(trace=series, prices=prices or PriceOverrides())
        payload = body.model_dump(mode="json", exclude_none=True)
        return PlanReport.model_validate(self._t.json("POST", "/v1/plan", json=payload))
