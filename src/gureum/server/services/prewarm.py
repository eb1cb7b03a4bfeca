"""Pre-warm: raise an endpoint's minimum replicas ahead of the peaks its usage history recorded.

Autoscaling answers a burst only after it began (a replica's start, then the delays); an
endpoint whose load follows the week (office hours, a nightly batch) can have its replicas
started before the burst instead. The profile is the endpoint's served requests per minute of
the week (Sunday 00:00 UTC is minute 0), averaged over the last ``prewarm_weeks`` weeks and
aggregated in SQL, with their mean latency. A minute needs the replicas that carry its
requests in flight (Little's law: rate x latency) at ``target_ongoing_requests`` each. From
``prewarm_lead_s`` before such a minute until it has passed, the minimum is the most any
minute of that window needed (never above ``max_replicas``); then it is the configured one
again.

The decision lives in the endpoint's events (kind ``prewarm``, ``data.min_replicas``), so a
restarted or newly leading controller applies what was decided, and the endpoint's message
says that it is raised. Nothing here talks to Ray: the endpoint controller calls ``step`` and
applies endpoints with ``autoscaling``.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Integer, cast, extract, func, select
from sqlalchemy.orm import Session

from gureum.schemas.endpoints import Autoscaling, EndpointConfig
from gureum.server.db.base import utcnow
from gureum.server.db.session import Database
from gureum.server.db.tables_serving import Endpoint, EndpointEvent, UsageRecord
from gureum.server.services.budget_ledger import budget_state
from gureum.server.services.endpoints import add_event, changed

log = logging.getLogger(__name__)
MINUTES_PER_WEEK = 7 * 24 * 60
WEEK = timedelta(days=7)
# How often the controller looks (pre-warm works in minutes: a few seconds late is nothing).
CHECK_EVERY_S = 5.0
# How long a profile is reused: history a few minutes old predicts the same peaks.
PROFILE_TTL_S = 300.0
EVENT = "prewarm"
MESSAGE_PREFIX = "pre-warmed"
DAYS = ("Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat")


@dataclass(frozen=True)
class MinuteLoad:
    """One minute of the week: requests served in it (mean per week) and their mean latency."""

    requests: float
    latency_ms: float


# minute of the week -> load; minutes without requests are absent.
Profile = dict[int, MinuteLoad]


@dataclass(frozen=True)
class Decision:
    min_replicas: int
    # The minute (UTC) whose load needs the most replicas in the window; None: not raised.
    peak_at: datetime | None = None

    def message(self) -> str:
        if self.peak_at is None:
            return ""
        return (
            f"{MESSAGE_PREFIX}: min replicas {self.min_replicas} for the peak recorded at "
            f"{DAYS[weekday(self.peak_at)]} {self.peak_at:%H:%M} UTC"
        )


def weekday(t: datetime) -> int:
    """Sunday 0 .. Saturday 6, as SQL's day of week (SQLite's %w, PostgreSQL's dow)."""
    return (t.weekday() + 1) % 7


def minute_of_week(t: datetime) -> int:
    return weekday(t) * 1440 + t.hour * 60 + t.minute


def weeks_covered(first: datetime | None, now: datetime, weeks: int) -> float:
    """The weeks the history spans (at most ``weeks``, at least one): what a minute's requests
    are averaged over. A young endpoint's one week is not divided by four."""
    if first is None:
        return 1.0
    return min(float(weeks), max(1.0, math.ceil((now - first) / WEEK)))


def build_profile(rows: list[tuple[int, int, int, int, float]], weeks: float) -> Profile:
    """From SQL's (day of week, hour, minute, requests, latency sum in ms) rows."""
    out: Profile = {}
    for dow, hour, minute, n, latency_sum in rows:
        if n <= 0:
            continue
        key = (int(dow) * 1440 + int(hour) * 60 + int(minute)) % MINUTES_PER_WEEK
        out[key] = MinuteLoad(n / weeks, float(latency_sum) / n)
    return out


def replicas_needed(load: MinuteLoad | None, target_ongoing: float) -> int:
    """Replicas that hold the minute's requests in flight at ``target_ongoing`` each."""
    if load is None or load.requests <= 0:
        return 0
    in_flight = load.requests / 60.0 * (load.latency_ms / 1000.0)
    return max(1, math.ceil(in_flight / target_ongoing - 1e-9))


def decide(profile: Profile, now: datetime, a: Autoscaling) -> Decision:
    """The minimum for ``now``: the configured one, or raised for the minutes from now until
    ``prewarm_lead_s`` ahead to the most replicas one of them needed."""
    if not a.prewarm or not profile:
        return Decision(a.min_replicas)
    first = now.replace(second=0, microsecond=0)
    span = int(((now + timedelta(seconds=a.prewarm_lead_s)) - first).total_seconds() // 60)
    best, peak_at = 0, None
    for k in range(min(span, MINUTES_PER_WEEK) + 1):
        at = first + timedelta(minutes=k)
        need = replicas_needed(profile.get(minute_of_week(at)), a.target_ongoing_requests)
        if need > best:
            best, peak_at = need, at
    raised = min(best, a.max_replicas)
    if raised <= a.min_replicas:
        return Decision(a.min_replicas)
    return Decision(raised, peak_at)


# -- SQL -------------------------------------------------------------------------------------------


def load_profile(s: Session, endpoint_id: int, now: datetime, weeks: int) -> Profile:
    """The endpoint's profile, aggregated in SQL per minute of the week (at most 10,080 rows
    however many requests were served)."""
    since = now - weeks * WEEK
    where = (
        UsageRecord.endpoint_id == endpoint_id,
        UsageRecord.time >= since,
        UsageRecord.time < now,
        UsageRecord.status < 500,
    )
    # PostgreSQL reads a timestamptz's fields in the session's time zone: ask for UTC's.
    utc = (
        UsageRecord.time
        if s.get_bind().dialect.name == "sqlite"
        else func.timezone("UTC", UsageRecord.time)
    )
    dow = cast(extract("dow", utc), Integer)
    hour = cast(extract("hour", utc), Integer)
    minute = cast(extract("minute", utc), Integer)
    rows = s.execute(
        select(dow, hour, minute, func.count(), func.sum(UsageRecord.latency_ms))
        .where(*where)
        .group_by(dow, hour, minute)
    ).all()
    first = s.scalar(select(func.min(UsageRecord.time)).where(*where))
    table = [(int(r[0]), int(r[1]), int(r[2]), int(r[3]), float(r[4] or 0)) for r in rows]
    return build_profile(table, weeks_covered(first, now, weeks))


def last_raise(s: Session, endpoint_id: int) -> int | None:
    """The minimum the last pre-warm decision set (None: never decided)."""
    data = s.scalar(
        select(EndpointEvent.data)
        .where(EndpointEvent.endpoint_id == endpoint_id, EndpointEvent.kind == EVENT)
        .order_by(EndpointEvent.seq.desc())
        .limit(1)
    )
    value = data.get("min_replicas") if isinstance(data, dict) else None
    return value if isinstance(value, int) else None


def autoscaling(s: Session, ep: Endpoint, a: Autoscaling, primary: bool = True) -> Autoscaling:
    """What the endpoint's primary is applied with: ``a`` with the minimum the last decision
    raised (never above ``a.max_replicas``: a budget hold caps it). A canary or shadow, which
    takes a share of the traffic or none, keeps ``a``."""
    if not a.prewarm or not primary:
        return a
    raised = last_raise(s, ep.id)
    if raised is None or raised <= a.min_replicas:
        return a
    return a.model_copy(update={"min_replicas": min(raised, a.max_replicas)})


class Prewarmer:
    """The endpoint controller's pre-warm step: decides for the endpoints with ``prewarm`` on
    and records a change as an event (re-applying the endpoint)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._checked: float | None = None
        # endpoint id -> (when loaded, weeks, profile)
        self._profiles: dict[int, tuple[float, int, Profile]] = {}

    def step(self, now: datetime | None = None, force: bool = False) -> None:
        mono = time.monotonic()
        if not force and self._checked is not None and mono - self._checked < CHECK_EVERY_S:
            return
        self._checked = mono
        now = now or utcnow()
        with self.db.read() as s:
            rows = s.execute(
                select(Endpoint.id, Endpoint.config, Endpoint.workspace_id, Endpoint.state)
            ).all()
            wanted: dict[int, Decision] = {}
            for r in rows:
                a = EndpointConfig.model_validate(r.config).autoscaling
                if not a.prewarm or r.state not in ("ready", "updating"):
                    continue
                if budget_state(s, r.workspace_id) == "exceeded":
                    wanted[r.id] = Decision(a.min_replicas)
                    continue
                wanted[r.id] = decide(self._profile(s, r.id, now, a.prewarm_weeks), now, a)
        self._profiles = {k: v for k, v in self._profiles.items() if k in wanted}
        for ep_id, d in wanted.items():
            try:
                self._record(ep_id, d)
            except Exception:  # one endpoint's failure must not stop the others'
                log.exception("pre-warm of endpoint %s failed", ep_id)

    def _profile(self, s: Session, ep_id: int, now: datetime, weeks: int) -> Profile:
        cached = self._profiles.get(ep_id)
        fresh = cached is not None and time.monotonic() - cached[0] < PROFILE_TTL_S
        if cached is not None and fresh and cached[1] == weeks:
            return cached[2]
        profile = load_profile(s, ep_id, now, weeks)
        self._profiles[ep_id] = (time.monotonic(), weeks, profile)
        return profile

    def forget(self, endpoint_id: int | None = None) -> None:
        """Reload profiles at the next step (all of them, or one endpoint's)."""
        if endpoint_id is None:
            self._profiles.clear()
        else:
            self._profiles.pop(endpoint_id, None)
        self._checked = None

    def _record(self, ep_id: int, d: Decision) -> None:
        with self.db.read() as s:
            before = last_raise(s, ep_id)
            ep = s.get(Endpoint, ep_id)
            if ep is None:
                return
            config_min = EndpointConfig.model_validate(ep.config).autoscaling.min_replicas
        if d.peak_at is None and (before is None or before <= config_min):
            return  # not raised, and nothing raised to lower
        if d.peak_at is not None and before == d.min_replicas:
            return
        with self.db.write() as s:
            ep = s.get(Endpoint, ep_id)
            if ep is None or last_raise(s, ep_id) != before:
                return
            if d.peak_at is not None:
                message = d.message()
                add_event(s, ep, EVENT, message, min_replicas=d.min_replicas)
                ep.message = message
            else:
                add_event(
                    s,
                    ep,
                    EVENT,
                    f"pre-warm over: min replicas back to {config_min}",
                    min_replicas=d.min_replicas,
                )
                if ep.message.startswith(MESSAGE_PREFIX):
                    ep.message = ""
            changed(ep, ep.state)
